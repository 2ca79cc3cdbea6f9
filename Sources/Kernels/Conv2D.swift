// 2-D convolution, ResNet style: no bias, zero padding, any kernel size and stride.
//
// Letters: N batch, C input channels, H x W input size, K output channels, R x S kernel size,
// OH x OW output size, P = N*H*W (or N*OH*OW) pixels, "tap" = one (r, s) kernel position.
// Activations are NHWC (a pixel's channels are contiguous); weights are PyTorch's OIHW [K][C][R][S].
//
// Forward and backward-data are the same "gather GEMM": every output pixel row is the sum over taps
// of (a gathered row of the other tensor) x (a packed weight panel). A tile of 6 pixels x 16
// channels lives in 12 vector accumulators; the rows a tap reads outside the image point at a zero row,
// and taps that are outside for the whole tile are skipped (this is what makes stride-2 backward-data
// cheap: its pixels are visited in stride-phase order so that a tile shares one set of live taps).
// Backward-weights is a GEMM reduced over pixels, split over threads by pixel ranges with per-thread
// partial sums reduced once at the end.

/// Shape of one convolution. Input N x H x W x C (NHWC), weights K x C x R x S (OIHW).
public struct Conv2DShape: Equatable, Sendable {
    public var n: Int, c: Int, h: Int, w: Int
    public var k: Int, r: Int, s: Int
    public var stride: Int, pad: Int

    public init(n: Int, c: Int, h: Int, w: Int, k: Int, r: Int, s: Int, stride: Int = 1, pad: Int = 0) {
        self.n = n; self.c = c; self.h = h; self.w = w
        self.k = k; self.r = r; self.s = s; self.stride = stride; self.pad = pad
    }

    public var oh: Int { (h + 2 * pad - r) / stride + 1 }
    public var ow: Int { (w + 2 * pad - s) / stride + 1 }
    public var taps: Int { r * s }
    public var inputCount: Int { n * h * w * c }
    public var outputCount: Int { n * oh * ow * k }
    public var weightCount: Int { k * c * r * s }
    /// Multiply-adds x 2.
    public var flops: Double { 2.0 * Double(n * oh * ow) * Double(k) * Double(c * r * s) }
    public var isValid: Bool {
        n > 0 && c > 0 && h > 0 && w > 0 && k > 0 && r > 0 && s > 0 && stride > 0 && pad >= 0
            && h + 2 * pad >= r && w + 2 * pad >= s
    }
}

/// Output channels per register tile (two vectors of FVec).
public let convColBlock = 16
/// Pixels per register tile.
public let convTileRows = 6
/// Tiles whose gathered rows are computed together and reused across column blocks.
let convGroupTiles = 8
/// Pixels per block of the direct backward-weights reduction (its packed dY and inputs).
let convPixelBlock = 128

@inline(__always) func ceilDiv(_ a: Int, _ b: Int) -> Int { (a + b - 1) / b }
@inline(__always) func align64(_ x: Int) -> Int { (x + 63) & ~63 }

extension ConvPlan {
    /// Floats of a forward weight panel (conv2dPackForward).
    public var packedForwardCount: Int {
        max(
            ceilDiv(k, convColBlock) * taps * c * convColBlock,
            isWinogradShape ? (wgFusedWeights ? wgKernelPanelCount : wgPackedCount) : 0,
            isWinogradStride2Shape ? ws2PackedForwardCount : 0)
    }
    /// Floats of a backward-data weight panel (conv2dPackBackwardData).
    public var packedBackwardDataCount: Int {
        max(
            ceilDiv(c, convColBlock) * taps * k * convColBlock,
            isWinogradShape
                ? (transposedWinograd.wgFusedWeights
                    ? transposedWinograd.wgKernelPanelCount
                    : transposedWinograd.wgPackedCount) : 0)
    }

    /// Bytes of scratch the three fast kernels need with `threads` threads (any of them).
    public func scratchBytes(threads: Int) -> Int {
        let t = max(threads, 1)
        let zero = max(c, k, convColBlock) * 4
        let gather = t * gatherBytesPerThread(taps: taps)
        let order = n * h * w * 4
        let bwdW = t * bwdWeightLayout.perThread
        let direct = max(
            align64(zero) + align64(order) + align64(max(gather, bwdW)) + 256,
            t * gatheredRowsBytesPerThread)
        if isWinogradStride2Shape { return max(direct, ws2ScratchBytes(threads: t)) }
        guard isWinogradShape else { return direct }
        return max(
            direct, wgScratchBytes(threads: t), transposedWinograd.wgScratchBytes(threads: t),
            wgBackwardWeightScratchBytes(threads: t))
    }
}

// MARK: - Weight packing

/// OIHW [K][C][R][S] -> forward panels [K/16][tap][C][16], zero-padded in K.
public func conv2dPackForward(
    _ sh: ConvPlan, weights w: UnsafePointer<Float>,
    packed out: UnsafeMutablePointer<Float>
) {
    if sh.usesWinograd { wgPackWeights(sh, weights: w, transposed: false, packed: out); return }
    if sh.usesWinogradStride2 { ws2PackWeights(sh, weights: w, packed: out); return }
    let kb = ceilDiv(sh.k, convColBlock), taps = sh.taps, C = sh.c
    parallelForDynamic(kb) { lo, hi, _ in
        for b in lo..<hi {
            let base = out + b * taps * C * convColBlock
            for t in 0..<taps {
                for c in 0..<C {
                    let dst = base + (t * C + c) * convColBlock
                    for j in 0..<convColBlock {
                        let k = b * convColBlock + j
                        dst[j] = k < sh.k ? w[(k * C + c) * taps + t] : 0
                    }
                }
            }
        }
    }
}

