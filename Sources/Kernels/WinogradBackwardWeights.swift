// Winograd F(4x4, 3x3) backward-weights (Winograd.swift): dU = sum over tiles of V^T (A dy A^T), then
// dW = G^T dU G, with the work split the plan chooses for the shape and thread count.

import CParallel

// MARK: - Backward weights

/// The G row coefficients: dW[r][s] = sum over i, j of G[i][r] G[j][s] dU[i][j].
let wgGRows: [(Float, Float, Float)] = [
    (0.25, 0, 0), (-1.0 / 6, -1.0 / 6, -1.0 / 6), (-1.0 / 6, 1.0 / 6, -1.0 / 6),
    (1.0 / 24, 1.0 / 12, 1.0 / 6), (1.0 / 24, -1.0 / 12, 1.0 / 6), (0, 0, 1)
]

extension ConvPlan {
    /// Backward-weights plan: rows of the 6x6 point grid per pass (dU of one pass within ~8 MB, so
    /// 512x512 kernels take six passes over the data rather than a 38 MB dU), tiles per block (<= 256:
    /// each block's sums are rounded on their own before joining dU).
    /// When dU would pass 8 MB but V and Y of all tiles fit in winogradAllTiles (few tiles, wide
    /// layers: ResNet-18's 256- and 512-channel layers at batch 64), no dU is kept: V and Y are
    /// transformed once, and each item computes all 36 points of one block of input channels x 16
    /// output channels and folds them into dW itself (`allTiles`), where passes would write, re-read
    /// and fold a dU of 9.4-38 MB. Why these two strategies: docs/PERFORMANCE.md, "Winograd
    /// backward-weights".
    var wgBackwardWeightPlan: WGBackwardWeightPlan {
        let cp = ceilDiv(c, fvecWidth) * fvecWidth, kp = ceilDiv(k, convColBlock) * convColBlock
        var rows = 6
        for r in [6, 3, 2, 1] { rows = r; if r * 6 * c * kp * 4 <= budget.backwardPass { break } }
        let allTiles = rows < 6 && wgPoints * wgTiles * (cp + kp) * 4 <= budget.winogradAllTiles
        if allTiles { rows = 6 }
        let pts = rows * 6
        let tb = allTiles ? wgTiles : min(wgTiles, 256, max(48, budget.sharedBlock / (pts * (cp + kp) * 4)))
        // Shared: dU, V, Y, in channel blocks (wgBackwardCBlock). Per thread: the transform's 36
        // vectors, tile pointers, a zero row, a block's partial sums [C][16] (all tiles: one item's
        // dU [36][cBlock][16]).
        let cBlock = cp <= wgBackwardCBlockWhole ? cp : wgBackwardCBlock
        let cPadded = ceilDiv(c, cBlock) * cBlock
        let dUCount = allTiles ? 0 : pts * c * kp, vCount = pts * tb * cPadded, yCount = pts * tb * kp
        var p = WGBackwardWeightPlan(
            rowsPerPass: rows, tb: tb, dU: dUCount, v: vCount, yv: yCount,
            zeroCount: max(cp, kp), cBlock: cBlock)
        p.allTiles = allTiles
        p.offV = align64(p.dU * 4)
        p.offY = p.offV + align64(p.v * 4)
        p.offThreads = p.offY + align64(p.yv * 4)
        p.offSrc = wgPoints * 2 * fvecWidth * 4
        p.offZero = p.offSrc + wgPoints * 8
        p.offPart = align64(p.offZero + p.zeroCount * 4)
        // (Twice the partial sums: wide tiles sum two output blocks at once.)
        p.perThread = align64(p.offPart + 2 * (allTiles ? wgPoints * cBlock : c) * convColBlock * 4 + 64)
        return p
    }

    /// How backward-weights splits its work (for tests and benchmarks): "all tiles", or "N passes" of
    /// shared blocks over the point rows.
    public var wgBackwardWeightMethod: String {
        let p = wgBackwardWeightPlan
        if p.allTiles { return "all tiles" }
        return "\(6 / p.rowsPerPass) passes"
    }

    func wgBackwardWeightScratchBytes(threads: Int) -> Int {
        let p = wgBackwardWeightPlan
        return p.offThreads + max(threads, 1) * p.perThread + 64
    }
}

