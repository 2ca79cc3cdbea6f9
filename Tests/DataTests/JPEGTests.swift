import XCTest
import Foundation
import Kernels
import Data
import TestSupport

/// JPEG decoding against Pillow's decode of the same files (fixtures/jpeg/make_jpeg_fixtures.py
/// writes the files and Pillow's pixels; Pillow decodes with libjpeg-turbo too).
final class JPEGTests: XCTestCase {
    let dir = fixturesPath() + "/jpeg/"

    /// Pillow's pixels of fixture `name` (golden.txt: name width height channels).
    func golden(_ name: String) throws -> (width: Int, height: Int, channels: Int, bytes: [UInt8]) {
        let list = try String(contentsOfFile: dir + "golden.txt", encoding: .utf8)
        guard
            let line = list.split(separator: "\n").first(where: {
                $0.split(separator: " ").first.map(String.init) == name
            })
        else {
            throw DataError(.notFound, path: dir + "golden.txt", "no golden entry \(name)")
        }
        let f = line.split(separator: " ").dropFirst().map { Int($0)! }
        let bytes = try readFileBytes(dir + "golden/" + name + ".u8")
        XCTAssertEqual(bytes.count, f[0] * f[1] * f[2], name)
        return (f[0], f[1], f[2], bytes)
    }

    func bytes8(_ img: Image) -> [UInt8] { img.pixels.map { UInt8(($0 * 255).rounded()) } }

    func assertMatchesGolden(_ img: Image, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let g = try golden(name)
        XCTAssertEqual(img.width, g.width, name, file: file, line: line)
        XCTAssertEqual(img.height, g.height, name, file: file, line: line)
        XCTAssertEqual(img.channels, g.channels, name, file: file, line: line)
        let mine = bytes8(img)
        guard mine.count == g.bytes.count else { return XCTFail("\(name): size differs", file: file, line: line) }
        let diffs = zip(mine, g.bytes).filter { $0 != $1 }.count
        XCTAssertEqual(
            diffs, 0, "\(name): \(diffs) of \(mine.count) samples differ from Pillow's", file: file, line: line)
    }

    /// Baseline 4:2:0 / 4:2:2 / 4:4:4, progressive, restart markers, arithmetic coding, gray (baseline
    /// and progressive), CMYK and YCCK: the same bytes as Pillow's convert("RGB") (or "L").
    func testEveryColourTypeMatchesPillow() throws {
        let types = [
            "ycbcr420", "ycbcr422", "ycbcr444", "progressive", "restart", "arithmetic", "gray",
            "gray_progressive", "cmyk", "ycck"
        ]
        for t in types { try assertMatchesGolden(try readJPEG(path: dir + "types/\(t).jpg"), "types_" + t) }
        let info = try jpegInfo(try readFileBytes(dir + "types/ycck.jpg"))
        XCTAssertEqual(info.colorSpace, .ycck)
        XCTAssertEqual(try jpegInfo(try readFileBytes(dir + "types/cmyk.jpg")).colorSpace, .cmyk)
        XCTAssertEqual(try jpegInfo(try readFileBytes(dir + "types/gray.jpg")).channels, 1)
        XCTAssertTrue(try jpegInfo(try readFileBytes(dir + "types/progressive.jpg")).progressive)
        XCTAssertTrue(try jpegInfo(try readFileBytes(dir + "types/arithmetic.jpg")).arithmetic)
        XCTAssertFalse(try jpegInfo(try readFileBytes(dir + "types/ycbcr420.jpg")).progressive)
    }

    /// EXIF orientations 1-8 turned as Pillow's ImageOps.exif_transpose turns them.
    func testEXIFOrientations() throws {
        for o in 1...8 {
            let bytes = try readFileBytes(dir + "orient/o\(o).jpg")
            let info = try jpegInfo(bytes)
            XCTAssertEqual(info.orientation, o)
            XCTAssertEqual(info.width, o >= 5 ? 12 : 20, "o\(o)")
            try assertMatchesGolden(try decodeJPEG(bytes, name: "o\(o)"), "orient_o\(o)")
        }
    }

    /// Decodes at 1/2, 1/4 and 1/8 by DCT scaling: Pillow's draft() at the same scale, exactly.
    func testDCTScaledDecodesMatchPillowDraft() throws {
        let bytes = try readFileBytes(dir + "scaled.jpg")
        for s in [2, 4, 8] {
            let img = try decodeJPEG(bytes, target: DecodeTarget(minSide: 0, minArea: 0, maxReduction: s))
            try assertMatchesGolden(img, "scaled_\(s)")
        }
        XCTAssertEqual(try decodeJPEG(bytes).width, 120)
    }

