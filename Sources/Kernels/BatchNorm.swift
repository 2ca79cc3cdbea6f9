// Batch normalisation over NHWC feature maps, optionally fused with a following ReLU.
//
// Letters: P = N*H*W pixels, C channels; a feature map is a [P][C] matrix and every statistic is
// per channel (a column), so all work is vectorised along C (partial vectors for the tail) and split
// over threads by pixel ranges.
//
// Statistics: each thread sums its pixels' (x - shift) and (x - shift)^2, shift = the first pixel's value
// of the channel (so a mean far from zero costs no precision), in Float over blocks of `bnBlock` pixels
// that are folded into Double per-thread sums; the per-thread sums are reduced once, in Double.
// Backward uses the same scheme for sum(dy) and sum(dy * (x - mean)), then one pass
//   dx = k1*dy + k2*(x - mean) + k3,  k1 = gamma*invstd, k2 = -gamma*invstd^3*sum(dy*(x-mean))/P,
//   k3 = -gamma*invstd*sum(dy)/P
// (dy masked by y > 0 first when the ReLU is fused).

/// P pixels x C channels.
public struct BatchNormShape: Equatable, Sendable {
    public var pixels: Int
    public var channels: Int
    public init(pixels: Int, channels: Int) {
        self.pixels = pixels; self.channels = channels
    }
    public var count: Int { pixels * channels }
}

/// Pixels summed in Float before folding into the Double per-thread sums.
let bnBlock = 256

/// Channels rounded up to whole vectors.
@inline(__always) public func bnPadded(_ c: Int) -> Int { ceilDiv(c, fvecWidth) * fvecWidth }

/// shift + (x - mean) * scale from xm = x - mean: the one expression, and rounding, of every batch-norm
/// output, whether written (bnApply, the eval forward) or computed by its consumer (ConvInputAffine,
/// BNAddend, the backward's ReLU mask), so that all of them agree bit for bit.
@inline(__always) func bnAffine<V: SIMD>(centred xm: V, scale: V, shift: V) -> V where V.Scalar == Float {
    var v = shift
    v.addProduct(xm, scale)
    return v
}
/// Most batch-norm groups (independent sub-batches, the key encoder's split batch norm) one call of
/// the training forward takes; more are run a call per group.
public let bnMaxGroups = 16
@inline(__always) func bnPerThreadBytes(_ c: Int) -> Int {
    align64(2 * bnPadded(c) * 4) + align64(2 * c * 8 * bnMaxGroups)
}
@inline(__always) func bnSharedBytes(_ c: Int) -> Int { 3 * align64(bnPadded(c) * 4 * bnMaxGroups) }

/// Bytes of scratch the training forward and the backward need with `threads` threads
/// (size it with at least `Threads.count` at call time).
public func batchNormScratchBytes(_ sh: BatchNormShape, threads: Int) -> Int {
    bnSharedBytes(sh.channels) + max(threads, 1) * bnPerThreadBytes(sh.channels) + 64
}

/// Threads the statistic passes use: at most Threads.count, and a few dozen pixels each at least.
@inline(__always) func bnThreads(_ p: Int) -> Int { max(1, min(Threads.count, p / 32)) }

/// Shared arrays of the scratch (three arrays of bnMaxGroups x padded C floats), then the per-thread area.
@inline(__always)
func bnScratch(_ c: Int, _ scratch: UnsafeMutableRawPointer)
    -> (
        a: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>, c: UnsafeMutablePointer<Float>,
        perThread: UnsafeMutableRawPointer
    )
{
    let s = align64(bnPadded(c) * 4 * bnMaxGroups)
    return (
        scratch.bindMemory(to: Float.self, capacity: bnPadded(c) * bnMaxGroups),
        (scratch + s).bindMemory(to: Float.self, capacity: bnPadded(c) * bnMaxGroups),
        (scratch + 2 * s).bindMemory(to: Float.self, capacity: bnPadded(c) * bnMaxGroups),
        scratch + 3 * s
    )
}

/// The two per-channel terms (u, v) whose sums of u and u*v a statistic pass needs, at pixel row p
/// and channels c..<c+n. A concrete type per pass (not a closure) so that the terms are inlined
/// into the parallel loop: a closure captured by the parallel body stayed an indirect call per vector.
protocol BNColumnTerms {
    /// `g`: the group pixel row p belongs to.
    func terms<V: FloatVector>(_ p: Int, _ c: Int, _ n: Int, _ g: Int) -> (V, V)
}

/// Forward statistics: u = v = x - shift of the pixel's group.
struct BNShiftedInput: BNColumnTerms {
    /// shift: one row of padded C floats per group.
    let x: UnsafePointer<Float>, shift: UnsafePointer<Float>, C: Int, cp: Int
    @inline(__always) func terms<V: FloatVector>(_ p: Int, _ c: Int, _ n: Int, _ g: Int) -> (V, V) {
        let u: V = gloadN(x + p * C + c, n) - gload(shift + g * cp + c)
        return (u, u)
    }
}

