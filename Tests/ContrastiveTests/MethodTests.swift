// The method as PAPER.md states it, where a training step could silently do otherwise: which views
// saliency reads, which forwards move the batch-norm statistics, the hp fill's hard-negative cap and
// the official code's shared hard negatives.
import XCTest
import Foundation
import Kernels
import Network
import Data
import Contrastive
import TestSupport

final class MethodTests: XCTestCase {
    func config(_ method: ContrastiveMethod, fill: MaskFill = .hp, saliency: SaliencySource = .own, warmup: Int = 0)
        -> TrainConfig
    {
        var c = TrainConfig()
        c.method = method
        c.width = 0.125; c.inChannels = 1; c.resolution = 16; c.batch = 8; c.queue = 32
        c.masking = .saliency; c.fill = fill; c.saliency = saliency; c.saliencyWarmup = warmup
        c.hardNegatives = 1; c.bnSplits = 2; c.seed = 3
        return c
    }

    /// Two plain views of drawn shapes on a dark ground (so that saliency and the high-pass filter
    /// both have something to find).
    func views(_ c: TrainConfig, seed: UInt64 = 1) -> [[Float]] {
        var rng = TestRNG(seed: seed)
        let R = c.resolution, img = R * R * c.inChannels
        return (0..<2).map { _ in
            var v = [Float](repeating: -1, count: c.batch * img)
            for b in 0..<c.batch {
                let y0 = Int(rng.next() % UInt64(R / 2)), x0 = Int(rng.next() % UInt64(R / 2))
                for y in y0..<(y0 + R / 3) { for x in x0..<(x0 + R / 3) { v[b * img + y * R + x] = 1 } }
                for i in 0..<img { v[b * img + i] += Float(rng.uniform() - 0.5) * 0.2 }
            }
            return v
        }
    }

    func array(_ p: UnsafePointer<Float>, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }
    func counters(_ s: ParameterStore) -> [Int64] {
        Array(UnsafeBufferPointer(start: s.counters, count: s.counterCount))
    }
    func buffers(_ s: ParameterStore) -> [Float] { array(s.buffers, s.bufferCount) }

    /// The hp fill's hard negative masks at most fgCap of the cells (the official hp code's cap); the
    /// blur and mean fills have none. All cells foreground, r = 0.7: 11 of 16 cells uncapped, 9 capped.
    func testHighPassHardNegativeIsCapped() {
        var cfg = MaskConfig()
        cfg.focalProb = 0; cfg.spatialProb = 1; cfg.negRatio = 0.7...0.7
        let B = 6, R = 16, G = 4
        let v = [Float](repeating: 0.3, count: B * R * R)
        let sal = [Float](repeating: 1, count: B * G * G)
        for (fill, expected) in [(MaskFill.hp, 9), (.mean, 11), (.blur, 11)] {
            var x = v
            var rec = [MaskRecord](repeating: MaskRecord(), count: B)
            sal.withUnsafeBufferPointer { s in
                v.withUnsafeBufferPointer { blurred in
                    x.withUnsafeMutableBufferPointer { xp in
                        applyMasks(
                            views: xp.baseAddress!, blurred: blurred.baseAddress!, saliency: s.baseAddress!,
                            batch: B, height: R, width: R, channels: 1, grid: G, role: .hardNegative,
                            mode: .saliency, fill: fill, config: cfg, seed: 1, step: 0, cellMasks: nil,
                            records: &rec)
                    }
                }
            }
            XCTAssertEqual(rec.map(\.maskedCells), [Int](repeating: expected, count: B), "\(fill)")
        }
    }

    /// SimCLR with saliency masking and a hard negative: of the step's forwards only the training
    /// forward (both views, 2B) moves the running batch-norm statistics: they equal what that forward
    /// alone gives a fresh copy of the initial encoder, and every counter moved by one.
    func testSimCLRAuxiliaryForwardsLeaveStatisticsAlone() {
        let c = config(.simclr)
        let step = TrainingStep(config: c)
        let fresh = Encoder(config: c.resnet, headDim: c.headDim)
        fresh.initialize(seed: c.seed)
        XCTAssertTrue(buffers(fresh.store) == buffers(step.query.store))
        _ = step.step(views: views(c), epoch: 0, step: 0, lr: 0.05)
        XCTAssertEqual(counters(step.query.store), [Int64](repeating: 1, count: step.query.store.counterCount))
        // The training forward alone, on the views the step trained on (masked queries, then keys).
        let pass = ResNetPass(
            layout: fresh.backbone, batch: 2 * c.batch, height: c.resolution, width: c.resolution,
            keepActivations: true)
        pass.forward(input: step.lastQueryViews, store: fresh.store, mode: .train(splits: 1))
        XCTAssertTrue(buffers(step.query.store) == buffers(fresh.store), "running statistics moved by another forward")
    }

