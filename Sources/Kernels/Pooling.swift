// Max pooling (the ResNet stem's 3x3 stride-2 pool) and global average pooling, NHWC.
//
// Letters: N batch, C channels, H x W input size, OH x OW output size, hw = H*W pixels of one image.
// Max pooling follows PyTorch: padding counts as -inf, the first maximum in window order (row-major)
// wins ties, a NaN wins over numbers; `argmax` holds the flat input position ih*W + iw within the image
// per output element, and backward scatters dy there. Vectorised along C (comparisons select lanes).

/// Max pooling over N x H x W x C with a square window.
public struct MaxPoolShape: Equatable, Sendable {
    public var n: Int, c: Int, h: Int, w: Int, kernel: Int, stride: Int, pad: Int

    public init(n: Int, c: Int, h: Int, w: Int, kernel: Int = 3, stride: Int = 2, pad: Int = 1) {
        self.n = n; self.c = c; self.h = h; self.w = w
        self.kernel = kernel; self.stride = stride; self.pad = pad
    }

    public var oh: Int { (h + 2 * pad - kernel) / stride + 1 }
    public var ow: Int { (w + 2 * pad - kernel) / stride + 1 }
    public var inputCount: Int { n * h * w * c }
    public var outputCount: Int { n * oh * ow * c }
    /// PyTorch's condition: padding at most half the window, so every window holds an input pixel.
    public var isValid: Bool {
        n > 0 && c > 0 && h > 0 && w > 0 && kernel > 0 && stride > 0 && pad >= 0 && 2 * pad <= kernel
            && h + 2 * pad >= kernel && w + 2 * pad >= kernel
    }
}

typealias IVec = SIMD8<Int32>

// MARK: - Max pooling

/// y[N][OH][OW][C] = max over the window of x[N][H][W][C]; argmax[N][OH][OW][C] = ih*W + iw of the maximum.
public func maxPoolForward(
    _ sh: MaxPoolShape, input x: UnsafePointer<Float>, output y: UnsafeMutablePointer<Float>,
    argmax: UnsafeMutablePointer<Int32>
) {
    precondition(sh.isValid, "invalid max-pool shape")
    let OH = sh.oh, OW = sh.ow, H = sh.h, W = sh.w, C = sh.c, K = sh.kernel, st = sh.stride, pad = sh.pad
    let pixels = sh.n * OH * OW
    parallelRange(pixels, grain: max(1, elementwiseGrain / (C * K * K))) { lo, hi in
        for q in lo..<hi {
            let ow = q % OW, oh = (q / OW) % OH, b = q / (OW * OH)
            let h0 = oh * st - pad, w0 = ow * st - pad
            let hs = max(h0, 0), he = min(h0 + K, H), ws = max(w0, 0), we = min(w0 + K, W)
            let img = x + b * H * W * C
            let yo = y + q * C, ao = argmax + q * C
            var c = 0
            while c + fvecWidth <= C {
                var m = FVec(repeating: -.infinity)
                var idx = IVec(repeating: Int32(hs * W + ws))
                for ih in hs..<he {
                    for iw in ws..<we {
                        let v = vload(img + (ih * W + iw) * C + c)
                        let take = (v .> m) .| (v .!= v)
                        m = m.replacing(with: v, where: take)
                        idx = idx.replacing(with: Int32(ih * W + iw), where: take)
                    }
                }
                vstore(m, yo + c)
                UnsafeMutableRawPointer(ao + c).storeBytes(of: idx, as: IVec.self)
                c += fvecWidth
            }
            while c < C {
                var m = -Float.infinity
                var idx = Int32(hs * W + ws)
                for ih in hs..<he {
                    for iw in ws..<we {
                        let v = img[(ih * W + iw) * C + c]
                        if v > m || v.isNaN { m = v; idx = Int32(ih * W + iw) }
                    }
                }
                yo[c] = m; ao[c] = idx
                c += 1
            }
        }
    }
}

/// dx[N][H][W][C] = sum of dy over the outputs whose argmax is that input (overwritten).
public func maxPoolBackward(
    _ sh: MaxPoolShape, gradOutput dy: UnsafePointer<Float>, argmax: UnsafePointer<Int32>,
    gradInput dx: UnsafeMutablePointer<Float>
) {
    precondition(sh.isValid, "invalid max-pool shape")
    let C = sh.c, hw = sh.h * sh.w, ohw = sh.oh * sh.ow
    // Items are (image, block of channels): each owns its slice of dx, so the scatter needs no atomics.
    let cBlock = 64, cBlocks = ceilDiv(C, cBlock)
    parallelForDynamic(sh.n * cBlocks, chunksPerThread: 4) { lo, hi, _ in
        for item in lo..<hi {
            let b = item / cBlocks, c0 = (item % cBlocks) * cBlock, c1 = min(C, c0 + cBlock)
            let img = dx + b * hw * C
            for p in 0..<hw { for c in c0..<c1 { img[p * C + c] = 0 } }
            for q in 0..<ohw {
                let g = dy + (b * ohw + q) * C, a = argmax + (b * ohw + q) * C
                for c in c0..<c1 { img[Int(a[c]) * C + c] += g[c] }
            }
        }
    }
}