/// Backward statistics: u = dy (masked by y > 0 with a fused ReLU), v = x - mean. Without y (`maskScale`
/// given), y's sign comes from beta + (x - mean) * maskScale, bnApply's arithmetic in its order.
struct BNGradTerms: BNColumnTerms {
    let dy: UnsafePointer<Float>, y: UnsafePointer<Float>?, x: UnsafePointer<Float>, mean: UnsafePointer<Float>
    let C: Int, relu: Bool
    var maskScale: UnsafePointer<Float>? = nil, beta: UnsafePointer<Float>? = nil
    @inline(__always) func terms<V: FloatVector>(_ p: Int, _ c: Int, _ n: Int, _ group: Int) -> (V, V) {
        var g: V = gloadN(dy + p * C + c, n)
        let xm: V = gloadN(x + p * C + c, n) - gloadN(mean + c, n)
        if relu {
            if let y {
                g = g.zeroed(whereNotPositive: gloadN(y + p * C + c, n))
            } else if let maskScale, let beta {
                let v = bnAffine(centred: xm, scale: gloadN(maskScale + c, n), shift: gloadN(beta + c, n))
                g = g.zeroed(whereNotPositive: v)
            }
        }
        return (g, xm)
    }
}

/// Per-thread pixel-range sums of u and u*v over columns, where (u, v) = `f.terms(pixel row, channel offset,
/// lanes, group)`, for each of `groups` equal groups of the P pixels: thread t sums range t of every group,
/// so one parallel region serves all groups and each group's sums are those of a call of its own.
/// Leaves the Double sums of thread t, group g at perThread + t*bnPerThreadBytes + align64(2*Cp*4) + g*2*C
/// doubles: [sum u][sum u*v].
@inline(__always)
func bnColumnSums<T: BNColumnTerms>(
    pixels P: Int, channels C: Int, threads: Int, perThread: UnsafeMutableRawPointer,
    wide: Bool, groups: Int = 1, _ f: T
) {
    let cp = bnPadded(C), stride = bnPerThreadBytes(C), gp = P / groups
    parallelFor(threads) { tlo, thi, _ in
        for th in tlo..<thi {
            let base = perThread + th * stride
            let s1 = base.bindMemory(to: Float.self, capacity: 2 * cp), s2 = s1 + cp
            let dAll = (base + align64(2 * cp * 4)).bindMemory(to: Double.self, capacity: 2 * C * groups)
            for g in 0..<groups {
                let d = dAll + g * 2 * C
                d.initialize(repeating: 0, count: 2 * C)
                let pBegin = g * gp + gp * th / threads, pEnd = g * gp + gp * (th + 1) / threads
                var p = pBegin
                while p < pEnd {
                    let pe = min(p + bnBlock, pEnd)
                    s1.initialize(repeating: 0, count: 2 * cp)
                    for q in p..<pe {
                        var c = 0
                        while wide && c + RVec.scalarCount <= C {
                            bnSumChunk(f, q, c, RVec.scalarCount, g, s1, s2, RVec.self)
                            c += RVec.scalarCount
                        }
                        while c < C { bnSumChunk(f, q, c, min(fvecWidth, C - c), g, s1, s2, FVec.self); c += fvecWidth }
                    }
                    for c in 0..<C { d[c] += Double(s1[c]); d[C + c] += Double(s2[c]) }
                    p = pe
                }
            }
        }
    }
}

/// s1[c..] += u, s2[c..] += u * v for one vector of channels of pixel row q (bnColumnSums).
@inline(__always)
func bnSumChunk<T: BNColumnTerms, V: FloatVector>(
    _ f: T, _ q: Int, _ c: Int, _ n: Int, _ g: Int,
    _ s1: UnsafeMutablePointer<Float>, _ s2: UnsafeMutablePointer<Float>, _: V.Type
) {
    let (u, v): (V, V) = f.terms(q, c, n, g)
    gstore(gload(s1 + c) + u, s1 + c)
    var a: V = gload(s2 + c)
    a.addProduct(u, v)
    gstore(a, s2 + c)
}

/// Reduces the per-thread Double sums of channel c (of group g).
@inline(__always)
func bnReduced(_ c: Int, channels C: Int, threads: Int, perThread: UnsafeMutableRawPointer, group g: Int = 0) -> (
    Double, Double
) {
    var a = 0.0, b = 0.0
    let off = align64(2 * bnPadded(C) * 4) + g * 2 * C * 8
    for th in 0..<threads {
        let d = (perThread + th * bnPerThreadBytes(C) + off).assumingMemoryBound(to: Double.self)
        a += d[c]; b += d[C + c]
    }
    return (a, b)
}

