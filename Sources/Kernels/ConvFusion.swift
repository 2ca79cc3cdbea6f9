// What a convolution does besides convolving, so that the batch norms around it need no pass of
// their own: an input affine (the previous batch norm + ReLU, applied as the input is loaded) and
// output sums (the next batch norm's statistics, summed in the epilogue).

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
        rowCount: Int, zero: UnsafePointer<Float>, blocks: WGChannelBlocks? = nil, wide: Bool
    ) {
        let g = tile / tilesPerImage / imagesPerGroup
        wgInputTileAffine(
            src, channels: C, temp: T, out: out, pointStride: pointStride, firstRow: firstRow,
            rowCount: rowCount, mean: mean + g * groupStride, scale: scale + g * groupStride, shift: shift,
            zero: zero, blocks: blocks, wide: wide)
    }
}

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
    public static func count(_ sh: ConvPlan) -> Int { sh.wgTiles * 2 * stride(sh) }
    /// Floats from one tile's Σ d row to its Σ d² row.
    public static func stride(_ sh: ConvPlan) -> Int { ceilDiv(sh.k, convColBlock) * convColBlock }
}
