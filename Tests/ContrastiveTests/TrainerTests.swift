import XCTest
import Foundation
import Kernels
import Network
import Data
import Contrastive
import TestSupport

final class TrainerTests: XCTestCase {
    func tinyConfig(method: ContrastiveMethod = .moco) -> TrainConfig {
        var c = TrainConfig()
        c.method = method
        c.width = 0.125; c.inChannels = 3; c.resolution = 16; c.batch = 16; c.queue = 64
        c.epochs = 2; c.lr = 0.05; c.saliencyWarmup = 1; c.seed = 5
        return c
    }

    /// An empty path under the temporary directory, removed when the test ends.
    func tempDir(_ name: String) -> String {
        let d = NSTemporaryDirectory() + "salient-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: d)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    func params(_ t: Trainer) -> [Float] {
        Array(UnsafeBufferPointer(start: t.step.query.store.params, count: t.step.query.store.parameterCount))
    }

    /// A run stopped mid-epoch and resumed from its last checkpoint ends with exactly the weights,
    /// momentum buffers, queue and BN statistics of an uninterrupted run.
    func testInterruptedRunResumesBitExactly() throws {
        let data = ImageDataset.synthetic(count: 64, width: 20, height: 20, channels: 3, seed: 1)
        let c = tinyConfig()
        let dirA = tempDir("resume-a"), dirB = tempDir("resume-b")
        defer { try? FileManager.default.removeItem(atPath: dirA); try? FileManager.default.removeItem(atPath: dirB) }
        let a = try Trainer(config: c, dataset: data, out: dirA)
        try a.run()
        let b1 = try Trainer(config: c, dataset: data, out: dirB)
        b1.stopAfterSteps = 6  // epoch 2 of 4 steps each: killed in its middle
        try b1.run()
        XCTAssertEqual(b1.epoch, 1)
        let b2 = try Trainer(config: c, dataset: data, out: dirB)
        try b2.run(resumeFrom: b2.lastCheckpoint)
        XCTAssertEqual(b2.epoch, 2)
        XCTAssertEqual(b2.globalStep, a.globalStep)
        XCTAssertEqual(params(b2), params(a), "weights differ after resuming")
        let qa = a.step.query.store, qb = b2.step.query.store
        XCTAssertEqual(
            Array(UnsafeBufferPointer(start: qb.momentum, count: qb.parameterCount)),
            Array(UnsafeBufferPointer(start: qa.momentum, count: qa.parameterCount)))
        XCTAssertEqual(
            Array(UnsafeBufferPointer(start: qb.buffers, count: qb.bufferCount)),
            Array(UnsafeBufferPointer(start: qa.buffers, count: qa.bufferCount)))
        XCTAssertEqual(
            Array(UnsafeBufferPointer(start: b2.step.queue!.keys, count: 64 * 128)),
            Array(UnsafeBufferPointer(start: a.step.queue!.keys, count: 64 * 128)))
        // And the weights did change from initialisation (the comparison is not vacuous).
        let fresh = try Trainer(config: c, dataset: data, out: tempDir("fresh"))
        XCTAssertNotEqual(params(fresh), params(a))
    }

    final class Collect: TrainObserver {
        var losses: [Float] = []
        func progress(
            epoch: Int, epochs: Int, step: Int, stepsPerEpoch: Int, loss: Float, accuracy: Float,
            imagesPerSecond: Double, eta: Double
        ) {}
        func epochEnded(epoch: Int, loss: Float, accuracy: Float, knnTop1: Double?, seconds: Double) {
            losses.append(loss)
        }
        func message(_ s: String) {}
    }