/// A convolution's per-tile sums of its output (ConvOutputSums, written by its epilogue) for the
/// batch norm of that output: `tiles` tiles (the groups' tiles in order, whole tiles per group),
/// Σ d at sums[t * 2 * stride + c] and Σ d² at sums[t * 2 * stride + stride + c], d = x - shift[c].
/// Statistics from them equal those from x up to rounding (the shift is this one, not the group's
/// first pixel, and the sums are rounded per tile, then in double).
public struct BNTileSums {
    public var sums: UnsafePointer<Float>, tiles: Int, stride: Int, shift: UnsafePointer<Float>
    public init(sums: UnsafePointer<Float>, tiles: Int, stride: Int, shift: UnsafePointer<Float>) {
        self.sums = sums; self.tiles = tiles; self.stride = stride; self.shift = shift
    }
}

/// The groups' column sums in double from per-tile sums, where bnReduced(threads: 1) reads them
/// (the first thread's area of `perThread`): float over runs of 16 tiles (256 pixels, as bnColumnSums
/// rounds per bnBlock pixels), then double. Channels split across threads, each channel summed over
/// its group's tiles in order: the same bits for any thread count.
func bnReduceTileSums(_ t: BNTileSums, channels C: Int, groups: Int, into perThread: UnsafeMutableRawPointer) {
    let d = (perThread + align64(2 * bnPadded(C) * 4)).bindMemory(to: Double.self, capacity: 2 * C * groups)
    let tpg = t.tiles / groups, chunk = SIMD16<Float>.scalarCount, run = bnBlock / 16
    parallelFor(ceilDiv(C, chunk)) { lo, hi, _ in
        for ch in lo..<hi {
            let c0 = ch * chunk, n = min(chunk, C - c0)
            for g in 0..<groups {
                let d1 = d + g * 2 * C + c0, d2 = d1 + C
                for c in 0..<n { d1[c] = 0; d2[c] = 0 }
                var tile = g * tpg
                while tile < (g + 1) * tpg {
                    let end = min(tile + run, (g + 1) * tpg)
                    var a1 = SIMD16<Float>(), a2 = SIMD16<Float>()
                    for i in tile..<end {
                        let row = t.sums + i * 2 * t.stride + c0
                        a1 = a1 + (gloadN(row, n) as SIMD16<Float>)
                        a2 = a2 + (gloadN(row + t.stride, n) as SIMD16<Float>)
                    }
                    for c in 0..<n { d1[c] += Double(a1[c]); d2[c] += Double(a2[c]) }
                    tile = end
                }
            }
        }
    }
}

/// Another batch norm's input and its rows, whose output bnApply adds as the residual (never written).
public struct BNAddend {
    public var x: UnsafePointer<Float>, mean: UnsafePointer<Float>, scale: UnsafePointer<Float>,
        shift: UnsafePointer<Float>
    public init(
        x: UnsafePointer<Float>, mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>
    ) {
        self.x = x; self.mean = mean; self.scale = scale; self.shift = shift
    }
}

/// y[p][c] = (x[p][c] - mean[c]) * scale[c] + shift[c] (+ residual[p][c]), optionally ReLU'd;
/// parallel over pixels. `residual` may alias y. With `groups`, the P pixels are that many equal groups,
/// each with its own mean and scale (groupStride floats apart). With `addend`, the residual is the other
/// batch norm's output, computed here with this arithmetic (the bits of writing it first).
@inline(__always)
func bnApply(
    pixels P: Int, channels C: Int, x: UnsafePointer<Float>, mean meanBase: UnsafePointer<Float>,
    scale scaleBase: UnsafePointer<Float>, shift: UnsafePointer<Float>, residual: UnsafePointer<Float>? = nil,
    addend: BNAddend? = nil, relu: Bool, y: UnsafeMutablePointer<Float>, groups: Int = 1, groupStride: Int = 0,
    wide: Bool
) {
    let gp = P / groups
    parallelRange(P, grain: max(1, elementwiseGrain / max(C, 1))) { lo, hi in
        for p in lo..<hi {
            let g = groups == 1 ? 0 : p / gp
            let mean = meanBase + g * groupStride, scale = scaleBase + g * groupStride
            let xr = x + p * C, yr = y + p * C
            let rr = residual.map { $0 + p * C }
            let ad = addend.map { a in
                BNAddend(
                    x: a.x + p * C, mean: a.mean + g * groupStride, scale: a.scale + g * groupStride,
                    shift: a.shift)
            }
            var c = 0
            while wide && c + RVec.scalarCount <= C {
                bnApplyChunk(xr, mean, scale, shift, rr, ad, relu, yr, c, RVec.scalarCount, RVec.self)
                c += RVec.scalarCount
            }
            while c < C {
                bnApplyChunk(xr, mean, scale, shift, rr, ad, relu, yr, c, min(fvecWidth, C - c), FVec.self);
                c += fvecWidth
            }
        }
    }
}