/// The distance between consecutive tiles' rows of the 512-channel forward's V: the row length
/// rounded to an odd number of cache lines. Its GEMMs read one line from each of 64 tile rows per
/// pass; rows 32 lines apart fall into 2 of the 64 L1 sets and evict each other before the next pass
/// (6 channels on) reads them again. (The forward below 512 channels measured slower with skewed
/// rows: bench kernels, best of 6 alternating runs.)
@inline(__always) func wgSkewed(_ floats: Int) -> Int { (floats / 16) % 2 == 0 ? floats + 16 : floats }

/// Channel blocks of backward-weights' V (a multiple of the 6-row tile and of the vector width):
/// V [point][C / cBlock][tile][cBlock] and Y [point][K / 16][tile][16], so that the GEMM of one
/// (point, channel block, 16 output channels) reads two contiguous panels, which the hardware
/// prefetchers stream, where rows of all C channels put each tile's few floats a row apart (the
/// 256/512-channel GEMMs stalled on those loads). Rows of at most wgBackwardCBlockWhole channels
/// stay whole (one block). Also the input channels per item of the all-tiles backward-weights.
let wgBackwardCBlock = 48, wgBackwardCBlockWhole = 64

/// Backward-weights work split and scratch layout (floats for dU/v/yv, byte offsets for the rest;
/// per-thread offsets are from that thread's base).
struct WGBackwardWeightPlan {
    var rowsPerPass: Int, tb: Int, dU: Int, v: Int, yv: Int, zeroCount: Int
    /// Channels per block of V (Y's blocks are convColBlock wide); tb rows per block.
    var cBlock: Int
    var allTiles = false
    var offV = 0, offY = 0, offThreads = 0, offSrc = 0, offZero = 0, offPart = 0, perThread = 0
}

