// Winograd F(4x4, 3x3) for the 3x3, stride-1, pad-1 convolutions that carry ~90% of a ResNet's
// arithmetic (Lavin & Gray 2016; interpolation points 0, +-1, +-2, infinity).
//
// A 6x6 input tile d gives a 4x4 output tile y = A^T [ (G g G^T) (.) (B^T d B) ] A: per (input,
// output) channel pair 36 multiplies instead of 144, so the 36 "points" become 36 independent GEMMs
// [tiles x C] x [C x K] that run on the same 6x16 register tile as the direct convolution
// (convTapLoop). Activations stay NHWC, so every transform works on 8 channels per vector.
//
// Forward: each thread takes blocks of tiles, and for a block: input transform -> V [36][tiles][C],
// 36 x (K/16) GEMM panels -> M [36][K/16][tiles][16], output transform -> y. Nothing but the packed
// weights is shared, so threads never wait on each other inside a convolution.
// Backward-data is the forward of dy with the kernel flipped and transposed (pad 1, stride 1).
// Backward-weights is the adjoint: dU[point] = sum over tiles V^T (A dy A^T), then dW = G^T dU G,
// the exact gradient of the transformed forward (and so of the convolution) for any weights.
//
// FP32 error: transforms scale values by up to 8 (output) and 5 (input); results match the direct
// convolution within ~1e-5 relative on unit-scale data (the tests hold both to the float64 reference).

import CParallel

/// Output tile edge, input tile edge, points per tile.
let wgOut = 4, wgIn = 6, wgPoints = 36

extension Conv2DShape {
    /// Whether 3x3 stride-1 pad-1 convolutions run as Winograd F(4x4, 3x3) (default on). The direct
    /// kernels stay for every other shape and when this is off (benchmarks compare the two).
    nonisolated(unsafe) public static var winogradEnabled = true

    /// 3x3, stride 1, pad 1, with enough channels on both sides for the GEMMs to pay.
    public var isWinogradShape: Bool { r == 3 && s == 3 && stride == 1 && pad == 1 && c >= 8 && k >= 8 }
    public var usesWinograd: Bool { Conv2DShape.winogradEnabled && isWinogradShape }

    /// The forward convolution that computes this one's backward-data (kernel flipped, C and K swapped).
    var transposedWinograd: Conv2DShape { Conv2DShape(n: n, c: k, h: oh, w: ow, k: c, r: 3, s: 3, stride: 1, pad: 1) }

    public var wgTiles: Int { n * ceilDiv(oh, wgOut) * ceilDiv(ow, wgOut) }
    /// Floats of transformed weights [36][point stride].
    var wgPackedCount: Int { wgPoints * wgPointStride }
    /// Floats from one point of packed U to the next: its [K/16][C][16] panels and one cache line more,
    /// so that the 36 points (a power of two apart for power-of-two C and K) do not share L1 sets
    /// when the transform writes them or a GEMM reads them.
    var wgPointStride: Int { c * ceilDiv(k, convColBlock) * convColBlock + wgPointPad }
    /// Floats from one transformed point to the next in the fused forward's row of 6 points.
    var wgFusedRowStride: Int { c * convColBlock + wgPointPad }
    /// Floats of the untransformed kernels [K/16][C][9][16] that shapes with fused weights pack.
    var wgKernelPanelCount: Int { ceilDiv(k, convColBlock) * c * 9 * convColBlock }

    /// Scratch bytes of the Winograd forward with at most `threads` threads (the block plan depends on
    /// the thread count, so take the largest over 1...threads).
    func wgScratchBytes(threads: Int) -> Int {
        var most = 0
        for t in 1...max(threads, 1) { most = max(most, t * wgPlan(threads: t).perThreadBytes) }
        return most
    }

    /// Whether the weight transform runs inside the forward, one row of 6 points and 16 output channels
    /// at a time, for each block of up to 64 tiles, instead of packing: when the transformed weights
    /// would pass 4 MB (C x K >= 256 x 256) and a block's transformed input fits in 8 MB (ResNet-18's
    /// 256- and 512-channel layers). Writing and re-reading a 9-38 MB transformed kernel costs more
    /// than transforming it once per 64 tiles.
    public var wgFusedWeights: Bool {
        let cp = ceilDiv(c, fvecWidth) * fvecWidth, kp = ceilDiv(k, convColBlock) * convColBlock
        return isWinogradShape && wgPoints * c * kp * 4 > (4 << 20)
            && wgPoints * wgFusedBlockRows * cp * 4 <= Conv2DShape.wgFuseLimitBytes
    }

    /// Largest transformed input (one block of tiles) for which wgFusedWeights holds (tests lower it to
    /// reach the packed path on small shapes).
    nonisolated(unsafe) public static var wgFuseLimitBytes = 8 << 20

    /// Whether a forward with fused weights goes output block by output block (WGForwardPlan.blockOuter)
    /// rather than row by row of points. Row by row, one row of V, one row of transformed kernels and
    /// the raw kernels of one output block are in use at once; past ~1 MB (L2) together (512 channels:
    /// 811 + 196 + 295 KB) the raw kernels would stream from memory once per row, 6 times per block of
    /// tiles (56 MB per 512-channel forward). Block by block, each output block's raw kernels are read
    /// once and its 6 rows transformed in turn, the V rows re-read from L3 instead (the 512-channel
    /// forward and backward-data +21-28%, one or two threads).
    public var wgFusedByOutputBlock: Bool {
        let cp = ceilDiv(c, fvecWidth) * fvecWidth
        return wgFusedWeights
            && (wgIn * wgFusedBlockRows * cp + wgIn * cp * convColBlock + cp * 9 * convColBlock) * 4
                > Conv2DShape.wgBlockOuterBytes
    }

    /// Rows of V per point in a fused forward's largest block of tiles (up to wgFusedTiles, whole
    /// 6-row GEMM tiles): wgFusedWeights and wgFusedByOutputBlock size their working sets by it.
    var wgFusedBlockRows: Int { ceilDiv(min(wgTiles, wgFusedTiles), gemmRowUnit) * gemmRowUnit }

    /// Working set past which wgFusedByOutputBlock holds (tests lower it to reach that order on small
    /// shapes).
    nonisolated(unsafe) public static var wgBlockOuterBytes = 1 << 20

