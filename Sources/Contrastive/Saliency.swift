// Saliency on a G x G grid of cells, and the foreground test of PAPER.md.
//
// Letters: B views, H x W pixels with C channels (NHWC, element (b, y, x, c) at ((b*H + y)*W + x)*C + c),
// a feature map is [B][h][w][D]; G the grid side (the encoder's final feature map side,
// `ResNetConfig.finalMapSize`), cells = G*G, a saliency map is [B][G*G] row-major (cell (i, j) at i*G + j).
//
// Cell boundaries: row band i of a side of n pixels is [floor(i*n/G), floor((i+1)*n/G)), so sides not divisible
// by G still tile exactly; when n < G a band is widened to at least one pixel (`gridBand`).
import Foundation
import Kernels

/// Pixel range of band `i` of `grid` bands over a side of `size` pixels: [floor(i*size/grid),
/// floor((i+1)*size/grid)), never empty (at least one pixel when size < grid).
@inline(__always)
public func gridBand(_ i: Int, size: Int, grid: Int) -> Range<Int> {
    let lo = i * size / grid
    return lo..<max(lo + 1, (i + 1) * size / grid)
}

/// Saliency from an encoder's last feature map: the channel sum of `map` [B][h][w][D] (the official code's
/// `np.sum(vis, axis=3)`), average-pooled to G x G cells (`gridBand` over h and w; for h == G each cell is one
/// position). Output [B][G*G]. Parallel over views; allocates nothing.
public func saliencyFromFeatures(
    _ map: UnsafePointer<Float>, batch: Int, height: Int, width: Int, channels: Int,
    grid: Int, output: UnsafeMutablePointer<Float>
) {
    precondition(batch >= 0 && height > 0 && width > 0 && channels > 0 && grid > 0)
    let plane = height * width * channels, cells = grid * grid
    parallelFor(batch) { b0, b1, _ in
        for b in b0..<b1 {
            let src = map + b * plane, out = output + b * cells
            for gi in 0..<grid {
                let rows = gridBand(gi, size: height, grid: grid)
                for gj in 0..<grid {
                    let cols = gridBand(gj, size: width, grid: grid)
                    var acc: Double = 0
                    for y in rows {
                        for x in cols {
                            acc += Double(channelSum(src + (y * width + x) * channels, channels))
                        }
                    }
                    out[gi * grid + gj] = Float(acc / Double(rows.count * cols.count))
                }
            }
        }
    }
}

/// Sum of `n` consecutive floats (SIMD8 partial sums).
@inline(__always)
func channelSum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var v = SIMD8<Float>()
    var i = 0
    while i + 8 <= n {
        v += UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self)
        i += 8
    }
    var s = v.sum()
    while i < n { s += p[i]; i += 1 }
    return s
}

/// Network-free saliency for warm-up epochs (before the momentum encoder's features mean anything):
/// global colour contrast in the spirit of Achanta et al.'s frequency-tuned saliency (CVPR 2009). Each pixel
/// scores its Euclidean distance, over the C channels of the normalised view, from the view's mean colour;
/// scores are averaged per cell. A compact object that differs from a mostly uniform surround scores high, the
/// surround low; a view whose "object" covers more than half of it inverts (a known limit of global contrast).
/// Works on plain normalised views (use these, not high-pass ones, when you have both). Output [B][G*G];
/// parallel over views; allocates nothing on the heap.
public func classicalSaliency(
    _ images: UnsafePointer<Float>, batch: Int, height: Int, width: Int, channels: Int,
    grid: Int, output: UnsafeMutablePointer<Float>
) {
    precondition(batch >= 0 && height > 0 && width > 0 && channels > 0 && grid > 0)
    let plane = height * width * channels, cells = grid * grid, pixels = height * width
    parallelFor(batch) { b0, b1, _ in
        withUnsafeTemporaryAllocation(of: Double.self, capacity: channels) { meanBuf in
            let mean = meanBuf.baseAddress!
            for b in b0..<b1 {
                let img = images + b * plane, out = output + b * cells
                for c in 0..<channels { mean[c] = 0 }
                for p in 0..<pixels { for c in 0..<channels { mean[c] += Double(img[p * channels + c]) } }
                for c in 0..<channels { mean[c] /= Double(pixels) }
                for gi in 0..<grid {
                    let rows = gridBand(gi, size: height, grid: grid)
                    for gj in 0..<grid {
                        let cols = gridBand(gj, size: width, grid: grid)
                        var acc: Double = 0
                        for y in rows {
                            for x in cols {
                                let px = img + (y * width + x) * channels
                                var d2: Double = 0
                                for c in 0..<channels { let d = Double(px[c]) - mean[c]; d2 += d * d }
                                acc += d2.squareRoot()
                            }
                        }
                        out[gi * grid + gj] = Float(acc / Double(rows.count * cols.count))
                    }
                }
            }
        }
    }
}

/// The foreground test of PAPER.md on one saliency map of `cells` values: cell i is foreground when
/// map[i] >= mean - fgStd * std (population std, as the official code's `np.std`), evaluated in place, so flags
/// sit at the cells' TRUE positions (the official code tests a row-sorted copy and misplaces them).
/// Writes flags[i] = 1 (foreground) or 0 and returns the number of foreground cells; FG_ratio = count / cells.
/// A constant map is all foreground.
@discardableResult
public func foregroundCells(
    _ map: UnsafePointer<Float>, cells: Int, fgStd: Float,
    flags: UnsafeMutablePointer<UInt8>
) -> Int {
    precondition(cells > 0)
    var sum: Double = 0, lo = map[0], hi = map[0]
    for i in 0..<cells { sum += Double(map[i]); lo = min(lo, map[i]); hi = max(hi, map[i]) }
    if lo == hi {
        for i in 0..<cells { flags[i] = 1 }
        return cells
    }
    let mean = sum / Double(cells)
    var ss: Double = 0
    for i in 0..<cells { let d = Double(map[i]) - mean; ss += d * d }
    let std = (ss / Double(cells)).squareRoot()
    let threshold = mean - Double(fgStd) * std
    var count = 0
    for i in 0..<cells {
        let fg = Double(map[i]) >= threshold
        flags[i] = fg ? 1 : 0
        count += fg ? 1 : 0
    }
    return count
}