/// dW (= or +=) the gradient of a Winograd-shape convolution's weights.
/// With `affine`, the input is x' of ConvInputAffine, not x.
func wgBackwardWeight(
    _ sh: ConvPlan, input x: UnsafePointer<Float>, gradOutput dy: UnsafePointer<Float>,
    gradWeight dw: UnsafeMutablePointer<Float>, accumulate: Bool, scratch: UnsafeMutableRawPointer,
    affine: ConvInputAffine? = nil
) {
    let wide = sh.wide
    let C = sh.c, K = sh.k, H = sh.h, W = sh.w
    let th = ceilDiv(H, wgOut), tw = ceilDiv(W, wgOut), tiles = sh.wgTiles
    let kb = ceilDiv(K, convColBlock), kp = kb * convColBlock
    let plan = sh.wgBackwardWeightPlan
    let pts = plan.rowsPerPass * 6, tb = plan.tb
    let dU = scratch.bindMemory(to: Float.self, capacity: plan.dU)
    let perThreadBase = scratch + plan.offThreads
    let zeroCount = plan.zeroCount, perThread = plan.perThread
    let cBlk = plan.cBlock, cBlocks = ceilDiv(C, cBlk)
    let pointV = tb * cBlocks * cBlk, pointY = tb * kp, pointU = C * kp
    let vBlocks = WGChannelBlocks(width: cBlk, stride: tb * cBlk)
    @inline(__always) func mine(_ thread: Int) -> UnsafeMutableRawPointer { perThreadBase + thread * perThread }
    /// V = B^T x B and Y = A dy A^T of `tile` (row ti of its block), point rows row0..<row0+rowsPerPass,
    /// with `thread`'s temporaries.
    func transformTile(
        _ tile: Int, _ ti: Int, _ row0: Int, V: UnsafeMutablePointer<Float>, Y: UnsafeMutablePointer<Float>,
        thread: Int
    ) {
        let T = mine(thread).bindMemory(to: FVec.self, capacity: wgPoints)
        let src = (mine(thread) + plan.offSrc).bindMemory(to: UnsafePointer<Float>.self, capacity: wgPoints)
        let zero = (mine(thread) + plan.offZero).bindMemory(to: Float.self, capacity: zeroCount),
            z = UnsafePointer(zero)
        if tile + wgPrefetchDistance < tiles {
            let ahead = tile + wgPrefetchDistance
            wgPrefetchTile(x, tile: ahead, H: H, W: W, C: C)
            let (b, ty, tx) = wgTileOrigin(ahead, th, tw)
            wgPrefetchWindow(
                dy, image: b, row: ty * wgOut, rows: wgOut, columns: tx * wgOut, tx * wgOut + wgOut, H: H, W: W, C: K)
        }
        wgTilePointers(x, tile: tile, H: H, W: W, C: C, zero: zero, into: src)
        if let affine {
            affine.inputTile(
                tile, tilesPerImage: th * tw, src, channels: C, temp: T, out: V + ti * cBlk, pointStride: pointV,
                firstRow: row0, rowCount: plan.rowsPerPass, zero: z, blocks: vBlocks, wide: wide)
        } else {
            wgInputTile(
                src, channels: C, temp: T, out: V + ti * cBlk, pointStride: pointV, firstRow: row0,
                rowCount: plan.rowsPerPass, blocks: vBlocks, wide: wide)
        }
        // dy's 4x4 tile (zero past the image).
        let (b, ty, tx) = wgTileOrigin(tile, th, tw)
        let oh0 = ty * wgOut, ow0 = tx * wgOut
        for i in 0..<wgOut {
            for j in 0..<wgOut {
                src[i * wgOut + j] = oh0 + i < H && ow0 + j < W ? dy + ((b * H + oh0 + i) * W + ow0 + j) * K : z
            }
        }
        /// Output channels k0..<k0 + W.scalarCount (within one block of 16) of Y's points.
        @inline(__always) func lane<W: SIMD>(_ k0: Int, _ T: UnsafeMutablePointer<W>, _ ld: (Int) -> W)
        where W.Scalar == Float {
            for j in 0..<wgOut {
                let r = wgA(ld(j), ld(4 + j), ld(8 + j), ld(12 + j))
                T[j] = r.0; T[6 + j] = r.1; T[12 + j] = r.2; T[18 + j] = r.3; T[24 + j] = r.4; T[30 + j] = r.5
            }
            for i in row0..<(row0 + plan.rowsPerPass) {
                let r = wgA(T[i * 6], T[i * 6 + 1], T[i * 6 + 2], T[i * 6 + 3])
                let p =
                    Y + ((i - row0) * 6) * pointY + (k0 / convColBlock) * tb * convColBlock + ti * convColBlock
                    + k0 % convColBlock
                gstore(r.0, p); gstore(r.1, p + pointY); gstore(r.2, p + 2 * pointY)
                gstore(r.3, p + 3 * pointY); gstore(r.4, p + 4 * pointY); gstore(r.5, p + 5 * pointY)
            }
        }
        var k0 = 0
        while wide && k0 + RVec.scalarCount <= K {
            lane(k0, UnsafeMutableRawPointer(T).assumingMemoryBound(to: RVec.self)) { q in gload(src[q] + k0) }
            k0 += RVec.scalarCount
        }
        while k0 < kp {
            let kn = max(0, min(fvecWidth, K - k0))
            lane(k0, T) { q in kn == fvecWidth ? vload(src[q] + k0) : (kn == 0 ? FVec() : vloadPartial(src[q] + k0, kn))
            }
            k0 += fvecWidth
        }
    }
    func zeroRow(_ thread: Int) {
        (mine(thread) + plan.offZero).bindMemory(to: Float.self, capacity: zeroCount).initialize(
            repeating: 0, count: zeroCount)
    }
    /// u[point pt][c][k0..<k0+16] += V[pt]^T Y[pt] over a block of nt tiles. A block after the first
    /// sums from zero into `thread`'s partial sums, then joins u: float rounding grows with the
    /// length of a sum, and this keeps it to one block.
    /// (`pair`: output channels k0..<k0+32, two blocks at once with wide tiles.)
    func sumBlock(
        _ pt: Int, _ k0: Int, _ nt: Int, V: UnsafeMutablePointer<Float>, Y: UnsafeMutablePointer<Float>,
        u dUBase: UnsafeMutablePointer<Float>, first: Bool, thread: Int, pair: Bool = false
    ) {
        let w = pair ? 2 * convColBlock : convColBlock
        let part = (mine(thread) + plan.offPart).bindMemory(to: Float.self, capacity: C * w)
        let u = dUBase + pt * pointU + k0
        if !first { part.initialize(repeating: 0, count: C * w) }
        let dyPanel = UnsafePointer(Y + pt * pointY + (k0 / convColBlock) * tb * convColBlock)
        for cb in 0..<cBlocks {
            let cLo = cb * cBlk, cn = min(cBlk, C - cLo)
            let panel = UnsafePointer(V + pt * pointV + cb * tb * cBlk)
            let acc = first ? u + cLo * kp : part + cLo * w, Kp = first ? kp : w
            if pair {
                weightTilesStridedPair(
                    x: panel, xStride: cBlk, np: nt, C: cn, dy: dyPanel, dy2: dyPanel + tb * convColBlock,
                    dyStride: convColBlock, acc: acc, acc2: acc + convColBlock, Kp: Kp)
            } else {
                weightTilesStrided(
                    x: panel, xStride: cBlk, np: nt, C: cn, dy: dyPanel, dyStride: convColBlock, acc: acc, Kp: Kp,
                    wide: wide)
            }
        }
        if !first {
            for c in 0..<C {
                let d = u + c * kp, q = part + c * w
                var j = 0
                while j < w { vstore(vload(d + j) + vload(q + j), d + j); j += fvecWidth }
            }
        }
    }
    /// Output blocks per sumBlock: two with wide tiles (when there are two).
    let kStep = wide ? 2 : 1
    /// dW[k][c][r][s] (+)= sum over point rows `rows` (dU's first) and all j of G[i][r] G[j][s] dU[i][j][c][k].
    func fold(_ rows: Range<Int>, accumulate acc: Bool) {
        let kv = ceilDiv(K, fvecWidth)
        parallelForDynamic(kv, chunksPerThread: 4) { lo, hi, _ in
            for kvi in lo..<hi {
                let k0 = kvi * fvecWidth, kn = min(fvecWidth, K - k0)
                for c in 0..<C {
                    wgFoldPoints(
                        UnsafePointer(dU + c * kp + k0), pointU: pointU, rows: rows,
                        into: dw + (k0 * C + c) * 9, outputs: kn, outputStride: C * 9, accumulate: acc)
                }
            }
        }
    }
    if plan.allTiles {
        let V = (scratch + plan.offV).bindMemory(to: Float.self, capacity: plan.v)
        let Y = (scratch + plan.offY).bindMemory(to: Float.self, capacity: plan.yv)
        parallelForDynamic(tiles, chunksPerThread: 8) { lo, hi, thread in
            zeroRow(thread)
            for ti in lo..<hi { transformTile(ti, ti, 0, V: V, Y: Y, thread: thread) }
        }
        wgBackwardWeightAllTiles(
            sh, plan: plan, V: V, Y: Y, perThreadBase: perThreadBase, dw: dw, accumulate: accumulate)
        return
    }
    let V = (scratch + plan.offV).bindMemory(to: Float.self, capacity: plan.v)
    let Y = (scratch + plan.offY).bindMemory(to: Float.self, capacity: plan.yv)
    for pass in 0..<(6 / plan.rowsPerPass) {
        let row0 = pass * plan.rowsPerPass
        dU.initialize(repeating: 0, count: plan.dU)
        var t0 = 0
        while t0 < tiles {
            let nt = min(tb, tiles - t0)
            parallelForDynamic(nt, chunksPerThread: 8) { lo, hi, thread in
                zeroRow(thread)
                for ti in lo..<hi { transformTile(t0 + ti, ti, row0, V: V, Y: Y, thread: thread) }
            }
            // One (point, 16 output channels; 32 with wide tiles) per item.
            let kUnits = ceilDiv(kb, kStep)
            parallelForDynamic(pts * kUnits, chunksPerThread: 8) { lo, hi, thread in
                for item in lo..<hi {
                    let b = (item % kUnits) * kStep
                    sumBlock(
                        item / kUnits, b * convColBlock, nt, V: V, Y: Y, u: dU, first: t0 == 0, thread: thread,
                        pair: b + 1 < kb && kStep == 2)
                }
            }
            t0 += nt
        }
        fold(row0..<(row0 + plan.rowsPerPass), accumulate: accumulate || pass > 0)
    }
}

