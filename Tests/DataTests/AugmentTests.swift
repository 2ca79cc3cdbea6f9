import XCTest
import Kernels
import Data
import TestSupport

func randomArray(_ seed: UInt64) -> ((Int, Float, Float) -> [Float]) {
    var r = TestRNG(seed: seed)
    return { n, lo, hi in r.array(n, lo, hi) }
}

final class AugmentTests: XCTestCase {
    let refDir = fixturesPath() + "/png/ref/"

    func ref(_ name: String) throws -> [Float] {
        let b = try readFileBytes(refDir + name + ".f32")
        return b.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    func refImage() throws -> Image { try readPNG(path: refDir + "ref_rgb.png") }

    func withBuffer(_ img: Image, _ body: (UnsafeMutablePointer<Float>) -> Void) -> [Float] {
        var p = img.pixels
        p.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
        return p
    }

    /// Antialiased bilinear resized crop against torchvision `resized_crop(antialias=True)`.
    func testResizedCropMatchesTorchvision() throws {
        let img = try refImage()
        XCTAssertEqual(img.width, 16)
        XCTAssertEqual(img.height, 12)
        for (name, top, left, h, w, size) in [("crop_down", 2, 3, 9, 11, 5), ("crop_up", 1, 2, 6, 5, 13)] {
            var out = [Float](repeating: 0, count: size * size * 3)
            img.pixels.withUnsafeBufferPointer { s in
                out.withUnsafeMutableBufferPointer { o in
                    resampleBilinear(
                        s.baseAddress!, height: 12, width: 16, channels: 3, top: top, left: left,
                        cropHeight: h, cropWidth: w, outHeight: size, outWidth: size, out: o.baseAddress!)
                }
            }
            XCTAssertLessThan(maxAbsDiff(out, try ref(name)).diff, 2e-5, name)
        }
    }

    func testGaussianBlurMatchesTorchvision() throws {
        let img = try refImage()
        for (name, k, s) in [("blur_k5_s1.3", 5, Float(1.3)), ("blur_k11_s3", 11, Float(3))] {
            let out = gaussianBlur(img.pixels, height: 12, width: 16, channels: 3, kernelSize: k, sigma: s)
            XCTAssertLessThan(maxAbsDiff(out, try ref(name)).diff, 2e-5, name)
        }
    }

    func testColourOpsMatchTorchvision() throws {
        let img = try refImage()
        let n = 12 * 16
        let cases: [(String, (UnsafeMutablePointer<Float>) -> Void)] = [
            ("brightness_1.3", { adjustBrightness($0, count: n * 3, factor: 1.3) }),
            ("contrast_0.7", { adjustContrast($0, pixels: n, channels: 3, factor: 0.7) }),
            ("saturation_1.35", { adjustSaturation($0, pixels: n, channels: 3, factor: 1.35) }),
            ("hue_0.08", { adjustHue($0, pixels: n, channels: 3, factor: 0.08) }),
            ("hue_-0.1", { adjustHue($0, pixels: n, channels: 3, factor: -0.1) }),
            ("grayscale", { toGrayscale($0, pixels: n, channels: 3) })
        ]
        for (name, op) in cases {
            XCTAssertLessThan(maxAbsDiff(withBuffer(img, op), try ref(name)).diff, 2e-5, name)
        }
    }

    /// Crop areas and aspect ratios over many draws stay in range and cover it.
    func testCropStatistics() {
        var rng = SplitMix64(seed: 42)
        var areas = [Float](), ratios = [Float]()
        let H = 224, W = 224
        for _ in 0..<20000 {
            let b = randomResizedCropBox(height: H, width: W, scale: 0.2...1, ratio: 0.75...(4.0 / 3), rng: &rng)
            XCTAssertTrue(b.top >= 0 && b.left >= 0 && b.top + b.height <= H && b.left + b.width <= W)
            areas.append(Float(b.height * b.width) / Float(H * W))
            ratios.append(Float(b.width) / Float(b.height))
        }
        // Rounding to whole pixels widens the ranges by a pixel at most.
        XCTAssertGreaterThanOrEqual(areas.min()!, 0.19)
        XCTAssertLessThanOrEqual(areas.max()!, 1)
        XCTAssertGreaterThanOrEqual(ratios.min()!, 0.74)
        XCTAssertLessThanOrEqual(ratios.max()!, 1.345)
        XCTAssertLessThan(areas.min()!, 0.21)
        XCTAssertGreaterThan(areas.max()!, 0.97)
        // Accepted draws: area ~ U(0.2, 1) truncated where the window does not fit, so the mean is
        // a little below 0.6; log-ratio symmetric around 0.
        let meanArea = areas.reduce(0, +) / Float(areas.count)
        XCTAssertGreaterThan(meanArea, 0.5)
        XCTAssertLessThan(meanArea, 0.6)
        let meanLogRatio = ratios.map { log($0) }.reduce(0, +) / Float(ratios.count)
        XCTAssertLessThan(abs(meanLogRatio), 0.01)
        // A very wide image falls back to a central crop with the ratio clamped.
        let f = randomResizedCropBox(height: 4, width: 400, scale: 0.9...1, ratio: 0.75...(4.0 / 3), rng: &rng)
        XCTAssertEqual(f.height, 4)
        XCTAssertEqual(f.width, 5)
        XCTAssertEqual(f.left, (400 - 5) / 2)
    }

    func testJitterRangesAndProbabilities() {
        let cfg = AugmentConfig.mocoV2(size: 32)
        var rng = SplitMix64(seed: 7)
        var b = [Float](), c = [Float](), s = [Float](), h = [Float]()
        var firstOp = [Int](repeating: 0, count: 4)
        for _ in 0..<20000 {
            let j = JitterDraw.random(cfg, rng: &rng)
            XCTAssertEqual(j.order.sorted(), [0, 1, 2, 3])
            firstOp[j.order[0]] += 1
            b.append(j.brightness); c.append(j.contrast); s.append(j.saturation); h.append(j.hue)
        }
        for (v, lo, hi) in [(b, Float(0.6), Float(1.4)), (c, 0.6, 1.4), (s, 0.6, 1.4), (h, -0.1, 0.1)] {
            XCTAssertGreaterThanOrEqual(v.min()!, lo)
            XCTAssertLessThanOrEqual(v.max()!, hi)
            XCTAssertLessThan(v.min()! - lo, 0.01 * (hi - lo))
            XCTAssertLessThan(hi - v.max()!, 0.01 * (hi - lo))
            XCTAssertEqual(v.reduce(0, +) / Float(v.count), (lo + hi) / 2, accuracy: 0.02 * (hi - lo))
        }
        for k in 0..<4 { XCTAssertEqual(Double(firstOp[k]) / 20000, 0.25, accuracy: 0.02) }

        // Probabilities of the random steps of the whole pipeline.
        let img = Image(width: 12, height: 10, channels: 3, pixels: randomArray(3)(360, 0, 1))
        var jit = 0, gray = 0, blur = 0, flip = 0
        var out = [Float](repeating: 0, count: 32 * 32 * 3)
        let N = 4000
        var sigmas = [Float]()
        for _ in 0..<N {
            let r = out.withUnsafeMutableBufferPointer { augment(img, config: cfg, rng: &rng, into: $0.baseAddress!) }
            if r.jitter != nil { jit += 1 }
            if r.grayscale { gray += 1 }
            if let s = r.blurSigma { blur += 1; sigmas.append(s) }
            if r.flipped { flip += 1 }
            XCTAssertTrue(out.allSatisfy { $0.isFinite })
        }
        XCTAssertEqual(Double(jit) / Double(N), 0.8, accuracy: 0.03)
        XCTAssertEqual(Double(gray) / Double(N), 0.2, accuracy: 0.03)
        XCTAssertEqual(Double(blur) / Double(N), 0.5, accuracy: 0.03)
        XCTAssertEqual(Double(flip) / Double(N), 0.5, accuracy: 0.03)
        let f = Float(32) / 224
        XCTAssertGreaterThanOrEqual(sigmas.min()!, 0.1 * f)
        XCTAssertLessThanOrEqual(sigmas.max()!, 2 * f)
    }

    func testAugmentIsDeterministicAndNormalised() {
        let img = Image(width: 20, height: 16, channels: 3, pixels: randomArray(5)(960, 0, 1))
        let cfg = AugmentConfig.mocoV2(size: 16)
        var r1 = SplitMix64(seed: 9), r2 = SplitMix64(seed: 9)
        XCTAssertEqual(augment(img, config: cfg, rng: &r1), augment(img, config: cfg, rng: &r2))
        XCTAssertNotEqual(augment(img, config: cfg, rng: &r1), augment(img, config: cfg, rng: &r1))
        // Evaluation transform of a constant image: exactly (v - mean) / std.
        let flat = Image(width: 9, height: 7, channels: 3, pixels: [Float](repeating: 0.5, count: 189))
        var r = SplitMix64(seed: 1)
        let e = augment(flat, config: .evaluation(size: 8), rng: &r)
        for i in 0..<64 {
            XCTAssertEqual(e[3 * i], (0.5 - 0.485) / 0.229, accuracy: 1e-5)
            XCTAssertEqual(e[3 * i + 2], (0.5 - 0.406) / 0.225, accuracy: 1e-5)
        }
        // High-pass of a constant image is zero; views of gray images stay 1-channel.
        var hp = AugmentConfig.evaluation(size: 8, highPass: true)
        XCTAssertTrue(augment(flat, config: hp, rng: &r).allSatisfy { abs($0) < 1e-5 })
        hp = .mocoV2(size: 8)
        let g = Image(width: 9, height: 7, channels: 1, pixels: randomArray(2)(63, 0, 1))
        XCTAssertEqual(augment(g, config: hp, rng: &r).count, 64)
    }

    func testFilterSizesScaleWithResolution() {
        XCTAssertEqual(highPassFilterSpec(resolution: 224).kernel, 11)
        XCTAssertEqual(highPassFilterSpec(resolution: 224).sigma, 5)
        XCTAssertEqual(strongBlurSpec(resolution: 224).kernel, 31)
        XCTAssertEqual(strongBlurSpec(resolution: 224).sigma, 10)
        XCTAssertEqual(highPassFilterSpec(resolution: 32).kernel, 3)
        XCTAssertEqual(highPassFilterSpec(resolution: 32).sigma, 5 * 32 / 224, accuracy: 1e-6)
        XCTAssertEqual(strongBlurSpec(resolution: 32).kernel, 5)
        XCTAssertEqual(strongBlurSpec(resolution: 112).kernel, 17)  // 15.5 -> 16 -> odd 17
        XCTAssertEqual(strongBlurSpec(resolution: 8).kernel, 3)
        XCTAssertEqual(AugmentConfig.mocoV2(size: 224).blurKernel, 23)
        XCTAssertEqual(AugmentConfig.mocoV2(size: 32).blurKernel, 3)
    }

    /// Batched NHWC filters against the single-image blur; high-pass = x - blur; blur keeps the mean
    /// of a constant image; any kernel works on tiny images.
    func testHighPassAndStrongBlurBatch() {
        let n = 3, h = 8, w = 8, c = 3
        let x = randomArray(11)(n * h * w * c, 0, 1)
        let hp = highPassFilter(x, n: n, height: h, width: w, channels: c)
        let sb = strongBlur(x, n: n, height: h, width: w, channels: c)
        let hs = highPassFilterSpec(resolution: h), bs = strongBlurSpec(resolution: h)
        for i in 0..<n {
            let img = Array(x[(i * h * w * c)..<((i + 1) * h * w * c)])
            let b1 = gaussianBlur(img, height: h, width: w, channels: c, kernelSize: hs.kernel, sigma: hs.sigma)
            let b2 = gaussianBlur(img, height: h, width: w, channels: c, kernelSize: bs.kernel, sigma: bs.sigma)
            for k in 0..<img.count {
                XCTAssertEqual(hp[i * img.count + k], img[k] - b1[k], accuracy: 1e-6)
                XCTAssertEqual(sb[i * img.count + k], b2[k], accuracy: 1e-6)
            }
        }
        let tiny = [Float](repeating: 0.3, count: 2 * 3)
        let big = gaussianBlur(tiny, height: 2, width: 1, channels: 3, kernelSize: 31, sigma: 10)
        for v in big { XCTAssertEqual(v, 0.3, accuracy: 1e-6) }
    }
}