/// OIHW [K][C][R][S] -> backward-data panels [C/16][tap][K][16], zero-padded in C.
public func conv2dPackBackwardData(
    _ sh: ConvPlan, weights w: UnsafePointer<Float>,
    packed out: UnsafeMutablePointer<Float>
) {
    if sh.usesWinograd { wgPackWeights(sh, weights: w, transposed: true, packed: out); return }
    let cb = ceilDiv(sh.c, convColBlock), taps = sh.taps, C = sh.c, K = sh.k
    parallelForDynamic(cb) { lo, hi, _ in
        for b in lo..<hi {
            let base = out + b * taps * K * convColBlock
            for t in 0..<taps {
                for k in 0..<K {
                    let dst = base + (t * K + k) * convColBlock
                    for j in 0..<convColBlock {
                        let c = b * convColBlock + j
                        dst[j] = c < C ? w[(k * C + c) * taps + t] : 0
                    }
                }
            }
        }
    }
}

// MARK: - Micro-kernel

/// acc[6][16] += rows a0..a5 (depth floats each) x panel [depth][16] (`fresh`: acc = instead of +=).
/// With `segments` > 1 each row is that many runs of `depth` floats, `segmentStride` apart, against
/// consecutive depth-deep slices of the panel (gatheredRowsForward's receptive fields in its padded
/// image). Kept out of line so that the 12 accumulators live in registers for the whole loop (nested
/// in the tap loop they spill).
@inline(never)
func convTapLoop(
    _ acc: UnsafeMutablePointer<Float>, _ a0: UnsafePointer<Float>, _ a1: UnsafePointer<Float>,
    _ a2: UnsafePointer<Float>, _ a3: UnsafePointer<Float>, _ a4: UnsafePointer<Float>,
    _ a5: UnsafePointer<Float>, _ panel: UnsafePointer<Float>, _ depth: Int, fresh: Bool,
    segments: Int, segmentStride: Int
) {
    var c00 = FVec(), c01 = FVec(), c10 = FVec(), c11 = FVec(), c20 = FVec(), c21 = FVec()
    var c30 = FVec(), c31 = FVec(), c40 = FVec(), c41 = FVec(), c50 = FVec(), c51 = FVec()
    if !fresh {
        c00 = vload(acc); c01 = vload(acc + 8); c10 = vload(acc + 16); c11 = vload(acc + 24)
        c20 = vload(acc + 32); c21 = vload(acc + 40); c30 = vload(acc + 48); c31 = vload(acc + 56)
        c40 = vload(acc + 64); c41 = vload(acc + 72); c50 = vload(acc + 80); c51 = vload(acc + 88)
    }
    var b = panel
    for sg in 0..<segments {
        let o = sg * segmentStride
        let r0 = a0 + o, r1 = a1 + o, r2 = a2 + o, r3 = a3 + o, r4 = a4 + o, r5 = a5 + o
        for d in 0..<depth {
            let b0 = vload(b), b1 = vload(b + 8)
            var x = FVec(repeating: r0[d]); c00.addProduct(x, b0); c01.addProduct(x, b1)
            x = FVec(repeating: r1[d]); c10.addProduct(x, b0); c11.addProduct(x, b1)
            x = FVec(repeating: r2[d]); c20.addProduct(x, b0); c21.addProduct(x, b1)
            x = FVec(repeating: r3[d]); c30.addProduct(x, b0); c31.addProduct(x, b1)
            x = FVec(repeating: r4[d]); c40.addProduct(x, b0); c41.addProduct(x, b1)
            x = FVec(repeating: r5[d]); c50.addProduct(x, b0); c51.addProduct(x, b1)
            b += convColBlock
        }
    }
    vstore(c00, acc); vstore(c01, acc + 8); vstore(c10, acc + 16); vstore(c11, acc + 24)
    vstore(c20, acc + 32); vstore(c21, acc + 40); vstore(c30, acc + 48); vstore(c31, acc + 56)
    vstore(c40, acc + 64); vstore(c41, acc + 72); vstore(c50, acc + 80); vstore(c51, acc + 88)
}

/// acc[6][16] = sum over live taps, d < depth of rows[tap][i][d] * panel[tap][d][0..<16];
/// stores (or adds into) `nRows` rows of `nCols` columns at out[i]. `acc` is 96 floats of scratch.
@inline(__always)
func convTile(
    rows: UnsafePointer<UnsafePointer<Float>>, live: UnsafePointer<Int32>, nLive: Int,
    depth: Int, panel: UnsafePointer<Float>, out: UnsafePointer<UnsafeMutablePointer<Float>>,
    nRows: Int, nCols: Int, accumulate: Bool, acc: UnsafeMutablePointer<Float>
) {
    // The first live tap starts the sums (callers skip tiles with no live tap).
    assert(nLive > 0)
    for li in 0..<nLive {
        let t = Int(live[li])
        let rp = rows + t * convTileRows
        convTapLoop(
            acc, rp[0], rp[1], rp[2], rp[3], rp[4], rp[5], panel + t * depth * convColBlock, depth, fresh: li == 0,
            segments: 1, segmentStride: 0)
    }
    for i in 0..<nRows {
        let o = out[i], a = acc + i * convColBlock
        if nCols == convColBlock {
            if accumulate {
                vstore(vload(o) + vload(a), o); vstore(vload(o + 8) + vload(a + 8), o + 8)
            } else {
                vstore(vload(a), o); vstore(vload(a + 8), o + 8)
            }
        } else {
            for j in 0..<nCols { o[j] = accumulate ? o[j] + a[j] : a[j] }
        }
    }
}

/// gatherGemm's scratch per thread: row pointers and output indices of a group of tiles, their live
/// taps, and the accumulators of two tiles (the wide path runs tiles in pairs).
@inline(__always) func gatherBytesPerThread(taps: Int) -> Int {
    convGroupTiles * convTileRows * (taps * 8 + 8) + align64(convGroupTiles * taps * 4) + 2 * convTileRows
        * convColBlock * 4 + 64
}

