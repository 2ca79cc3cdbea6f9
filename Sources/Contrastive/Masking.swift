// Saliency-constrained masking of query views and salient masking of hard negatives (PAPER.md).
//
// Letters: B views, H x W pixels, C channels, NHWC (element (b, y, x, c) at ((b*H + y)*W + x)*C + c); G the grid
// side (`ResNetConfig.finalMapSize`), cells = G*G, row-major (cell (i, j) at i*G + j) with pixel bands `gridBand`.
//
// API
//   MaskConfig                  ratios, foreground rule, noise sigmas, fill-kind probabilities (defaults = PAPER.md)
//   MaskFill  .hp .blur .mean   how masked cells are filled
//   MaskMode  .saliency .random .none
//   MaskRole  .query .hardNegative
//   MaskKind  .focal .spatial .channel   (the hp fill's per-sample choice; blur / mean are always .spatial)
//   MaskRecord                  per-sample statistics written by applyMasks
//   sampleQueryCells(fgFlags:cells:mode:config:rng:mask:) -> Int           query cell rule
//   sampleHardNegativeCells(fgFlags:cells:mode:config:rng:mask:) -> Int    hard-negative cell rule
//   applyMasks(views:blurred:saliency:batch:height:width:channels:grid:role:mode:fill:config:seed:step:
//              cellMasks:records:)                                          masks a batch in place
//   foregroundCells, saliencyFromFeatures, classicalSaliency, gridBand      in Saliency.swift
//
// Randomness: every sample b draws from its own SplitMix64(derive(seed, step, b, roleTag)), so a batch's masks do
// not depend on the thread count; query and hard negative use different tags. Order of draws per sample:
// [hp only: kind u1, (u2)], r, then cells (or the focal window). Nothing is allocated on the heap: the per-thread
// scratch (a few G*G bytes and C floats) lives on the stack.
//
// Deliberate differences from the official code (PAPER.md): foreground flags at their true positions, hard
// negatives per sample by default (each with its own cells and noise; TrainingStep also offers the official
// sharing), fresh Gaussian noise for every masked value (no noise
// tile shared by cells or samples). Rounding is Swift's `.rounded()` (half away from zero) where the official
// code uses Python's `round` (half to even); the query cap is min(r*FG_ratio, fgCap) where the official code has
// a 0.55 / 0.56 step; the cap applies to every query, and to hp hard negatives (the official hp code caps both;
// its blur and mean code caps neither).
import Foundation
import Kernels

/// Parameters of the masking rules. Defaults follow PAPER.md (the official code's values).
public struct MaskConfig: Sendable, Equatable {
    /// Query: the ratio r ~ U(posRatio); int(r*G^2) cells are masked.
    public var posRatio: ClosedRange<Float> = 0.05...0.25
    /// Hard negative: the ratio r ~ U(negRatio); round(r*FG_ratio*G^2) foreground cells are masked.
    public var negRatio: ClosedRange<Float> = 0.4...0.7
    /// A cell is foreground if its saliency >= mean - fgStd * std of its map.
    public var fgStd: Float = 0.6
    /// The foreground share r*FG_ratio is capped at fgCap: for queries, and for hp-fill hard negatives.
    public var fgCap: Float = 0.55
    /// Standard deviation of the hp fill's noise in query views.
    public var querySigma: Float = 0.18
    /// Standard deviation of the hp fill's noise in hard negatives.
    public var negSigma: Float = 0.14
    /// hp fill: probability of a focal mask for a sample.
    public var focalProb: Float = 0.2
    /// hp fill: probability of a spatial grid when not focal (else a channel grid).
    public var spatialProb: Float = 0.3
    /// Focal query mask: a random window of this fraction of each side is kept, noise outside.
    public var queryFocalKeep: Float = 200.0 / 224
    /// Focal hard negative: noise inside a random window of this fraction of each side.
    public var negFocalSide: Float = 130.0 / 224
    /// Mode .random with no saliency given: the FG_ratio assumed for hard-negative counts. The default is
    /// P(z >= -0.6) for a Gaussian z, the expected foreground share of the mean - 0.6 std rule.
    public var randomFGRatio: Float = 0.7257
    public init() {}
}