    /// Work split: tile blocks x output-channel groups. A block's V and M stay within ~1 MB (L2), or
    /// within ~256 KB when U itself fits in 1 MB.
    /// Transformed weights over 4 MB (C x K >= 256 x 256) are split by output channels across threads
    /// instead, each thread streaming only its share of U once per block of >= 64 tiles (splitting
    /// tiles would make every thread stream all of U once per small block); with fused weights each
    /// thread transforms its share of the kernels once per block of 64 tiles. The work count is a
    /// multiple of the thread count so threads get equal shares.
    func wgPlan(threads: Int) -> WGForwardPlan {
        let tiles = wgTiles
        let cp = ceilDiv(c, fvecWidth) * fvecWidth, kb = ceilDiv(k, convColBlock), kp = kb * convColBlock
        let t = max(threads, 1)
        var target = max(gemmRowUnit, (1 << 20) / (wgPoints * (cp + kp) * 4))
        var kGroups = 1
        let fused = wgFusedWeights
        if fused {
            // By output block: one item per block of 16 output channels, taken by whichever thread is
            // free; each transforms its kernels, multiplies and writes its outputs with a 152 KB M.
            // (Two blocks per item with wide tiles, which multiply two output blocks at once.)
            kGroups = wgFusedByOutputBlock ? ceilDiv(kb, wideTiles ? 2 : 1) : min(t, kb)
            target = min(tiles, wgFusedTiles)
        } else if wgPoints * c * kp * 4 > (4 << 20) && kb >= t && t > 1 {
            kGroups = t
            target = max(target, 64)
        } else if wgPoints * c * kp * 4 > (1 << 20) {
            target = max(target, 30)
        } else {
            // U fits in L2: blocks of 12 tiles keep V and M small beside it (220 KB at 64 channels),
            // where ~1 MB blocks pushed U, V and M out of L2 in turn (64-channel forward +15-20%).
            target = 2 * convTileRows
        }
        var blocks = ceilDiv(tiles, target)
        if kGroups == 1 && !fused { blocks = min(tiles, ceilDiv(max(blocks, t), t) * t) }
        let kbPerGroup = ceilDiv(kb, kGroups)
        let tb = ceilDiv(ceilDiv(tiles, blocks), gemmRowUnit) * gemmRowUnit
        // Per-thread scratch: V, M, the transform's 36 vectors, tile pointers, a zero row, and with
        // fused weights one row of 6 points of one output block's transformed kernels.
        var p = WGForwardPlan(blocks: blocks, kGroups: kGroups, kbPerGroup: kbPerGroup, tb: tb, fused: fused)
        p.offM = align64(wgPoints * tb * (cp >= 512 ? wgSkewed(cp) : cp) * 4)
        p.offT = p.offM + align64(wgPoints * tb * kbPerGroup * convColBlock * 4)
        p.offSrc = p.offT + wgPoints * 2 * fvecWidth * 4
        p.offZero = p.offSrc + wgPoints * 8
        p.offUb = p.offZero + align64(cp * 4)
        p.perThreadBytes = p.offUb + (fused ? 2 * align64(wgIn * wgFusedRowStride * 4) : 0) + 64
        return p
    }
}

/// How a Winograd forward splits its work and lays out each thread's scratch (byte offsets).
struct WGForwardPlan {
    var blocks: Int, kGroups: Int, kbPerGroup: Int, tb: Int, fused: Bool
    var offM = 0, offT = 0, offSrc = 0, offZero = 0, offUb = 0, perThreadBytes = 0
}

/// The tile's (image, tile row, tile column) in a th x tw grid of tiles per image.
@inline(__always)
func wgTileOrigin(_ tile: Int, _ th: Int, _ tw: Int) -> (b: Int, ty: Int, tx: Int) {
    (tile / (th * tw), (tile / tw) % th, tile % tw)
}

// MARK: - Transforms (one vector of channels at a time)

/// B^T applied to a column of 6: the input transform's 1-D step.
@inline(__always)
func wgBT<V: SIMD>(_ d0: V, _ d1: V, _ d2: V, _ d3: V, _ d4: V, _ d5: V) -> (V, V, V, V, V, V) where V.Scalar == Float {
    let four = V(repeating: 4), five = V(repeating: 5), two = V(repeating: 2)
    let a = d4 - d2, b = d1 - d3
    return (
        four * d0 - five * d2 + d4,
        d3 + d4 - four * (d1 + d2),
        d4 - d3 + four * (d1 - d2),
        a - two * b,
        a + two * b,
        four * d1 - five * d3 + d5
    )
}

/// A^T applied to a column of 6: the output transform's 1-D step (6 -> 4).
@inline(__always)
func wgAT<V: SIMD>(_ m0: V, _ m1: V, _ m2: V, _ m3: V, _ m4: V, _ m5: V) -> (V, V, V, V) where V.Scalar == Float {
    let s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4
    return (
        m0 + s12 + s34,
        d12 + V(repeating: 2) * d34,
        s12 + V(repeating: 4) * s34,
        d12 + V(repeating: 8) * d34 + m5
    )
}

/// A applied to a column of 4: the adjoint of wgAT (4 -> 6), for backward-weights.
@inline(__always)
func wgA<V: SIMD>(_ z0: V, _ z1: V, _ z2: V, _ z3: V) -> (V, V, V, V, V, V) where V.Scalar == Float {
    let s02 = z0 + z2, s13 = z1 + z3
    let e = z0 + V(repeating: 4) * z2, o = V(repeating: 2) * z1 + V(repeating: 8) * z3
    return (z0, s02 + s13, s02 - s13, e + o, e - o, z3)
}

/// G applied to a column of 3 (3 -> 6): the weight transform's 1-D step.
@inline(__always)
func wgG<V: SIMD>(_ g0: V, _ g1: V, _ g2: V) -> (V, V, V, V, V, V) where V.Scalar == Float {
    (
        wgGRow(0, g0, g1, g2), wgGRow(1, g0, g1, g2), wgGRow(2, g0, g1, g2),
        wgGRow(3, g0, g1, g2), wgGRow(4, g0, g1, g2), wgGRow(5, g0, g1, g2)
    )
}

