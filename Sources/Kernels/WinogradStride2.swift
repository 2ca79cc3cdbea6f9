// Stride-2 3x3 convolutions (pad 1) with fewer multiplies: the input's two phases per dimension.
//
// Along one dimension an output y[i] = w0 x[2i-1] + w1 x[2i] + w2 x[2i+1] reads the odd samples
// o[j] = x[2j-1] through two taps (w0, w2) and the even samples e[j] = x[2j] through one (w1). A tile
// of 4 outputs reads the 9 samples x[-1..7]: the odd part is the minimal filter F(4,2) (5 points:
// 0, 1, -1, 2, infinity), the even part is 4 plain products. So one dimension has 9 points, and a
// 4x4 output tile 81, against 144 multiplies of the direct kernel: 1.78x fewer.
//
// Points whose dimension is even share that dimension's kernel value (w1), so the 81 points fall
// into 36 classes with one transformed kernel each: 25 (odd, odd), 5 + 5 (odd, even) of 4 points,
// 1 (even, even) of 16. Each class is one GEMM whose rows are its points of every tile of a block,
// so U is 36 x C x K (1.2 MB at 64 -> 128 channels, 4.7 MB at 128 -> 256) where 81 points would
// need 2.25x that.
//
// Letters: as Winograd.swift; a "class" is one of the 36, `mult` its points per tile (1, 4 or 16).

/// Input window edge per 4x4 output tile, points per dimension (5 odd, 4 even), kernel classes.
let ws2In = 9, ws2Classes = 36

extension Conv2DShape {
    /// 3x3, stride 2, pad 1, with enough channels for the GEMMs to pay.
    public var isWinogradStride2Shape: Bool { r == 3 && s == 3 && stride == 2 && pad == 1 && c >= 8 && k >= 8 }
}

extension ConvPlan {
    public var usesWinogradStride2: Bool { config.winograd && isWinogradStride2Shape }

    /// Whether the kernels are transformed inside the forward, one output block at a time
    /// (ws2ForwardFused), rather than packed transformed (36 x C x K), which stream through every block
    /// of tiles: past the stride-2 pack limit (CacheBudget), as at ResNet-18's 256 -> 512 (19 MB
    /// transformed), packing costs more than the forward saves. Fused, its packed weights are the raw
    /// kernels [K/16][C][9][16]. ResNet-18's 64 -> 128 (1.2 MB) and 128 -> 256 (4.7 MB) stay packed.
    public var ws2FusedWeights: Bool { isWinogradStride2Shape && ws2PackedCount * 4 > budget.stride2PackLimit }

    /// Floats of the packed forward weights: transformed, or raw when fused.
    var ws2PackedForwardCount: Int { ws2FusedWeights ? wgKernelPanelCount : ws2PackedCount }

    var ws2Tiles: Int { n * ceilDiv(oh, wgOut) * ceilDiv(ow, wgOut) }
    /// Floats from one class's kernels [K/16][C][16] to the next (one cache line of padding).
    var ws2ClassStride: Int { c * ceilDiv(k, convColBlock) * convColBlock + wgPointPad }
    var ws2PackedCount: Int { ws2Classes * ws2ClassStride }

    /// Tiles per block: V and M of a block (81 rows per tile) near 768 KB, in L2 beside the class
    /// being multiplied, a multiple of the register tile's rows (gemmRowUnit): 12 tiles at 64 -> 128
    /// channels, 6 at 128 -> 256 (12 with wide tiles); the sizes tried: docs/PERFORMANCE.md.
    var ws2BlockTiles: Int {
        let cp = ceilDiv(c, fvecWidth) * fvecWidth, kp = ceilDiv(k, convColBlock) * convColBlock
        let u = gemmRowUnit, t = max(u, budget.stride2Block / (81 * (cp + kp) * 4))
        return min(ceilDiv(ws2Tiles, u) * u, t / u * u)
    }

    /// Per-thread scratch: V [81 rows per tile][C], M [81 rows per tile][K] (and 6 rows of slack for
    /// the last GEMM tile), the transform's 81 vectors, 81 pixel pointers, the point table, a zero row.
    var ws2Layout: WS2Layout {
        let cp = ceilDiv(c, fvecWidth) * fvecWidth, kp = ceilDiv(k, convColBlock) * convColBlock
        let tb = ws2BlockTiles, offM = align64(81 * tb * cp * 4)
        return WS2Layout(offM: offM, offT: offM + align64((81 * tb * kp + convTileRows * convColBlock) * 4), cp: cp)
    }
}