/// Backward-weights without a dU (plan.allTiles), after V and Y of all tiles and points are transformed:
/// each item takes wgBackwardCBlock input channels x 16 output channels, sums its 36 points over all
/// tiles into a per-thread dU [36][cBlock][16], and folds them into its part of dW. Every dW element
/// belongs to one item, so the result does not depend on the schedule.
func wgBackwardWeightAllTiles(
    _ sh: ConvPlan, plan: WGBackwardWeightPlan, V: UnsafeMutablePointer<Float>,
    Y: UnsafeMutablePointer<Float>, perThreadBase: UnsafeMutableRawPointer,
    dw: UnsafeMutablePointer<Float>, accumulate: Bool
) {
    let wide = sh.wide
    let C = sh.c, K = sh.k, tiles = plan.tb, cBlk = plan.cBlock
    let kb = ceilDiv(K, convColBlock)
    let cBlocks = ceilDiv(C, cBlk)
    let pointV = tiles * cBlocks * cBlk, pointY = tiles * kb * convColBlock
    let pointU = cBlk * convColBlock
    // Items by input-channel block first, so a thread's consecutive items share V's columns; with
    // wide tiles an item has two output blocks (a dU each), summed at once.
    let kStep = wide ? 2 : 1, kUnits = ceilDiv(kb, kStep)
    parallelForDynamic(cBlocks * kUnits, chunk: 1) { lo, hi, thread in
        let mine = perThreadBase + thread * plan.perThread
        let dU = (mine + plan.offPart).bindMemory(to: Float.self, capacity: 2 * wgPoints * pointU)
        let dU2 = dU + wgPoints * pointU
        for item in lo..<hi {
            let cb = item / kUnits, k0 = (item % kUnits) * kStep * convColBlock
            let pair = kStep == 2 && k0 + convColBlock < K
            let cLo = cb * cBlk, cn = min(cBlk, C - cLo)
            dU.initialize(repeating: 0, count: (pair ? 2 : 1) * wgPoints * pointU)
            for pt in 0..<wgPoints {
                let panel = UnsafePointer(V + pt * pointV + cb * tiles * cBlk)
                let dyPanel = UnsafePointer(Y + pt * pointY + k0 * tiles)
                if pair {
                    weightTilesStridedPair(
                        x: panel, xStride: cBlk, np: tiles, C: cn, dy: dyPanel,
                        dy2: dyPanel + tiles * convColBlock, dyStride: convColBlock, acc: dU + pt * pointU,
                        acc2: dU2 + pt * pointU, Kp: convColBlock)
                } else {
                    weightTilesStrided(
                        x: panel, xStride: cBlk, np: tiles, C: cn, dy: dyPanel, dyStride: convColBlock,
                        acc: dU + pt * pointU, Kp: convColBlock, wide: wide)
                }
            }
            for half in 0..<(pair ? 2 : 1) {
                let blockU = half == 0 ? dU : dU2, kb0 = k0 + half * convColBlock
                for h in 0..<2 {
                    let kk = kb0 + h * fvecWidth, kn = min(fvecWidth, K - kk)
                    if kn <= 0 { continue }
                    for c in 0..<cn {
                        wgFoldPoints(
                            UnsafePointer(blockU + c * convColBlock + h * fvecWidth), pointU: pointU, rows: 0..<wgIn,
                            into: dw + (kk * C + cLo + c) * 9, outputs: kn, outputStride: C * 9, accumulate: accumulate)
                    }
                }
            }
        }
    }
}

