import Foundation
import Kernels

/// Tiles equal-size images (same channels) into one image, row-major, `columns` per row, with
/// `padding` pixels of `background` between and around tiles and each tile enlarged `scale` times
/// (nearest neighbour, so pixels stay visible).
public func gridImage(tiles: [Image], columns: Int, padding: Int = 2, scale: Int = 1, background: Float = 1) -> Image {
    precondition(!tiles.isEmpty && columns >= 1 && scale >= 1)
    let tw = tiles[0].width * scale, th = tiles[0].height * scale, c = tiles[0].channels
    let rows = (tiles.count + columns - 1) / columns
    let W = columns * tw + (columns + 1) * padding, H = rows * th + (rows + 1) * padding
    var px = [Float](repeating: background, count: W * H * c)
    for (k, t) in tiles.enumerated() {
        precondition(t.width * scale == tw && t.height * scale == th && t.channels == c, "grid tiles differ in size")
        let x0 = padding + (k % columns) * (tw + padding), y0 = padding + (k / columns) * (th + padding)
        for y in 0..<th {
            for x in 0..<tw {
                for ch in 0..<c {
                    px[((y0 + y) * W + x0 + x) * c + ch] = t.pixels[((y / scale) * t.width + x / scale) * c + ch]
                }
            }
        }
    }
    return Image(width: W, height: H, channels: c, pixels: px)
}

/// A preview of what training sees: `count` images chosen with `seed`, each shown as its original
/// (resized to the view size) followed by `views` augmented views (normalisation undone; a
/// high-pass view is shown around mid-gray). Groups are laid out about square.
public func makePreview(
    dataset: ImageDataset, config: AugmentConfig, count: Int = 16, views: Int = 3,
    seed: UInt64 = 0, scale: Int? = nil
) throws -> Image {
    precondition(count >= 1 && views >= 1)
    var pick = SplitMix64(seed: SplitMix64.derive(seed, RandomStream.previewPick.rawValue))
    var order = Array(0..<dataset.count)
    for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, pick.int(below: i + 1)) }
    let chosen = Array(order.prefix(count))
    let s = config.size, c = dataset.channels
    let (mean, std) = config.normalization(channels: c)
    var tiles = [Image]()
    for idx in chosen {
        let img = try dataset.image(at: idx)
        tiles.append(img.resized(width: s, height: s))
        var rng = SplitMix64(seed: SplitMix64.derive(seed, 0, UInt64(idx)))
        for _ in 0..<views {
            var v = augment(img, config: config, rng: &rng)
            for i in 0..<(s * s) {
                for ch in 0..<c {
                    let x = v[i * c + ch] * std[ch] + (config.highPass ? 0.5 : mean[ch])
                    v[i * c + ch] = min(1, max(0, x))
                }
            }
            tiles.append(Image(width: s, height: s, channels: c, pixels: v))
        }
    }
    let n = chosen.count
    var groupsPerRow = 1
    while groupsPerRow * groupsPerRow < n { groupsPerRow += 1 }
    let sc = scale ?? max(1, 96 / s)
    return gridImage(tiles: tiles, columns: groupsPerRow * (1 + views), padding: 2, scale: sc)
}