/// Shared driver of forward and backward-data: `pixels` output rows, visited in tiles of 6;
/// `fill(tile, rows, outIndex)` writes the gathered row pointer of each (tap, row) and the output
/// pixel index of each row, and returns how many rows the tile has.
@inline(__always)
func gatherGemm(
    pixels: Int, taps: Int, depth: Int, cols: Int, panel: UnsafePointer<Float>,
    out: UnsafeMutablePointer<Float>, accumulate: Bool, zeroRow: UnsafePointer<Float>,
    scratch: UnsafeMutableRawPointer,
    wide: Bool, fill: (Int, UnsafeMutablePointer<UnsafePointer<Float>>, UnsafeMutablePointer<Int>) -> Int
) {
    let tiles = ceilDiv(pixels, convTileRows)
    let groups = ceilDiv(tiles, convGroupTiles)
    let colBlocks = ceilDiv(cols, convColBlock)
    let perThread = gatherBytesPerThread(taps: taps)
    let weightsMajor = colBlocks * taps * depth * convColBlock > pixels * depth
    // Dynamic chunks of ~1/8 of a thread's share: each output tile is one call's, so any schedule
    // gives the same result, and a thread slowed by other work takes fewer chunks.
    let items = groups * colBlocks
    parallelForDynamic(items, chunksPerThread: 8) { lo, hi, thread in
        let base = scratch + thread * perThread
        let rows = base.bindMemory(to: UnsafePointer<Float>.self, capacity: convGroupTiles * convTileRows * taps)
        let outIdx = (base + convGroupTiles * convTileRows * taps * 8)
            .bindMemory(to: Int.self, capacity: convGroupTiles * convTileRows)
        let live = (base + convGroupTiles * convTileRows * (taps * 8 + 8))
            .bindMemory(to: Int32.self, capacity: convGroupTiles * taps)
        var nRowsOf = (0, 0, 0, 0, 0, 0, 0, 0)
        var nLiveOf = (0, 0, 0, 0, 0, 0, 0, 0)
        let acc = (base + convGroupTiles * convTileRows * (taps * 8 + 8) + align64(convGroupTiles * taps * 4))
            .bindMemory(to: Float.self, capacity: 2 * convTileRows * convColBlock)
        var cachedGroup = -1
        var outPtrs = (out, out, out, out, out, out)
        for item in lo..<hi {
            // Keep the larger operand in cache: weight panels stationary when they outweigh the rows.
            let g = weightsMajor ? item % groups : item / colBlocks
            let cb = weightsMajor ? item / groups : item % colBlocks
            let t0 = g * convGroupTiles, tn = min(convGroupTiles, tiles - t0)
            if g != cachedGroup {
                cachedGroup = g
                for ti in 0..<tn {
                    let rp = rows + ti * convTileRows * taps
                    let n = fill(t0 + ti, rp, outIdx + ti * convTileRows)
                    let lp = live + ti * taps
                    var nl = 0
                    for t in 0..<taps {
                        var any = false
                        for i in 0..<convTileRows where rp[t * convTileRows + i] != zeroRow { any = true }
                        if any { lp[nl] = Int32(t); nl += 1 }
                    }
                    withUnsafeMutableBytes(of: &nRowsOf) { $0.storeBytes(of: n, toByteOffset: ti * 8, as: Int.self) }
                    withUnsafeMutableBytes(of: &nLiveOf) { $0.storeBytes(of: nl, toByteOffset: ti * 8, as: Int.self) }
                }
            }
            let nCols = min(convColBlock, cols - cb * convColBlock)
            let pan = panel + cb * taps * depth * convColBlock
            var ti = 0
            while ti < tn {
                defer { ti += 1 }
                let n = withUnsafeBytes(of: &nRowsOf) { $0.load(fromByteOffset: ti * 8, as: Int.self) }
                let nl = withUnsafeBytes(of: &nLiveOf) { $0.load(fromByteOffset: ti * 8, as: Int.self) }
                if wide && ti + 1 < tn && nl > 0 {
                    // Two tiles in one 12-row register tile, over the union of their live taps (a dead
                    // tap's rows are the zero row, so running it for the other tile adds zeros).
                    let n2 = withUnsafeBytes(of: &nRowsOf) { $0.load(fromByteOffset: (ti + 1) * 8, as: Int.self) }
                    let nl2 = withUnsafeBytes(of: &nLiveOf) { $0.load(fromByteOffset: (ti + 1) * 8, as: Int.self) }
                    if nl2 > 0 {
                        convTilePair(
                            rowsA: UnsafePointer(rows + ti * convTileRows * taps),
                            rowsB: UnsafePointer(rows + (ti + 1) * convTileRows * taps),
                            liveA: live + ti * taps, nLiveA: nl, liveB: live + (ti + 1) * taps, nLiveB: nl2,
                            depth: depth, panel: pan, cols: cols, col0: cb * convColBlock, nCols: nCols,
                            out: out, idxA: outIdx + ti * convTileRows, nA: n,
                            idxB: outIdx + (ti + 1) * convTileRows, nB: n2, accumulate: accumulate, acc: acc)
                        ti += 1
                        continue
                    }
                }
                let oi = outIdx + ti * convTileRows
                withUnsafeMutableBytes(of: &outPtrs) { op in
                    let o = op.bindMemory(to: UnsafeMutablePointer<Float>.self)
                    for i in 0..<convTileRows { o[i] = out + (i < n ? oi[i] : oi[0]) * cols + cb * convColBlock }
                    if nl == 0 {
                        // Every tap falls outside: the rows are zero (or unchanged when accumulating).
                        if !accumulate { for i in 0..<n { for j in 0..<nCols { o[i][j] = 0 } } }
                    } else {
                        convTile(
                            rows: UnsafePointer(rows + ti * convTileRows * taps), live: live + ti * taps,
                            nLive: nl, depth: depth, panel: pan,
                            out: UnsafePointer(o.baseAddress!), nRows: n, nCols: nCols, accumulate: accumulate,
                            acc: acc)
                    }
                }
            }
        }
    }
}