    /// The reduction chosen is the largest that keeps the target: each side >= minSide and the area
    /// >= minArea, computed on libjpeg's rounded-up scaled sizes.
    func testTargetPicksTheLargestSufficientReduction() throws {
        let bytes = try readFileBytes(dir + "scaled.jpg")  // 120 x 88
        func width(_ t: DecodeTarget) throws -> Int { try decodeJPEG(bytes, target: t).width }
        XCTAssertEqual(try width(.resize(11)), 15)  // 1/8: 15 x 11
        XCTAssertEqual(try width(.resize(12)), 30)  // 1/4: 30 x 22
        XCTAssertEqual(try width(.resize(45)), 120)  // 1/2 would be 60 x 44
        XCTAssertEqual(try width(DecodeTarget(minSide: 1, minArea: 661)), 60)
        XCTAssertEqual(try width(DecodeTarget(minSide: 1, minArea: 660)), 30)
        XCTAssertEqual(try width(DecodeTarget(minSide: 1, minArea: 1, maxReduction: 4)), 30)
        XCTAssertEqual(try width(.full), 120)
        // MoCo v2's 224 px views (scale >= 0.2, ratio 3/4-4/3): the smallest crop's shorter side is
        // sqrt(0.15 A) >= 224, so A >= 334,507.
        let views = DecodeTarget.views(.mocoV2(size: 224))
        XCTAssertEqual(views.minSide, 224)
        XCTAssertEqual(views.minArea, 334_507)
        XCTAssertEqual(DecodeTarget.views(.evaluation(size: 96)), .resize(96))
    }

    /// A DCT-scaled decode resampled to the view size stays close to the full decode resampled to it:
    /// on the photo-like fixture, at every reduction that keeps the output at least the view size.
    func testDCTScaledDecodeIsCloseToFullDecodePlusResample() throws {
        let bytes = try readFileBytes(dir + "scaled.jpg")  // 120 x 88
        let full = try decodeJPEG(bytes)
        for (s, out) in [(2, 40), (2, 24), (4, 20), (8, 10)] {
            let scaled = try decodeJPEG(bytes, target: DecodeTarget(minSide: 0, minArea: 0, maxReduction: s))
            let a = full.resized(width: out, height: out), b = scaled.resized(width: out, height: out)
            let d = zip(a.pixels, b.pixels).map { abs($0 - $1) }
            let mean = d.reduce(0, +) / Float(d.count), worst = d.max()!
            XCTAssertLessThan(mean, 0.01, "1/\(s) -> \(out) px: mean |difference| \(mean)")
            XCTAssertLessThan(worst, 0.08, "1/\(s) -> \(out) px: largest |difference| \(worst)")
        }
    }

    func expectError(
        _ name: String, _ kind: DataError.Kind, mentioning text: String,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        let path = dir + "bad/" + name
        XCTAssertThrowsError(try readJPEG(path: path), file: file, line: line) { e in
            guard let d = e as? DataError else { return XCTFail("not a DataError: \(e)", file: file, line: line) }
            XCTAssertEqual(d.kind, kind, "\(d)", file: file, line: line)
            XCTAssertTrue(d.description.contains(name), "error does not name the file: \(d)", file: file, line: line)
            XCTAssertTrue(d.description.contains(text), "\(d)", file: file, line: line)
        }
    }

    func testBadJPEGsGiveErrorsNamingTheFile() {
        expectError("not_jpeg.jpg", .notJPEG, mentioning: "not a JPEG")
        expectError("truncated.jpg", .truncated, mentioning: "Premature end")
        expectError("header_only.jpg", .truncated, mentioning: "Premature end")
        expectError("corrupt_huffman.jpg", .corrupt, mentioning: "Huffman")
        expectError("huge_header.jpg", .tooLarge, mentioning: "60000x60000")
        expectError("precision12.jpg", .unsupported, mentioning: "12-bit")
        expectError("lossless.jpg", .unsupported, mentioning: "SOF type 0xc3")
        XCTAssertThrowsError(try decodeJPEG([], name: "empty")) { XCTAssertEqual(($0 as? DataError)?.kind, .truncated) }
        XCTAssertThrowsError(try decodeJPEG([0xFF, 0xD8], name: "soi")) {
            XCTAssertEqual(($0 as? DataError)?.kind, .truncated)
        }
    }

    func testMaxPixelsCheckedOnTheHeader() throws {
        let bytes = try readFileBytes(dir + "types/ycbcr420.jpg")  // 30 x 22
        XCTAssertNoThrow(try decodeJPEG(bytes, maxPixels: 660))
        XCTAssertThrowsError(try decodeJPEG(bytes, maxPixels: 659, name: "x.jpg")) { e in
            XCTAssertEqual((e as? DataError)?.kind, .tooLarge)
            XCTAssertTrue("\(e)".contains("30x22"), "\(e)")
        }
    }