/// One vector of channels of one pixel row of bnApply (`residual` and `addend` at that row).
@inline(__always)
func bnApplyChunk<V: FloatVector>(
    _ x: UnsafePointer<Float>, _ mean: UnsafePointer<Float>, _ scale: UnsafePointer<Float>,
    _ shift: UnsafePointer<Float>, _ residual: UnsafePointer<Float>?, _ addend: BNAddend?, _ relu: Bool,
    _ y: UnsafeMutablePointer<Float>, _ c: Int, _ n: Int, _: V.Type
) {
    var v: V = bnAffine(
        centred: gloadN(x + c, n) - gloadN(mean + c, n), scale: gloadN(scale + c, n), shift: gloadN(shift + c, n))
    if let residual { v = v + gloadN(residual + c, n) }
    if let a = addend {
        v =
            v
            + bnAffine(
                centred: gloadN(a.x + c, n) - gloadN(a.mean + c, n), scale: gloadN(a.scale + c, n),
                shift: gloadN(a.shift + c, n))
    }
    if relu { v = v.relu() }
    gstoreN(v, y + c, n)
}

/// y = max(BN(x) + BN'(addend.x), 0) of two batch norms from their rows (batchNormTrainingStatistics or
/// batchNormInferenceAffine; `groups` rows each, groupStride floats apart): a downsampling block's end,
/// whose main-path output is never written. The bits of writing BN'(addend.x) and passing it to the
/// training or inference forward as the residual.
public func batchNormApplySum(
    _ sh: BatchNormShape, input x: UnsafePointer<Float>, mean: UnsafePointer<Float>,
    scale: UnsafePointer<Float>, beta: UnsafePointer<Float>, addend: BNAddend,
    output y: UnsafeMutablePointer<Float>, groups: Int = 1, groupStride: Int = 0, wide: Bool
) {
    precondition(groups >= 1 && sh.pixels % groups == 0, "batch-norm groups must divide the pixels")
    bnApply(
        pixels: sh.pixels, channels: sh.channels, x: x, mean: mean, scale: scale, shift: beta, addend: addend,
        relu: true,
        y: y, groups: groups, groupStride: groupStride, wide: wide)
}

// MARK: - Forward

/// Training mode: batch statistics (biased variance to normalise), y = gamma*(x-mean)*invstd + beta, optional
/// fused ReLU; saves mean and invstd (1/sqrt(var+eps)) per channel; running stats updated as PyTorch:
/// r = (1-m)*r + m*stat with the UNBIASED variance (P/(P-1)).
/// y[P][C] from x[P][C]; `scratch` of batchNormScratchBytes(sh, threads: Threads.count) bytes. y may alias x.
/// `residual` [P][C] (a residual block's shortcut; may alias y) is added before the ReLU.
/// `groups` (<= bnMaxGroups, dividing P): the P pixels are that many independent batches (split batch
/// norm), each normalised by its own statistics, the running statistics updated once per group in
/// order and `saveMean`/`saveInvStd` left with the last group's: the same as one call per group (same
/// bits), in two parallel regions instead of two per group.
/// With `tileSums` (the convolution's epilogue summed x per tile) the statistics come from those,
/// and x is read once, to normalise it.
public func batchNormForwardTraining(
    _ sh: BatchNormShape, input x: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    beta: UnsafePointer<Float>, runningMean: UnsafeMutablePointer<Float>,
    runningVar: UnsafeMutablePointer<Float>, momentum: Float, eps: Float, relu: Bool,
    residual: UnsafePointer<Float>? = nil,
    output y: UnsafeMutablePointer<Float>, saveMean: UnsafeMutablePointer<Float>,
    saveInvStd: UnsafeMutablePointer<Float>, groups: Int = 1,
    scratch: UnsafeMutableRawPointer, tileSums: BNTileSums? = nil,
    sync: BNStatisticsSync? = nil, wide: Bool
) {
    let (_, mean, scale, _) = bnScratch(sh.channels, scratch)
    batchNormTrainingStatistics(
        sh, input: x, gamma: gamma, runningMean: runningMean, runningVar: runningVar,
        momentum: momentum, eps: eps, saveMean: saveMean, saveInvStd: saveInvStd, groups: groups,
        mean: mean, scale: scale, scratch: scratch, tileSums: tileSums, sync: sync, wide: wide)
    bnApply(
        pixels: sh.pixels, channels: sh.channels, x: x, mean: mean, scale: scale, shift: beta, residual: residual,
        relu: relu, y: y, groups: groups, groupStride: bnPadded(sh.channels), wide: wide)
}

/// Batch norm over several processes (data-parallel training), in one of two modes:
/// - `sharedBatch`: the P pixels of each process normalise as one batch of processes * P pixels: `sum`
///   replaces `count` Doubles by their element-wise sums over all processes (an MPI allreduce). The
///   per-channel sums are shifted by the running mean, which every process holds identically.
/// - `splitGroups`: each process normalises its own whole groups of a split batch norm, which are the
///   consecutive groups of one batch split over the processes; the running statistics advance by every
///   process's groups in process order (`gather`: recv[p * count ..< (p + 1) * count] = process p's
///   `count` Doubles), so they stay the same in every process, and the same as one process's.
public struct BNStatisticsSync: Sendable {
    public enum Mode: Sendable { case sharedBatch, splitGroups }
    public var mode: Mode
    public var processes: Int
    public var sum: @convention(c) (UnsafeMutablePointer<Double>, Int) -> Void
    public var gather: @convention(c) (UnsafePointer<Double>, Int, UnsafeMutablePointer<Double>) -> Void
    public init(
        mode: Mode, processes: Int, sum: @convention(c) (UnsafeMutablePointer<Double>, Int) -> Void,
        gather: @convention(c) (UnsafePointer<Double>, Int, UnsafeMutablePointer<Double>) -> Void
    ) {
        self.mode = mode; self.processes = processes; self.sum = sum; self.gather = gather
    }
}

