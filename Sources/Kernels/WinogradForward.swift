// The Winograd F(4x4, 3x3) forward (Winograd.swift): blocks of tiles through the input transform, 36
// GEMMs and the output transform, with the weight transform inside it for large kernels.

import CParallel

/// y (= or +=) conv3x3(x) for a Winograd shape; `packed` from wgPackWeights of this shape.
/// With fused weights `packed` holds the untransformed kernels [K/16][C][9][16].
/// With `affine`, the input is x' of ConvInputAffine, not x.
func wgForward(
    _ sh: ConvPlan, input x: UnsafePointer<Float>, packed u: UnsafePointer<Float>,
    output y: UnsafeMutablePointer<Float>, accumulate: Bool, scratch: UnsafeMutableRawPointer,
    affine: ConvInputAffine? = nil, sums: ConvOutputSums? = nil
) {
    let wide = sh.wide
    precondition(sums == nil || !accumulate, "output sums need a written (not accumulated) output")
    let C = sh.c, K = sh.k, H = sh.h, W = sh.w
    let sumStride = ConvOutputSums.stride(sh)
    let th = ceilDiv(H, wgOut), tw = ceilDiv(W, wgOut), tiles = sh.wgTiles
    let kb = ceilDiv(K, convColBlock)
    let cv = ceilDiv(C, fvecWidth), cp = cv * fvecWidth
    let plan = sh.wgPlan(threads: Threads.count), fused = plan.fused
    let tbMax = plan.tb
    // 512-channel rows of V are skewed like backward-weights' (wgSkewed): the GEMM's six rows were in
    // 2 L1 sets. (At 64-256 channels the skew measured slower.)
    let cs = cp >= 512 ? wgSkewed(cp) : cp
    let pointV = tbMax * cs, pointM = plan.kbPerGroup * tbMax * convColBlock
    @inline(__always) func area(_ thread: Int) -> UnsafeMutableRawPointer { scratch + thread * plan.perThreadBytes }
    // Block edges rounded up to multiples of the register tile's rows (so no block but the last ends
    // in a partial tile): each block still holds at most tb tiles (tiles / blocks rounded up to them).
    let unit = sh.gemmRowUnit
    @inline(__always) func edge(_ blk: Int) -> Int { min(tiles, ceilDiv(tiles * blk, plan.blocks * unit) * unit) }
    @inline(__always) func tileRange(_ blk: Int) -> (t0: Int, nt: Int) {
        let t0 = edge(blk)
        return (t0, edge(blk + 1) - t0)
    }
    /// 1. Input transform of tiles t0+lo..<t0+hi of a block into V[point][tile][c] (this thread's temporaries).
    func transformInput(_ t0: Int, _ lo: Int, _ hi: Int, into V: UnsafeMutablePointer<Float>, _ thread: Int) {
        let base = area(thread)
        let T = (base + plan.offT).bindMemory(to: FVec.self, capacity: wgPoints * 2)
        let src = (base + plan.offSrc).bindMemory(to: UnsafePointer<Float>.self, capacity: wgPoints)
        let zero = (base + plan.offZero).bindMemory(to: Float.self, capacity: cp)
        zero.initialize(repeating: 0, count: cp)
        for ti in lo..<hi {
            if t0 + ti + wgPrefetchDistance < tiles {
                wgPrefetchTile(x, tile: t0 + ti + wgPrefetchDistance, H: H, W: W, C: C)
            }
            wgTilePointers(x, tile: t0 + ti, H: H, W: W, C: C, zero: zero, into: src)
            if let a = affine {
                a.inputTile(
                    t0 + ti, tilesPerImage: th * tw, src, channels: C, temp: T, out: V + ti * cs, pointStride: pointV,
                    firstRow: 0, rowCount: wgIn, zero: UnsafePointer(zero), wide: wide)
            } else {
                wgInputTile(
                    src, channels: C, temp: T, out: V + ti * cs, pointStride: pointV, firstRow: 0, rowCount: wgIn,
                    wide: wide)
            }
        }
    }
    /// 2 and 3. The GEMMs and the output transform of one block and output-channel group, from its V.
    func multiplyAndStore(_ blk: Int, _ kg: Int, _ V: UnsafeMutablePointer<Float>, _ thread: Int) {
        let base = area(thread)
        let M = (base + plan.offM).bindMemory(to: Float.self, capacity: wgPoints * pointM)
        let T = (base + plan.offT).bindMemory(to: FVec.self, capacity: wgPoints * 2)
        let Ub = (base + plan.offUb).bindMemory(to: Float.self, capacity: wgIn * sh.wgFusedRowStride)
        let kbLo = min(kb, kg * plan.kbPerGroup), kbHi = min(kb, kbLo + plan.kbPerGroup)
        if kbLo >= kbHi { return }
        let (t0, nt) = tileRange(blk)
        // 2. 36 GEMMs: M[point][kb][tile][16] = V[point][tile][:] x U[point][kb][:][16].
        func gemm(_ pt: Int, _ b: Int, _ panel: UnsafePointer<Float>) {
            wgMultiplyRows(
                M + pt * pointM + (b - kbLo) * tbMax * convColBlock, UnsafePointer(V + pt * pointV), count: nt,
                stride: cs, panel: panel, depth: C, wide: wide)
        }
        /// Blocks b and b + 1 at once (wide tiles: both in each register tile).
        func gemmPair(_ pt: Int, _ b: Int, _ panel: UnsafePointer<Float>, _ panel2: UnsafePointer<Float>) {
            let o = M + pt * pointM + (b - kbLo) * tbMax * convColBlock
            wideMultiplyRowsPair(
                o, o + tbMax * convColBlock, UnsafePointer(V + pt * pointV), count: nt, stride: cs,
                panel: panel, panel2: panel2, depth: C)
        }
        if fused {
            // One row of 6 points at a time, so this row's V (6 x tiles x C) stays in L2 while each
            // output block's kernels are transformed for it (by output block, wgFusedByOutputBlock, an
            // item has one output block, two with wide tiles, whose raw kernels stay in L2 while its 6
            // rows are transformed).
            let rowStride = sh.wgFusedRowStride
            func rowOfBlock(_ i: Int, _ b: Int) {
                wgTransformKernelRow(
                    u + b * C * 9 * convColBlock, channels: C, row: i, out: Ub, pointStride: rowStride, wide: wide)
                for j in 0..<wgIn { gemm(i * wgIn + j, b, UnsafePointer(Ub + j * rowStride)) }
            }
            /// Row i of blocks b and b + 1 (wide tiles: both blocks in each register tile).
            func rowOfPair(_ i: Int, _ b: Int) {
                let Ub2 = Ub + wgIn * rowStride
                wgTransformKernelRow(
                    u + b * C * 9 * convColBlock, channels: C, row: i, out: Ub, pointStride: rowStride, wide: wide)
                wgTransformKernelRow(
                    u + (b + 1) * C * 9 * convColBlock, channels: C, row: i, out: Ub2, pointStride: rowStride,
                    wide: wide)
                for j in 0..<wgIn {
                    gemmPair(i * wgIn + j, b, UnsafePointer(Ub + j * rowStride), UnsafePointer(Ub2 + j * rowStride))
                }
            }
            /// Row i of the blocks from b on: in pairs with wide tiles.
            func rowOfBlocks(_ i: Int, _ lo: Int, _ hi: Int) {
                var b = lo
                while b < hi {
                    if wide && b + 1 < hi { rowOfPair(i, b); b += 2 } else { rowOfBlock(i, b); b += 1 }
                }
            }
            for i in 0..<wgIn { rowOfBlocks(i, kbLo, kbHi) }
        } else {
            let pointStride = sh.wgPointStride
            for pt in 0..<wgPoints {
                var b = kbLo
                while b < kbHi {
                    let panel = u + pt * pointStride + b * C * convColBlock
                    if wide && b + 1 < kbHi {
                        gemmPair(pt, b, panel, panel + C * convColBlock)  // the next block's panel C * 16 floats on
                        b += 2
                    } else {
                        gemm(pt, b, panel)
                        b += 1
                    }
                }
            }
        }
        // 3. Output transform: y[tile] (=/+=) A^T M A, 16 output channels at a time.
        for ti in 0..<nt {
            let (b, ty, tx) = wgTileOrigin(t0 + ti, th, tw)
            let oh0 = ty * wgOut, ow0 = tx * wgOut
            let rows = min(wgOut, H - oh0), cols = min(wgOut, W - ow0)
            for bi in kbLo..<kbHi {
                let k0 = bi * convColBlock, kn = min(convColBlock, K - k0)
                let mt = M + (bi - kbLo) * tbMax * convColBlock + ti * convColBlock
                let o = y + ((b * H + oh0) * W + ow0) * K + k0
                let st = sums.map {
                    (sums: $0.sums + (t0 + ti) * 2 * sumStride + k0, shift: $0.shift + k0, stride: sumStride)
                }
                if wide && kn == convColBlock {
                    wgOutputTile(
                        mt, pointM: pointM, UnsafeMutableRawPointer(T).assumingMemoryBound(to: RVec.self), o,
                        rowStride: W * K, K: K, rows: rows, cols: cols, lanes: convColBlock, accumulate: accumulate,
                        sums: st)
                    continue
                }
                for h in 0..<2 where h * fvecWidth < kn {
                    let sh = st.map {
                        (sums: $0.sums + h * fvecWidth, shift: $0.shift + h * fvecWidth, stride: $0.stride)
                    }
                    wgOutputTile(
                        mt + h * fvecWidth, pointM: pointM, T, o + h * fvecWidth, rowStride: W * K, K: K,
                        rows: rows, cols: cols, lanes: min(fvecWidth, kn - h * fvecWidth), accumulate: accumulate,
                        sums: sh)
                }
            }
        }
    }
    if plan.kGroups == 1 {
        // Blocks go to whichever thread is free (each block's outputs are its own, so the result does
        // not depend on the schedule).
        parallelForDynamic(plan.blocks) { lo, hi, thread in
            let V = area(thread).bindMemory(to: Float.self, capacity: wgPoints * pointV)
            for blk in lo..<hi {
                let (t0, nt) = tileRange(blk)
                transformInput(t0, 0, nt, into: V, thread)
                multiplyAndStore(blk, 0, V, thread)
            }
        }
    } else {
        // Output-channel groups, one per thread or (by output block) one per 16 output channels, each
        // taken by the next free thread (each streams or transforms its share of the kernels).
        // Every group needs the whole block's V: the threads transform it once, into the first
        // thread's V, then each multiplies its group. The same V as one thread's own, bit for bit.
        let V = area(0).bindMemory(to: Float.self, capacity: wgPoints * pointV)
        for blk in 0..<plan.blocks {
            let (t0, nt) = tileRange(blk)
            parallelForDynamic(nt, chunksPerThread: 4) { lo, hi, thread in
                transformInput(t0, lo, hi, into: V, thread)
            }
            parallelForDynamic(plan.kGroups) { lo, hi, thread in
                for kg in lo..<hi { multiplyAndStore(blk, kg, V, thread) }
            }
        }
    }
}