/// Lays out scratch: zero row, pixel order, per-thread area.
@inline(__always)
func convScratch(_ sh: ConvPlan, _ scratch: UnsafeMutableRawPointer)
    -> (zero: UnsafeMutablePointer<Float>, order: UnsafeMutablePointer<Int32>, perThread: UnsafeMutableRawPointer)
{
    let zn = max(sh.c, sh.k, convColBlock)
    let z = scratch.bindMemory(to: Float.self, capacity: zn)
    z.initialize(repeating: 0, count: zn)
    let o = (scratch + align64(zn * 4)).bindMemory(to: Int32.self, capacity: sh.n * sh.h * sh.w)
    return (z, o, scratch + align64(zn * 4) + align64(sh.n * sh.h * sh.w * 4))
}

// MARK: - Forward

/// y[N][OH][OW][K] = conv(x[N][H][W][C], W). `packed` from conv2dPackForward;
/// `scratch` of sh.scratchBytes(threads: Threads.count) bytes. With `inputAffine` (Winograd shapes only) the
/// input is its normalised, ReLU'd x (ConvInputAffine), which is never written.
/// With `outputSums` (Winograd shapes only) the output transform also leaves per-tile column sums for the
/// batch norm after it (ConvOutputSums).
public func conv2dForward(
    _ sh: ConvPlan, input x: UnsafePointer<Float>, packed: UnsafePointer<Float>,
    output y: UnsafeMutablePointer<Float>, scratch: UnsafeMutableRawPointer,
    inputAffine: ConvInputAffine? = nil, outputSums: ConvOutputSums? = nil
) {
    precondition(sh.isValid, "invalid convolution shape")
    precondition(inputAffine == nil || sh.usesWinograd, "an input affine needs a Winograd shape")
    precondition(outputSums == nil || sh.usesWinograd, "output sums need a Winograd shape")
    if sh.usesWinograd {
        wgForward(
            sh, input: x, packed: packed, output: y, accumulate: false, scratch: scratch, affine: inputAffine,
            sums: outputSums)
        return
    }
    if sh.usesWinogradStride2 { ws2Forward(sh, input: x, packed: packed, output: y, scratch: scratch); return }
    if sh.usesGatheredRows { gatheredRowsForward(sh, input: x, packed: packed, output: y, scratch: scratch); return }
    let (zero, _, work) = convScratch(sh, scratch)
    let OH = sh.oh, OW = sh.ow, H = sh.h, W = sh.w, C = sh.c, R = sh.r, S = sh.s
    let st = sh.stride, pad = sh.pad, taps = sh.taps
    let pixels = sh.n * OH * OW
    let z = UnsafePointer(zero)
    gatherGemm(
        pixels: pixels, taps: taps, depth: C, cols: sh.k, panel: packed, out: y,
        accumulate: false, zeroRow: z, scratch: work, wide: sh.wide
    ) { tile, rows, outIdx in
        let p0 = tile * convTileRows
        let n = min(convTileRows, pixels - p0)
        for i in 0..<convTileRows {
            let p = p0 + min(i, n - 1)
            outIdx[i] = p
            let ow = p % OW, oh = (p / OW) % OH, b = p / (OW * OH)
            let ih0 = oh * st - pad, iw0 = ow * st - pad
            for r in 0..<R {
                let ih = ih0 + r
                for s in 0..<S {
                    let iw = iw0 + s
                    let ok = i < n && ih >= 0 && ih < H && iw >= 0 && iw < W
                    rows[(r * S + s) * convTileRows + i] = ok ? x + ((b * H + ih) * W + iw) * C : z
                }
            }
        }
        return n
    }
}