/// dW (= or +=) G^T dU G for one input channel and `outputs` (<= 8) output channels, from the points
/// of point rows `rows` (dU[i][j] at u + ((i - rows.lowerBound) * 6 + j) * pointU, one vector of
/// output channels each). Output channel l's 3x3 kernel is written at into + l * outputStride.
@inline(__always)
func wgFoldPoints(
    _ u: UnsafePointer<Float>, pointU: Int, rows: Range<Int>, into o: UnsafeMutablePointer<Float>,
    outputs: Int, outputStride: Int, accumulate: Bool
) {
    var acc = (FVec(), FVec(), FVec(), FVec(), FVec(), FVec(), FVec(), FVec(), FVec())
    withUnsafeMutableBytes(of: &acc) { raw in
        let a = raw.bindMemory(to: FVec.self)
        for i in rows {
            let ui = u + ((i - rows.lowerBound) * 6) * pointU
            let h = wgGT(
                vload(ui), vload(ui + pointU), vload(ui + 2 * pointU), vload(ui + 3 * pointU),
                vload(ui + 4 * pointU), vload(ui + 5 * pointU))
            let g = wgGRows[i]
            for r in 0..<3 {
                let gr = r == 0 ? g.0 : (r == 1 ? g.1 : g.2)
                if gr == 0 { continue }
                let s = FVec(repeating: gr)
                a[r * 3] += s * h.0; a[r * 3 + 1] += s * h.1; a[r * 3 + 2] += s * h.2
            }
        }
        for l in 0..<outputs {
            let d = o + l * outputStride
            for t in 0..<9 { d[t] = accumulate ? d[t] + a[t][l] : a[t][l] }
        }
    }
}