    /// Random masking computes no saliency, so its masks must not read the saliency buffers: whatever
    /// they hold (here two different patterns), the step masks and trains the same.
    func testRandomMaskingReadsNoSaliency() {
        for method in [ContrastiveMethod.simclr, .moco] {
            var c = config(method, fill: .mean)
            c.masking = .random
            var results: [([Float], [Float])] = []
            for pattern in 0..<2 {
                let step = TrainingStep(config: c)
                let cells = step.gridSize * step.gridSize
                for (p, n) in [(step.lastKeySaliency, c.batch * cells), (step.lastQuerySaliency, c.batch * cells)] {
                    let m = UnsafeMutablePointer(mutating: p)
                    for i in 0..<n { m[i] = pattern == 0 ? 0 : Float((i * 7919 + 13) % 17) }
                }
                _ = step.step(views: views(c), epoch: 0, step: 0, lr: 0.05)
                let img = c.resolution * c.resolution
                results.append((array(step.lastHardViews, c.batch * img), array(step.lastQueryViews, c.batch * img)))
            }
            XCTAssertTrue(results[0].0 == results[1].0, "\(method): hard negatives depend on the saliency buffer")
            XCTAssertTrue(results[0].1 == results[1].1, "\(method): queries depend on the saliency buffer")
        }
    }

    /// MoCo: the key encoder's statistics move once per step (the key forward), the query encoder's
    /// once (its training forward); the saliency and hard-negative forwards move neither.
    func testMoCoAuxiliaryForwardsLeaveStatisticsAlone() {
        let c = config(.moco)
        let step = TrainingStep(config: c)
        for s in 0..<2 { _ = step.step(views: views(c, seed: UInt64(s + 1)), epoch: 0, step: s, lr: 0.05) }
        XCTAssertEqual(counters(step.query.store), [Int64](repeating: 2, count: step.query.store.counterCount))
        XCTAssertEqual(counters(step.key!.store), [Int64](repeating: 2, count: step.key!.store.counterCount))
    }

    /// A batch-statistics forward normalises exactly as a training forward and leaves the running
    /// statistics and counters as they were.
    func testBatchStatisticsModeMatchesTrainWithoutUpdating() {
        let c = config(.moco)
        let e = Encoder(config: c.resnet)
        e.initialize(seed: 4)
        let x = views(c)[0]
        let a = ResNetPass(layout: e.backbone, batch: c.batch, height: 16, width: 16, keepActivations: false)
        let before = buffers(e.store)
        a.forward(input: x, store: e.store, mode: .batchStatistics(splits: 2))
        let fa = array(a.features, c.batch * e.config.featureDim)
        XCTAssertTrue(buffers(e.store) == before, "a batch-statistics forward moved the running statistics")
        XCTAssertEqual(counters(e.store), [Int64](repeating: 0, count: e.store.counterCount))
        a.forward(input: x, store: e.store, mode: .train(splits: 2))
        XCTAssertTrue(array(a.features, c.batch * e.config.featureDim) == fa, "the two modes normalise differently")
        XCTAssertTrue(buffers(e.store) != before)
    }

    /// Network-free saliency with the hp fill reads the plain views; the encoder trains on their
    /// high-pass copies (MoCo: the key view that produced the keys is the high-passed one).
    func testClassicalSaliencyReadsPlainViewsUnderHighPassFill() {
        let c = config(.moco, saliency: .classical)
        let step = TrainingStep(config: c)
        let v = views(c)
        let R = c.resolution, G = step.gridSize
        _ = step.step(views: v, epoch: 0, step: 0, lr: 0.05)
        var expected = [Float](repeating: 0, count: c.batch * G * G)
        classicalSaliency(v[1], batch: c.batch, height: R, width: R, channels: 1, grid: G, output: &expected)
        XCTAssertEqual(array(step.lastKeySaliency, c.batch * G * G), expected)
        let hp = highPassFilter(v[1], n: c.batch, height: R, width: R, channels: 1)
        XCTAssertTrue(array(step.lastKeyViews, c.batch * R * R) == hp, "the encoder did not train on high-pass views")
        XCTAssertTrue(step.highPassViews)
        // The same during a warm-up epoch of self saliency.
        let warm = TrainingStep(config: config(.moco, saliency: .own, warmup: 1))
        _ = warm.step(views: v, epoch: 0, step: 0, lr: 0.05)
        XCTAssertEqual(array(warm.lastKeySaliency, c.batch * G * G), expected)
    }