/// How masked cells are filled.
public enum MaskFill: String, Codable, CaseIterable, Sendable {
    /// Gaussian noise (views already high-pass filtered by the caller); focal / spatial / channel masks.
    case hp
    /// The pixels of a strongly blurred copy of the view (`strongBlur`).
    case blur
    /// The view's per-image, per-channel mean.
    case mean
}

/// Where masked cells go.
public enum MaskMode: String, Codable, CaseIterable, Sendable {
    /// Foreground / background proportions from the saliency map (PAPER.md).
    case saliency
    /// The same counts, cells drawn uniformly at random, saliency ignored (an ablation).
    case random
    /// No masking.
    case none
}

/// Which rule and noise level a view gets.
public enum MaskRole: Sendable {
    /// The masked query view: saliency-constrained cells, sigma querySigma.
    case query
    /// A hard negative (copy of the key view): salient cells only, sigma negSigma.
    case hardNegative
}

/// The hp fill's per-sample mask kind (blur and mean fills always use `.spatial`).
public enum MaskKind: UInt8, Sendable {
    /// A window of pixels (query: noise outside it; hard negative: noise inside it); cells ignored.
    case focal = 0
    /// The same cells in every channel.
    case spatial = 1
    /// Cells drawn independently per channel, with the same counts in each.
    case channel = 2
}

/// What `applyMasks` did to one sample.
public struct MaskRecord: Sendable, Equatable {
    /// Cells in the spatial union: masked in at least one channel; for a focal mask, cells at least half covered.
    public var maskedCells: Int
    /// Foreground cells of the sample's saliency map (or the assumed count in .random mode without saliency).
    public var fgCells: Int
    /// Focal, spatial or channel.
    public var kind: MaskKind
    /// The ratio r drawn for the sample (the focal mask draws it too, unused).
    public var ratio: Float
    /// Fraction of the view's H*W*C values that were replaced.
    public var maskedFraction: Float
    /// Bit i set when cell i is in the spatial union (cells beyond 64 are not represented; G <= 8 fits).
    public var cellBits: UInt64
    public init(
        maskedCells: Int = 0, fgCells: Int = 0, kind: MaskKind = .spatial, ratio: Float = 0,
        maskedFraction: Float = 0, cellBits: UInt64 = 0
    ) {
        self.maskedCells = maskedCells; self.fgCells = fgCells; self.kind = kind
        self.ratio = ratio; self.maskedFraction = maskedFraction; self.cellBits = cellBits
    }
}

// MARK: - Cell rules

/// Marks `k` cells chosen uniformly without replacement from the pool {i : flags[i] == value} (all cells when
/// `flags` is nil) of `poolSize` cells, by selection sampling (Knuth's Algorithm S: no scratch). Only sets ones.
@inline(__always)
func selectCells(
    flags: UnsafePointer<UInt8>?, value: UInt8, poolSize: Int, count k: Int, cells: Int,
    rng: inout SplitMix64, mask: UnsafeMutablePointer<UInt8>
) {
    var needed = min(k, poolSize), remaining = poolSize
    var i = 0
    while needed > 0 && i < cells {
        if flags == nil || flags![i] == value {
            if rng.int(below: remaining) < needed { mask[i] = 1; needed -= 1 }
            remaining -= 1
        }
        i += 1
    }
}

/// Query counts for ratio r: (foreground, background) cells. total = int(r*cells); fg = round(min(r*FG_ratio,
/// fgCap) * cells) (at most total); bg = the rest; a pool that runs short hands its remainder to the other.
@inline(__always)
func queryCellCounts(r: Float, fgCount: Int, cells: Int, fgCap: Float) -> (fg: Int, bg: Int) {
    let total = min(cells, Int(r * Float(cells)))
    let fgRatio = Float(fgCount) / Float(cells)
    var nFG = min(total, Int((min(r * fgRatio, fgCap) * Float(cells)).rounded()))
    var nBG = total - nFG
    let bgCount = cells - fgCount
    if nBG > bgCount { nFG = min(fgCount, nFG + nBG - bgCount); nBG = bgCount }
    if nFG > fgCount { nBG = min(bgCount, nBG + nFG - fgCount); nFG = fgCount }
    return (nFG, nBG)
}

