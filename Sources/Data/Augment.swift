/// What the augmentation pipeline does to produce one view. Defaults (`mocoV2`) follow MoCo v2 /
/// PAPER.md: RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3, bilinear) -> RandomApply(ColorJitter(0.4,
/// 0.4, 0.4, 0.1), p 0.8) -> RandomGrayscale(p 0.2) -> RandomApply(GaussianBlur(sigma 0.1-2), p 0.5)
/// -> RandomHorizontalFlip -> Normalize -> (optional) high-pass.
///
/// Differences from torchvision, on purpose:
/// - Everything runs in Float32 on [0, 1] values; PIL rounds to 8 bits after every step.
/// - Random numbers come from `SplitMix64`, not torch's generator: the same distributions, not the
///   same streams.
/// - GaussianBlur's kernel is `blurKernel` (default: the SimCLR rule, 10% of the output size made odd,
///   at least 3: 23 at 224 px, 3 at 32 px) with torchvision's sampled Gaussian and reflect padding;
///   MoCo v2's own code calls PIL's `ImageFilter.GaussianBlur(radius=sigma)` (an extended box blur).
///   The sigma range is 0.1-2 at 224 px and scales with the output size (`mocoV2(size:)`), as the
///   other filter sizes in PAPER.md do.
/// - For 1-channel images hue and saturation are no-ops and grayscale changes nothing (as in
///   torchvision); views keep the image's channel count.
/// - `highPass` applies x - GaussianBlur(x) (k 11, sigma 5 at 224 px, scaled) to the normalised view:
///   the mean cancels, so this is the high-pass of the [0, 1] view divided by std.
public struct AugmentConfig: Sendable, Equatable {
    /// Output views are size x size.
    public var size: Int
    public var cropScale: ClosedRange<Float> = 0.2...1
    public var cropRatio: ClosedRange<Float> = (Float(3) / 4)...(Float(4) / 3)
    /// When false the whole image is resized to size x size (evaluation / feature extraction).
    public var randomCrop: Bool = true
    public var jitterProbability: Float = 0.8
    public var brightness: Float = 0.4
    public var contrast: Float = 0.4
    public var saturation: Float = 0.4
    public var hue: Float = 0.1
    public var grayscaleProbability: Float = 0.2
    public var blurProbability: Float = 0.5
    public var blurSigma: ClosedRange<Float>
    public var blurKernel: Int
    public var flipProbability: Float = 0.5
    /// Per-channel mean and std for 3-channel images; 1-channel images use their averages.
    public var mean: [Float] = [0.485, 0.456, 0.406]
    public var std: [Float] = [0.229, 0.224, 0.225]
    public var highPass: Bool = false

    /// MoCo v2's augmentations at `size` px (blur sigma and kernel scaled from 224 px).
    public static func mocoV2(size: Int) -> AugmentConfig {
        let f = Float(size) / 224
        var k = Int((Float(size) * 0.1).rounded(.down))
        if k % 2 == 0 { k += 1 }
        return AugmentConfig(size: size, blurSigma: (0.1 * f)...(2.0 * f), blurKernel: max(3, k))
    }

    /// No randomness: the whole image resized to size x size, then normalised (and high-pass).
    public static func evaluation(size: Int, highPass: Bool = false) -> AugmentConfig {
        var c = mocoV2(size: size)
        c.randomCrop = false
        c.jitterProbability = 0
        c.grayscaleProbability = 0
        c.blurProbability = 0
        c.flipProbability = 0
        c.highPass = highPass
        return c
    }

    public init(size: Int, blurSigma: ClosedRange<Float>, blurKernel: Int) {
        self.size = size
        self.blurSigma = blurSigma
        self.blurKernel = blurKernel
    }

    /// Mean and std for a view with `channels` channels.
    public func normalization(channels: Int) -> (mean: [Float], std: [Float]) {
        if channels == mean.count { return (mean, std) }
        let m = mean.reduce(0, +) / Float(mean.count), s = std.reduce(0, +) / Float(std.count)
        return ([Float](repeating: m, count: channels), [Float](repeating: s, count: channels))
    }
}