/// Byte offsets of a stride-2 forward's per-thread scratch (the fused forward's threads start at
/// offThreads, after its shared V): M at offM, then from offT the transform's 81 vectors, 81 pixel
/// pointers, the point table and a zero row of cp floats, which both forwards lay out alike.
struct WS2Layout {
    var offThreads = 0, offM = 0, offT = 0, offSrc = 0, offFirst = 0, offZero = 0, perThread = 0
    init(offThreads: Int = 0, offM: Int, offT: Int, cp: Int) {
        self.offThreads = offThreads; self.offM = offM; self.offT = offT
        offSrc = offT + 81 * RVec.scalarCount * 4
        offFirst = offSrc + 81 * 8
        offZero = align64(offFirst + 3 * 81 * 8)
        perThread = offZero + align64(cp * 4) + 64
    }
}

/// One dimension's point p (0..<9): its kernel class (0..<5 odd points, 5 the even ones) and its
/// index among the even points.
@inline(__always) func ws2Class1D(_ p: Int) -> Int { p < 5 ? p : 5 }
@inline(__always) func ws2Sub1D(_ p: Int) -> Int { p < 5 ? 0 : p - 5 }
/// Points per tile of class q = 6 * row class + column class.
@inline(__always) func ws2Mult(_ q: Int) -> Int { (q / 6 == 5 ? 4 : 1) * (q % 6 == 5 ? 4 : 1) }

/// Where class q's rows start in a block of `nt` tiles (classes in order, mult * nt rows each): every
/// earlier row class holds 9 rows per tile (5 odd column classes of 1, the even one of 4), and the
/// earlier classes of q's own row class 1 each (4 each in the even row class).
@inline(__always) func ws2ClassRow(_ q: Int, _ nt: Int) -> Int {
    let ra = q / 6, cb = q % 6
    return (ra * 9 + (ra == 5 ? 4 : 1) * cb) * nt
}

/// Point p = 9 a + b of a tile: its class and its index among the class's points of the tile.
@inline(__always) func ws2ClassOf(_ p: Int) -> (q: Int, sub: Int) {
    let a = p / 9, b = p % 9, q = ws2Class1D(a) * 6 + ws2Class1D(b)
    return (q, ws2Sub1D(a) * (q % 6 == 5 ? 4 : 1) + ws2Sub1D(b))
}

/// The 1-D input transform of 9 samples x[-1..7]: the odd samples' F(4,2) points, then the even samples.
@inline(__always)
func ws2BT<V: SIMD>(_ x: (V, V, V, V, V, V, V, V, V)) -> (V, V, V, V, V, V, V, V, V) where V.Scalar == Float {
    let o0 = x.0, o1 = x.2, o2 = x.4, o3 = x.6, o4 = x.8
    let two = V(repeating: 2), three = V(repeating: 3)
    return (
        two * (o0 - o2) + (o3 - o1),
        o3 - o2 - two * o1,
        two * o1 - three * o2 + o3,
        o3 - o1,
        two * (o1 - o3) + (o4 - o2),
        x.1, x.3, x.5, x.7
    )
}

/// The 1-D output transform of 9 points: 4 outputs, A^T of the odd points plus the even points.
@inline(__always)
func ws2AT<V: SIMD>(_ m: (V, V, V, V, V, V, V, V, V)) -> (V, V, V, V) where V.Scalar == Float {
    let s12 = m.1 + m.2, d12 = m.1 - m.2
    return (
        m.0 + s12 + m.3 + m.5,
        d12 + V(repeating: 2) * m.3 + m.6,
        s12 + V(repeating: 4) * m.3 + m.7,
        d12 + V(repeating: 8) * m.3 + m.4 + m.8
    )
}

/// The 1-D kernel transform of 3 taps into the 6 classes: G (g0, g2) for the odd points, g1 for the even.
@inline(__always)
func ws2G(_ g0: FVec, _ g1: FVec, _ g2: FVec) -> (FVec, FVec, FVec, FVec, FVec, FVec) {
    let half = FVec(repeating: 0.5), sixth = FVec(repeating: 1.0 / 6), third = FVec(repeating: 1.0 / 3)
    return (half * g0, -half * (g0 + g2), sixth * (g2 - g0), sixth * g0 + third * g2, g2, g1)
}