    /// The trainer's loader gives plain views under the hp fill (the step filters them); checkpoints
    /// still say that the encoder reads high-pass input.
    func testTrainerLoadsPlainViewsForHighPassFill() throws {
        let c = config(.simclr, saliency: .classical)
        let data = ImageDataset.synthetic(count: 16, width: 20, height: 20, channels: 1, seed: 1)
        let dir = NSTemporaryDirectory() + "salient-hp-plain-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let t = try Trainer(config: c, dataset: data, out: dir)
        XCTAssertFalse(t.augmentConfig.highPass)
        XCTAssertTrue(t.highPassInput)
        XCTAssertTrue(t.evaluationPreprocess.highPass)
    }

    /// Shared hard negatives (the official code): every query faces the same H embeddings, those of
    /// the batch's first H masked key views, each normalised on its own as a batch of one.
    func testSharedHardNegativesAreTheFirstImagesEncodedAlone() {
        var c = config(.moco, fill: .mean)
        c.hardNegatives = 2; c.hardNegativeMode = .shared
        let step = TrainingStep(config: c)
        _ = step.step(views: views(c), epoch: 0, step: 0, lr: 0.05)
        let D = c.headDim, H = 2, R = c.resolution
        let t = array(step.lastHardNegativeEmbeddings, c.batch * H * D)
        for b in 1..<c.batch { XCTAssertEqual(Array(t[(b * H * D)..<((b + 1) * H * D)]), Array(t[0..<(H * D)])) }
        let key = step.key!
        let pass = ResNetPass(layout: key.backbone, batch: 1, height: R, width: R, keepActivations: false)
        let head = MLPHeadPass(layout: key.head!, batch: 1)
        for h in 0..<H {
            pass.forward(input: step.lastHardViews + h * R * R, store: key.store, mode: .batchStatistics(splits: 1))
            head.forward(features: pass.features, store: key.store)
            var z = [Float](repeating: 0, count: D), norm: Float = 0
            l2NormalizeForward(rows: 1, dim: D, input: head.output, output: &z, norms: &norm)
            for i in 0..<D { XCTAssertEqual(t[h * D + i], z[i], accuracy: 1e-5) }
        }
        // Per sample (the default): each query's hard negative differs.
        var p = c; p.hardNegativeMode = .perSample
        let ps = TrainingStep(config: p)
        _ = ps.step(views: views(c), epoch: 0, step: 0, lr: 0.05)
        let u = array(ps.lastHardNegativeEmbeddings, c.batch * H * D)
        XCTAssertNotEqual(Array(u[0..<D]), Array(u[(H * D)..<(H * D + D)]))
    }

    /// The training step fills the hp fill's masked cells with noise of the configured levels: the
    /// query view and the hard negative differ from the high-passed plain views only in masked cells,
    /// where their spread is the query's and the hard negative's level.
    func testHighPassNoiseLevelsReachTheStep() {
        for levels in [NoiseLevels.paper, NoiseLevels(query: 0.05, hardNegative: 0.3)] {
            var c = config(.simclr, saliency: .classical)
            c.batch = 32; c.bnSplits = 1; c.hpNoise = levels
            let step = TrainingStep(config: c)
            let v = views(c)
            let R = c.resolution, n = c.batch * R * R
            _ = step.step(views: v, epoch: 0, step: 0, lr: 0.05)
            /// The spread of `masked`'s values where they differ from the high-passed `plain`, and their count.
            func spread(_ masked: UnsafePointer<Float>, _ plain: [Float]) -> (sd: Double, count: Int) {
                let hp = highPassFilter(plain, n: c.batch, height: R, width: R, channels: 1)
                var s = 0.0, ss = 0.0, k = 0
                for (m, p) in zip(array(masked, n), hp) where m != p { s += Double(m); ss += Double(m * m); k += 1 }
                let mean = s / Double(max(k, 1))
                return ((ss / Double(max(k, 1)) - mean * mean).squareRoot(), k)
            }
            let q = spread(step.lastQueryViews, v[0]), h = spread(step.lastHardViews, v[1])
            XCTAssertGreaterThan(q.count, 300); XCTAssertGreaterThan(h.count, 300)
            XCTAssertEqual(q.sd, Double(levels.query), accuracy: 0.1 * Double(levels.query), "\(levels)")
            XCTAssertEqual(h.sd, Double(levels.hardNegative), accuracy: 0.1 * Double(levels.hardNegative), "\(levels)")
        }
    }
}