/// A crop window in source pixels.
public struct CropBox: Equatable, Sendable {
    public var top: Int, left: Int, height: Int, width: Int
}

/// torchvision `RandomResizedCrop.get_params`: up to 10 tries of area fraction ~ U(scale) and
/// log-uniform aspect ratio w/h; the first window that fits is placed uniformly; otherwise the
/// central crop with the ratio clamped into range.
public func randomResizedCropBox(
    height: Int, width: Int, scale: ClosedRange<Float>, ratio: ClosedRange<Float>,
    rng: inout SplitMix64
) -> CropBox {
    let area = Float(height * width)
    let logLo = log(ratio.lowerBound), logHi = log(ratio.upperBound)
    for _ in 0..<10 {
        let target = area * rng.uniform(scale.lowerBound, scale.upperBound)
        let aspect = exp(rng.uniform(logLo, logHi))
        let w = Int((target * aspect).squareRoot().rounded())
        let h = Int((target / aspect).squareRoot().rounded())
        if w > 0 && w <= width && h > 0 && h <= height {
            let i = rng.int(below: height - h + 1)
            let j = rng.int(below: width - w + 1)
            return CropBox(top: i, left: j, height: h, width: w)
        }
    }
    let inRatio = Float(width) / Float(height)
    var w = width, h = height
    if inRatio < ratio.lowerBound {
        h = Int((Float(w) / ratio.lowerBound).rounded())
    } else if inRatio > ratio.upperBound {
        w = Int((Float(h) * ratio.upperBound).rounded())
    }
    return CropBox(top: (height - h) / 2, left: (width - w) / 2, height: h, width: w)
}

/// One ColorJitter draw, as torchvision's `ColorJitter.get_params`: a random order of the four
/// adjustments and factors brightness, contrast, saturation ~ U(max(0, 1-x), 1+x), hue ~ U(-h, h).
public struct JitterDraw: Equatable, Sendable {
    /// 0 brightness, 1 contrast, 2 saturation, 3 hue.
    public var order: [Int]
    public var brightness: Float, contrast: Float, saturation: Float, hue: Float

    public static func random(_ c: AugmentConfig, rng: inout SplitMix64) -> JitterDraw {
        var order = [0, 1, 2, 3]
        for i in stride(from: 3, to: 0, by: -1) { order.swapAt(i, rng.int(below: i + 1)) }
        let b = rng.uniform(max(0, 1 - c.brightness), 1 + c.brightness)
        let ct = rng.uniform(max(0, 1 - c.contrast), 1 + c.contrast)
        let s = rng.uniform(max(0, 1 - c.saturation), 1 + c.saturation)
        let h = rng.uniform(-c.hue, c.hue)
        return JitterDraw(order: order, brightness: b, contrast: ct, saturation: s, hue: h)
    }
}

/// Which random steps one view went through (for tests and previews).
public struct AugmentRecord: Equatable, Sendable {
    public var crop = CropBox(top: 0, left: 0, height: 0, width: 0)
    public var jitter: JitterDraw? = nil
    public var grayscale = false
    public var blurSigma: Float? = nil
    public var flipped = false
}

// MARK: - Colour operations on HWC [0, 1] buffers (torchvision's tensor definitions)

@inline(__always) func clamp01(_ v: Float) -> Float { min(1, max(0, v)) }

/// torchvision `rgb_to_grayscale` weights (0.2989, 0.587, 0.114).
@inline(__always) func luma(_ r: Float, _ g: Float, _ b: Float) -> Float { 0.2989 * r + 0.587 * g + 0.114 * b }

public func adjustBrightness(_ p: UnsafeMutablePointer<Float>, count: Int, factor: Float) {
    for i in 0..<count { p[i] = clamp01(p[i] * factor) }
}

