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
public func maskPreview(views: UnsafePointer<Float>, saliency: UnsafePointer<Float>?, query: UnsafePointer<Float>,
                        hardNegative: UnsafePointer<Float>, batch: Int, height: Int, width: Int, channels: Int,
                        grid: Int, count: Int, mean: [Float], std: [Float], highPass: Bool,
                        fgStd: Float = MaskConfig().fgStd, scale: Int = 3) -> Image {
    precondition(count >= 1 && batch >= 1 && channels >= 1 && !mean.isEmpty && !std.isEmpty)
    let n = min(count, batch), plane = height * width * channels, cells = grid * grid
    var tiles = [Image]()
    for b in 0..<n {
        var rms: Float = 1
        if highPass {
            var ss: Double = 0
            for i in 0..<plane { ss += Double(views[b * plane + i] * views[b * plane + i]) }
            rms = max(1e-6, Float((ss / Double(plane)).squareRoot()))
        }
        func display(_ src: UnsafePointer<Float>) -> [Float] {
            var out = [Float](repeating: 0, count: height * width * 3)
            for p in 0..<(height * width) {
                for k in 0..<3 {
                    let c = channels == 1 ? 0 : min(k, channels - 1)
                    let x = src[b * plane + p * channels + c]
                    let v = highPass ? 0.5 + x / (5 * rms)
                                     : x * std[min(c, std.count - 1)] + mean[min(c, mean.count - 1)]
                    out[p * 3 + k] = min(1, max(0, v))
                }
            }
            return out
        }
        let base = display(views)
        var heat = base
        if let sal = saliency {
            let map = sal + b * cells
            var lo = map[0], hi = map[0]
            for i in 0..<cells { lo = min(lo, map[i]); hi = max(hi, map[i]) }
            var flags = [UInt8](repeating: 0, count: cells)
            flags.withUnsafeMutableBufferPointer { _ = foregroundCells(map, cells: cells, fgStd: fgStd, flags: $0.baseAddress!) }
            for gi in 0..<grid {
                let rows = gridBand(gi, size: height, grid: grid)
                for gj in 0..<grid {
                    let cols = gridBand(gj, size: width, grid: grid)
                    let s = hi > lo ? (map[gi * grid + gj] - lo) / (hi - lo) : 1
                    let colour: [Float] = [min(1, 2 * s), max(0, 2 * s - 1), max(0, 0.5 - s)]
                    let fg = flags[gi * grid + gj] != 0
                    for y in rows {
                        for x in cols {
                            let edge = y == rows.lowerBound || y == rows.upperBound - 1
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