/// The statistics half of batchNormForwardTraining, for a consumer that applies the normalisation
/// itself (a Winograd input transform, ConvInputAffine): saves mean and invstd, updates the running
/// statistics, and leaves each group's mean and gamma*invstd in `mean` and `scale` (rows of
/// bnPadded(C) floats per group, zero past C), so that y = beta + (x - mean) * scale exactly as the
/// training forward computes it. `mean` and `scale` may lie in `scratch` only where
/// batchNormForwardTraining puts them (its own use). With `tileSums` x is not read: the statistics
/// come from the convolution's per-tile sums of it (BNTileSums).
public func batchNormTrainingStatistics(
    _ sh: BatchNormShape, input x: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    runningMean: UnsafeMutablePointer<Float>, runningVar: UnsafeMutablePointer<Float>,
    momentum: Float, eps: Float, saveMean: UnsafeMutablePointer<Float>,
    saveInvStd: UnsafeMutablePointer<Float>, groups: Int = 1,
    mean: UnsafeMutablePointer<Float>, scale: UnsafeMutablePointer<Float>,
    scratch: UnsafeMutableRawPointer, tileSums: BNTileSums? = nil,
    sync: BNStatisticsSync? = nil, wide: Bool
) {
    let P = sh.pixels, C = sh.channels
    precondition(P > 0 && C > 0, "invalid batch-norm shape")
    precondition(groups >= 1 && groups <= bnMaxGroups && P % groups == 0, "batch-norm groups must divide the pixels")
    let shared = sync?.mode == .sharedBatch ? sync : nil, split = sync?.mode == .splitGroups ? sync : nil
    precondition(shared == nil || groups == 1, "batch-norm sums are shared between processes for one group only")
    let (shift, _, _, work) = bnScratch(C, scratch)
    let cp = bnPadded(C), gp = P / groups
    // The shift of each group's sums: the epilogue's (tileSums), the running mean when processes share
    // their sums (the same in all of them), or the group's first pixel.
    for g in 0..<groups {
        for c in 0..<cp {
            shift[g * cp + c] =
                c >= C ? 0 : tileSums.map { $0.shift[c] } ?? (shared != nil ? runningMean[c] : x[g * gp * C + c])
        }
    }
    var threads = 1
    if let t = tileSums {
        // The convolution's epilogue summed d = x - t.shift per tile: reduce its tiles group by group.
        precondition(t.tiles % groups == 0, "batch-norm groups must divide the tiles")
        bnReduceTileSums(t, channels: C, groups: groups, into: work)
    } else {
        threads = bnThreads(gp)
        bnColumnSums(
            pixels: P, channels: C, threads: threads, perThread: work, wide: wide, groups: groups,
            BNShiftedInput(x: x, shift: UnsafePointer(shift), C: C, cp: cp))
    }
    // Pixels behind each group's statistics (all processes' when they share their sums).
    let count = gp * (shared?.processes ?? 1)
    let m = Double(momentum), unbias = Double(count) / Double(max(count - 1, 1))
    // Shared sums [C][2]; with split groups, each group's running-statistics update [groups][C][2] and
    // every process's after them.
    let sharedCount = shared == nil ? 0 : 2 * C, updates = split == nil ? 0 : 2 * C * groups
    withUnsafeTemporaryAllocation(of: Double.self, capacity: sharedCount + updates * (1 + (split?.processes ?? 0))) {
        buf in
        let sums = buf.baseAddress!, mine = sums + sharedCount, all = mine + updates
        if let shared {
            for c in 0..<C {
                (sums[2 * c], sums[2 * c + 1]) = bnReduced(c, channels: C, threads: threads, perThread: work)
            }
            shared.sum(sums, 2 * C)
        }
        for g in 0..<groups {
            for c in 0..<cp {
                let i = g * cp + c
                if c >= C { mean[i] = 0; scale[i] = 0; continue }
                let (s1, s2) =
                    shared != nil
                    ? (sums[2 * c], sums[2 * c + 1])
                    : bnReduced(c, channels: C, threads: threads, perThread: work, group: g)
                let d = s1 / Double(count)
                let v = max(s2 / Double(count) - d * d, 0)
                let mu = Double(shift[i]) + d
                let inv = 1 / (v + Double(eps)).squareRoot()
                mean[i] = Float(mu)
                saveMean[c] = Float(mu)
                saveInvStd[c] = Float(inv)
                scale[i] = Float(Double(gamma[c]) * inv)
                if split != nil {
                    mine[(g * C + c) * 2] = mu; mine[(g * C + c) * 2 + 1] = v * unbias
                } else if m != 0 {
                    runningMean[c] = Float((1 - m) * Double(runningMean[c]) + m * mu)
                    runningVar[c] = Float((1 - m) * Double(runningVar[c]) + m * v * unbias)
                }
            }
        }
        if let split, m != 0 {
            split.gather(mine, updates, all)
            for g in 0..<(groups * split.processes) {
                for c in 0..<C {
                    runningMean[c] = Float((1 - m) * Double(runningMean[c]) + m * all[(g * C + c) * 2])
                    runningVar[c] = Float((1 - m) * Double(runningVar[c]) + m * all[(g * C + c) * 2 + 1])
                }
            }
        }
    }
}