final class PresetTests: XCTestCase {
    /// Every preset is a valid configuration; the paper's ImageNet-100 preset carries its numbers.
    func testPresetsAreValidAndCarryTheirRecipes() {
        for p in TrainPreset.allCases {
            XCTAssertEqual(p.config(channels: 3).problems(), [], "\(p)")
            XCTAssertEqual(p.config(channels: 1).inChannels, 1)
        }
        let i = TrainPreset.imagenet100.config(channels: 3)
        XCTAssertEqual(i.arch, .resnet50); XCTAssertEqual(i.stem, .imagenet); XCTAssertEqual(i.resolution, 224)
        XCTAssertEqual(i.queue, 65536); XCTAssertEqual(i.mocoMomentum, 0.999); XCTAssertEqual(i.lr, 0.015)
        XCTAssertEqual(i.batch, 128); XCTAssertEqual(i.weightDecay, 1e-4); XCTAssertEqual(i.method, .moco)
        XCTAssertTrue(TrainPreset.small.summary.contains("width 0.25"))
    }

    /// `small` is the study's best row (plain SimCLR at batch 64); turning masking on gets the best
    /// masked recipe, and choosing MoCo v2 brings its own temperature.
    func testSmallPresetIsTheStudysBestRow() {
        let s = TrainPreset.small.config(channels: 1)
        XCTAssertEqual(s.method, .simclr); XCTAssertEqual(s.masking, .none); XCTAssertEqual(s.batch, 64)
        XCTAssertEqual(s.temperature, 0.5); XCTAssertEqual(s.lr, 0.06); XCTAssertEqual(s.width, 0.25)
        XCTAssertEqual(s.fill, .mean); XCTAssertEqual(s.alpha, 1); XCTAssertEqual(s.hardNegatives, 1)
        XCTAssertFalse(TrainPreset.small.summary.contains("masking"), TrainPreset.small.summary)
        XCTAssertEqual(TrainPreset.small.config(channels: 1, method: .moco).temperature, 0.2)
        XCTAssertEqual(TrainPreset.imagenet100.config(channels: 3, method: .simclr).temperature, 0.5)
        XCTAssertEqual(TrainPreset.imagenet100.config(channels: 3).temperature, 0.2)
    }

    /// The saliency source is saved as the one string it was given ("self", "classical" or a path).
    func testSaliencySourceIsSavedAsItsString() throws {
        for (source, text) in [
            (SaliencySource.own, "self"), (.classical, "classical"),
            (.encoder(path: "enc.safetensors"), "enc.safetensors")
        ] {
            var c = TrainConfig()
            c.saliency = source
            XCTAssertTrue(c.json().contains("\"saliency\":\"\(text)\""), c.json())
            XCTAssertEqual(try TrainConfig.from(json: c.json()).saliency, source)
            XCTAssertEqual(SaliencySource(text), source)
        }
    }

    /// A saved configuration from before a setting existed decodes with that setting's default.
    func testOlderConfigDecodesWithDefaults() throws {
        var c = TrainConfig()
        c.hardNegativeMode = .shared
        c.hpNoise = NoiseLevels(query: 0.05, hardNegative: 0.04)
        var dict = try JSONSerialization.jsonObject(with: Data(c.json().utf8)) as! [String: Any]
        dict.removeValue(forKey: "hardNegativeMode")
        dict.removeValue(forKey: "hpNoise")
        let old = String(data: try JSONSerialization.data(withJSONObject: dict), encoding: .utf8)!
        XCTAssertEqual(try TrainConfig.from(json: old).hardNegativeMode, .perSample)
        XCTAssertEqual(try TrainConfig.from(json: old).hpNoise, .paper)
        XCTAssertEqual(try TrainConfig.from(json: c.json()), c)
    }

    /// "Q,N" and "Q" (N in the paper's ratio) parse; anything else does not.
    func testNoiseLevelsParse() {
        XCTAssertEqual(NoiseLevels("0.05,0.04"), NoiseLevels(query: 0.05, hardNegative: 0.04))
        let one = NoiseLevels("0.09")
        XCTAssertEqual(one?.query, 0.09)
        XCTAssertEqual(one?.hardNegative ?? 0, 0.07, accuracy: 1e-6)
        for bad in ["", "a", "0.1,", ",0.1", "0.1,0.2,0.3", "nan", "0.1,inf"] { XCTAssertNil(NoiseLevels(bad), bad) }
        var c = TrainConfig()
        c.hpNoise = NoiseLevels(query: -0.1, hardNegative: 0.1)
        XCTAssertTrue(c.problems().contains { $0.contains("--hp-noise") }, "\(c.problems())")
    }
}