/// Row i of G applied to a column of 3 (one output of wgG).
@inline(__always)
func wgGRow<V: SIMD>(_ i: Int, _ g0: V, _ g1: V, _ g2: V) -> V where V.Scalar == Float {
    switch i {
    case 0: return V(repeating: 0.25) * g0
    case 1: return V(repeating: -1.0 / 6) * ((g0 + g2) + g1)
    case 2: return V(repeating: -1.0 / 6) * ((g0 + g2) - g1)
    case 3: return (V(repeating: 1.0 / 24) * g0 + V(repeating: 1.0 / 6) * g2) + V(repeating: 1.0 / 12) * g1
    case 4: return (V(repeating: 1.0 / 24) * g0 + V(repeating: 1.0 / 6) * g2) - V(repeating: 1.0 / 12) * g1
    default: return g2
    }
}

/// G^T applied to a column of 6 (6 -> 3): the adjoint of wgG.
@inline(__always)
func wgGT(_ u0: FVec, _ u1: FVec, _ u2: FVec, _ u3: FVec, _ u4: FVec, _ u5: FVec) -> (FVec, FVec, FVec) {
    let s12 = u1 + u2, d12 = u1 - u2, s34 = u3 + u4, d34 = u3 - u4
    let sixth = FVec(repeating: 1.0 / 6)
    return (
        FVec(repeating: 0.25) * u0 - sixth * s12 + FVec(repeating: 1.0 / 24) * s34,
        sixth * (FVec(repeating: 0.5) * d34 - d12),
        sixth * (s34 - s12) + u5
    )
}

// MARK: - Tiles

/// The 6x6 input pixels of `tile` (n, ty, tx order; one pixel of padding): a pointer to each pixel's
/// C channels, or to `zero` (C zeros) outside the image, so the transform loads without branches.
@inline(__always)
func wgTilePointers(
    _ x: UnsafePointer<Float>, tile: Int, H: Int, W: Int, C: Int, zero: UnsafeMutablePointer<Float>,
    into src: UnsafeMutablePointer<UnsafePointer<Float>>
) {
    let (b, ty, tx) = wgTileOrigin(tile, ceilDiv(H, wgOut), ceilDiv(W, wgOut))
    wgWindowPointers(
        x, image: b, row: ty * wgOut - 1, column: tx * wgOut - 1, edge: wgIn, H: H, W: W, C: C,
        zero: zero, into: src)
}

/// Tiles ahead of the one being transformed whose pixels the transforms ask the cache for: a tile's
/// loads otherwise wait on memory (activations are written a layer or more before they are read).
let wgPrefetchDistance = 2

/// Asks the cache for rows r0..<r0+rows, columns c0..<c1 of image b (C channels per pixel, clipped
/// to the H x W image), one request per cache line.
@inline(__always)
func wgPrefetchWindow(
    _ x: UnsafePointer<Float>, image b: Int, row r0: Int, rows: Int, columns c0: Int, _ c1: Int,
    H: Int, W: Int, C: Int
) {
    let lo = max(c0, 0), hi = min(c1, W)
    if lo >= hi { return }
    let bytes = (hi - lo) * C * MemoryLayout<Float>.stride
    for ih in max(r0, 0)..<min(r0 + rows, H) {
        let p = UnsafeRawPointer(x + ((b * H + ih) * W + lo) * C)
        var off = 0
        while off < bytes { sal_prefetch(p + off); off += 64 }
    }
}

/// Prefetches the input pixels of F(4x4, 3x3) tile `tile` that the tile before it in its tile row
/// does not read (its last four columns; all six for a row's first tile).
@inline(__always)
func wgPrefetchTile(_ x: UnsafePointer<Float>, tile: Int, H: Int, W: Int, C: Int) {
    let (b, ty, tx) = wgTileOrigin(tile, ceilDiv(H, wgOut), ceilDiv(W, wgOut))
    wgPrefetchWindow(
        x, image: b, row: ty * wgOut - 1, rows: wgIn, columns: tx * wgOut + (tx == 0 ? -1 : 1),
        tx * wgOut + wgIn - 1, H: H, W: W, C: C)
}

/// src[i * edge + j] = the pixel (row + i, column + j) of image b (its C channels), or `zero` outside
/// the image: the input window of one tile (6x6 for F(4x4, 3x3), 9x9 for the stride-2 forward).
@inline(__always)
func wgWindowPointers(
    _ x: UnsafePointer<Float>, image b: Int, row ih0: Int, column iw0: Int, edge: Int, H: Int, W: Int,
    C: Int, zero: UnsafeMutablePointer<Float>, into src: UnsafeMutablePointer<UnsafePointer<Float>>
) {
    let z = UnsafePointer(zero)
    for i in 0..<edge {
        let ih = ih0 + i
        let rowOK = ih >= 0 && ih < H
        let row = x + (b * H + ih) * W * C
        for j in 0..<edge {
            let iw = iw0 + j
            src[i * edge + j] = rowOK && iw >= 0 && iw < W ? row + iw * C : z
        }
    }
}

/// out[r][16] = a[r][0..<depth] x panel[depth][16] for rows r < count (`stride` floats apart), six
/// rows per register tile; the last tile repeats the last row, so `out` needs room up to the next
/// multiple of 6 rows.
@inline(__always)
func wgMultiplyRows(
    _ out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, count: Int, stride: Int,
    panel: UnsafePointer<Float>, depth: Int
) {
    if wideTiles { wideMultiplyRows(out, a, count: count, stride: stride, panel: panel, depth: depth); return }
    let last = a + (count - 1) * stride
    var r0 = 0
    while r0 < count {
        func row(_ i: Int) -> UnsafePointer<Float> { r0 + i < count ? a + (r0 + i) * stride : last }
        convTapLoop(
            out + r0 * convColBlock, row(0), row(1), row(2), row(3), row(4), row(5), panel, depth, fresh: true,
            segments: 1, segmentStride: 0)
        r0 += convTileRows
    }
}

/// Stores (or adds) the first `cols` of a row of 4 outputs, `K` floats apart, `lanes` channels each.
@inline(__always)
func wgStoreRow<V: SIMD>(
    _ r: (V, V, V, V), _ o: UnsafeMutablePointer<Float>, K: Int, cols: Int, lanes: Int,
    accumulate: Bool
) where V.Scalar == Float {
    wgStore(r.0, o, lanes, accumulate)
    if cols > 1 { wgStore(r.1, o + K, lanes, accumulate) }
    if cols > 2 { wgStore(r.2, o + 2 * K, lanes, accumulate) }
    if cols > 3 { wgStore(r.3, o + 3 * K, lanes, accumulate) }
}