/// Re-applies a training-mode forward from its saved statistics: y = gamma*(x-mean)*invstd + beta,
/// optionally ReLU'd. Training passes call it in backward to rebuild activations they did not keep.
/// `scratch` of batchNormScratchBytes(sh, threads: Threads.count) bytes.
public func batchNormApplySaved(
    _ sh: BatchNormShape, input x: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    beta: UnsafePointer<Float>, saveMean: UnsafePointer<Float>,
    saveInvStd: UnsafePointer<Float>, relu: Bool, output y: UnsafeMutablePointer<Float>,
    scratch: UnsafeMutableRawPointer, wide: Bool
) {
    let C = sh.channels
    let (_, _, scale, _) = bnScratch(C, scratch)
    bnSavedScale(channels: C, gamma: gamma, saveInvStd: saveInvStd, into: scale)
    bnApply(
        pixels: sh.pixels, channels: C, x: x, mean: saveMean, scale: scale, shift: beta, relu: relu, y: y, wide: wide)
}

/// gamma * invstd, the scale with which batchNormApplySaved rebuilds an output from the saved
/// statistics: one place for it, since the backward's ReLU mask and the Winograd input affine
/// (batchNormSavedAffine) must round as the rebuilt output does. C floats, then zeros up to `padTo`.
@inline(__always)
func bnSavedScale(
    channels C: Int, gamma: UnsafePointer<Float>, saveInvStd: UnsafePointer<Float>,
    into scale: UnsafeMutablePointer<Float>, padTo: Int = 0
) {
    for c in 0..<C { scale[c] = gamma[c] * saveInvStd[c] }
    for c in C..<max(C, padTo) { scale[c] = 0 }
}

/// The saved-statistics normalisation as one mean row and one scale row (bnPadded(C) floats each, zero
/// past C) for a consumer that applies it itself (ConvInputAffine): the bits of batchNormApplySaved.
public func batchNormSavedAffine(
    channels C: Int, gamma: UnsafePointer<Float>, saveMean: UnsafePointer<Float>,
    saveInvStd: UnsafePointer<Float>, mean: UnsafeMutablePointer<Float>,
    scale: UnsafeMutablePointer<Float>
) {
    let cp = bnPadded(C)
    for c in 0..<cp { mean[c] = c < C ? saveMean[c] : 0 }
    bnSavedScale(channels: C, gamma: gamma, saveInvStd: saveInvStd, into: scale, padTo: cp)
}

/// Eval mode with running statistics. y may alias x; `residual` as in the training forward.
public func batchNormForwardInference(
    _ sh: BatchNormShape, input x: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    beta: UnsafePointer<Float>, runningMean: UnsafePointer<Float>,
    runningVar: UnsafePointer<Float>, eps: Float, relu: Bool,
    residual: UnsafePointer<Float>? = nil, output y: UnsafeMutablePointer<Float>
) {
    let P = sh.pixels, C = sh.channels
    // Blocks of pixels; per block and channel vector the scale is computed once, then applied to the block.
    let block = max(1, min(64, elementwiseGrain / max(C, 1)))
    let blocks = ceilDiv(P, block)
    let e = FVec(repeating: eps)
    parallelForDynamic(blocks, chunksPerThread: 4) { lo, hi, _ in
        for b in lo..<hi {
            let p0 = b * block, p1 = min(P, p0 + block)
            var c = 0
            while c < C {
                let n = min(fvecWidth, C - c)
                let sc = bnInferenceScale(gamma, runningVar, c, n, eps: e)
                let mu = vloadN(runningMean + c, n), bt = vloadN(beta + c, n)
                for p in p0..<p1 {
                    var v = bnAffine(centred: vloadN(x + p * C + c, n) - mu, scale: sc, shift: bt)
                    if let residual { v = v + vloadN(residual + p * C + c, n) }
                    if relu { v = v.replacing(with: 0, where: v .< 0) }
                    vstoreN(v, y + p * C + c, n)
                }
                c += fvecWidth
            }
        }
    }
}