/// Few input channels (a stem on 1- or 3-channel images). Each image is first copied into a padded
/// image, (H + 2 pad) x (W + 2 pad) x C floats with zeros around it, in L1/L2. There, the receptive
/// field of an output pixel is R runs of S*C contiguous floats, one padded row apart, so a tile of 6
/// output pixels (wherever they fall in the image's rows) runs one GEMM of depth R*S*C per 16 output
/// channels straight from the padded image (convTapLoop by segments), with no gathered copy and no bounds
/// test per tap. Per tap the depth would be C (1 or 3): the 12 accumulators' loads and stores would
/// outweigh the multiply-adds. (Copying each tile's fields into rows first, with a division and a
/// bounds test per pixel and tap, ran the CIFAR stem at ~17% of peak.)
func gatheredRowsForward(
    _ sh: ConvPlan, input x: UnsafePointer<Float>, packed: UnsafePointer<Float>,
    output y: UnsafeMutablePointer<Float>, scratch: UnsafeMutableRawPointer
) {
    let OH = sh.oh, OW = sh.ow, H = sh.h, W = sh.w, C = sh.c, K = sh.k, R = sh.r, S = sh.s
    let st = sh.stride, pad = sh.pad, depth = sh.taps * C
    let PW = sh.paddedImageWidth, PH = sh.paddedImageHeight, rowFloats = PW * C
    let imagePixels = OH * OW, tilesPerImage = ceilDiv(imagePixels, convTileRows), kb = ceilDiv(K, convColBlock)
    // Items: an image, or with fewer images than 2 per thread a share of an image's tiles (each item
    // pads its image again: H*W*C floats against its tiles' GEMMs).
    let parts = sh.n >= 2 * Threads.count ? 1 : min(tilesPerImage, ceilDiv(2 * Threads.count, sh.n))
    parallelForDynamic(sh.n * parts, chunk: 1) { lo, hi, thread in
        let base = scratch + thread * sh.gatheredRowsBytesPerThread
        let acc = base.bindMemory(to: Float.self, capacity: convTileRows * convColBlock)
        let img = (base + convTileRows * convColBlock * 4).bindMemory(to: Float.self, capacity: PH * rowFloats)
        for item in lo..<hi {
            let b = item / parts, part = item % parts
            // The padded image: zero borders, the image's rows copied in.
            img.initialize(repeating: 0, count: pad * rowFloats)
            for ih in 0..<H {
                let row = img + (pad + ih) * rowFloats
                row.initialize(repeating: 0, count: pad * C)
                row.advanced(by: pad * C).update(from: x + (b * H + ih) * W * C, count: W * C)
                row.advanced(by: (pad + W) * C).initialize(repeating: 0, count: (PW - pad - W) * C)
            }
            img.advanced(by: (pad + H) * rowFloats).initialize(repeating: 0, count: (PH - pad - H) * rowFloats)
            let tLo = tilesPerImage * part / parts, tHi = tilesPerImage * (part + 1) / parts
            var oh = tLo * convTileRows / OW, ow = tLo * convTileRows % OW
            for tile in tLo..<tHi {
                let p0 = tile * convTileRows, n = min(convTileRows, imagePixels - p0)
                // Each row of the tile: its pixel's field in the padded image (the last pixel repeated).
                var field = (
                    UnsafePointer(img), UnsafePointer(img), UnsafePointer(img), UnsafePointer(img),
                    UnsafePointer(img), UnsafePointer(img)
                )
                withUnsafeMutableBytes(of: &field) { raw in
                    let f = raw.bindMemory(to: UnsafePointer<Float>.self)
                    var h = oh, w = ow
                    for i in 0..<convTileRows {
                        f[i] = UnsafePointer(img + (h * st * PW + w * st) * C)
                        if i + 1 < n { w += 1; if w == OW { w = 0; h += 1 } }
                    }
                }
                for cb in 0..<kb {
                    convTapLoop(
                        acc, field.0, field.1, field.2, field.3, field.4, field.5, packed + cb * depth * convColBlock,
                        S * C, fresh: true, segments: R, segmentStride: rowFloats)
                    let k0 = cb * convColBlock, nCols = min(convColBlock, K - k0)
                    for i in 0..<n {
                        let o = y + (b * imagePixels + p0 + i) * K + k0, a = acc + i * convColBlock
                        if nCols == convColBlock {
                            vstore(vload(a), o); vstore(vload(a + 8), o + 8)
                        } else {
                            for j in 0..<nCols { o[j] = a[j] }
                        }
                    }
                }
                ow += n
                while ow >= OW { ow -= OW; oh += 1 }
            }
        }
    }
}

extension ConvPlan {
    /// Whether the forward runs from a padded copy of each image (few input channels).
    var usesGatheredRows: Bool { c < 8 && taps > 1 && !usesWinograd }
    /// The padded image of gatheredRowsForward: wide and tall enough for every output pixel's field.
    var paddedImageWidth: Int { max(w + 2 * pad, (ow - 1) * stride + s) }
    var paddedImageHeight: Int { max(h + 2 * pad, (oh - 1) * stride + r) }
    var gatheredRowsBytesPerThread: Int {
        align64((convTileRows * convColBlock + paddedImageHeight * paddedImageWidth * c) * 4) + 64
    }
}

// MARK: - Backward data

/// dx[N][H][W][C] (= or +=) conv-transpose(dy[N][OH][OW][K], W). `packed` from conv2dPackBackwardData.
public func conv2dBackwardData(
    _ sh: ConvPlan, gradOutput dy: UnsafePointer<Float>, packed: UnsafePointer<Float>,
    gradInput dx: UnsafeMutablePointer<Float>, accumulate: Bool = false,
    scratch: UnsafeMutableRawPointer
) {
    precondition(sh.isValid, "invalid convolution shape")
    if sh.usesWinograd {
        wgForward(
            sh.transposedWinograd, input: dy, packed: packed, output: dx, accumulate: accumulate, scratch: scratch)
        return
    }
    let (zero, order, work) = convScratch(sh, scratch)
    let OH = sh.oh, OW = sh.ow, H = sh.h, W = sh.w, K = sh.k, R = sh.r, S = sh.s
    let st = sh.stride, pad = sh.pad, taps = sh.taps
    let pixels = sh.n * H * W
    // Visit input pixels grouped by stride phase so a tile shares its live taps.
    if st > 1 {
        var i = 0
        for ph in 0..<st {
            for pw in 0..<st {
                for b in 0..<sh.n {
                    for ih in Swift.stride(from: ph, to: H, by: st) {
                        for iw in Swift.stride(from: pw, to: W, by: st) {
                            order[i] = Int32((b * H + ih) * W + iw); i += 1
                        }
                    }
                }
            }
        }
    }
    let z = UnsafePointer(zero)
    let ord = UnsafePointer(order)
    gatherGemm(
        pixels: pixels, taps: taps, depth: K, cols: sh.c, panel: packed, out: dx,
        accumulate: accumulate, zeroRow: z, scratch: work, wide: sh.wide
    ) { tile, rows, outIdx in
        let p0 = tile * convTileRows
        let n = min(convTileRows, pixels - p0)
        for i in 0..<convTileRows {
            let slot = p0 + min(i, n - 1)
            let q = st > 1 ? Int(ord[slot]) : slot
            outIdx[i] = q
            let iw = q % W, ih = (q / W) % H, b = q / (W * H)
            for r in 0..<R {
                let ohn = ih + pad - r
                let okh = ohn >= 0 && ohn % st == 0 && ohn / st < OH
                for s in 0..<S {
                    let own = iw + pad - s
                    let ok = i < n && okh && own >= 0 && own % st == 0 && own / st < OW
                    rows[(r * S + s) * convTileRows + i] = ok ? dy + ((b * OH + ohn / st) * OW + own / st) * K : z
                }
            }
        }
        return n
    }
}

// MARK: - Backward weights