    /// A short training run (SimCLR, saliency masking, hp fill, one hard negative per sample) on a
    /// small dataset of drawn shapes: the epoch loss falls; checkpoints, log and preview are written
    /// and `extract` reads the checkpoint. (Smooth synthetic images would not do: high-pass filtering
    /// leaves nothing of them.)
    func testTrainingRunLossFalls() throws {
        let dir = tempDir("falls")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeShapesDataset(count: 128, size: 24, dir: dir + "-data")
        defer { try? FileManager.default.removeItem(atPath: dir + "-data") }
        var c = tinyConfig(method: .simclr)
        // lr 0.05: at 0.1 some float32 roundings (thread count, Winograd vs direct convolution) send
        // this tiny run through a collapsed stretch. Measured falls over {1,2,3,4} threads and both
        // convolution algorithms: 0.12-0.29.
        c.epochs = 24; c.lr = 0.05
        let t = try Trainer(config: c, dataset: data, out: dir)
        let obs = Collect()
        t.observer = obs
        t.writePreview = true
        try t.run()
        XCTAssertEqual(obs.losses.count, 24)
        let first = obs.losses.prefix(4).reduce(0, +) / 4, last = obs.losses.suffix(4).reduce(0, +) / 4
        XCTAssertLessThan(last, first - 0.08, "loss did not fall: \(obs.losses)")
        for f in ["last.safetensors", "log.jsonl", "preview.png"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/" + f), f)
        }
        let enc = try EncoderCheckpoint.loadEncoder(path: dir + "/last.safetensors")
        XCTAssertEqual(enc.store.values("conv1.weight"), t.step.query.store.values("conv1.weight"))
        let log = try String(contentsOfFile: dir + "/log.jsonl", encoding: .utf8)
        XCTAssertEqual(log.components(separatedBy: "\"type\":\"epoch\"").count - 1, 24)
    }

    /// Step-level: on one fixed batch both objectives, with saliency masks, hp fill and hard negatives,
    /// (alpha 1) must drive their loss down (MoCo with its queue reset to the same random keys every step, so
    /// that copies of the batch's own keys do not pile up in it as negatives). At learning rate 0.05
    /// SimCLR on these 16 images can sit at the chance-level loss (ln 31) for tens of steps, longer or
    /// shorter with the thread count's rounding; at 0.02 both fall by 0.35 or more on 1-3 threads.
    func testFixedBatchLossFalls() throws {
        let dir = tempDir("fixed-data")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeShapesDataset(count: 16, size: 24, dir: dir)
        for m in [ContrastiveMethod.moco, .simclr] {
            var c = tinyConfig(method: m)
            c.saliencyWarmup = 0; c.queue = 256
            // With alpha 2 a hard negative nearly equal to the positive key sets a floor under the
            // loss (its logit is twice the positive's); alpha 1 leaves room to fall.
            c.alpha = 1
            let step = TrainingStep(config: c)
            var a = AugmentConfig.mocoV2(size: 16); a.highPass = true
            var rng = SplitMix64(seed: 3)
            var v0 = [Float](), v1 = [Float]()
            for i in 0..<16 {
                let img = try data.image(at: i)
                v0 += augment(img, config: a, rng: &rng); v1 += augment(img, config: a, rng: &rng)
            }
            let initialQueue = step.queue.map { Array(UnsafeBufferPointer(start: $0.keys, count: $0.length * $0.dim)) }
            var losses: [Float] = []
            for s in 0..<60 {
                if let q = step.queue, let k = initialQueue { q.restore(keys: k, pointer: 0) }
                losses.append(step.step(views: [v0, v1], epoch: 1, step: s, lr: 0.02).loss)
            }
            let first = losses.prefix(5).reduce(0, +) / 5, last = losses.suffix(5).reduce(0, +) / 5
            XCTAssertLessThan(last, first - 0.25, "\(m): \(losses)")
        }
    }

    func testSimCLRAndBlurAndMeanFillsRun() throws {
        let data = ImageDataset.synthetic(count: 32, width: 16, height: 16, channels: 3, seed: 3)
        for (method, fill) in [(ContrastiveMethod.simclr, MaskFill.hp), (.moco, .blur), (.simclr, .mean)] {
            var c = tinyConfig(method: method)
            c.fill = fill; c.epochs = 1; c.hardNegatives = 2; c.saliencyWarmup = 0
            let dir = tempDir("variants")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let t = try Trainer(config: c, dataset: data, out: dir)
            try t.run()
            XCTAssertEqual(t.globalStep, 2)
            XCTAssertTrue(params(t).allSatisfy { $0.isFinite })
        }
    }