/// Where a transform writes channel c (a multiple of the vector width) of its row: at c, or with
/// channel blocks (width w, a multiple of the vector width, `stride` floats apart) at
/// (c / w) * stride + c % w, the layout of backward-weights' V and Y.
struct WGChannelBlocks {
    var width: Int, stride: Int
    @inline(__always) func offset(_ c: Int) -> Int { (c / width) * stride + c % width }
}

@inline(__always) func wgChannelOffset(_ c: Int, _ blocks: WGChannelBlocks?) -> Int {
    if let blocks { return blocks.offset(c) }
    return c
}

/// out[(i - firstRow) * 6 + j][c] (point stride `pointStride`) = (B^T d B)[i][j] over the tile's
/// channels, for point rows firstRow..<firstRow+rowCount (channel c at wgChannelOffset). `temp`: 36 vectors.
@inline(__always)
func wgInputTile(
    _ src: UnsafeMutablePointer<UnsafePointer<Float>>, channels C: Int, temp T: UnsafeMutablePointer<FVec>,
    out: UnsafeMutablePointer<Float>, pointStride: Int, firstRow: Int, rowCount: Int,
    blocks: WGChannelBlocks? = nil
) {
    var c0 = 0
    let TW = UnsafeMutableRawPointer(T).assumingMemoryBound(to: RVec.self)
    while wideTiles && c0 + RVec.scalarCount <= C {
        let n = RVec.scalarCount
        wgInputLane(TW, out + wgChannelOffset(c0, blocks), pointStride, firstRow, rowCount) { k in
            gloadN(src[k] + c0, n)
        }
        c0 += n
    }
    while c0 < C {
        let cn = min(fvecWidth, C - c0)
        wgInputLane(T, out + wgChannelOffset(c0, blocks), pointStride, firstRow, rowCount) { k in
            gloadN(src[k] + c0, cn)
        }
        c0 += fvecWidth
    }
}

/// wgInputTile of d = max(shift + (x - mean) * scale, 0) of the pixels x, zero in the padding (the
/// pixels that point at `zero`), with this tile's group's mean and scale rows: bnAffine, as bnApply,
/// so d has the bits of a written batch-norm output.
@inline(__always)
func wgInputTileAffine(
    _ src: UnsafeMutablePointer<UnsafePointer<Float>>, channels C: Int, temp T: UnsafeMutablePointer<FVec>,
    out: UnsafeMutablePointer<Float>, pointStride: Int, firstRow: Int, rowCount: Int,
    mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>,
    zero: UnsafePointer<Float>, blocks: WGChannelBlocks? = nil
) {
    var c0 = 0
    let TW = UnsafeMutableRawPointer(T).assumingMemoryBound(to: RVec.self)
    while wideTiles && c0 + RVec.scalarCount <= C {
        wgInputLaneAffine(
            src, c0: c0, n: RVec.scalarCount, temp: TW, out: out + wgChannelOffset(c0, blocks),
            pointStride: pointStride, firstRow: firstRow, rowCount: rowCount, mean: mean, scale: scale,
            shift: shift, zero: zero)
        c0 += RVec.scalarCount
    }
    while c0 < C {
        wgInputLaneAffine(
            src, c0: c0, n: min(fvecWidth, C - c0), temp: T, out: out + wgChannelOffset(c0, blocks),
            pointStride: pointStride, firstRow: firstRow, rowCount: rowCount, mean: mean, scale: scale,
            shift: shift, zero: zero)
        c0 += fvecWidth
    }
}

/// wgInputTileAffine's lanes c0..<c0+n (one vector of V; mean and scale padded to whole vectors).
@inline(__always)
func wgInputLaneAffine<V: FloatVector>(
    _ src: UnsafeMutablePointer<UnsafePointer<Float>>, c0: Int, n: Int,
    temp T: UnsafeMutablePointer<V>, out: UnsafeMutablePointer<Float>, pointStride: Int,
    firstRow: Int, rowCount: Int, mean: UnsafePointer<Float>, scale: UnsafePointer<Float>,
    shift: UnsafePointer<Float>, zero: UnsafePointer<Float>
) {
    let mu: V = gload(mean + c0), sc: V = gload(scale + c0), sh: V = gloadN(shift + c0, n)
    wgInputLane(T, out, pointStride, firstRow, rowCount) { k in
        src[k] == zero ? V() : bnAffine(centred: gloadN(src[k] + c0, n) - mu, scale: sc, shift: sh).relu()
    }
}

/// The two passes of B^T d B for one vector of channels, d[k] = ld(k) (k = 6 i + j), into out[point]
/// for point rows firstRow..<firstRow+rowCount.
@inline(__always)
func wgInputLane<V: SIMD>(
    _ T: UnsafeMutablePointer<V>, _ out: UnsafeMutablePointer<Float>, _ pointStride: Int,
    _ firstRow: Int, _ rowCount: Int, _ ld: (Int) -> V
) where V.Scalar == Float {
    for j in 0..<wgIn {
        let r = wgBT(ld(j), ld(6 + j), ld(12 + j), ld(18 + j), ld(24 + j), ld(30 + j))
        T[j] = r.0; T[6 + j] = r.1; T[12 + j] = r.2; T[18 + j] = r.3; T[24 + j] = r.4; T[30 + j] = r.5
    }
    for i in firstRow..<(firstRow + rowCount) {
        let r = wgBT(T[i * 6], T[i * 6 + 1], T[i * 6 + 2], T[i * 6 + 3], T[i * 6 + 4], T[i * 6 + 5])
        let p = out + ((i - firstRow) * 6) * pointStride
        gstore(r.0, p); gstore(r.1, p + pointStride); gstore(r.2, p + 2 * pointStride)
        gstore(r.3, p + 3 * pointStride); gstore(r.4, p + 4 * pointStride); gstore(r.5, p + 5 * pointStride)
    }
}