/// dW[K][C][R][S] (= or +=) sum over pixels of dy[p][k] * x[p at tap][c].
///
/// Per tap, dW_t[C][K] = X_t^T · dY, a GEMM reduced over pixels. Each thread takes a fixed pixel range
/// (so the bits do not depend on the schedule) and sums into its own partial dW; per block of pixels
/// it packs dY as [K/16][pixel][16] once, and per tap the gathered inputs as [C/6][pixel][6], so the
/// register tile (6 channels x 16 output channels) reads two contiguous streams. Read in place, both
/// operands are rows a power of two apart (stride 2: 2*C floats), which map onto one or two L1 sets.
/// With `inputAffine` (Winograd shapes only), the input is its normalised, ReLU'd x (ConvInputAffine).
public func conv2dBackwardWeight(
    _ sh: ConvPlan, input x: UnsafePointer<Float>, gradOutput dy: UnsafePointer<Float>,
    gradWeight dw: UnsafeMutablePointer<Float>, accumulate: Bool = false,
    scratch: UnsafeMutableRawPointer, inputAffine: ConvInputAffine? = nil
) {
    let wide = sh.wide
    precondition(sh.isValid, "invalid convolution shape")
    precondition(inputAffine == nil || sh.usesWinograd, "an input affine needs a Winograd shape")
    if sh.usesWinograd {
        wgBackwardWeight(
            sh, input: x, gradOutput: dy, gradWeight: dw, accumulate: accumulate, scratch: scratch,
            affine: inputAffine)
        return
    }
    let OH = sh.oh, OW = sh.ow, H = sh.h, W = sh.w, C = sh.c, K = sh.k, S = sh.s
    let st = sh.stride, pad = sh.pad, taps = sh.taps
    let L = sh.bwdWeightLayout
    let kBlocks = L.kBlocks, Kp = L.kPadded, cTiles = L.cTiles, Cp = L.cPadded
    let pixels = sh.n * OH * OW
    let threads = min(Threads.count, max(1, pixels / 16))
    let work = scratch
    parallelFor(threads) { tlo, thi, _ in
        for th in tlo..<thi {
            let base = work + th * L.perThread
            let part = base.bindMemory(to: Float.self, capacity: L.partFloats)
            let dyP = (base + L.partFloats * 4).bindMemory(to: Float.self, capacity: convPixelBlock * Kp)
            let xP = (base + (L.partFloats + convPixelBlock * Kp) * 4).bindMemory(
                to: Float.self, capacity: cTiles * L.xTileStride)
            part.initialize(repeating: 0, count: L.partFloats)
            let pBegin = pixels * th / threads, pEnd = pixels * (th + 1) / threads
            var pb = pBegin
            while pb < pEnd {
                let np = min(convPixelBlock, pEnd - pb)
                // dY block -> [kb][j][16], zero past K.
                for j in 0..<np {
                    let src = dy + (pb + j) * K
                    for kb in 0..<kBlocks {
                        let k0 = kb * convColBlock, kn = min(convColBlock, K - k0)
                        let dst = dyP + (kb * np + j) * convColBlock
                        vstore(vloadN(src + k0, min(kn, fvecWidth)), dst)
                        vstore(kn > fvecWidth ? vloadN(src + k0 + fvecWidth, kn - fvecWidth) : FVec(), dst + fvecWidth)
                    }
                }
                for g in 0..<L.groups {
                    // Gathered inputs of the group's taps -> [ct][j][6], zero outside the image and past
                    // the group's channels. The block's pixel (b, oh, ow) is stepped along, not divided out.
                    var ow = pb % OW, oh = (pb / OW) % OH, b = pb / (OW * OH)
                    for j in 0..<np {
                        defer {
                            ow += 1
                            if ow == OW { ow = 0; oh += 1; if oh == OH { oh = 0; b += 1 } }
                        }
                        let slot = xP + j * convTileRows
                        // The input pixel of tap t, or nil outside the image.
                        @inline(__always) func pixel(_ t: Int) -> UnsafePointer<Float>? {
                            let ih = oh * st - pad + t / S, iw = ow * st - pad + t % S
                            return ih >= 0 && ih < H && iw >= 0 && iw < W ? x + ((b * H + ih) * W + iw) * C : nil
                        }
                        if L.groups == 1 && taps > 1 {
                            // Few channels: the whole receptive field is one row of taps * C channels.
                            var v = 0
                            for t in 0..<taps {
                                let src = pixel(t)
                                for c in 0..<C {
                                    slot[(v / convTileRows) * L.xTileStride + v % convTileRows] = src?[c] ?? 0
                                    v += 1
                                }
                            }
                            while v < Cp { slot[(v / convTileRows) * L.xTileStride + v % convTileRows] = 0; v += 1 }
                        } else {
                            packSixChannelTiles(pixel(g), channels: C, into: slot, tileStride: L.xTileStride)
                        }
                    }
                    for kb in 0..<kBlocks {
                        let panel = UnsafePointer(dyP + kb * np * convColBlock)
                        var ct = 0
                        while ct < cTiles {
                            let acc = part + (g * Cp + ct * convTileRows) * Kp + kb * convColBlock
                            if wide && ct + 1 < cTiles {
                                wideWeightTilePacked(
                                    xA: xP + ct * L.xTileStride, xB: xP + (ct + 1) * L.xTileStride,
                                    np: np, dy: panel, acc: acc, Kp: Kp)
                                ct += 2
                            } else {
                                bwdWeightTile(x: xP + ct * L.xTileStride, np: np, dy: panel, acc: acc, Kp: Kp)
                                ct += 1
                            }
                        }
                    }
                }
                pb += np
            }
        }
    }
    // Reduce the per-thread partials into OIHW, 16 output channels at a time: contiguous reads,
    // 16 sequential write streams.
    parallelForDynamic(kBlocks) { lo, hi, _ in
        for kb in lo..<hi {
            let k0 = kb * convColBlock, kn = min(convColBlock, K - k0)
            for c in 0..<C {
                for t in 0..<taps {
                    let off = (L.groups == 1 ? t * C + c : t * Cp + c) * Kp + k0
                    var v0 = FVec(), v1 = FVec()
                    for th in 0..<threads {
                        let part = (work + th * L.perThread).assumingMemoryBound(to: Float.self)
                        v0 += vload(part + off); v1 += vload(part + off + 8)
                    }
                    for j in 0..<kn {
                        let o = dw + ((k0 + j) * C + c) * taps + t
                        let v = j < 8 ? v0[j] : v1[j - 8]
                        o.pointee = accumulate ? o.pointee + v : v
                    }
                }
            }
        }
    }
}