    /// A diverging loss stops the run with a clear message and keeps the last good checkpoint.
    func testDivergenceStopsAndKeepsLastGoodCheckpoint() throws {
        let data = ImageDataset.synthetic(count: 32, width: 16, height: 16, channels: 3, seed: 4)
        let dir = tempDir("diverge")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let t = try Trainer(config: tinyConfig(), dataset: data, out: dir)
        t.maxLoss = 0.5  // any real InfoNCE loss is larger: treated as exploding
        XCTAssertThrowsError(try t.run()) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("last good checkpoint") && s.contains(dir + "/last.safetensors"), s)
        }
        let kept = try SafeTensorsFile.read(path: dir + "/last.safetensors")
        XCTAssertEqual(kept.metadata["epoch"], "0")
    }

    func testUnwritableOutputIsReportedBeforeTraining() throws {
        let data = ImageDataset.synthetic(count: 32, width: 16, height: 16, channels: 3, seed: 4)
        let file = tempDir("notadir")
        FileManager.default.createFile(atPath: file, contents: Data([1]))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let t = try Trainer(config: tinyConfig(), dataset: data, out: file + "/run")
        XCTAssertThrowsError(try t.run()) { e in XCTAssertTrue("\(e)".contains(file), "\(e)") }
        XCTAssertEqual(t.globalStep, 0)
    }

    func testLearningRateSchedule() {
        var c = TrainConfig()
        c.lr = 0.1; c.epochs = 10; c.warmupEpochs = 2
        XCTAssertEqual(c.learningRate(epoch: 1), 0.05, accuracy: 1e-6)
        XCTAssertEqual(c.learningRate(epoch: 2), 0.1, accuracy: 1e-6)
        XCTAssertEqual(c.learningRate(epoch: 6), 0.05, accuracy: 1e-6)
        XCTAssertEqual(c.learningRate(epoch: 10), 0, accuracy: 1e-6)
        c.cosine = false
        XCTAssertEqual(c.learningRate(epoch: 9), 0.1, accuracy: 1e-6)
    }
}

/// Writes `count` PNGs of random coloured rectangles and discs on plain backgrounds into `dir` and
/// opens them as a dataset (edges survive high-pass filtering, unlike smooth synthetic images).
func makeShapesDataset(count: Int, size: Int, dir: String) throws -> ImageDataset {
    try? FileManager.default.removeItem(atPath: dir)
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    var rng = SplitMix64(seed: 77)
    for i in 0..<count {
        var px = [UInt8](repeating: 0, count: size * size * 3)
        let bg = (0..<3).map { _ in UInt8(rng.int(below: 256)) }
        for p in 0..<(size * size) { for c in 0..<3 { px[p * 3 + c] = bg[c] } }
        for _ in 0..<3 {
            let col = (0..<3).map { _ in UInt8(rng.int(below: 256)) }
            let x0 = rng.int(below: size), y0 = rng.int(below: size)
            let w = 3 + rng.int(below: size / 2), h = 3 + rng.int(below: size / 2)
            let disc = rng.int(below: 2) == 0
            for y in y0..<min(size, y0 + h) {
                for x in x0..<min(size, x0 + w) {
                    let dx = Float(x - x0) / Float(w) - 0.5, dy = Float(y - y0) / Float(h) - 0.5
                    if disc && dx * dx + dy * dy > 0.25 { continue }
                    for c in 0..<3 { px[(y * size + x) * 3 + c] = col[c] }
                }
            }
        }
        try writePNG(
            path: dir + "/" + String(format: "%04d.png", i), width: size, height: size, channels: 3, pixels: px)
    }
    return try DatasetLoader.open(path: dir)
}

/// Runs that could be lost, silently wrong or stuck: interrupts, resumes on other data or from
/// crafted checkpoints, two runs in one folder, non-finite kNN features.
extension TrainerTests {
    /// tinyConfig with `epochs`, and 32 synthetic images.
    func smallRun(epochs: Int) -> (TrainConfig, ImageDataset) {
        var c = tinyConfig()
        c.epochs = epochs
        return (c, .synthetic(count: 32, width: 20, height: 20, channels: 3, seed: 1))
    }

    /// A stop requested mid-epoch writes the checkpoint of that step; resuming it ends where an
    /// uninterrupted run ends, bit for bit.
    func testStopRequestWritesTheStepAndResumesExactly() throws {
        let data = ImageDataset.synthetic(count: 64, width: 20, height: 20, channels: 3, seed: 1)
        let c = tinyConfig()
        let whole = try Trainer(config: c, dataset: data, out: tempDir("whole"))
        XCTAssertEqual(try whole.run(), .completed)
        let dir = tempDir("stopped")
        let a = try Trainer(config: c, dataset: data, out: dir)
        var asked = 0
        a.stopRequested = {
            asked += 1; return asked > 6
        }  // after 6 steps: step 3 of epoch 2
        XCTAssertEqual(try a.run(), .interrupted)
        let saved = try SafeTensorsFile.read(path: a.lastCheckpoint)
        XCTAssertEqual(saved.metadata["step"], "6")
        XCTAssertEqual(saved.metadata["epoch"], "1")
        let b = try Trainer(config: c, dataset: data, out: dir)
        XCTAssertEqual(try b.run(resumeFrom: b.lastCheckpoint), .completed)
        XCTAssertEqual(b.globalStep, whole.globalStep)
        XCTAssertEqual(params(b), params(whole))
    }