/// Blend with the mean of the grayscale image.
public func adjustContrast(_ p: UnsafeMutablePointer<Float>, pixels n: Int, channels c: Int, factor: Float) {
    var sum: Float = 0
    if c == 3 {
        for i in 0..<n { sum += luma(p[3 * i], p[3 * i + 1], p[3 * i + 2]) }
    } else {
        for i in 0..<n { sum += p[i] }
    }
    let m = sum / Float(n)
    for i in 0..<(n * c) { p[i] = clamp01(factor * p[i] + (1 - factor) * m) }
}

/// Blend with the grayscale image (no-op for 1 channel).
public func adjustSaturation(_ p: UnsafeMutablePointer<Float>, pixels n: Int, channels c: Int, factor: Float) {
    guard c == 3 else { return }
    for i in 0..<n {
        let g = luma(p[3 * i], p[3 * i + 1], p[3 * i + 2])
        for k in 0..<3 { p[3 * i + k] = clamp01(factor * p[3 * i + k] + (1 - factor) * g) }
    }
}

/// Hue rotation through HSV, torchvision's `_rgb2hsv` / `_hsv2rgb` (no-op for 1 channel).
public func adjustHue(_ p: UnsafeMutablePointer<Float>, pixels n: Int, channels c: Int, factor: Float) {
    guard c == 3 else { return }
    for i in 0..<n {
        let r = p[3 * i], g = p[3 * i + 1], b = p[3 * i + 2]
        let maxc = max(r, max(g, b)), minc = min(r, min(g, b))
        let eqc = maxc == minc
        let cr = maxc - minc
        let s = cr / (eqc ? 1 : maxc)
        let d = eqc ? 1 : cr
        let rc = (maxc - r) / d, gc = (maxc - g) / d, bc = (maxc - b) / d
        var h: Float
        if maxc == r { h = bc - gc } else if maxc == g { h = 2 + rc - bc } else { h = 4 + gc - rc }
        h = (h / 6 + 1).truncatingRemainder(dividingBy: 1)
        h = (h + factor).truncatingRemainder(dividingBy: 1)
        if h < 0 { h += 1 }
        let v = maxc
        let h6 = h * 6
        let fi = h6.rounded(.down)
        let f = h6 - fi
        let sector = ((Int(fi) % 6) + 6) % 6
        let pp = clamp01(v * (1 - s)), q = clamp01(v * (1 - s * f)), t = clamp01(v * (1 - s * (1 - f)))
        let (ro, go, bo): (Float, Float, Float)
        switch sector {
        case 0: (ro, go, bo) = (v, t, pp)
        case 1: (ro, go, bo) = (q, v, pp)
        case 2: (ro, go, bo) = (pp, v, t)
        case 3: (ro, go, bo) = (pp, q, v)
        case 4: (ro, go, bo) = (t, pp, v)
        default: (ro, go, bo) = (v, pp, q)
        }
        p[3 * i] = ro; p[3 * i + 1] = go; p[3 * i + 2] = bo
    }
}

/// Grayscale with 3 output channels (RandomGrayscale keeps the channel count).
public func toGrayscale(_ p: UnsafeMutablePointer<Float>, pixels n: Int, channels c: Int) {
    guard c == 3 else { return }
    for i in 0..<n {
        let g = luma(p[3 * i], p[3 * i + 1], p[3 * i + 2])
        p[3 * i] = g; p[3 * i + 1] = g; p[3 * i + 2] = g
    }
}

// MARK: - The pipeline

/// One augmented, normalised view of `img` (size x size x img.channels, HWC), drawing every random
/// choice from `rng`.
public func augment(_ img: Image, config: AugmentConfig, rng: inout SplitMix64) -> [Float] {
    var out = [Float](repeating: 0, count: config.size * config.size * img.channels)
    out.withUnsafeMutableBufferPointer { o in
        _ = augment(img, config: config, rng: &rng, into: o.baseAddress!)
    }
    return out
}