/// Hard-negative count for ratio r: round(min(r * FG_ratio, cap) * cells), at most fgCount. The hp fill
/// caps the salient share at fgCap as the official hp code does (r * FG_ratio reaches it there); the blur
/// and mean fills have no cap (cap = infinity), as in the official code.
@inline(__always)
func hardNegativeCellCount(r: Float, fgCount: Int, cells: Int, cap: Float = .infinity) -> Int {
    min(fgCount, Int((min(r * (Float(fgCount) / Float(cells)), cap) * Float(cells)).rounded()))
}

/// Query cells for a drawn r (zeroes `mask` first). `fgFlags` nil is allowed in .random mode only.
@inline(__always)
func selectQueryCells(
    fgFlags: UnsafePointer<UInt8>?, fgCount: Int, cells: Int, mode: MaskMode, r: Float,
    config: MaskConfig, rng: inout SplitMix64, mask: UnsafeMutablePointer<UInt8>
) -> Int {
    for i in 0..<cells { mask[i] = 0 }
    switch mode {
    case .none:
        return 0
    case .random:
        let total = min(cells, Int(r * Float(cells)))
        selectCells(flags: nil, value: 1, poolSize: cells, count: total, cells: cells, rng: &rng, mask: mask)
        return total
    case .saliency:
        let (nFG, nBG) = queryCellCounts(r: r, fgCount: fgCount, cells: cells, fgCap: config.fgCap)
        selectCells(flags: fgFlags!, value: 1, poolSize: fgCount, count: nFG, cells: cells, rng: &rng, mask: mask)
        selectCells(
            flags: fgFlags!, value: 0, poolSize: cells - fgCount, count: nBG, cells: cells, rng: &rng,
            mask: mask)
        return nFG + nBG
    }
}

/// Hard-negative cells for a drawn r (zeroes `mask` first).
@inline(__always)
func selectHardNegativeCells(
    fgFlags: UnsafePointer<UInt8>?, fgCount: Int, cells: Int, mode: MaskMode, r: Float,
    cap: Float = .infinity, rng: inout SplitMix64, mask: UnsafeMutablePointer<UInt8>
) -> Int {
    for i in 0..<cells { mask[i] = 0 }
    let n = hardNegativeCellCount(r: r, fgCount: fgCount, cells: cells, cap: cap)
    switch mode {
    case .none:
        return 0
    case .random:
        selectCells(flags: nil, value: 1, poolSize: cells, count: n, cells: cells, rng: &rng, mask: mask)
    case .saliency:
        selectCells(flags: fgFlags!, value: 1, poolSize: fgCount, count: n, cells: cells, rng: &rng, mask: mask)
    }
    return n
}

/// Query ("pos") cells of one view, PAPER.md. Draws r = rng.uniform(posRatio) first; FG_ratio = foreground
/// cells / cells; masks round(min(r*FG_ratio, fgCap) * cells) foreground cells (at most int(r*cells)) and the rest
/// of int(r*cells) background cells, uniformly within each pool; when a pool runs short the other supplies the
/// remainder. Mode .random: int(r*cells) cells uniformly at random, flags ignored. Mode .none: nothing (no draw).
/// Writes 0/1 into `mask` [cells] and returns the number of masked cells.
@discardableResult
public func sampleQueryCells(
    fgFlags: UnsafePointer<UInt8>, cells: Int, mode: MaskMode, config: MaskConfig,
    rng: inout SplitMix64, mask: UnsafeMutablePointer<UInt8>
) -> Int {
    precondition(cells > 0)
    if mode == .none { for i in 0..<cells { mask[i] = 0 }; return 0 }
    let r = rng.uniform(config.posRatio.lowerBound, config.posRatio.upperBound)
    var fgCount = 0
    for i in 0..<cells where fgFlags[i] != 0 { fgCount += 1 }
    return selectQueryCells(
        fgFlags: fgFlags, fgCount: fgCount, cells: cells, mode: mode, r: r, config: config,
        rng: &rng, mask: mask)
}

