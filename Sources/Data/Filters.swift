import Foundation
import Kernels

// Gaussian blur, high-pass and strong blur over NHWC float images.
// Letters: N images, H rows, W columns, C channels; element (n, h, w, c) at ((n*H + h)*W + w)*C + c.

/// torchvision's `_get_gaussian_kernel1d`: samples of exp(-x^2 / (2 sigma^2)) at
/// x = -(k-1)/2 ... (k-1)/2, normalised to sum 1.
public func gaussianKernel1D(size k: Int, sigma: Float) -> [Float] {
    precondition(k >= 1 && k % 2 == 1 && sigma > 0)
    let half = Float(k - 1) / 2
    var w = (0..<k).map { i -> Float in
        let x = (Float(i) - half) / sigma; return exp(-0.5 * x * x)
    }
    let s = w.reduce(0, +)
    for i in 0..<k { w[i] /= s }
    return w
}

/// Reflect padding index ("reflect", the edge sample not repeated, as torch's pad(mode="reflect")).
/// Unlike torch, which requires pad < size, indices further out keep folding back and forth, so any
/// kernel works on any image (a 1-pixel axis always maps to 0).
@inline(__always) func reflectIndex(_ i: Int, _ n: Int) -> Int {
    if n == 1 { return 0 }
    let period = 2 * (n - 1)
    var m = i % period
    if m < 0 { m += period }
    return m < n ? m : period - m
}

/// Kernel size and sigma of a filter defined at 224 px, scaled to `resolution`: sigma * res/224,
/// kernel round(k * res/224) made odd (an even result goes up by one) and at least 3.
public func scaledFilter(kernel: Int, sigma: Float, resolution: Int) -> (kernel: Int, sigma: Float) {
    let f = Float(resolution) / 224
    var k = Int((Float(kernel) * f).rounded())
    if k % 2 == 0 { k += 1 }
    return (max(3, k), sigma * f)
}

/// The high-pass fill's blur (k 11, sigma 5 at 224 px, PAPER.md), scaled to `resolution`.
public func highPassFilterSpec(resolution: Int) -> (kernel: Int, sigma: Float) {
    scaledFilter(kernel: 11, sigma: 5, resolution: resolution)
}

/// The blur fill's strong blur (k 31, sigma 10 at 224 px, PAPER.md), scaled to `resolution`.
public func strongBlurSpec(resolution: Int) -> (kernel: Int, sigma: Float) {
    scaledFilter(kernel: 31, sigma: 10, resolution: resolution)
}

/// Separable Gaussian blur of one HWC image with reflect padding, as torchvision's `gaussian_blur`
/// (a 2-D kernel that is the outer product of `kernel` with itself). `tmp` holds H*W*C floats;
/// `out` may not alias `src`.
public func gaussianBlurImage(
    _ src: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
    tmp: UnsafeMutablePointer<Float>, height h: Int, width w: Int, channels c: Int,
    kernel: [Float]
) {
    let k = kernel.count, r = k / 2
    let rowLen = w * c
    kernel.withUnsafeBufferPointer { kb in
        let kp = kb.baseAddress!
        // Vertical pass into tmp: whole rows at once (contiguous, vectorisable).
        for y in 0..<h {
            let o = tmp + y * rowLen
            for i in 0..<rowLen { o[i] = 0 }
            for t in 0..<k {
                let wt = kp[t]
                let s = src + reflectIndex(y + t - r, h) * rowLen
                for i in 0..<rowLen { o[i] += wt * s[i] }
            }
        }
        // Horizontal pass into out: interior columns as shifted row sums, borders through reflect.
        let lo = min(r, w), hi = max(lo, w - r)  // interior columns [lo, hi)
        for y in 0..<h {
            let s = tmp + y * rowLen
            let o = out + y * rowLen
            if hi > lo {
                for i in lo * c..<hi * c { o[i] = 0 }
                for t in 0..<k {
                    let wt = kp[t]
                    let shift = (t - r) * c
                    for i in lo * c..<hi * c { o[i] += wt * s[i + shift] }
                }
            }
            for x in 0..<w where x < lo || x >= hi {
                for ch in 0..<c {
                    var acc: Float = 0
                    for t in 0..<k { acc += kp[t] * s[reflectIndex(x + t - r, w) * c + ch] }
                    o[x * c + ch] = acc
                }
            }
        }
    }
}

