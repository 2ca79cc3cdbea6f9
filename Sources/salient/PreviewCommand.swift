import ArgumentParser
import Data
import Foundation

/// `salient preview`: one PNG grid of original images and their augmented views, so a user can see
/// what training sees. Each group is [original | view 1 | ... | view k].
struct PreviewCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "preview",
        abstract: "Write a PNG grid of images and their augmented training views.")

    @Option(
        help: "A folder of PNG and JPEG images (class subfolders give labels) or an IDX *-images-idx3-ubyte[.gz] file.")
    var data: String

    @Option(help: "Output PNG file.")
    var out: String

    @Option(help: "Number of images to show.")
    var n: Int = 16

    @Option(help: "Augmented views per image.")
    var views: Int = 3

    @Option(help: "Random seed (picks the images and their augmentations).")
    var seed: UInt64 = 0

    @Option(help: "View size in pixels.")
    var size: Int = 32

    @Option(help: "Use only the first N images of the dataset.")
    var limit: Int?

    @Option(help: "Force 1 (gray) or 3 (RGB) channels.")
    var channels: Int?

    @Flag(help: "Show high-pass filtered views (the hp fill's input).")
    var highPass = false

    @Flag(help: "Skip unreadable or corrupt images instead of stopping; the count is reported.")
    var skipBad = false

    func validate() throws {
        if n < 1 { throw ValidationError("--n must be at least 1 (got \(n))") }
        if views < 1 || views > 16 { throw ValidationError("--views must be between 1 and 16 (got \(views))") }
        if size < 8 || size > 1024 { throw ValidationError("--size must be between 8 and 1024 (got \(size))") }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1 (got \(limit))") }
        if let channels, channels != 1 && channels != 3 { throw ValidationError("--channels must be 1 or 3") }
        if !out.lowercased().hasSuffix(".png") { throw ValidationError("--out must name a .png file (got \(out))") }
        if !FileManager.default.fileExists(atPath: data) {
            throw ValidationError("--data \(data): no such file or folder")
        }
        let dir = (out as NSString).deletingLastPathComponent
        if !dir.isEmpty && !FileManager.default.fileExists(atPath: dir) {
            throw ValidationError("--out \(out): folder \(dir) does not exist")
        }
    }

    func run() throws {
        var config = AugmentConfig.mocoV2(size: size)
        config.highPass = highPass
        // JPEGs decoded as small as the views allow (DCT scaling); the originals are shown at the view size.
        let ds = try DatasetLoader.open(
            path: data, limit: limit, skipBad: skipBad, channels: channels,
            decode: .views(config))
        let grid = try makePreview(dataset: ds, config: config, count: min(n, ds.count), views: views, seed: seed)
        try writePNG(path: out, image: grid)
        print(
            "preview: \(min(n, ds.count)) of \(ds.count) images from \(data), \(views) views each at \(size) px "
                + "-> \(out) (\(grid.width)x\(grid.height))")
        if skipBad { print("skipped \(ds.skipped.count) bad file(s)") }
        for e in ds.skipped.prefix(20) { print("  skipped \(e)") }
    }
}