/// OIHW weights -> U [36 classes][class stride] ([K/16][C][16] per class), or with fused weights the
/// raw kernels [K/16][C][9][16] (wgGatherKernels' panels, as the stride-1 fused forward).
func ws2PackWeights(_ sh: ConvPlan, weights w: UnsafePointer<Float>, packed out: UnsafeMutablePointer<Float>) {
    let C = sh.c, K = sh.k, kb = ceilDiv(K, convColBlock), cs = sh.ws2ClassStride, fused = sh.ws2FusedWeights
    parallelForDynamic(kb * C, chunksPerThread: 8) { lo, hi, _ in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 9 * convColBlock) { buf in
            for item in lo..<hi {
                let b0 = item / C, ci = item % C
                if fused {
                    wgGatherKernels(
                        w, inC: C, outC: K, transposed: false, block: b0, channel: ci,
                        into: out + (b0 * C + ci) * 9 * convColBlock)
                } else {
                    wgGatherKernels(
                        w, inC: C, outC: K, transposed: false, block: b0, channel: ci, into: buf.baseAddress!)
                    ws2TransformKernel(
                        UnsafePointer(buf.baseAddress!), into: out + (b0 * C + ci) * convColBlock,
                        classStride: cs)
                }
            }
        }
    }
}

/// The 36 classes of one input channel's kernels to 16 output channels, from g[9 taps][16]:
/// out[class * classStride + j]. Packing and the fused forward transform through it (same bits).
@inline(__always)
func ws2TransformKernel(_ g: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, classStride cs: Int) {
    for hv in 0..<(convColBlock / fvecWidth) {
        let h = hv * fvecWidth
        @inline(__always) func tap(_ t: Int) -> FVec { vload(g + t * convColBlock + h) }
        // Per kernel row, its 6 column classes; then per column class, the 6 row classes.
        let r0 = ws2G(tap(0), tap(1), tap(2)), r1 = ws2G(tap(3), tap(4), tap(5))
        let r2 = ws2G(tap(6), tap(7), tap(8))
        @inline(__always) func store(_ cb: Int, _ a: FVec, _ b: FVec, _ c: FVec) {
            let v = ws2G(a, b, c)
            let o = out + cb * cs + h
            vstore(v.0, o); vstore(v.1, o + 6 * cs); vstore(v.2, o + 12 * cs)
            vstore(v.3, o + 18 * cs); vstore(v.4, o + 24 * cs); vstore(v.5, o + 30 * cs)
        }
        store(0, r0.0, r1.0, r2.0); store(1, r0.1, r1.1, r2.1); store(2, r0.2, r1.2, r2.2)
        store(3, r0.3, r1.3, r2.3); store(4, r0.4, r1.4, r2.4); store(5, r0.5, r1.5, r2.5)
    }
}

/// Per point p of a tile in a block of nt tiles: its first row in V and M (tile 0, output block 0),
/// the rows between tiles (its class's points per tile), and in the packed forward's M the rows of the
/// earlier classes' other output blocks (`kb` blocks): first[p], first[81 + p], first[162 + p].
@inline(__always)
func ws2PointTable(_ first: UnsafeMutablePointer<Int>, tiles nt: Int, outputBlocks kb: Int) {
    for p in 0..<81 {
        let (q, sub) = ws2ClassOf(p)
        first[p] = ws2ClassRow(q, nt) + sub
        first[81 + p] = ws2Mult(q)
        first[162 + p] = ws2ClassRow(q, nt) * (kb - 1)
    }
}