// MARK: - Global average pooling

/// y[N][C] = mean over the hw pixels of x[N][hw][C].
public func globalAvgPoolForward(
    n: Int, pixels hw: Int, channels c: Int, input x: UnsafePointer<Float>,
    output y: UnsafeMutablePointer<Float>
) {
    let C = c, scale = FVec(repeating: 1 / Float(hw))
    parallelForDynamic(n, chunksPerThread: 4) { lo, hi, _ in
        for b in lo..<hi {
            let img = x + b * hw * C, yr = y + b * C
            var ch = 0
            while ch < C {
                let k = min(fvecWidth, C - ch)
                var a0 = FVec(), a1 = FVec()
                var p = 0
                while p + 1 < hw {
                    a0 += vloadN(img + p * C + ch, k)
                    a1 += vloadN(img + (p + 1) * C + ch, k)
                    p += 2
                }
                if p < hw { a0 += vloadN(img + p * C + ch, k) }
                vstoreN((a0 + a1) * scale, yr + ch, k)
                ch += fvecWidth
            }
        }
    }
}

/// dx[N][hw][C] (= or +=) dy[N][C] / hw.
public func globalAvgPoolBackward(
    n: Int, pixels hw: Int, channels c: Int, gradOutput dy: UnsafePointer<Float>,
    gradInput dx: UnsafeMutablePointer<Float>, accumulate: Bool
) {
    let C = c, inv = 1 / Float(hw)
    parallelRange(n * hw, grain: max(1, elementwiseGrain / max(C, 1))) { lo, hi in
        for q in lo..<hi {
            let g = dy + (q / hw) * C, o = dx + q * C
            var ch = 0
            while ch < C {
                let k = min(fvecWidth, C - ch)
                var v = vloadN(g + ch, k) * inv
                if accumulate { v += vloadN(o + ch, k) }
                vstoreN(v, o + ch, k)
                ch += fvecWidth
            }
        }
    }
}

// MARK: - Naive references

public func maxPoolForwardNaive(
    _ sh: MaxPoolShape, input x: UnsafePointer<Float>, output y: UnsafeMutablePointer<Float>,
    argmax: UnsafeMutablePointer<Int32>
) {
    let OH = sh.oh, OW = sh.ow
    for b in 0..<sh.n {
        for oh in 0..<OH {
            for ow in 0..<OW {
                for c in 0..<sh.c {
                    var m = -Float.infinity, at = -1
                    for r in 0..<sh.kernel {
                        for s in 0..<sh.kernel {
                            let ih = oh * sh.stride - sh.pad + r, iw = ow * sh.stride - sh.pad + s
                            if ih < 0 || ih >= sh.h || iw < 0 || iw >= sh.w { continue }
                            let v = x[((b * sh.h + ih) * sh.w + iw) * sh.c + c]
                            if at < 0 || v > m || v.isNaN { m = v; at = ih * sh.w + iw }
                        }
                    }
                    let o = ((b * OH + oh) * OW + ow) * sh.c + c
                    y[o] = m; argmax[o] = Int32(at)
                }
            }
        }
    }
}

public func maxPoolBackwardNaive(
    _ sh: MaxPoolShape, gradOutput dy: UnsafePointer<Float>, argmax: UnsafePointer<Int32>,
    gradInput dx: UnsafeMutablePointer<Float>
) {
    let hw = sh.h * sh.w, ohw = sh.oh * sh.ow
    dx.initialize(repeating: 0, count: sh.inputCount)
    for b in 0..<sh.n {
        for q in 0..<ohw {
            for c in 0..<sh.c {
                let o = (b * ohw + q) * sh.c + c
                dx[(b * hw + Int(argmax[o])) * sh.c + c] += dy[o]
            }
        }
    }
}

public func globalAvgPoolForwardNaive(
    n: Int, pixels hw: Int, channels c: Int, input x: UnsafePointer<Float>,
    output y: UnsafeMutablePointer<Float>
) {
    for b in 0..<n {
        for ch in 0..<c {
            var s = 0.0
            for p in 0..<hw { s += Double(x[(b * hw + p) * c + ch]) }
            y[b * c + ch] = Float(s / Double(hw))
        }
    }
}

public func globalAvgPoolBackwardNaive(
    n: Int, pixels hw: Int, channels c: Int, gradOutput dy: UnsafePointer<Float>,
    gradInput dx: UnsafeMutablePointer<Float>, accumulate: Bool
) {
    for b in 0..<n {
        for p in 0..<hw {
            for ch in 0..<c {
                let v = dy[b * c + ch] / Float(hw)
                let i = (b * hw + p) * c + ch
                dx[i] = accumulate ? dx[i] + v : v
            }
        }
    }
}