/// A batch norm + ReLU that a Winograd forward applies to its input as it loads it:
/// x' = max(shift + (x - mean) * scale, 0) per channel, the padding staying zero, with one `mean` and one
/// `scale` row (groupStride floats apart, zero past C, at least whole vectors) per group of
/// `imagesPerGroup` images, `shift` (C floats) shared: a mid-block batch norm whose output is never
/// written (batchNormTrainingStatistics and batchNormInferenceAffine give the rows).
public struct ConvInputAffine {
    public var mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>
    public var groupStride: Int, imagesPerGroup: Int
    public init(
        mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>,
        groupStride: Int, imagesPerGroup: Int
    ) {
        precondition(imagesPerGroup > 0, "an input affine needs at least one image per group")
        self.mean = mean; self.scale = scale; self.shift = shift
        self.groupStride = groupStride; self.imagesPerGroup = imagesPerGroup
    }

    /// The transform of `tile` (th x tw tiles per image) with its image's group's rows
    /// (wgInputTileAffine; `src` from wgTilePointers with `zero`).
    @inline(__always)
    func inputTile(
        _ tile: Int, tilesPerImage: Int, _ src: UnsafeMutablePointer<UnsafePointer<Float>>, channels C: Int,
        temp T: UnsafeMutablePointer<FVec>, out: UnsafeMutablePointer<Float>, pointStride: Int, firstRow: Int,
        rowCount: Int, zero: UnsafePointer<Float>, blocks: WGChannelBlocks? = nil
    ) {
        let g = tile / tilesPerImage / imagesPerGroup
        wgInputTileAffine(
            src, channels: C, temp: T, out: out, pointStride: pointStride, firstRow: firstRow,
            rowCount: rowCount, mean: mean + g * groupStride, scale: scale + g * groupStride, shift: shift,
            zero: zero, blocks: blocks)
    }
}

// MARK: - Weight packing

/// OIHW weights -> U [36][point stride] ([K/16][C][16] per point) for the forward (`transposed`: the
/// backward-data kernel, w'[c][k][r][s] = w[k][c][2-r][2-s], i.e. U' [36][C/16][K][16] per point).
/// Shapes whose transform is fused into the forward (wgFusedWeights) get the untransformed kernels
/// in the same panel order instead, [K/16][C][9 taps][16], which the forward transforms row by row.
func wgPackWeights(
    _ sh: Conv2DShape, weights w: UnsafePointer<Float>, transposed: Bool,
    packed out: UnsafeMutablePointer<Float>
) {
    // The packed kernel maps `inC` channels to `outC` channels.
    let inC = transposed ? sh.k : sh.c, outC = transposed ? sh.c : sh.k
    let packedShape = transposed ? sh.transposedWinograd : sh, fused = packedShape.wgFusedWeights
    let ob = ceilDiv(outC, convColBlock), pointStride = packedShape.wgPointStride
    let cChunks = ceilDiv(inC, wgPackChannels)
    parallelForDynamic(ob * cChunks, chunksPerThread: 8) { lo, hi, _ in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: wgTransformScratch) { buf in
            for item in lo..<hi {
                let b = item / cChunks, c0 = (item % cChunks) * wgPackChannels, c1 = min(c0 + wgPackChannels, inC)
                if fused {
                    wgGatherKernelChunk(
                        w, inC: inC, outC: outC, transposed: transposed, block: b, c0: c0, c1: c1,
                        into: out + (b * inC + c0) * 9 * convColBlock)
                } else {
                    wgGatherKernelChunk(
                        w, inC: inC, outC: outC, transposed: transposed, block: b, c0: c0, c1: c1,
                        into: buf.baseAddress!)
                    for i in 0..<wgIn {
                        wgTransformKernelRow(
                            buf.baseAddress!, channels: c1 - c0, row: i,
                            out: out + b * inC * convColBlock + i * wgIn * pointStride + c0 * convColBlock,
                            pointStride: pointStride)
                    }
                }
            }
        }
    }
}

/// Floats of padding after each point of packed U (one cache line; see wgPointStride).
let wgPointPad = 16
/// Tiles per block of a forward with fused weights: one row of V (6 points x 64 tiles) is 393 KB at
/// 256 channels and 786 KB at 512, within L2 beside the row's transformed kernels.
let wgFusedTiles = 64
/// Input channels per item of weight packing: one 16 x 144 transpose of the raw kernels per item.
let wgPackChannels = 16
/// Floats of scratch the weight packing needs: one item's gathered kernels [16][9][16].
let wgTransformScratch = wgPackChannels * 9 * convColBlock

/// g[(ci - c0) * 144 + tap * 16 + j] = the 3x3 kernels of input channels c0..<c1 (wgGatherKernels,
/// channel after channel). Forward weights of a whole block of 16 output channels are 16 rows of
/// (c1 - c0) * 9 consecutive floats in OIHW, so the gather is one transpose (sal_transpose16).
@inline(__always)
func wgGatherKernelChunk(
    _ w: UnsafePointer<Float>, inC: Int, outC: Int, transposed: Bool, block b: Int, c0: Int, c1: Int,
    into g: UnsafeMutablePointer<Float>
) {
    let o0 = b * convColBlock
    if !transposed && o0 + convColBlock <= outC {
        sal_transpose16(w + (o0 * inC + c0) * 9, inC * 9, (c1 - c0) * 9, g)
        return
    }
    for ci in c0..<c1 {
        wgGatherKernels(
            w, inC: inC, outC: outC, transposed: transposed, block: b, channel: ci,
            into: g + (ci - c0) * 9 * convColBlock)
    }
}

/// g[tap][j] = the 3x3 kernel from input channel `ci` to output channel 16*block+j (zero past outC),
/// taps in row-major order; OIHW [outC][inC][3][3], or when `transposed` the original [inC][outC][3][3]
/// read flipped (backward-data).
@inline(__always)
func wgGatherKernels(
    _ w: UnsafePointer<Float>, inC: Int, outC: Int, transposed: Bool, block b: Int, channel ci: Int,
    into g: UnsafeMutablePointer<Float>
) {
    let o0 = b * convColBlock, on = min(convColBlock, outC - o0)
    if on < convColBlock { g.initialize(repeating: 0, count: 9 * convColBlock) }
    if transposed {
        let src = w + (ci * outC + o0) * 9
        for j in 0..<on { for tap in 0..<9 { g[tap * convColBlock + j] = src[j * 9 + 8 - tap] } }
    } else {
        for j in 0..<on {
            let src = w + ((o0 + j) * inC + ci) * 9
            for tap in 0..<9 { g[tap * convColBlock + j] = src[tap] }
        }
    }
}

