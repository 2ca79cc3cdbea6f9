// Winograd F(4x4, 3x3) transforms (Winograd.swift): the 1-D input, output and kernel transforms on one
// vector of channels, the tiles they read and write, and the packing of transformed weights.

import CParallel

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
    panel: UnsafePointer<Float>, depth: Int, wide: Bool
) {
    if wide { wideMultiplyRows(out, a, count: count, stride: stride, panel: panel, depth: depth); return }
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
    blocks: WGChannelBlocks? = nil, wide: Bool
) {
    var c0 = 0
    let TW = UnsafeMutableRawPointer(T).assumingMemoryBound(to: RVec.self)
    while wide && c0 + RVec.scalarCount <= C {
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
    zero: UnsafePointer<Float>, blocks: WGChannelBlocks? = nil, wide: Bool
) {
    var c0 = 0
    let TW = UnsafeMutableRawPointer(T).assumingMemoryBound(to: RVec.self)
    while wide && c0 + RVec.scalarCount <= C {
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

// MARK: - Weight packing

/// OIHW weights -> U [36][point stride] ([K/16][C][16] per point) for the forward (`transposed`: the
/// backward-data kernel, w'[c][k][r][s] = w[k][c][2-r][2-s], i.e. U' [36][C/16][K][16] per point).
/// Shapes whose transform is fused into the forward (wgFusedWeights) get the untransformed kernels
/// in the same panel order instead, [K/16][C][9 taps][16], which the forward transforms row by row.
func wgPackWeights(
    _ sh: ConvPlan, weights w: UnsafePointer<Float>, transposed: Bool,
    packed out: UnsafeMutablePointer<Float>
) {
    let wide = sh.wide
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
                            pointStride: pointStride, wide: wide)
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
    pointStride: Int, wide: Bool
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
        if wide {
            lanes(g, base, RVec.self)
        } else {
            // (A counted loop: `stride(from:to:by:)` here compiled to a call per iteration.)
            for hv in 0..<(convColBlock / fvecWidth) { lanes(g + hv * fvecWidth, base + hv * fvecWidth, FVec.self) }
        }
    }
}
