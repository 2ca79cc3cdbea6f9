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
    /// 3x3, stride 1, pad 1, with enough channels on both sides for the GEMMs to pay.
    public var isWinogradShape: Bool { r == 3 && s == 3 && stride == 1 && pad == 1 && c >= 8 && k >= 8 }
}

extension ConvPlan {
    /// Whether this convolution runs as Winograd F(4x4, 3x3): a Winograd shape under `.winograd`.
    public var usesWinograd: Bool { config.winograd && isWinogradShape }

    /// The forward convolution that computes this one's backward-data (kernel flipped, C and K swapped).
    var transposedWinograd: ConvPlan {
        ConvPlan(Conv2DShape(n: n, c: k, h: oh, w: ow, k: c, r: 3, s: 3, stride: 1, pad: 1), config)
    }

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
        return isWinogradShape && wgPoints * c * kp * 4 > budget.winogradWeightsShared
            && wgPoints * wgFusedBlockRows * cp * 4 <= budget.winogradFuseLimit
    }

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
                > budget.winogradBlockOuter
    }

    /// Rows of V per point in a fused forward's largest block of tiles (up to wgFusedTiles, whole
    /// 6-row GEMM tiles): wgFusedWeights and wgFusedByOutputBlock size their working sets by it.
    var wgFusedBlockRows: Int { ceilDiv(min(wgTiles, wgFusedTiles), gemmRowUnit) * gemmRowUnit }

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
        var target = max(gemmRowUnit, budget.winogradBlock / (wgPoints * (cp + kp) * 4))
        var kGroups = 1
        let fused = wgFusedWeights
        if fused {
            // By output block: one item per block of 16 output channels, taken by whichever thread is
            // free; each transforms its kernels, multiplies and writes its outputs with a 152 KB M.
            // (Two blocks per item with wide tiles, which multiply two output blocks at once.)
            kGroups = wgFusedByOutputBlock ? ceilDiv(kb, wide ? 2 : 1) : min(t, kb)
            target = min(tiles, wgFusedTiles)
        } else if wgPoints * c * kp * 4 > budget.winogradWeightsShared && kb >= t && t > 1 {
            kGroups = t
            target = max(target, 64)
        } else if wgPoints * c * kp * 4 > budget.winogradWeightsInL2 {
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