/// Points (row, 0..<6) of the transformed kernels of one output block, from its untransformed panel
/// [C][9][16]: out[j * pointStride + ci * 16 + lane] = (G g G^T)[row][j]. Packing (one channel at a
/// time) and the fused forward both transform through it, so the two give the same bits.
@inline(__always)
func wgTransformKernelRow(
    _ panel: UnsafePointer<Float>, channels C: Int, row i: Int, out: UnsafeMutablePointer<Float>,
    pointStride: Int
) {
    @inline(__always) func lanes<V: SIMD>(_ g: UnsafePointer<Float>, _ base: UnsafeMutablePointer<Float>, _: V.Type)
    where V.Scalar == Float {
        @inline(__always) func tap(_ t: Int) -> V { gload(g + t * convColBlock) }
        let r = wgG(
            wgGRow(i, tap(0), tap(3), tap(6)), wgGRow(i, tap(1), tap(4), tap(7)), wgGRow(i, tap(2), tap(5), tap(8)))
        gstore(r.0, base); gstore(r.1, base + pointStride); gstore(r.2, base + 2 * pointStride)
        gstore(r.3, base + 3 * pointStride); gstore(r.4, base + 4 * pointStride); gstore(r.5, base + 5 * pointStride)
    }
    for ci in 0..<C {
        let g = panel + ci * 9 * convColBlock, base = out + ci * convColBlock
        if wideTiles {
            lanes(g, base, RVec.self)
        } else {
            // (A counted loop: `stride(from:to:by:)` here compiled to a call per iteration.)
            for hv in 0..<(convColBlock / fvecWidth) { lanes(g + hv * fvecWidth, base + hv * fvecWidth, FVec.self) }
        }
    }
}

// MARK: - Forward

/// Batch-norm statistics in a Winograd forward's epilogue: as the output transform writes each tile,
/// it leaves the tile's column sums of d = y - shift (one shift per output channel, known before the
/// convolution, e.g. the running mean) in `sums`: for tile t and channel k, Σ d at
/// sums[t * 2 * stride + k] and Σ d² at sums[t * 2 * stride + stride + k] (stride = K rounded up to 16),
/// each over the tile's output pixels in row-major order. The batch norm that follows reduces these
/// (batchNormTrainingStatistics with BNTileSums) instead of reading y back.
public struct ConvOutputSums {
    public var sums: UnsafeMutablePointer<Float>, shift: UnsafePointer<Float>
    public init(sums: UnsafeMutablePointer<Float>, shift: UnsafePointer<Float>) { self.sums = sums; self.shift = shift }
    /// Floats of `sums` for a forward of `sh`.
    public static func count(_ sh: Conv2DShape) -> Int { sh.wgTiles * 2 * stride(sh) }
    /// Floats from one tile's Σ d row to its Σ d² row.
    public static func stride(_ sh: Conv2DShape) -> Int { ceilDiv(sh.k, convColBlock) * convColBlock }
}