/// Input transform of `tile` (row ti of its block) into V[class rows][cp].
@inline(__always)
func ws2InputTile(
    _ sh: ConvPlan, _ x: UnsafePointer<Float>, tile: Int, _ ti: Int, V: UnsafeMutablePointer<Float>,
    first: UnsafePointer<Int>, src: UnsafeMutablePointer<UnsafePointer<Float>>,
    temp T: UnsafeMutablePointer<FVec>, zero: UnsafeMutablePointer<Float>
) {
    let wide = sh.wide
    let C = sh.c, cp = ceilDiv(C, fvecWidth) * fvecWidth
    let tilesH = ceilDiv(sh.oh, wgOut), tilesW = ceilDiv(sh.ow, wgOut)
    if tile + wgPrefetchDistance < sh.n * tilesH * tilesW {
        // The window of the tile ahead past the one before it: its last 8 columns (all 9 in a row's first).
        let (b, ty, tx) = wgTileOrigin(tile + wgPrefetchDistance, tilesH, tilesW)
        wgPrefetchWindow(
            x, image: b, row: ty * 2 * wgOut - 1, rows: ws2In, columns: tx * 2 * wgOut - (tx == 0 ? 1 : 0),
            tx * 2 * wgOut + ws2In - 1, H: sh.h, W: sh.w, C: C)
    }
    let (b, ty, tx) = wgTileOrigin(tile, tilesH, tilesW)
    wgWindowPointers(
        x, image: b, row: ty * 2 * wgOut - 1, column: tx * 2 * wgOut - 1, edge: ws2In,
        H: sh.h, W: sh.w, C: C, zero: zero, into: src)
    /// One vector of channels from c0: the two passes of the 9-point transform.
    @inline(__always) func lane<W: SIMD>(_ c0: Int, _ T: UnsafeMutablePointer<W>, _ ld: (Int) -> W)
    where W.Scalar == Float {
        for j in 0..<ws2In {
            let r = ws2BT(
                (
                    ld(j), ld(9 + j), ld(18 + j), ld(27 + j), ld(36 + j), ld(45 + j), ld(54 + j),
                    ld(63 + j), ld(72 + j)
                ))
            T[j] = r.0; T[9 + j] = r.1; T[18 + j] = r.2; T[27 + j] = r.3; T[36 + j] = r.4
            T[45 + j] = r.5; T[54 + j] = r.6; T[63 + j] = r.7; T[72 + j] = r.8
        }
        for a in 0..<ws2In {
            let t = T + a * 9
            let r = ws2BT((t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]))
            @inline(__always) func put(_ v: W, _ p: Int) { gstore(v, V + (first[p] + ti * first[81 + p]) * cp + c0) }
            let p = a * 9
            put(r.0, p); put(r.1, p + 1); put(r.2, p + 2); put(r.3, p + 3); put(r.4, p + 4)
            put(r.5, p + 5); put(r.6, p + 6); put(r.7, p + 7); put(r.8, p + 8)
        }
    }
    var c0 = 0
    let TW = UnsafeMutableRawPointer(T).assumingMemoryBound(to: RVec.self)
    while wide && c0 + RVec.scalarCount <= C {
        lane(c0, TW) { k in gload(src[k] + c0) }
        c0 += RVec.scalarCount
    }
    while c0 < C {
        let cn = min(fvecWidth, C - c0)
        lane(c0, T) { k in cn == fvecWidth ? vload(src[k] + c0) : vloadPartial(src[k] + c0, cn) }
        c0 += fvecWidth
    }
}

/// Output transform of `tile` for output block bi: y[tile] = A M A^T, 8 output channels at a time,
/// point p's row of M at M + row(p) * 16.
@inline(__always)
func ws2OutputTile(
    _ sh: ConvPlan, tile: Int, outputBlock bi: Int, M: UnsafePointer<Float>,
    output y: UnsafeMutablePointer<Float>, temp T: UnsafeMutablePointer<FVec>, row: (Int) -> Int
) {
    let wide = sh.wide
    let K = sh.k, OH = sh.oh, OW = sh.ow
    let (b, ty, tx) = wgTileOrigin(tile, ceilDiv(OH, wgOut), ceilDiv(OW, wgOut))
    let oh0 = ty * wgOut, ow0 = tx * wgOut
    let rowsOut = min(wgOut, OH - oh0), colsOut = min(wgOut, OW - ow0)
    let k0 = bi * convColBlock, kn = min(convColBlock, K - k0)
    /// `hn` channels from column h of the block.
    @inline(__always) func lane<W: SIMD>(_ h: Int, _ hn: Int, _ T: UnsafeMutablePointer<W>) where W.Scalar == Float {
        @inline(__always) func m(_ p: Int) -> W { gload(M + row(p) * convColBlock + h) }
        for bp in 0..<ws2In {
            let r = ws2AT(
                (
                    m(bp), m(9 + bp), m(18 + bp), m(27 + bp), m(36 + bp), m(45 + bp), m(54 + bp),
                    m(63 + bp), m(72 + bp)
                ))
            T[bp] = r.0; T[9 + bp] = r.1; T[18 + bp] = r.2; T[27 + bp] = r.3
        }
        for i in 0..<rowsOut {
            let t = T + i * 9
            let r = ws2AT((t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]))
            wgStoreRow(
                r, y + ((b * OH + oh0 + i) * OW + ow0) * K + k0 + h, K: K, cols: colsOut, lanes: hn,
                accumulate: false)
        }
    }
    if wide && kn == convColBlock {
        lane(0, convColBlock, UnsafeMutableRawPointer(T).assumingMemoryBound(to: RVec.self))
        return
    }
    for hv in 0..<2 where hv * fvecWidth < kn {
        lane(hv * fvecWidth, min(fvecWidth, kn - hv * fvecWidth), T)
    }
}