/// gamma / sqrt(runningVar + eps) of channels c..<c+n, as the inference forward computes it.
@inline(__always)
func bnInferenceScale(
    _ gamma: UnsafePointer<Float>, _ runningVar: UnsafePointer<Float>, _ c: Int, _ n: Int, eps e: FVec
) -> FVec {
    vloadN(gamma + c, n) * (FVec(repeating: 1) / (vloadN(runningVar + c, n) + e).squareRoot())
}

/// The eval-mode normalisation as one mean row and one scale row (bnPadded(C) floats each, zero past
/// C) for a consumer that applies it itself (ConvInputAffine): the same bits as
/// batchNormForwardInference.
public func batchNormInferenceAffine(
    channels C: Int, gamma: UnsafePointer<Float>, runningMean: UnsafePointer<Float>,
    runningVar: UnsafePointer<Float>, eps: Float,
    mean: UnsafeMutablePointer<Float>, scale: UnsafeMutablePointer<Float>
) {
    let e = FVec(repeating: eps)
    for c in 0..<bnPadded(C) { mean[c] = c < C ? runningMean[c] : 0; scale[c] = 0 }
    var c = 0
    while c < C {
        let n = min(fvecWidth, C - c)
        vstoreN(bnInferenceScale(gamma, runningVar, c, n, eps: e), scale + c, n)
        c += fvecWidth
    }
}

// MARK: - Backward

/// Backward of training mode. When relu is true, the sign of the forward output y masks dy: y is `output`
/// when given, else rebuilt from x, `beta` and the saved statistics as batchNormApplySaved computes it
/// (the same mask, and y need never be written). Without relu, output and beta are ignored (may be nil).
/// dx overwritten unless accumulate (then added); dGamma/dBeta always overwritten.
/// `scratch` of batchNormScratchBytes(sh, threads: Threads.count) bytes. dx may alias dy when not accumulating.
public func batchNormBackward(
    _ sh: BatchNormShape, input x: UnsafePointer<Float>, output y: UnsafePointer<Float>?,
    gradOutput dy: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    beta: UnsafePointer<Float>? = nil,
    saveMean: UnsafePointer<Float>, saveInvStd: UnsafePointer<Float>, relu: Bool,
    gradInput dx: UnsafeMutablePointer<Float>, gradGamma: UnsafeMutablePointer<Float>,
    gradBeta: UnsafeMutablePointer<Float>, accumulate: Bool, scratch: UnsafeMutableRawPointer,
    sync: BNStatisticsSync? = nil, wide: Bool
) {
    let P = sh.pixels, C = sh.channels
    precondition(P > 0 && C > 0, "invalid batch-norm shape")
    precondition(!relu || y != nil || beta != nil, "fused ReLU backward needs the forward output or beta")
    precondition(sync == nil || sync!.mode == .sharedBatch, "backward shares the sums of one batch only")
    let (k1, k2, k3, work) = bnScratch(C, scratch)
    let threads = bnThreads(P)
    let cp = bnPadded(C)
    // The rebuilt output's scale, batchNormApplySaved's, in k1's second row (free: backward has one group).
    let maskScale = k1 + cp
    if relu && y == nil { bnSavedScale(channels: C, gamma: gamma, saveInvStd: saveInvStd, into: maskScale) }
    let terms = BNGradTerms(
        dy: dy, y: relu ? y : nil, x: x, mean: saveMean, C: C, relu: relu,
        maskScale: UnsafePointer(maskScale), beta: beta)
    bnColumnSums(pixels: P, channels: C, threads: threads, perThread: work, wide: wide, terms)
    // With processes sharing their sums, dx needs the sums over all of them; the parameter gradients
    // stay this process's own (the gradient sum over processes adds them up).
    let count = P * (sync?.processes ?? 1)
    withUnsafeTemporaryAllocation(of: Double.self, capacity: sync == nil ? 0 : 2 * C) { shared in
        if let sync {
            for c in 0..<C {
                (shared[2 * c], shared[2 * c + 1]) = bnReduced(c, channels: C, threads: threads, perThread: work)
            }
            sync.sum(shared.baseAddress!, 2 * C)
        }
        for c in 0..<cp {
            if c >= C { k1[c] = 0; k2[c] = 0; k3[c] = 0; continue }
            let (sg, sgd) = bnReduced(c, channels: C, threads: threads, perThread: work)
            let (tg, tgd) = sync != nil ? (shared[2 * c], shared[2 * c + 1]) : (sg, sgd)
            let inv = Double(saveInvStd[c]), g = Double(gamma[c])
            gradBeta[c] = Float(sg)
            gradGamma[c] = Float(sgd * inv)
            k1[c] = Float(g * inv)
            k2[c] = Float(-g * inv * inv * inv * tgd / Double(count))
            k3[c] = Float(-g * inv * tg / Double(count))
        }
    }
    parallelRange(P, grain: max(1, elementwiseGrain / C)) { lo, hi in
        for p in lo..<hi {
            var c = 0
            while wide && c + RVec.scalarCount <= C {
                bnBackwardChunk(terms, p, c, RVec.scalarCount, k1, k2, k3, dx + p * C, accumulate, RVec.self)
                c += RVec.scalarCount
            }
            while c < C {
                bnBackwardChunk(terms, p, c, min(fvecWidth, C - c), k1, k2, k3, dx + p * C, accumulate, FVec.self)
                c += fvecWidth
            }
        }
    }
}