/// Floats of scratch `highPassFilter` / `strongBlur` need for n images: one H*W*C plane per image.
public func filterScratchCount(n: Int, height: Int, width: Int, channels: Int) -> Int {
    n * height * width * channels
}

/// Gaussian blur of N NHWC images (parallel over images through `parallelFor`). `scratch` holds
/// `filterScratchCount` floats; nothing is allocated except the 1-D kernel.
public func gaussianBlurBatch(
    _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
    scratch: UnsafeMutablePointer<Float>, n: Int, height: Int, width: Int,
    channels: Int, kernelSize: Int, sigma: Float
) {
    let kernel = gaussianKernel1D(size: kernelSize, sigma: sigma)
    let plane = height * width * channels
    parallelFor(n) { b, e, _ in
        for i in b..<e {
            gaussianBlurImage(
                x + i * plane, out + i * plane, tmp: scratch + i * plane,
                height: height, width: width, channels: channels, kernel: kernel)
        }
    }
}

/// High-pass filter x - GaussianBlur(x) of N NHWC images (the `hp` fill), kernel and sigma from
/// `highPassFilterSpec(resolution: height)` unless given. `out` may not alias `x`.
public func highPassFilter(
    _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
    scratch: UnsafeMutablePointer<Float>, n: Int, height: Int, width: Int, channels: Int,
    kernelSize: Int? = nil, sigma: Float? = nil
) {
    let spec = highPassFilterSpec(resolution: height)
    gaussianBlurBatch(
        x, out, scratch: scratch, n: n, height: height, width: width, channels: channels,
        kernelSize: kernelSize ?? spec.kernel, sigma: sigma ?? spec.sigma)
    let total = n * height * width * channels
    for i in 0..<total { out[i] = x[i] - out[i] }
}

/// Strong blur of N NHWC images (the `blur` fill), kernel and sigma from
/// `strongBlurSpec(resolution: height)` unless given. `out` may not alias `x`.
public func strongBlur(
    _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
    scratch: UnsafeMutablePointer<Float>, n: Int, height: Int, width: Int, channels: Int,
    kernelSize: Int? = nil, sigma: Float? = nil
) {
    let spec = strongBlurSpec(resolution: height)
    gaussianBlurBatch(
        x, out, scratch: scratch, n: n, height: height, width: width, channels: channels,
        kernelSize: kernelSize ?? spec.kernel, sigma: sigma ?? spec.sigma)
}

/// Array conveniences (they allocate): high-pass / strong blur of N NHWC images.
public func highPassFilter(_ x: [Float], n: Int, height: Int, width: Int, channels: Int) -> [Float] {
    applyFilter(x, n: n, height: height, width: width, channels: channels, highPass: true)
}

public func strongBlur(_ x: [Float], n: Int, height: Int, width: Int, channels: Int) -> [Float] {
    applyFilter(x, n: n, height: height, width: width, channels: channels, highPass: false)
}

/// Gaussian blur of one HWC image held in an array (allocates).
public func gaussianBlur(_ x: [Float], height: Int, width: Int, channels: Int, kernelSize: Int, sigma: Float) -> [Float]
{
    var out = [Float](repeating: 0, count: x.count)
    var tmp = [Float](repeating: 0, count: x.count)
    let kernel = gaussianKernel1D(size: kernelSize, sigma: sigma)
    x.withUnsafeBufferPointer { xp in
        out.withUnsafeMutableBufferPointer { op in
            tmp.withUnsafeMutableBufferPointer { tp in
                gaussianBlurImage(
                    xp.baseAddress!, op.baseAddress!, tmp: tp.baseAddress!, height: height,
                    width: width, channels: channels, kernel: kernel)
            }
        }
    }
    return out
}

func applyFilter(_ x: [Float], n: Int, height: Int, width: Int, channels: Int, highPass: Bool) -> [Float] {
    precondition(x.count == n * height * width * channels)
    var out = [Float](repeating: 0, count: x.count)
    var scratch = [Float](repeating: 0, count: x.count)
    x.withUnsafeBufferPointer { xp in
        out.withUnsafeMutableBufferPointer { op in
            scratch.withUnsafeMutableBufferPointer { sp in
                if highPass {
                    highPassFilter(
                        xp.baseAddress!, op.baseAddress!, scratch: sp.baseAddress!, n: n,
                        height: height, width: width, channels: channels)
                } else {
                    strongBlur(
                        xp.baseAddress!, op.baseAddress!, scratch: sp.baseAddress!, n: n,
                        height: height, width: width, channels: channels)
                }
            }
        }
    }
    return out
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