    func testResumeOnOtherDataOrSettingsIsRefused() throws {
        let dir = tempDir("other-data")
        let c = tinyConfig()
        var one = c
        one.epochs = 1
        try Trainer(config: one, dataset: .synthetic(count: 64, width: 20, height: 20, channels: 3, seed: 1), out: dir)
            .run()
        let fewer = try Trainer(
            config: c, dataset: .synthetic(count: 16, width: 20, height: 20, channels: 3, seed: 1), out: dir)
        XCTAssertThrowsError(try fewer.run(resumeFrom: fewer.lastCheckpoint)) { e in
            XCTAssertTrue(
                "\(e)".hasPrefix("--data") && "\(e)".contains("64 images") && "\(e)".contains("16 images"), "\(e)")
        }
        let other = try Trainer(
            config: c, dataset: .synthetic(count: 64, width: 20, height: 20, channels: 3, seed: 2), out: dir)
        XCTAssertThrowsError(try other.run(resumeFrom: other.lastCheckpoint)) { e in
            XCTAssertTrue("\(e)".hasPrefix("--data") && "\(e)".contains("does not hold the images"), "\(e)")
        }
        var batch = c
        batch.batch = 8; batch.bnSplits = 4
        let b = try Trainer(
            config: batch, dataset: .synthetic(count: 64, width: 20, height: 20, channels: 3, seed: 1), out: dir)
        XCTAssertThrowsError(try b.run(resumeFrom: b.lastCheckpoint)) { e in
            XCTAssertTrue("\(e)".contains("--batch 16 there, 8 here"), "\(e)")
        }
    }

    /// Every field of a trainer checkpoint is checked before anything is restored.
    func testCraftedCheckpointFieldsAreRefused() throws {
        let dir = tempDir("crafted")
        let (c, data) = smallRun(epochs: 1)
        try Trainer(config: c, dataset: data, out: dir).run()
        let path = dir + "/last.safetensors"
        let original = try SafeTensorsFile.read(path: path)
        func refused(_ expected: String, _ change: (inout SafeTensorsFile) -> Void, line: UInt = #line) throws {
            var f = original
            change(&f)
            try f.write(path: path)
            let t = try Trainer(config: c, dataset: data, out: dir)
            let before = params(t)
            XCTAssertThrowsError(try t.resume(from: path), line: line) { e in
                XCTAssertTrue("\(e)".contains(path) && "\(e)".contains(expected), "\(e)", line: line)
            }
            XCTAssertEqual(params(t), before, "a refused checkpoint changed the weights", line: line)
        }
        try refused("queue_ptr") { $0["queue_ptr"] = .init(int64s: [64], shape: [1]) }
        try refused("queue_ptr") { $0["queue_ptr"] = .init(int64s: [-1], shape: [1]) }
        try refused("trainer.state") { f in
            var s = f["trainer.state"]!.int64s!
            s[0] = -1
            f["trainer.state"] = .init(int64s: s, shape: [5])
        }
        try refused("trainer.state") { f in
            var s = f["trainer.state"]!.int64s!
            s[1] = 7  // an epoch that does not fit the step
            f["trainer.state"] = .init(int64s: s, shape: [5])
        }
        try refused("trainer.best_knn") { $0["trainer.best_knn"] = .init(floats: [.nan], shape: [1]) }
        try refused("optimizer.momentum.conv1.weight") { f in
            let t = f["optimizer.momentum.conv1.weight"]!
            f["optimizer.momentum.conv1.weight"] = .init(floats: t.floats!.map { _ in .infinity }, shape: t.shape)
        }
        try refused("queue") { f in
            let t = f["queue"]!
            f["queue"] = .init(floats: t.floats!.map { _ in .nan }, shape: t.shape)
        }
    }