    func tempDir() throws -> String {
        let t = NSTemporaryDirectory() + "salient-jpeg-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: t, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: t) }
        return t
    }

    /// Extra bytes before the EOI marker: libjpeg warns but the pixels are as encoded. The file
    /// decodes (Pillow's pixels) and the dataset lists the warning, naming the file.
    func testHarmlessWarningIsReported() throws {
        try assertMatchesGolden(try readJPEG(path: dir + "bad/extraneous.jpg"), "bad_extraneous")
        let t = try tempDir()
        let fm = FileManager.default
        try fm.copyItem(atPath: dir + "bad/extraneous.jpg", toPath: t + "/a.jpg")
        try fm.copyItem(atPath: dir + "types/gray.jpg", toPath: t + "/b.jpg")
        let ds = try DatasetLoader.open(path: t, reportWarnings: false)
        XCTAssertEqual(ds.count, 2)
        XCTAssertEqual(ds.warnings.count, 1)
        XCTAssertEqual(ds.warnings.first?.path, t + "/a.jpg")
        XCTAssertTrue(ds.warnings.first?.message.contains("extraneous bytes") ?? false, "\(ds.warnings)")
    }

    /// A folder mixing PNG and JPEG (.jpg, .JPEG) in class folders; in memory and streamed give the
    /// same pixels, each equal to its file decoded alone; bad JPEGs are named or skipped.
    func testMixedFolder() throws {
        let t = try tempDir()
        let fm = FileManager.default
        for c in ["ant", "bee"] { try fm.createDirectory(atPath: t + "/" + c, withIntermediateDirectories: true) }
        try fm.copyItem(atPath: dir + "types/ycbcr420.jpg", toPath: t + "/ant/1.jpg")
        try fm.copyItem(atPath: dir + "types/cmyk.jpg", toPath: t + "/ant/2.JPEG")
        try fm.copyItem(atPath: fixturesPath() + "/png/types/rgb8.png", toPath: t + "/ant/3.png")
        try fm.copyItem(atPath: dir + "orient/o6.jpg", toPath: t + "/bee/4.Jpg")
        try fm.copyItem(atPath: dir + "types/gray.jpg", toPath: t + "/bee/5.jpeg")
        let mem = try DatasetLoader.open(path: t)
        let disk = try DatasetLoader.open(path: t, memoryBudget: 0)
        XCTAssertTrue(mem.isInMemory)
        XCTAssertFalse(disk.isInMemory)
        XCTAssertEqual(mem.count, 5)
        XCTAssertEqual(mem.labels, [0, 0, 0, 1, 1])
        XCTAssertEqual(mem.channels, 3)
        for i in 0..<5 {
            XCTAssertEqual(try mem.image(at: i), try disk.image(at: i), mem.name(at: i))
            XCTAssertEqual(
                try mem.image(at: i), try readImage(path: mem.name(at: i)).converted(toChannels: 3), mem.name(at: i))
        }
        XCTAssertEqual(try mem.image(at: 3).width, 12, "EXIF orientation 6 applied")

        for (bad, kind) in [("truncated.jpg", DataError.Kind.truncated), ("not_jpeg.jpg", .notJPEG)] {
            try fm.copyItem(atPath: dir + "bad/" + bad, toPath: t + "/bee/" + bad)
            XCTAssertThrowsError(try DatasetLoader.open(path: t)) { e in
                XCTAssertEqual((e as? DataError)?.kind, kind)
                XCTAssertTrue("\(e)".contains(bad), "\(e)")
            }
            let skipping = try DatasetLoader.open(path: t, skipBad: true)
            XCTAssertEqual(skipping.count, 5)
            XCTAssertEqual(skipping.skipped.map(\.path), [t + "/bee/" + bad])
            try fm.removeItem(atPath: t + "/bee/" + bad)
        }
    }

    /// A dataset opened with a decode target holds (and streams) the DCT-scaled images.
    func testDatasetDecodeTarget() throws {
        let t = try tempDir()
        try FileManager.default.copyItem(atPath: dir + "scaled.jpg", toPath: t + "/a.jpg")
        try FileManager.default.copyItem(atPath: fixturesPath() + "/png/types/rgb8.png", toPath: t + "/b.png")
        for budget in [nil, 0] {
            let ds = try DatasetLoader.open(path: t, memoryBudget: budget, decode: .resize(12))
            XCTAssertEqual(ds.decodeTarget, .resize(12))
            let a = try ds.image(at: 0)
            XCTAssertEqual([a.width, a.height], [30, 22], "1/4 of 120 x 88")
            try assertMatchesGolden(a, "scaled_4")
            XCTAssertEqual(try ds.image(at: 1).width, 5, "PNGs are decoded whole")
        }
    }
}
