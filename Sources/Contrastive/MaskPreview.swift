// A picture of what masking does, for `salient train --preview` style outputs (not on the training path:
// it allocates freely).
import Foundation
import Kernels
import Data

/// Renders, for the first `count` samples of a batch, one row of four tiles:
/// [view | view with saliency heat overlay | masked query | masked hard negative].
///
/// - `views` [B][H][W][C]: the unmasked views the saliency belongs to (normalised; high-pass if `highPass`).
/// - `saliency` [B][G*G] of those views, or nil (the second tile is then the plain view). Cells are shaded by
///   saliency (min-max scaled per map, dark blue -> red -> yellow, blended half and half with the view) and
///   foreground cells (`foregroundCells` with `fgStd`) get a green outline.
/// - `query`, `hardNegative` [B][H][W][C]: the masked views (a hard negative normally comes from the key view).
/// - Display: x * std + mean per channel (1-channel views use std[0], mean[0]); high-pass views are contrast
///   stretched instead: 0.5 + x / (5 * rms), rms over the sample's unmasked view, used for its whole row so noise
///   levels compare across tiles. One-channel views become gray RGB.
/// Returns an RGB `Image` (tiles enlarged `scale` times, 2 px white padding), to write with `writePNG(path:image:)`.
public func maskPreview(
    views: UnsafePointer<Float>, saliency: UnsafePointer<Float>?, query: UnsafePointer<Float>,
    hardNegative: UnsafePointer<Float>, batch: Int, height: Int, width: Int, channels: Int,
    grid: Int, count: Int, mean: [Float], std: [Float], highPass: Bool,
    fgStd: Float = MaskConfig().fgStd, scale: Int = 3
) -> Image {
    precondition(count >= 1 && batch >= 1 && channels >= 1 && !mean.isEmpty && !std.isEmpty)
    let n = min(count, batch), plane = height * width * channels, cells = grid * grid
    var tiles = [Image]()
    for b in 0..<n {
        let tile = PreviewTile(
            height: height, width: width, channels: channels, mean: mean, std: std,
            rms: highPass ? PreviewTile.rms(views + b * plane, count: plane) : nil)
        func display(_ src: UnsafePointer<Float>) -> [Float] { tile.pixels(src + b * plane) }
        let base = display(views)
        var heat = base
        if let sal = saliency {
            let map = sal + b * cells
            var lo = map[0], hi = map[0]
            for i in 0..<cells { lo = min(lo, map[i]); hi = max(hi, map[i]) }
            var flags = [UInt8](repeating: 0, count: cells)
            flags.withUnsafeMutableBufferPointer {
                _ = foregroundCells(map, cells: cells, fgStd: fgStd, flags: $0.baseAddress!)
            }
            for gi in 0..<grid {
                let rows = gridBand(gi, size: height, grid: grid)
                for gj in 0..<grid {
                    let cols = gridBand(gj, size: width, grid: grid)
                    let s = hi > lo ? (map[gi * grid + gj] - lo) / (hi - lo) : 1
                    let colour: [Float] = [min(1, 2 * s), max(0, 2 * s - 1), max(0, 0.5 - s)]
                    let fg = flags[gi * grid + gj] != 0
                    for y in rows {
                        for x in cols {
                            let edge =
                                y == rows.lowerBound || y == rows.upperBound - 1
                                || x == cols.lowerBound || x == cols.upperBound - 1
                            for k in 0..<3 {
                                let i = (y * width + x) * 3 + k
                                heat[i] = fg && edge ? (k == 1 ? 1 : 0) : 0.5 * heat[i] + 0.5 * colour[k]
                            }
                        }
                    }
                }
            }
        }
        tiles.append(Image(width: width, height: height, channels: 3, pixels: base))
        tiles.append(Image(width: width, height: height, channels: 3, pixels: heat))
        tiles.append(Image(width: width, height: height, channels: 3, pixels: display(query)))
        tiles.append(Image(width: width, height: height, channels: 3, pixels: display(hardNegative)))
    }
    return gridImage(tiles: tiles, columns: 4, padding: 2, scale: scale)
}

/// Renders, for the first `count` samples of a batch, one row of two tiles: [first view | second view]
/// (the preview of a run without masking). Views are [B][H][W][C], normalised; display as in `maskPreview`.
public func viewPairPreview(
    first: UnsafePointer<Float>, second: UnsafePointer<Float>, batch: Int, height: Int,
    width: Int, channels: Int, count: Int, mean: [Float], std: [Float], scale: Int = 3
) -> Image {
    precondition(count >= 1 && batch >= 1 && channels >= 1 && !mean.isEmpty && !std.isEmpty)
    let plane = height * width * channels
    let tile = PreviewTile(height: height, width: width, channels: channels, mean: mean, std: std, rms: nil)
    var tiles = [Image]()
    for b in 0..<min(count, batch) {
        for v in [first, second] {
            tiles.append(Image(width: width, height: height, channels: 3, pixels: tile.pixels(v + b * plane)))
        }
    }
    return gridImage(tiles: tiles, columns: 2, padding: 2, scale: scale)
}

/// How one sample's view becomes displayable RGB in [0, 1]: x * std + mean per channel (1-channel views
/// use std[0], mean[0] and become gray), or, for high-pass views (`rms` given), 0.5 + x / (5 * rms).
struct PreviewTile {
    let height: Int, width: Int, channels: Int, mean: [Float], std: [Float], rms: Float?

    /// The root mean square of `count` values (never below 1e-6).
    static func rms(_ x: UnsafePointer<Float>, count: Int) -> Float {
        var ss: Double = 0
        for i in 0..<count { ss += Double(x[i] * x[i]) }
        return max(1e-6, Float((ss / Double(count)).squareRoot()))
    }

    /// The [H][W][3] pixels of the sample at `src` ([H][W][C]).
    func pixels(_ src: UnsafePointer<Float>) -> [Float] {
        var out = [Float](repeating: 0, count: height * width * 3)
        for p in 0..<(height * width) {
            for k in 0..<3 {
                let c = channels == 1 ? 0 : min(k, channels - 1)
                let x = src[p * channels + c]
                let v = rms.map { 0.5 + x / (5 * $0) } ?? x * std[min(c, std.count - 1)] + mean[min(c, mean.count - 1)]
                out[p * 3 + k] = min(1, max(0, v))
            }
        }
        return out
    }
}