/// y = conv3x3 stride 2 pad 1 (x) for a stride-2 Winograd shape; `packed` from ws2PackWeights.
func ws2Forward(
    _ sh: ConvPlan, input x: UnsafePointer<Float>, packed u: UnsafePointer<Float>,
    output y: UnsafeMutablePointer<Float>, scratch: UnsafeMutableRawPointer
) {
    let wide = sh.wide
    if sh.ws2FusedWeights { ws2ForwardFused(sh, input: x, kernels: u, output: y, scratch: scratch); return }
    let C = sh.c, K = sh.k
    let tiles = sh.ws2Tiles
    let kb = ceilDiv(K, convColBlock), cp = ceilDiv(C, fvecWidth) * fvecWidth
    let tb = sh.ws2BlockTiles, blocks = ceilDiv(tiles, tb), cs = sh.ws2ClassStride
    let L = sh.ws2Layout
    parallelForDynamic(blocks) { lo, hi, thread in
        let base = scratch + thread * L.perThread
        let V = base.bindMemory(to: Float.self, capacity: L.offM / 4)
        let M = (base + L.offM).bindMemory(to: Float.self, capacity: (L.offT - L.offM) / 4)
        let T = (base + L.offT).bindMemory(to: FVec.self, capacity: 81)
        let src = (base + L.offSrc).bindMemory(to: UnsafePointer<Float>.self, capacity: 81)
        let first = (base + L.offFirst).bindMemory(to: Int.self, capacity: 3 * 81)
        let zero = (base + L.offZero).bindMemory(to: Float.self, capacity: cp)
        zero.initialize(repeating: 0, count: cp)
        var tableTiles = -1
        for blk in lo..<hi {
            let t0 = blk * tb, nt = min(tb, tiles - t0)
            if nt != tableTiles { tableTiles = nt; ws2PointTable(first, tiles: nt, outputBlocks: kb) }
            // 1. Input transform: V[class rows][c].
            for ti in 0..<nt {
                ws2InputTile(sh, x, tile: t0 + ti, ti, V: V, first: first, src: src, temp: T, zero: zero)
            }
            // 2. One GEMM per class: M[class][kb][class rows][16] = V[class rows][:] x U[class][kb][:][16].
            for q in 0..<ws2Classes {
                let rows = nt * ws2Mult(q), r0q = ws2ClassRow(q, nt)
                var bi = 0
                while bi < kb {
                    let o = M + (r0q * kb + bi * rows) * convColBlock, panel = u + q * cs + bi * C * convColBlock
                    if wide && bi + 1 < kb {
                        // Two output blocks per register tile.
                        wideMultiplyRowsPair(
                            o, o + rows * convColBlock, UnsafePointer(V + r0q * cp), count: rows, stride: cp,
                            panel: panel, panel2: panel + C * convColBlock, depth: C)
                        bi += 2
                    } else {
                        wgMultiplyRows(
                            o, UnsafePointer(V + r0q * cp), count: rows, stride: cp, panel: panel, depth: C, wide: wide)
                        bi += 1
                    }
                }
            }
            // 3. Output transform. M row of point p: its class's start (all blocks of the earlier
            // classes, then bi blocks of its own), then the tile's and the point's row.
            for ti in 0..<nt {
                for bi in 0..<kb {
                    ws2OutputTile(sh, tile: t0 + ti, outputBlock: bi, M: M, output: y, temp: T) { p in
                        first[162 + p] + first[p] + bi * nt * first[81 + p] + ti * first[81 + p]
                    }
                }
            }
        }
    }
}