/// dx[c..] (=/+=) k3 + k1 g + k2 (x - mean) for one vector of channels of pixel row p (backward).
@inline(__always)
func bnBackwardChunk<V: FloatVector>(
    _ terms: BNGradTerms, _ p: Int, _ c: Int, _ n: Int, _ k1: UnsafePointer<Float>,
    _ k2: UnsafePointer<Float>, _ k3: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    _ accumulate: Bool, _: V.Type
) {
    let (g, xm): (V, V) = terms.terms(p, c, n, 0)
    var v: V = gload(k3 + c)
    v.addProduct(gload(k1 + c), g)
    v.addProduct(gload(k2 + c), xm)
    if accumulate { v += gloadN(dx + c, n) }
    gstoreN(v, dx + c, n)
}

// MARK: - Naive references (Double accumulation, two passes)

public func batchNormForwardTrainingNaive(
    _ sh: BatchNormShape, input x: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    beta: UnsafePointer<Float>, runningMean: UnsafeMutablePointer<Float>,
    runningVar: UnsafeMutablePointer<Float>, momentum: Float, eps: Float, relu: Bool,
    residual: UnsafePointer<Float>? = nil,
    output y: UnsafeMutablePointer<Float>, saveMean: UnsafeMutablePointer<Float>,
    saveInvStd: UnsafeMutablePointer<Float>
) {
    let P = sh.pixels, C = sh.channels
    for c in 0..<C {
        var s = 0.0
        for p in 0..<P { s += Double(x[p * C + c]) }
        let mu = s / Double(P)
        var q = 0.0
        for p in 0..<P { let d = Double(x[p * C + c]) - mu; q += d * d }
        let v = q / Double(P)
        let inv = 1 / (v + Double(eps)).squareRoot()
        for p in 0..<P {
            var o = Double(gamma[c]) * (Double(x[p * C + c]) - mu) * inv + Double(beta[c])
            if let residual { o += Double(residual[p * C + c]) }
            if relu && o < 0 { o = 0 }
            y[p * C + c] = Float(o)
        }
        saveMean[c] = Float(mu); saveInvStd[c] = Float(inv)
        let m = Double(momentum)
        if m != 0 {
            runningMean[c] = Float((1 - m) * Double(runningMean[c]) + m * mu)
            runningVar[c] = Float((1 - m) * Double(runningVar[c]) + m * q / Double(max(P - 1, 1)))
        }
    }
}

public func batchNormForwardInferenceNaive(
    _ sh: BatchNormShape, input x: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    beta: UnsafePointer<Float>, runningMean: UnsafePointer<Float>,
    runningVar: UnsafePointer<Float>, eps: Float, relu: Bool,
    residual: UnsafePointer<Float>? = nil, output y: UnsafeMutablePointer<Float>
) {
    let P = sh.pixels, C = sh.channels
    for p in 0..<P {
        for c in 0..<C {
            let inv = 1 / (Double(runningVar[c]) + Double(eps)).squareRoot()
            var o = Double(gamma[c]) * (Double(x[p * C + c]) - Double(runningMean[c])) * inv + Double(beta[c])
            if let residual { o += Double(residual[p * C + c]) }
            if relu && o < 0 { o = 0 }
            y[p * C + c] = Float(o)
        }
    }
}

public func batchNormBackwardNaive(
    _ sh: BatchNormShape, input x: UnsafePointer<Float>, output y: UnsafePointer<Float>?,
    gradOutput dy: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    saveMean: UnsafePointer<Float>, saveInvStd: UnsafePointer<Float>, relu: Bool,
    gradInput dx: UnsafeMutablePointer<Float>, gradGamma: UnsafeMutablePointer<Float>,
    gradBeta: UnsafeMutablePointer<Float>, accumulate: Bool
) {
    let P = sh.pixels, C = sh.channels
    for c in 0..<C {
        let mu = Double(saveMean[c]), inv = Double(saveInvStd[c]), g = Double(gamma[c])
        func gy(_ p: Int) -> Double { relu && y![p * C + c] <= 0 ? 0 : Double(dy[p * C + c]) }
        var sg = 0.0, sgx = 0.0
        for p in 0..<P {
            sg += gy(p)
            sgx += gy(p) * (Double(x[p * C + c]) - mu) * inv
        }
        gradBeta[c] = Float(sg); gradGamma[c] = Float(sgx)
        for p in 0..<P {
            let xhat = (Double(x[p * C + c]) - mu) * inv
            let v = g * inv / Double(P) * (Double(P) * gy(p) - sg - xhat * sgx)
            dx[p * C + c] = accumulate ? dx[p * C + c] + Float(v) : Float(v)
        }
    }
}