/// Hard-negative ("neg") cells of one view, PAPER.md. Draws r = rng.uniform(negRatio) first; masks
/// round(r * FG_ratio * cells) foreground cells only, uniformly. Mode .random: the same count (FG_ratio still from
/// `fgFlags`) anywhere. Mode .none: nothing. Writes 0/1 into `mask` [cells] and returns the count.
@discardableResult
public func sampleHardNegativeCells(
    fgFlags: UnsafePointer<UInt8>, cells: Int, mode: MaskMode, config: MaskConfig,
    rng: inout SplitMix64, mask: UnsafeMutablePointer<UInt8>
) -> Int {
    precondition(cells > 0)
    if mode == .none { for i in 0..<cells { mask[i] = 0 }; return 0 }
    let r = rng.uniform(config.negRatio.lowerBound, config.negRatio.upperBound)
    var fgCount = 0
    for i in 0..<cells where fgFlags[i] != 0 { fgCount += 1 }
    return selectHardNegativeCells(
        fgFlags: fgFlags, fgCount: fgCount, cells: cells, mode: mode, r: r,
        rng: &rng, mask: mask)
}

// MARK: - Fills

/// Two independent standard normal draws (Marsaglia's polar method on two 32-bit halves of one draw).
@inline(__always)
func normalPair(_ rng: inout SplitMix64) -> (Float, Float) {
    while true {
        let x = rng.next()
        let u = Float(Int32(truncatingIfNeeded: x >> 32)) * (1.0 / 2_147_483_648.0)
        let v = Float(Int32(truncatingIfNeeded: x)) * (1.0 / 2_147_483_648.0)
        let s = u * u + v * v
        if s > 0 && s < 1 {
            let f = (-2 * Foundation.log(s) / s).squareRoot()
            return (u * f, v * f)
        }
    }
}

/// Overwrites `n` values p[0], p[stride], ... with fresh N(0, sigma^2) draws.
@inline(__always)
func fillNoise(_ p: UnsafeMutablePointer<Float>, count n: Int, stride: Int, sigma: Float, rng: inout SplitMix64) {
    var i = 0
    while i + 1 < n {
        let (a, b) = normalPair(&rng)
        p[i * stride] = sigma * a
        p[(i + 1) * stride] = sigma * b
        i += 2
    }
    if i < n { p[i * stride] = sigma * normalPair(&rng).0 }
}

/// Fills the pixel rectangle rows x cols of one view, in every channel (`channel` < 0) or one channel.
/// Returns the number of values replaced.
@inline(__always)
func fillRect(
    _ img: UnsafeMutablePointer<Float>, blurred: UnsafePointer<Float>?, means: UnsafePointer<Float>,
    rows: Range<Int>, cols: Range<Int>, width: Int, channels: Int, channel: Int, fill: MaskFill,
    sigma: Float, rng: inout SplitMix64
) -> Int {
    if rows.isEmpty || cols.isEmpty { return 0 }
    let perRow = channel < 0 ? cols.count * channels : cols.count
    let stride = channel < 0 ? 1 : channels
    let c0 = channel < 0 ? 0 : channel
    for y in rows {
        let off = (y * width + cols.lowerBound) * channels + c0
        let p = img + off
        switch fill {
        case .hp:
            fillNoise(p, count: perRow, stride: stride, sigma: sigma, rng: &rng)
        case .blur:
            let q = blurred! + off
            for i in 0..<perRow { p[i * stride] = q[i * stride] }
        case .mean:
            if channel < 0 {
                for x in 0..<cols.count { for c in 0..<channels { p[x * channels + c] = means[c] } }
            } else {
                for x in 0..<cols.count { p[x * channels] = means[channel] }
            }
        }
    }
    return rows.count * perRow
}

@inline(__always)
func overlap(_ a: Range<Int>, _ b: Range<Int>) -> Int {
    max(0, min(a.upperBound, b.upperBound) - max(a.lowerBound, b.lowerBound))
}

// MARK: - Batch masking