extension ConvPlan {
    /// Per-thread scratch of the direct backward-weights: the partial dW [group][channels padded to 6]
    /// [K padded to 16], then one pixel block of packed dY and of packed gathered inputs. A group is one
    /// tap of C channels, or, with few input channels (a stem), all taps as taps * C channels.
    var bwdWeightLayout:
        (
            groups: Int, kBlocks: Int, kPadded: Int, cTiles: Int, cPadded: Int, partFloats: Int,
            xTileStride: Int, perThread: Int
        )
    {
        let groups = usesGatheredRows ? 1 : taps
        let kb = ceilDiv(k, convColBlock), ct = ceilDiv(taps / groups * c, convTileRows)
        let kp = kb * convColBlock, cp = ct * convTileRows
        let part = groups * cp * kp
        let xTile = convPixelBlock * convTileRows + fvecWidth
        return (groups, kb, kp, ct, cp, part, xTile, align64((part + convPixelBlock * kp + ct * xTile) * 4))
    }
}

/// One pixel's C channels -> its slot in C/6 tiles of 6 floats (`tileStride` apart), zeros past C, all
/// zeros for a pixel outside the image (nil). Whole vectors while 8 channels remain: the 2 extra
/// floats land in the next pixel's slot, written after it, or in the gap of 8 floats after a tile.
@inline(__always)
func packSixChannelTiles(
    _ src: UnsafePointer<Float>?, channels C: Int, into dst: UnsafeMutablePointer<Float>,
    tileStride: Int
) {
    let cTiles = ceilDiv(C, convTileRows)
    var ct = 0
    if let src {
        while ct < cTiles && ct * convTileRows + fvecWidth <= C {
            vstore(vload(src + ct * convTileRows), dst + ct * tileStride)
            ct += 1
        }
    }
    while ct < cTiles {
        let c0 = ct * convTileRows, cn = src == nil ? 0 : min(convTileRows, C - c0)
        let d = dst + ct * tileStride
        for i in 0..<convTileRows { d[i] = i < cn ? src![c0 + i] : 0 }
        ct += 1
    }
}

/// acc[6][16] (rows Kp apart) += sum over np pixels of x[j][0..<6] (outer) dy[j][0..<16]: one
/// 6 (input channels) x 16 (output channels) tile of dW for one tap, from packed operands.
@inline(never)
func bwdWeightTile(
    x: UnsafePointer<Float>, np: Int, dy: UnsafePointer<Float>, acc a0: UnsafeMutablePointer<Float>, Kp: Int
) {
    var c00 = vload(a0), c01 = vload(a0 + 8)
    var c10 = vload(a0 + Kp), c11 = vload(a0 + Kp + 8)
    var c20 = vload(a0 + 2 * Kp), c21 = vload(a0 + 2 * Kp + 8)
    var c30 = vload(a0 + 3 * Kp), c31 = vload(a0 + 3 * Kp + 8)
    var c40 = vload(a0 + 4 * Kp), c41 = vload(a0 + 4 * Kp + 8)
    var c50 = vload(a0 + 5 * Kp), c51 = vload(a0 + 5 * Kp + 8)
    var d = dy, xp = x
    for _ in 0..<np {
        let b0 = vload(d), b1 = vload(d + 8)
        var v = FVec(repeating: xp[0]); c00.addProduct(v, b0); c01.addProduct(v, b1)
        v = FVec(repeating: xp[1]); c10.addProduct(v, b0); c11.addProduct(v, b1)
        v = FVec(repeating: xp[2]); c20.addProduct(v, b0); c21.addProduct(v, b1)
        v = FVec(repeating: xp[3]); c30.addProduct(v, b0); c31.addProduct(v, b1)
        v = FVec(repeating: xp[4]); c40.addProduct(v, b0); c41.addProduct(v, b1)
        v = FVec(repeating: xp[5]); c50.addProduct(v, b0); c51.addProduct(v, b1)
        d += convColBlock; xp += convTileRows
    }
    vstore(c00, a0); vstore(c01, a0 + 8); vstore(c10, a0 + Kp); vstore(c11, a0 + Kp + 8)
    vstore(c20, a0 + 2 * Kp); vstore(c21, a0 + 2 * Kp + 8); vstore(c30, a0 + 3 * Kp); vstore(c31, a0 + 3 * Kp + 8)
    vstore(c40, a0 + 4 * Kp); vstore(c41, a0 + 4 * Kp + 8); vstore(c50, a0 + 5 * Kp); vstore(c51, a0 + 5 * Kp + 8)
}