/// y (= or +=) conv3x3(x) for a Winograd shape; `packed` from wgPackWeights of this shape.
/// With fused weights `packed` holds the untransformed kernels [K/16][C][9][16].
/// With `affine`, the input is x' of ConvInputAffine, not x.
func wgForward(
    _ sh: Conv2DShape, input x: UnsafePointer<Float>, packed u: UnsafePointer<Float>,
    output y: UnsafeMutablePointer<Float>, accumulate: Bool, scratch: UnsafeMutableRawPointer,
    affine: ConvInputAffine? = nil, sums: ConvOutputSums? = nil
) {
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
    let unit = gemmRowUnit
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
                    firstRow: 0, rowCount: wgIn, zero: UnsafePointer(zero))
            } else {
                wgInputTile(
                    src, channels: C, temp: T, out: V + ti * cs, pointStride: pointV, firstRow: 0, rowCount: wgIn)
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
                stride: cs, panel: panel, depth: C)
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
                wgTransformKernelRow(u + b * C * 9 * convColBlock, channels: C, row: i, out: Ub, pointStride: rowStride)
                for j in 0..<wgIn { gemm(i * wgIn + j, b, UnsafePointer(Ub + j * rowStride)) }
            }
            /// Row i of blocks b and b + 1 (wide tiles: both blocks in each register tile).
            func rowOfPair(_ i: Int, _ b: Int) {
                let Ub2 = Ub + wgIn * rowStride
                wgTransformKernelRow(u + b * C * 9 * convColBlock, channels: C, row: i, out: Ub, pointStride: rowStride)
                wgTransformKernelRow(
                    u + (b + 1) * C * 9 * convColBlock, channels: C, row: i, out: Ub2, pointStride: rowStride)
                for j in 0..<wgIn {
                    gemmPair(i * wgIn + j, b, UnsafePointer(Ub + j * rowStride), UnsafePointer(Ub2 + j * rowStride))
                }
            }
            /// Row i of the blocks from b on: in pairs with wide tiles.
            func rowOfBlocks(_ i: Int, _ lo: Int, _ hi: Int) {
                var b = lo
                while b < hi {
                    if wideTiles && b + 1 < hi { rowOfPair(i, b); b += 2 } else { rowOfBlock(i, b); b += 1 }
                }
            }
            for i in 0..<wgIn { rowOfBlocks(i, kbLo, kbHi) }
        } else {
            let pointStride = sh.wgPointStride
            for pt in 0..<wgPoints {
                var b = kbLo
                while b < kbHi {
                    let panel = u + pt * pointStride + b * C * convColBlock
                    if wideTiles && b + 1 < kbHi {
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
                if wideTiles && kn == convColBlock {
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

// MARK: - Backward weights

/// The G row coefficients: dW[r][s] = sum over i, j of G[i][r] G[j][s] dU[i][j].
let wgGRows: [(Float, Float, Float)] = [
    (0.25, 0, 0), (-1.0 / 6, -1.0 / 6, -1.0 / 6), (-1.0 / 6, 1.0 / 6, -1.0 / 6),
    (1.0 / 24, 1.0 / 12, 1.0 / 6), (1.0 / 24, -1.0 / 12, 1.0 / 6), (0, 0, 1)
]

extension Conv2DShape {
    /// Backward-weights plan: rows of the 6x6 point grid per pass (dU of one pass within ~8 MB, so
    /// 512x512 kernels take six passes over the data rather than a 38 MB dU), tiles per block (<= 256:
    /// each block's sums are rounded on their own before joining dU).
    /// When dU would pass 8 MB but V and Y of all tiles fit in wgAllTilesLimitBytes (few tiles, wide
    /// layers: ResNet-18's 256- and 512-channel layers at batch 64), no dU is kept: V and Y are
    /// transformed once, and each item computes all 36 points of one block of input channels x 16
    /// output channels and folds them into dW itself (`allTiles`). The passes wrote, re-read and
    /// folded a dU of 9.4 MB (256 channels, 2 passes) or 38 MB (512, 6 passes).
    func wgBackwardWeightPlan(threads: Int) -> WGBackwardWeightPlan {
        let cp = ceilDiv(c, fvecWidth) * fvecWidth, kp = ceilDiv(k, convColBlock) * convColBlock
        var rows = 6
        for r in [6, 3, 2, 1] { rows = r; if r * 6 * c * kp * 4 <= 8 << 20 { break } }
        let allTiles = rows < 6 && wgPoints * wgTiles * (cp + kp) * 4 <= Conv2DShape.wgAllTilesLimitBytes
        if allTiles { rows = 6 }
        let t = max(threads, 1)
        // Own sums, when dU fits in L2 (ResNet-18's 64-channel layers): each thread reduces its share
        // of the tiles into a dU of its own, in blocks of its own V and Y, all in one parallel region;
        // the sums then join in thread order. Shared blocks take two parallel regions per block of
        // tiles (37 per 64-channel layer), each ending when the slower thread is done: on a busy
        // machine the step's 64-channel backward-weights took 85-88 ms that way against 58-66 with own
        // sums (the same 46-49 ms on a quiet one). With a 2.4 MB dU (128 channels) the threads' extra
        // dU traffic cost more than the regions saved (29-31 ms -> 34-37 on a quiet machine).
        let ownBytes = rows * 6 * c * kp * 4
        let ownSums = !allTiles && rows == 6 && t > 1 && ownBytes <= 1 << 20 && t * ownBytes <= 16 << 20
        // Row groups, on 2 or 3 threads when dU fits in 8 MB but not in L2 (128 channels): each item
        // takes 6/threads rows of the 6x6 points over all tiles, in blocks of its own V and Y, into
        // its own rows of one dU, all in one parallel region. The items transform each tile's columns
        // again (input transforms +50% on 2 threads), where shared blocks took two regions per block
        // of tiles (21 per 128-channel layer). Five alternating profiles: 30.4-48.1 -> 31.5-37.3 ms
        // per step, the busy-machine runs gaining most. At 256 channels (dU 9.4 MB, two passes of
        // shared blocks) the groups' smaller blocks ran slower on a quiet machine (34-35 -> 42-44 ms).
        let groups = !allTiles && !ownSums && rows == 6 && (t == 2 || t == 3) ? t : 0
        if groups > 0 { rows = 6 / groups }
        let pts = rows * 6
        let tb: Int
        if allTiles {
            tb = wgTiles
        } else if groups > 0 {
            tb = min(wgTiles, 256, max(48, (2 << 20) / (pts * (cp + kp) * 4)))
        } else if ownSums {
            tb = min(ceilDiv(wgTiles, t), 256, max(32, min(2 << 20, (8 << 20) / t) / (pts * (cp + kp) * 4)))
        } else {
            tb = min(wgTiles, 256, max(48, (4 << 20) / (pts * (cp + kp) * 4)))
        }
        // Shared: dU (one per thread with own sums), V, Y (per thread with own sums), in channel blocks
        // (wgBackwardCBlock). Per thread: the transform's 36 vectors, tile pointers, a zero row, a
        // block's partial sums [C][16] (all tiles: one item's dU [36][cBlock][16]).
        let cBlock = cp <= wgBackwardCBlockWhole ? cp : wgBackwardCBlock
        let cPadded = ceilDiv(c, cBlock) * cBlock
        let dUCount = allTiles ? 0 : (groups > 0 ? wgPoints : pts) * c * kp, vCount = pts * tb * cPadded,
            yCount = pts * tb * kp
        var p = WGBackwardWeightPlan(
            rowsPerPass: rows, tb: tb, dU: dUCount, v: vCount, yv: yCount,
            zeroCount: max(cp, kp), cBlock: cBlock)
        p.allTiles = allTiles
        p.ownSumThreads = ownSums ? t : 0
        p.rowGroups = groups
        let own = ownSums || groups > 0
        p.offV = align64((ownSums ? t : 1) * p.dU * 4)
        p.offY = p.offV + (own ? 0 : align64(p.v * 4))
        p.offThreads = p.offY + (own ? 0 : align64(p.yv * 4))
        p.offSrc = wgPoints * 2 * fvecWidth * 4
        p.offZero = p.offSrc + wgPoints * 8
        p.offPart = align64(p.offZero + p.zeroCount * 4)
        // (Twice the partial sums: wide tiles sum two output blocks at once.)
        p.perThread = align64(p.offPart + 2 * (allTiles ? wgPoints * cBlock : c) * convColBlock * 4 + 64)
        if own {
            p.offOwnV = p.perThread
            p.offOwnY = p.offOwnV + align64(p.v * 4)
            p.perThread = p.offOwnY + align64(p.yv * 4)
        }
        return p
    }

    /// Largest V and Y of all tiles (floats x 4) with which backward-weights keeps no dU (tests set it
    /// to 0 to reach the passes over point rows on small shapes). At 256 channels, batch 64 (V and Y
    /// 18.9 MB, in L3): 1.12x over two passes of a 4.7 MB dU (bench kernels, 6 alternating pairs).
    nonisolated(unsafe) public static var wgAllTilesLimitBytes = 20 << 20

    /// How backward-weights splits its work on `threads` threads (for tests and benchmarks): "all
    /// tiles", "own sums", "row groups", or "N passes" of shared blocks over the point rows.
    public func wgBackwardWeightMethod(threads: Int) -> String {
        let p = wgBackwardWeightPlan(threads: threads)
        if p.allTiles { return "all tiles" }
        if p.ownSums { return "own sums" }
        if p.rowGroups > 0 { return "row groups" }
        return "\(6 / p.rowsPerPass) passes"
    }

    func wgBackwardWeightScratchBytes(threads: Int) -> Int {
        var most = 0
        for t in 1...max(threads, 1) {
            let p = wgBackwardWeightPlan(threads: t)
            most = max(most, p.offThreads + t * p.perThread + 64)
        }
        return most
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
    /// Threads that each sum their own share of the tiles into their own dU (0: shared blocks).
    var ownSumThreads = 0
    var ownSums: Bool { ownSumThreads > 0 }
    /// Items of point rows (rowsPerPass each) over all tiles (0: not split so).
    var rowGroups = 0
    /// With own sums or row groups: each thread's V and Y, from its base.
    var offOwnV = 0, offOwnY = 0
    var offV = 0, offY = 0, offThreads = 0, offSrc = 0, offZero = 0, offPart = 0, perThread = 0
}

/// dW (= or +=) the gradient of a Winograd-shape convolution's weights.
/// With `affine`, the input is x' of ConvInputAffine, not x.
func wgBackwardWeight(
    _ sh: Conv2DShape, input x: UnsafePointer<Float>, gradOutput dy: UnsafePointer<Float>,
    gradWeight dw: UnsafeMutablePointer<Float>, accumulate: Bool, scratch: UnsafeMutableRawPointer,
    affine: ConvInputAffine? = nil
) {
    let C = sh.c, K = sh.k, H = sh.h, W = sh.w
    let th = ceilDiv(H, wgOut), tw = ceilDiv(W, wgOut), tiles = sh.wgTiles
    let kb = ceilDiv(K, convColBlock), kp = kb * convColBlock
    let plan = sh.wgBackwardWeightPlan(threads: Threads.count)
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
                firstRow: row0, rowCount: plan.rowsPerPass, zero: z, blocks: vBlocks)
        } else {
            wgInputTile(
                src, channels: C, temp: T, out: V + ti * cBlk, pointStride: pointV, firstRow: row0,
                rowCount: plan.rowsPerPass, blocks: vBlocks)
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
        while wideTiles && k0 + RVec.scalarCount <= K {
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
                    x: panel, xStride: cBlk, np: nt, C: cn, dy: dyPanel, dyStride: convColBlock, acc: acc, Kp: Kp)
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
    let kStep = wideTiles ? 2 : 1
    /// dW[k][c][r][s] (+)= sum over point rows `rows` (dU's first) and all j of G[i][r] G[j][s] dU[i][j][c][k],
    /// after adding the other threads' own sums (in thread order) into dU.
    func fold(_ rows: Range<Int>, accumulate acc: Bool) {
        let kv = ceilDiv(K, fvecWidth)
        parallelForDynamic(kv, chunksPerThread: 4) { lo, hi, _ in
            for kvi in lo..<hi {
                let k0 = kvi * fvecWidth, kn = min(fvecWidth, K - k0)
                for t in 1..<max(plan.ownSumThreads, 1) {
                    let other = dU + t * plan.dU
                    for pt in 0..<pts {
                        for c in 0..<C {
                            let o = pt * pointU + c * kp + k0
                            vstore(vload(dU + o) + vload(other + o), dU + o)
                        }
                    }
                }
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
    /// u (pts points of dU, zeroed first) = V^T Y over tiles lo..<hi and point rows from row0, in blocks
    /// of tb tiles transformed into `slot`'s own V and Y (own sums and row groups).
    func sumTiles(_ lo: Int, _ hi: Int, row0: Int, into u: UnsafeMutablePointer<Float>, slot: Int) {
        let V = (mine(slot) + plan.offOwnV).bindMemory(to: Float.self, capacity: plan.v)
        let Y = (mine(slot) + plan.offOwnY).bindMemory(to: Float.self, capacity: plan.yv)
        zeroRow(slot)
        u.initialize(repeating: 0, count: pts * pointU)
        var t0 = lo
        while t0 < hi {
            let nt = min(tb, hi - t0)
            for ti in 0..<nt { transformTile(t0 + ti, ti, row0, V: V, Y: Y, thread: slot) }
            for pt in 0..<pts {
                for b in stride(from: 0, to: kb, by: kStep) {
                    sumBlock(
                        pt, b * convColBlock, nt, V: V, Y: Y, u: u, first: t0 == lo, thread: slot,
                        pair: b + 1 < kb && kStep == 2)
                }
            }
            t0 += nt
        }
    }
    if plan.ownSums {
        // One range of tiles per thread (a static split: each dU element's sum then has one order for
        // a given thread count, whichever thread runs first).
        let n = plan.ownSumThreads
        parallelFor(n) { lo, hi, _ in
            for t in lo..<hi { sumTiles(tiles * t / n, tiles * (t + 1) / n, row0: 0, into: dU + t * plan.dU, slot: t) }
        }
        fold(0..<wgIn, accumulate: accumulate)
        return
    }
    if plan.rowGroups > 0 {
        // One group of point rows per item, over all tiles: every point of dU belongs to one item.
        parallelForDynamic(plan.rowGroups) { lo, hi, thread in
            for g in lo..<hi {
                let row0 = g * plan.rowsPerPass
                sumTiles(0, tiles, row0: row0, into: dU + row0 * wgIn * pointU, slot: thread)
            }
        }
        fold(0..<wgIn, accumulate: accumulate)
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
    _ sh: Conv2DShape, plan: WGBackwardWeightPlan, V: UnsafeMutablePointer<Float>,
    Y: UnsafeMutablePointer<Float>, perThreadBase: UnsafeMutableRawPointer,
    dw: UnsafeMutablePointer<Float>, accumulate: Bool
) {
    let C = sh.c, K = sh.k, tiles = plan.tb, cBlk = plan.cBlock
    let kb = ceilDiv(K, convColBlock)
    let cBlocks = ceilDiv(C, cBlk)
    let pointV = tiles * cBlocks * cBlk, pointY = tiles * kb * convColBlock
    let pointU = cBlk * convColBlock
    // Items by input-channel block first, so a thread's consecutive items share V's columns; with
    // wide tiles an item has two output blocks (a dU each), summed at once.
    let kStep = wideTiles ? 2 : 1, kUnits = ceilDiv(kb, kStep)
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
                        acc: dU + pt * pointU, Kp: convColBlock)
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