    /// A second run into a folder in use is refused, naming the first run's pid; a fresh run into a
    /// finished run's folder needs `overwrite`.
    func testOneRunPerFolder() throws {
        let dir = tempDir("lock")
        let (c, data) = smallRun(epochs: 1)
        let first = try Trainer(config: c, dataset: data, out: dir)
        let second = try Trainer(config: c, dataset: data, out: dir)
        var refusal: Error? = nil
        var secondRan = false
        first.stopRequested = {
            if refusal == nil && !secondRan {
                do { try second.run(resumeFrom: second.lastCheckpoint); secondRan = true } catch { refusal = error }
            }
            return false
        }
        XCTAssertEqual(try first.run(), .completed)
        XCTAssertFalse(secondRan, "a second run trained in a folder in use")
        XCTAssertTrue(
            "\(refusal.map { "\($0)" } ?? "")".contains("in use by another salient run (pid \(getpid())"),
            "\(String(describing: refusal))")
        let checkpoint = try Data(contentsOf: URL(fileURLWithPath: first.lastCheckpoint))
        let fresh = try Trainer(config: c, dataset: data, out: dir)
        XCTAssertThrowsError(try fresh.run()) { e in XCTAssertTrue("\(e)".contains("--overwrite"), "\(e)") }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: first.lastCheckpoint)), checkpoint)
        // The lock went with the first run: the folder is free again.
        XCTAssertEqual(try second.run(resumeFrom: second.lastCheckpoint), .completed)
        fresh.overwrite = true
        XCTAssertEqual(try fresh.run(), .completed)
    }

    /// A resumed run needs space for one more checkpoint file, a fresh one for its file and one more.
    func testSpaceNeededCountsOnlyNewFiles() throws {
        let dir = tempDir("space")
        let (c, data) = smallRun(epochs: 0)
        let t = try Trainer(config: c, dataset: data, out: dir)
        let fresh = t.checkpointSpaceNeeded(resuming: false)
        try t.run()
        XCTAssertEqual(t.checkpointSpaceNeeded(resuming: true) * 2, fresh)
        XCTAssertGreaterThan(
            t.checkpointSpaceNeeded(resuming: true),
            try FileManager.default.attributesOfItem(atPath: t.lastCheckpoint)[.size] as! Int)
    }

    /// Non-finite features in the kNN monitor are an error naming the data, not a 100% score.
    func testKNNMonitorRefusesNonFiniteFeatures() throws {
        let data = ImageDataset.synthetic(count: 32, width: 16, height: 16, channels: 3, seed: 1)
        let t = try Trainer(config: tinyConfig(), dataset: data, out: tempDir("knn"))
        let monitor = try KNNMonitor(bank: data, test: data)
        XCTAssertGreaterThanOrEqual(try t.evaluateKNN(monitor), 0)
        let store = t.step.query.store
        for i in 0..<store.parameterCount { store.params[i] = .nan }
        XCTAssertThrowsError(try t.evaluateKNN(monitor)) { e in
            XCTAssertTrue("\(e)".contains("not finite") && "\(e)".contains(data.source), "\(e)")
        }
        let unlabelled = try DatasetLoader.open(path: fixturesPath() + "/png/types")
        XCTAssertThrowsError(try KNNMonitor(bank: data, test: unlabelled)) { e in
            XCTAssertTrue("\(e)".contains(unlabelled.source) && "\(e)".contains("no labels"), "\(e)")
        }
    }

    func testBatchNormGroupsOfOneAreRefused() {
        var c = tinyConfig()
        c.bnSplits = 16
        XCTAssertThrowsError(
            try Trainer(config: c, dataset: .synthetic(count: 32, width: 16, height: 16, channels: 3), out: "x")
        ) { e in
            XCTAssertTrue("\(e)".contains("groups of 1 image"), "\(e)")
        }
        c.bnSplits = 5
        XCTAssertNil(c.batchNormSplitProblem)
        XCTAssertEqual(
            c.batchNormSplitNote, "--bn-splits 5 does not divide --batch 16: the key encoder uses 4 groups of 4")
    }

    /// A loss that a low temperature makes large is not a divergence; a real blow-up at a low
    /// temperature is blamed on the temperature, not the learning rate.
    func testLowTemperatureAdvice() throws {
        var c = tinyConfig()
        c.temperature = 1e-4
        let data = ImageDataset.synthetic(count: 32, width: 16, height: 16, channels: 3, seed: 1)
        let t = try Trainer(config: c, dataset: data, out: tempDir("temperature"))
        XCTAssertGreaterThan(t.lossLimit, 1e5)
        t.maxLoss = 0.5
        XCTAssertThrowsError(try t.run()) { e in
            XCTAssertTrue("\(e)".contains("--temperature") && !"\(e)".contains("lower --lr"), "\(e)")
        }
    }
}