/// One 6 (input channels) x 16 (output channels) tile of a weight gradient, reduced over `np` rows read
/// in place: x rows `xStride` floats apart (channels c0..<c0+6 of each), 16 columns of dy rows
/// `dyStride` apart (Winograd backward-weights: panels of its points' V and Y).
@inline(__always)
func bwdWeightTileStrided(
    x: UnsafePointer<Float>, xStride: Int, np: Int, c0: Int, C: Int,
    dy: UnsafePointer<Float>, dyStride: Int, acc: UnsafeMutablePointer<Float>, Kp: Int
) {
    // Channels past C repeat the last one (never stored): no read past a row.
    let i1 = min(c0 + 1, C - 1), i2 = min(c0 + 2, C - 1), i3 = min(c0 + 3, C - 1)
    let i4 = min(c0 + 4, C - 1), i5 = min(c0 + 5, C - 1)
    let nc = min(convTileRows, C - c0)
    let a0 = acc + c0 * Kp
    var c00 = vload(a0), c01 = vload(a0 + 8)
    var c10 = FVec(), c11 = FVec(), c20 = FVec(), c21 = FVec(), c30 = FVec(), c31 = FVec()
    var c40 = FVec(), c41 = FVec(), c50 = FVec(), c51 = FVec()
    if nc > 1 { c10 = vload(a0 + Kp); c11 = vload(a0 + Kp + 8) }
    if nc > 2 { c20 = vload(a0 + 2 * Kp); c21 = vload(a0 + 2 * Kp + 8) }
    if nc > 3 { c30 = vload(a0 + 3 * Kp); c31 = vload(a0 + 3 * Kp + 8) }
    if nc > 4 { c40 = vload(a0 + 4 * Kp); c41 = vload(a0 + 4 * Kp + 8) }
    if nc > 5 { c50 = vload(a0 + 5 * Kp); c51 = vload(a0 + 5 * Kp + 8) }
    var d = dy, xp = x
    for _ in 0..<np {
        let b0 = vload(d), b1 = vload(d + 8)
        var v = FVec(repeating: xp[c0]); c00.addProduct(v, b0); c01.addProduct(v, b1)
        v = FVec(repeating: xp[i1]); c10.addProduct(v, b0); c11.addProduct(v, b1)
        v = FVec(repeating: xp[i2]); c20.addProduct(v, b0); c21.addProduct(v, b1)
        v = FVec(repeating: xp[i3]); c30.addProduct(v, b0); c31.addProduct(v, b1)
        v = FVec(repeating: xp[i4]); c40.addProduct(v, b0); c41.addProduct(v, b1)
        v = FVec(repeating: xp[i5]); c50.addProduct(v, b0); c51.addProduct(v, b1)
        d += dyStride; xp += xStride
    }
    vstore(c00, a0); vstore(c01, a0 + 8)
    if nc > 1 { vstore(c10, a0 + Kp); vstore(c11, a0 + Kp + 8) }
    if nc > 2 { vstore(c20, a0 + 2 * Kp); vstore(c21, a0 + 2 * Kp + 8) }
    if nc > 3 { vstore(c30, a0 + 3 * Kp); vstore(c31, a0 + 3 * Kp + 8) }
    if nc > 4 { vstore(c40, a0 + 4 * Kp); vstore(c41, a0 + 4 * Kp + 8) }
    if nc > 5 { vstore(c50, a0 + 5 * Kp); vstore(c51, a0 + 5 * Kp + 8) }
}

// MARK: - Naive references (the tests hold the fast kernels against these)

public func conv2dForwardNaive(
    _ sh: Conv2DShape, input x: UnsafePointer<Float>, weights w: UnsafePointer<Float>,
    output y: UnsafeMutablePointer<Float>
) {
    let OH = sh.oh, OW = sh.ow
    for b in 0..<sh.n {
        for oh in 0..<OH {
            for ow in 0..<OW {
                for k in 0..<sh.k {
                    var acc: Double = 0
                    for c in 0..<sh.c {
                        for r in 0..<sh.r {
                            for s in 0..<sh.s {
                                let ih = oh * sh.stride - sh.pad + r, iw = ow * sh.stride - sh.pad + s
                                if ih < 0 || ih >= sh.h || iw < 0 || iw >= sh.w { continue }
                                acc +=
                                    Double(x[((b * sh.h + ih) * sh.w + iw) * sh.c + c])
                                    * Double(w[((k * sh.c + c) * sh.r + r) * sh.s + s])
                            }
                        }
                    }
                    y[((b * OH + oh) * OW + ow) * sh.k + k] = Float(acc)
                }
            }
        }
    }
}

public func conv2dBackwardDataNaive(
    _ sh: Conv2DShape, gradOutput dy: UnsafePointer<Float>, weights w: UnsafePointer<Float>,
    gradInput dx: UnsafeMutablePointer<Float>
) {
    let OH = sh.oh, OW = sh.ow
    dx.initialize(repeating: 0, count: sh.inputCount)
    for b in 0..<sh.n {
        for oh in 0..<OH {
            for ow in 0..<OW {
                for k in 0..<sh.k {
                    let g = dy[((b * OH + oh) * OW + ow) * sh.k + k]
                    for c in 0..<sh.c {
                        for r in 0..<sh.r {
                            for s in 0..<sh.s {
                                let ih = oh * sh.stride - sh.pad + r, iw = ow * sh.stride - sh.pad + s
                                if ih < 0 || ih >= sh.h || iw < 0 || iw >= sh.w { continue }
                                dx[((b * sh.h + ih) * sh.w + iw) * sh.c + c] +=
                                    g * w[((k * sh.c + c) * sh.r + r) * sh.s + s]
                            }
                        }
                    }
                }
            }
        }
    }
}

public func conv2dBackwardWeightNaive(
    _ sh: Conv2DShape, input x: UnsafePointer<Float>, gradOutput dy: UnsafePointer<Float>,
    gradWeight dw: UnsafeMutablePointer<Float>
) {
    let OH = sh.oh, OW = sh.ow
    for k in 0..<sh.k {
        for c in 0..<sh.c {
            for r in 0..<sh.r {
                for s in 0..<sh.s {
                    var acc: Double = 0
                    for b in 0..<sh.n {
                        for oh in 0..<OH {
                            for ow in 0..<OW {
                                let ih = oh * sh.stride - sh.pad + r, iw = ow * sh.stride - sh.pad + s
                                if ih < 0 || ih >= sh.h || iw < 0 || iw >= sh.w { continue }
                                acc +=
                                    Double(x[((b * sh.h + ih) * sh.w + iw) * sh.c + c])
                                    * Double(dy[((b * OH + oh) * OW + ow) * sh.k + k])
                            }
                        }
                    }
                    dw[((k * sh.c + c) * sh.r + r) * sh.s + s] = Float(acc)
                }
            }
        }
    }
}