extension ConvPlan {
    /// Tiles per block of the fused stride-2 forward: V of a block (81 rows per tile, 5.3 MB at 256
    /// channels) is shared and re-read by every output block's item.
    var ws2FusedBlockTiles: Int { min(ws2Tiles, 64) }
    /// Fused scratch: V [81 rows per tile][C] of a block, shared; per thread one output block's
    /// transformed kernels [36][C][16], its M [81 rows per tile][16] (and a GEMM tile of slack), then
    /// the transform's 81 vectors, 81 pixel pointers, the point table and a zero row.
    var ws2FusedLayout: WS2Layout {
        let cp = ceilDiv(c, fvecWidth) * fvecWidth, tb = ws2FusedBlockTiles
        let offM = align64(ws2Classes * c * convColBlock * 4)
        return WS2Layout(
            offThreads: align64(81 * tb * cp * 4), offM: offM,
            offT: offM + align64((81 * tb + convTileRows) * convColBlock * 4), cp: cp)
    }
    /// Scratch bytes of the stride-2 forward on `threads` threads.
    func ws2ScratchBytes(threads t: Int) -> Int {
        if ws2FusedWeights { let l = ws2FusedLayout; return l.offThreads + t * l.perThread + 64 }
        return t * ws2Layout.perThread
    }
}

/// The stride-2 forward with fused weights (ws2FusedWeights), `kernels` the raw panels [K/16][C][9][16].
/// Per block of tiles: all threads transform the block's input into a shared V; then each item, one
/// output block of 16 channels, transforms its kernels into the thread's U (the packing's expressions),
/// runs the 36 class GEMMs into its M and transforms M into its 16 channels of y. Every output
/// belongs to one item, whose GEMMs sum as the packed forward's: the same bits.
func ws2ForwardFused(
    _ sh: ConvPlan, input x: UnsafePointer<Float>, kernels: UnsafePointer<Float>,
    output y: UnsafeMutablePointer<Float>, scratch: UnsafeMutableRawPointer
) {
    let wide = sh.wide
    let C = sh.c, tiles = sh.ws2Tiles, kb = ceilDiv(sh.k, convColBlock), cp = ceilDiv(C, fvecWidth) * fvecWidth
    let tb = sh.ws2FusedBlockTiles, L = sh.ws2FusedLayout
    let V = scratch.bindMemory(to: Float.self, capacity: 81 * tb * cp)
    let classStride = C * convColBlock
    @inline(__always) func area(_ thread: Int) -> UnsafeMutableRawPointer {
        scratch + L.offThreads + thread * L.perThread
    }
    var t0 = 0
    while t0 < tiles {
        let nt = min(tb, tiles - t0)
        parallelForDynamic(nt, chunksPerThread: 4) { lo, hi, thread in
            let base = area(thread)
            let first = (base + L.offFirst).bindMemory(to: Int.self, capacity: 3 * 81)
            let zero = (base + L.offZero).bindMemory(to: Float.self, capacity: cp)
            zero.initialize(repeating: 0, count: cp)
            ws2PointTable(first, tiles: nt, outputBlocks: 1)
            for ti in lo..<hi {
                ws2InputTile(
                    sh, x, tile: t0 + ti, ti, V: V, first: first,
                    src: (base + L.offSrc).bindMemory(to: UnsafePointer<Float>.self, capacity: 81),
                    temp: (base + L.offT).bindMemory(to: FVec.self, capacity: 81), zero: zero)
            }
        }
        parallelForDynamic(kb, chunk: 1) { lo, hi, thread in
            let base = area(thread)
            let U = base.bindMemory(to: Float.self, capacity: ws2Classes * classStride)
            let M = (base + L.offM).bindMemory(to: Float.self, capacity: (81 * tb + convTileRows) * convColBlock)
            let T = (base + L.offT).bindMemory(to: FVec.self, capacity: 81)
            let first = (base + L.offFirst).bindMemory(to: Int.self, capacity: 3 * 81)
            ws2PointTable(first, tiles: nt, outputBlocks: 1)
            for bi in lo..<hi {
                let panel = kernels + bi * C * 9 * convColBlock
                for ci in 0..<C {
                    ws2TransformKernel(
                        panel + ci * 9 * convColBlock, into: U + ci * convColBlock, classStride: classStride)
                }
                for q in 0..<ws2Classes {
                    let r0q = ws2ClassRow(q, nt)
                    wgMultiplyRows(
                        M + r0q * convColBlock, UnsafePointer(V + r0q * cp), count: nt * ws2Mult(q), stride: cp,
                        panel: U + q * classStride, depth: C, wide: wide)
                }
                for ti in 0..<nt {
                    ws2OutputTile(sh, tile: t0 + ti, outputBlock: bi, M: M, output: y, temp: T) { p in
                        first[p] + ti * first[81 + p]
                    }
                }
            }
        }
        t0 += nt
    }
}