/// Masks a batch of views in place, each sample with its own draws (PAPER.md, with our fixes):
///
/// - `views` [B][H][W][C], normalised (and, for `.hp`, already high-pass filtered by the caller).
/// - `blurred` [B][H][W][C]: a strongly blurred copy of the same views (`strongBlur`), required for `.blur`.
/// - `saliency` [B][G*G]: required for `.saliency`; in `.random` mode it only sets the hard-negative counts (nil:
///   FG_ratio = `config.randomFGRatio`). Foreground cells by `foregroundCells` (mean - fgStd * std).
/// - `role` picks the cell rule (`sampleQueryCells` / `sampleHardNegativeCells`) and the noise sigma
///   (querySigma / negSigma); `mode` .none leaves the views untouched (records and cell masks are zeroed).
/// - `fill`: `.hp` — per sample, with p focalProb a focal mask (query: keep a random window of queryFocalKeep of
///   each side, noise outside; hard negative: noise inside a random window of negFocalSide of each side), else with
///   p spatialProb a spatial grid (same cells in every channel), else a channel grid (cells drawn independently per
///   channel with the sample's one r, so the same counts in each channel); every masked value gets fresh N(0,
///   sigma^2) noise. `.blur` — masked cells take `blurred`'s pixels; `.mean` — the view's per-channel mean
///   (taken before masking). Blur and mean always use a spatial grid.
/// - Randomness: sample b uses SplitMix64(derive(seed, step, firstIndex + b, roleTag)): identical for any
///   thread count, and for a batch split into shards (`firstIndex`: the shard's first sample).
/// - `cellMasks` [B][G*G] (optional) receives each sample's spatial union of masked cells (0/1); `records` [B]
///   (optional) receives a `MaskRecord` per sample.
/// Parallel over samples (`parallelFor`); no heap allocation.
public func applyMasks(
    views: UnsafeMutablePointer<Float>, blurred: UnsafePointer<Float>?,
    saliency: UnsafePointer<Float>?, batch: Int, height: Int, width: Int, channels: Int,
    grid: Int, role: MaskRole, mode: MaskMode, fill: MaskFill, config: MaskConfig,
    seed: UInt64, step: Int, cellMasks: UnsafeMutablePointer<UInt8>?,
    records: UnsafeMutablePointer<MaskRecord>?, firstIndex: Int = 0
) {
    precondition(batch >= 0 && height > 0 && width > 0 && channels > 0 && grid > 0)
    let cells = grid * grid, plane = height * width * channels
    if mode == .none {
        if let cm = cellMasks { for i in 0..<(batch * cells) { cm[i] = 0 } }
        if let rec = records { for b in 0..<batch { rec[b] = MaskRecord() } }
        return
    }
    precondition(mode != .saliency || saliency != nil, "applyMasks: .saliency mode needs saliency maps")
    precondition(fill != .blur || blurred != nil, "applyMasks: .blur fill needs the blurred views")
    let tag = (role == .query ? RandomStream.queryMask : .hardNegativeMask).rawValue
    let ratio = role == .query ? config.posRatio : config.negRatio
    let sigma = role == .query ? config.querySigma : config.negSigma

    parallelFor(batch) { b0, b1, _ in
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 3 * cells) { bytes in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: channels) { meanBuf in
                let flags = bytes.baseAddress!, mask = flags + cells, union = flags + 2 * cells
                let means = meanBuf.baseAddress!
                for b in b0..<b1 {
                    var rng = SplitMix64(
                        seed: SplitMix64.derive(
                            seed, UInt64(truncatingIfNeeded: step),
                            UInt64(firstIndex + b), tag))
                    let img = views + b * plane
                    let blur: UnsafePointer<Float>? = blurred.map { $0 + b * plane }

                    // Foreground of this sample.
                    var fgCount: Int
                    var fgFlags: UnsafePointer<UInt8>? = nil
                    if let sal = saliency {
                        fgCount = foregroundCells(sal + b * cells, cells: cells, fgStd: config.fgStd, flags: flags)
                        fgFlags = UnsafePointer(flags)
                    } else {
                        fgCount = min(cells, Int((config.randomFGRatio * Float(cells)).rounded()))
                    }

                    // Kind, then r.
                    var kind = MaskKind.spatial
                    if fill == .hp {
                        if rng.uniform() < config.focalProb {
                            kind = .focal
                        } else if rng.uniform() >= config.spatialProb {
                            kind = .channel
                        }
                    }
                    let r = rng.uniform(ratio.lowerBound, ratio.upperBound)

                    if fill == .mean {
                        for c in 0..<channels { means[c] = 0 }
                        for p in 0..<(height * width) { for c in 0..<channels { means[c] += img[p * channels + c] } }
                        for c in 0..<channels { means[c] /= Float(height * width) }
                    }

                    for i in 0..<cells { union[i] = 0 }
                    var replaced = 0
                    switch kind {
                    case .focal:
                        let keep = role == .query
                        let f = keep ? config.queryFocalKeep : config.negFocalSide
                        let wh = min(height, max(1, Int((f * Float(height)).rounded())))
                        let ww = min(width, max(1, Int((f * Float(width)).rounded())))
                        let top = rng.int(below: height - wh + 1), left = rng.int(below: width - ww + 1)
                        let rows = top..<(top + wh), cols = left..<(left + ww)
                        if keep {
                            replaced += fillRect(
                                img, blurred: blur, means: means, rows: 0..<top, cols: 0..<width,
                                width: width, channels: channels, channel: -1, fill: .hp,
                                sigma: sigma, rng: &rng)
                            replaced += fillRect(
                                img, blurred: blur, means: means, rows: rows, cols: 0..<left,
                                width: width, channels: channels, channel: -1, fill: .hp,
                                sigma: sigma, rng: &rng)
                            replaced += fillRect(
                                img, blurred: blur, means: means, rows: rows,
                                cols: (left + ww)..<width, width: width, channels: channels,
                                channel: -1, fill: .hp, sigma: sigma, rng: &rng)
                            replaced += fillRect(
                                img, blurred: blur, means: means, rows: (top + wh)..<height,
                                cols: 0..<width, width: width, channels: channels, channel: -1,
                                fill: .hp, sigma: sigma, rng: &rng)
                        } else {
                            replaced += fillRect(
                                img, blurred: blur, means: means, rows: rows, cols: cols,
                                width: width, channels: channels, channel: -1, fill: .hp,
                                sigma: sigma, rng: &rng)
                        }
                        for gi in 0..<grid {
                            let cr = gridBand(gi, size: height, grid: grid)
                            for gj in 0..<grid {
                                let cc = gridBand(gj, size: width, grid: grid)
                                let area = cr.count * cc.count
                                let inside = overlap(cr, rows) * overlap(cc, cols)
                                let covered = keep ? area - inside : inside
                                union[gi * grid + gj] = 2 * covered >= area ? 1 : 0
                            }
                        }
                    case .spatial, .channel:
                        let passes = kind == .spatial ? 1 : channels
                        for pass in 0..<passes {
                            if role == .query {
                                _ = selectQueryCells(
                                    fgFlags: fgFlags, fgCount: fgCount, cells: cells, mode: mode,
                                    r: r, config: config, rng: &rng, mask: mask)
                            } else {
                                _ = selectHardNegativeCells(
                                    fgFlags: fgFlags, fgCount: fgCount, cells: cells,
                                    mode: mode, r: r, cap: fill == .hp ? config.fgCap : .infinity,
                                    rng: &rng, mask: mask)
                            }
                            let channel = kind == .spatial ? -1 : pass
                            for gi in 0..<grid {
                                let cr = gridBand(gi, size: height, grid: grid)
                                for gj in 0..<grid where mask[gi * grid + gj] != 0 {
                                    union[gi * grid + gj] = 1
                                    replaced += fillRect(
                                        img, blurred: blur, means: means, rows: cr,
                                        cols: gridBand(gj, size: width, grid: grid), width: width,
                                        channels: channels, channel: channel, fill: fill,
                                        sigma: sigma, rng: &rng)
                                }
                            }
                        }
                    }

                    var unionCount = 0
                    var bits: UInt64 = 0
                    for i in 0..<cells where union[i] != 0 {
                        unionCount += 1
                        if i < 64 { bits |= 1 << UInt64(i) }
                    }
                    if let cm = cellMasks { for i in 0..<cells { cm[b * cells + i] = union[i] } }
                    records?[b] = MaskRecord(
                        maskedCells: unionCount, fgCells: fgCount, kind: kind, ratio: r,
                        maskedFraction: Float(replaced) / Float(plane), cellBits: bits)
                }
            }
        }
    }
}