/// As `augment(_:config:rng:)`, writing size*size*channels floats to `out`; returns what was drawn.
@discardableResult
public func augment(
    _ img: Image, config: AugmentConfig, rng: inout SplitMix64,
    into out: UnsafeMutablePointer<Float>
) -> AugmentRecord {
    let s = config.size, c = img.channels, n = s * s
    var rec = AugmentRecord()
    rec.crop =
        config.randomCrop
        ? randomResizedCropBox(
            height: img.height, width: img.width, scale: config.cropScale,
            ratio: config.cropRatio, rng: &rng)
        : CropBox(top: 0, left: 0, height: img.height, width: img.width)
    img.pixels.withUnsafeBufferPointer { src in
        resampleBilinear(
            src.baseAddress!, height: img.height, width: img.width, channels: c,
            top: rec.crop.top, left: rec.crop.left, cropHeight: rec.crop.height,
            cropWidth: rec.crop.width, outHeight: s, outWidth: s, out: out)
    }
    if config.jitterProbability > 0 && rng.uniform() < config.jitterProbability {
        let j = JitterDraw.random(config, rng: &rng)
        rec.jitter = j
        for op in j.order {
            switch op {
            case 0: adjustBrightness(out, count: n * c, factor: j.brightness)
            case 1: adjustContrast(out, pixels: n, channels: c, factor: j.contrast)
            case 2: adjustSaturation(out, pixels: n, channels: c, factor: j.saturation)
            default: adjustHue(out, pixels: n, channels: c, factor: j.hue)
            }
        }
    }
    if config.grayscaleProbability > 0 && rng.uniform() < config.grayscaleProbability {
        rec.grayscale = true
        toGrayscale(out, pixels: n, channels: c)
    }
    var tmp: [Float] = []
    if config.blurProbability > 0 && rng.uniform() < config.blurProbability {
        let sigma = rng.uniform(config.blurSigma.lowerBound, config.blurSigma.upperBound)
        rec.blurSigma = sigma
        let kernel = gaussianKernel1D(size: config.blurKernel, sigma: max(sigma, 1e-6))
        let copy = Array(UnsafeBufferPointer(start: out, count: n * c))
        tmp = [Float](repeating: 0, count: n * c)
        copy.withUnsafeBufferPointer { cp in
            tmp.withUnsafeMutableBufferPointer { tp in
                gaussianBlurImage(
                    cp.baseAddress!, out, tmp: tp.baseAddress!, height: s, width: s, channels: c,
                    kernel: kernel)
            }
        }
    }
    if config.flipProbability > 0 && rng.uniform() < config.flipProbability {
        rec.flipped = true
        for y in 0..<s {
            let row = out + y * s * c
            for x in 0..<(s / 2) {
                for ch in 0..<c {
                    let a = x * c + ch, b = (s - 1 - x) * c + ch
                    let t = row[a]; row[a] = row[b]; row[b] = t
                }
            }
        }
    }
    let (mean, std) = config.normalization(channels: c)
    for i in 0..<n {
        for ch in 0..<c { out[i * c + ch] = (out[i * c + ch] - mean[ch]) / std[ch] }
    }
    if config.highPass {
        let spec = highPassFilterSpec(resolution: s)
        let kernel = gaussianKernel1D(size: spec.kernel, sigma: spec.sigma)
        let copy = Array(UnsafeBufferPointer(start: out, count: n * c))
        if tmp.count != n * c { tmp = [Float](repeating: 0, count: n * c) }
        var blurred = [Float](repeating: 0, count: n * c)
        copy.withUnsafeBufferPointer { cp in
            tmp.withUnsafeMutableBufferPointer { tp in
                blurred.withUnsafeMutableBufferPointer { bp in
                    gaussianBlurImage(
                        cp.baseAddress!, bp.baseAddress!, tmp: tp.baseAddress!, height: s, width: s,
                        channels: c, kernel: kernel)
                }
            }
        }
        for i in 0..<(n * c) { out[i] = copy[i] - blurred[i] }
    }
    return rec
}

#if canImport(Glibc)
    import Foundation
    import Kernels
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