/// The output transform of one tile and one vector of output channels: o[i][j] (=/+=) (A^T m A)[i][j]
/// for the first rows x cols outputs (rows `rowStride` floats apart, columns K), `lanes` channels,
/// from the tile's 36 points `pointM` floats apart; `T`: 24 vectors of scratch.
@inline(__always)
func wgOutputTile<V: SIMD>(
    _ m: UnsafePointer<Float>, pointM: Int, _ T: UnsafeMutablePointer<V>,
    _ o: UnsafeMutablePointer<Float>, rowStride: Int, K: Int, rows: Int, cols: Int, lanes: Int,
    accumulate: Bool,
    sums: (sums: UnsafeMutablePointer<Float>, shift: UnsafePointer<Float>, stride: Int)? = nil
)
where V.Scalar == Float {
    for j in 0..<wgIn {
        let mj = m + j * pointM
        let r = wgAT(
            gload(mj) as V, gload(mj + 6 * pointM), gload(mj + 12 * pointM),
            gload(mj + 18 * pointM), gload(mj + 24 * pointM), gload(mj + 30 * pointM))
        T[0 * 6 + j] = r.0; T[1 * 6 + j] = r.1; T[2 * 6 + j] = r.2; T[3 * 6 + j] = r.3
    }
    // With ConvOutputSums: Σ d and Σ d² of d = y - shift over the tile's pixels, row by row.
    let shift: V = sums.map { gloadN($0.shift, lanes) } ?? V()
    var s1 = V(), s2 = V()
    @inline(__always) func add(_ v: V) { let d = v - shift; s1 = s1 + d; s2 = s2.addingProduct(d, d) }
    for i in 0..<rows {
        let r = wgAT(T[i * 6], T[i * 6 + 1], T[i * 6 + 2], T[i * 6 + 3], T[i * 6 + 4], T[i * 6 + 5])
        wgStoreRow(r, o + i * rowStride, K: K, cols: cols, lanes: lanes, accumulate: accumulate)
        if sums == nil { continue }
        add(r.0)
        if cols > 1 { add(r.1) }
        if cols > 2 { add(r.2) }
        if cols > 3 { add(r.3) }
    }
    if let sums {
        gstoreN(s1, sums.sums, lanes)
        gstoreN(s2, sums.sums + sums.stride, lanes)
    }
}

@inline(__always)
func wgStore<V: SIMD>(_ v: V, _ p: UnsafeMutablePointer<Float>, _ n: Int, _ accumulate: Bool) where V.Scalar == Float {
    if n == V.scalarCount {
        gstore(accumulate ? gload(p) + v : v, p)
    } else {
        for i in 0..<n { p[i] = accumulate ? p[i] + v[i] : v[i] }
    }
}
