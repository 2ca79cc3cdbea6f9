// The training run: epochs of steps over a BatchLoader, a progress line and a JSONL log, atomic
// checkpoints after every epoch (and every `saveEvery` steps), bit-exact resumption, kNN monitoring.
import Foundation
import Kernels
import Network
import Data

public struct TrainError: Error, CustomStringConvertible, LocalizedError {
    public var description: String
    public init(_ d: String) { description = d }
    public var errorDescription: String? { description }
}

/// What a run reports as it goes (the CLI prints these; tests collect them).
public protocol TrainObserver: AnyObject {
    func progress(epoch: Int, epochs: Int, step: Int, stepsPerEpoch: Int, loss: Float, accuracy: Float,
                  imagesPerSecond: Double, eta: Double)
    func epochEnded(epoch: Int, loss: Float, accuracy: Float, knnTop1: Double?, seconds: Double)
    func message(_ s: String)
}

/// kNN monitoring: a labelled memory bank from the training data, a labelled test set.
public struct KNNMonitor {
    public var bank: ImageDataset
    public var test: ImageDataset
    public var k = 200
    public var t: Float = 0.1
    public init(bank: ImageDataset, test: ImageDataset) { self.bank = bank; self.test = test }
}

public final class Trainer {
    public let config: TrainConfig
    public let out: String
    public let dataset: ImageDataset
    public let step: TrainingStep
    public var knn: KNNMonitor?
    public var writePreview = false
    public weak var observer: TrainObserver?
    /// Stop after this many steps in total (tests of interrupted runs); nil runs to the end.
    public var stopAfterSteps: Int? = nil
    /// Loss above which a run is considered diverged.
    public var maxLoss: Float = 1e4

    var loaderState: LoaderState
    public private(set) var globalStep = 0
    public private(set) var epoch = 0
    public private(set) var bestKNN: Double = -1
    var logHandle: FileHandle?

    public var lastCheckpoint: String { out + "/last.safetensors" }
    public var bestCheckpoint: String { out + "/best.safetensors" }

    public init(config: TrainConfig, dataset: ImageDataset, out: String, saliencyEncoder: Encoder? = nil) throws {
        let problems = config.problems()
        if !problems.isEmpty { throw TrainError(problems.joined(separator: "\n")) }
        guard dataset.count >= config.batch else {
            throw TrainError("\(dataset.source): \(dataset.count) images is fewer than one batch of \(config.batch)")
        }
        self.config = config
        self.out = out
        self.dataset = dataset
        step = TrainingStep(config: config, saliencyEncoder: saliencyEncoder)
        loaderState = LoaderState(epoch: 0, position: 0, seed: config.seed)
    }

    public var augmentConfig: AugmentConfig {
        var a = AugmentConfig.mocoV2(size: config.resolution)
        let p = Preprocess.defaults(channels: config.inChannels)
        a.mean = p.mean.count == 3 ? p.mean : [p.mean[0], p.mean[0], p.mean[0]]
        a.std = p.std.count == 3 ? p.std : [p.std[0], p.std[0], p.std[0]]
        return a
    }

    /// Whether the encoder trains (and is evaluated) on high-pass views: the hp fill. The loader gives
    /// plain views; the step filters them after any saliency that reads the plain ones.
    public var highPassInput: Bool { step.highPassViews }

    /// Preprocessing for kNN and extraction: the training resolution, same normalisation; high-pass
    /// when the encoder was trained on high-pass views (the paper's linear evaluation does the same).
    public var evaluationPreprocess: Preprocess {
        var p = Preprocess.defaults(channels: config.inChannels, resize: config.resolution)
        p.highPass = highPassInput
        return p
    }

    // MARK: - Output folder

    /// Creates the folder and proves it can hold a few checkpoints, before any training.
    public func prepareOutput() throws {
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: out, withIntermediateDirectories: true) }
        catch { throw TrainError("\(out): cannot create the output folder (\(error.localizedDescription))") }
        let probe = out + "/.write-test-\(getpid())"
        guard fm.createFile(atPath: probe, contents: Data(count: 4096)) else {
            throw TrainError("\(out): the output folder is not writable")
        }
        try? fm.removeItem(atPath: probe)
        var st = statvfs()
        if statvfs(out, &st) == 0 {
            let free = Double(st.f_bavail) * Double(st.f_frsize)
            let need = Double(checkpointBytesEstimate) * 3
            if free < need {
                throw TrainError(String(format: "%@: only %.1f MB free, a run needs about %.1f MB for its checkpoints",
                                        out, free / 1e6, need / 1e6))
            }
        }
    }

    var checkpointBytesEstimate: Int {
        let p = step.query.store.parameterCount + step.query.store.bufferCount
        return 4 * (3 * p + (step.queue.map { $0.length * $0.dim } ?? 0)) + 1 << 16
    }

    // MARK: - Checkpoints

    public func saveCheckpoint(path: String, epochCompleted: Int) throws {
        var file = SafeTensorsFile(metadata: EncoderCheckpoint.metadata(step.query.config).merging([
            "format": "salient-trainer-1", "method": config.method.rawValue, "epoch": String(epochCompleted),
            "step": String(globalStep), "config": config.json(), "resolution": String(config.resolution),
            "input": highPassInput ? "highpass" : "plain",
        ]) { _, b in b })
        step.query.store.export(into: &file, prefix: "encoder_q.")
        if let k = step.key { k.store.export(into: &file, prefix: "encoder_k.") }
        for s in step.query.store.slots where s.kind == .parameter {
            file["optimizer.momentum." + s.name] = .init(
                floats: Array(UnsafeBufferPointer(start: step.query.store.momentum + s.offset, count: s.count)), shape: s.shape)
        }
        if let q = step.queue {
            file["queue"] = .init(floats: Array(UnsafeBufferPointer(start: q.keys, count: q.length * q.dim)), shape: [q.length, q.dim])
            file["queue_ptr"] = .init(int64s: [Int64(q.pointer)], shape: [1])
        }
        file["trainer.state"] = .init(int64s: [Int64(globalStep), Int64(epochCompleted), Int64(loaderState.epoch),
                                               Int64(loaderState.position), Int64(bitPattern: loaderState.seed)], shape: [5])
        file["trainer.best_knn"] = .init(floats: [Float(bestKNN)], shape: [1])
        try file.write(path: path)
    }

    /// Restores everything a checkpoint holds; the run continues bit-exactly (same thread count).
    public func resume(from path: String) throws {
        let file = try SafeTensorsFile.read(path: path)
        guard file.metadata["format"] == "salient-trainer-1", let cfgJSON = file.metadata["config"] else {
            throw TrainError("\(path): not a salient trainer checkpoint (encoder-only files cannot be resumed)")
        }
        let saved = try TrainConfig.from(json: cfgJSON)
        var mine = config, theirs = saved
        mine.epochs = 0; theirs.epochs = 0
        guard mine == theirs else {
            throw TrainError("\(path): was written with different settings; resume with the same options (only --epochs may change)")
        }
        try step.query.store.load(from: file, prefix: "encoder_q.", path: path) { _ in true }
        if let k = step.key { try k.store.load(from: file, prefix: "encoder_k.", path: path) { _ in true } }
        for s in step.query.store.slots where s.kind == .parameter {
            let v = try file.floats("optimizer.momentum." + s.name, shape: s.shape)
            v.withUnsafeBufferPointer { (step.query.store.momentum + s.offset).update(from: $0.baseAddress!, count: s.count) }
        }
        if let q = step.queue {
            q.restore(keys: try file.floats("queue", shape: [q.length, q.dim]), pointer: Int(try file.int64s("queue_ptr")[0]))
        }
        let st = try file.int64s("trainer.state")
        guard st.count == 5 else { throw TrainError("\(path): trainer.state has \(st.count) values, expected 5") }
        globalStep = Int(st[0]); epoch = Int(st[1])
        loaderState = LoaderState(epoch: Int(st[2]), position: Int(st[3]), seed: UInt64(bitPattern: st[4]))
        bestKNN = Double(try file.floats("trainer.best_knn")[0])
    }

    // MARK: - Run

    public func run(resumeFrom: String? = nil) throws {
        try prepareOutput()
        if let r = resumeFrom {
            try resume(from: r)
            observer?.message("resumed from \(r): epoch \(epoch), step \(globalStep)")
        } else {
            try saveCheckpoint(path: lastCheckpoint, epochCompleted: 0)
        }
        logHandle = openLog()
        defer { try? logHandle?.close() }
        if config.epochs == 0 || epoch >= config.epochs {
            observer?.message("nothing to train: checkpoint at \(lastCheckpoint) (epoch \(epoch))")
            return
        }
        let loader = try BatchLoader(dataset: dataset, config: augmentConfig, batchSize: config.batch, views: 2,
                                     threads: max(1, min(2, Threads.count)), seed: config.seed, shuffle: true, dropLast: true,
                                     prefetch: 2, state: loaderState)
        let stepsPerEpoch = loader.stepsPerEpoch
        let runStart = Date()
        var imagesDone = 0
        var epochLoss = 0.0, epochAcc = 0.0, epochSteps = 0
        var epochStart = Date()
        var lastPrint = Date.distantPast
        while epoch < config.epochs {
            if let stop = stopAfterSteps, globalStep >= stop { return }
            let batch = try loader.next()
            let posInEpoch = globalStep - epoch * stepsPerEpoch
            let lr = config.learningRate(epoch: Double(epoch) + Double(posInEpoch) / Double(stepsPerEpoch))
            let r = step.step(views: batch.views, epoch: epoch, step: globalStep, lr: lr)
            if writePreview && globalStep == 0 { try writeTrainingPreview(batch) }
            if !r.loss.isFinite || r.loss > maxLoss {
                throw TrainError(String(format: "loss became %@ at epoch %d, step %d (lr %.4g): stopped. The last good checkpoint is %@ (epoch %d). Try a lower --lr.",
                                        r.loss.isFinite ? String(format: "%.3g", r.loss) : "NaN", epoch + 1, globalStep, lastCheckpoint, epoch, lr))
            }
            globalStep += 1
            imagesDone += config.batch
            epochLoss += Double(r.loss); epochAcc += Double(r.accuracy); epochSteps += 1
            loaderState = loader.state
            let now = Date()
            let elapsed = now.timeIntervalSince(runStart)
            let ips = Double(imagesDone) / max(elapsed, 1e-9)
            let remainingSteps = (config.epochs - epoch) * stepsPerEpoch - (posInEpoch + 1)
            let eta = Double(remainingSteps * config.batch) / max(ips, 1e-9)
            if now.timeIntervalSince(lastPrint) > 0.5 || posInEpoch + 1 == stepsPerEpoch {
                lastPrint = now
                observer?.progress(epoch: epoch + 1, epochs: config.epochs, step: posInEpoch + 1, stepsPerEpoch: stepsPerEpoch,
                                   loss: r.loss, accuracy: r.accuracy, imagesPerSecond: ips, eta: eta)
            }
            if globalStep % 10 == 0 {
                log(["type": "step", "epoch": epoch + 1, "step": globalStep, "loss": Double(r.loss), "acc": Double(r.accuracy),
                     "lr": Double(lr), "img_per_s": ips])
            }
            let endOfEpoch = posInEpoch + 1 == stepsPerEpoch
            if endOfEpoch {
                epoch += 1
                var top1: Double? = nil
                if let knn { top1 = try evaluateKNN(knn) }
                let seconds = now.timeIntervalSince(epochStart)
                try saveCheckpoint(path: lastCheckpoint, epochCompleted: epoch)
                if let t = top1, t > bestKNN {
                    bestKNN = t
                    try saveCheckpoint(path: bestCheckpoint, epochCompleted: epoch)
                }
                let ml = Float(epochLoss / Double(max(epochSteps, 1))), ma = Float(epochAcc / Double(max(epochSteps, 1)))
                var rec: [String: Any] = ["type": "epoch", "epoch": epoch, "step": globalStep, "loss": Double(ml),
                                          "acc": Double(ma), "seconds": seconds, "img_per_s": Double(epochSteps * config.batch) / max(seconds, 1e-9),
                                          "peak_rss_mb": peakResidentMB()]
                if let t = top1 { rec["knn_top1"] = t }
                log(rec)
                observer?.epochEnded(epoch: epoch, loss: ml, accuracy: ma, knnTop1: top1, seconds: seconds)
                epochLoss = 0; epochAcc = 0; epochSteps = 0; epochStart = Date()
            } else if config.saveEvery > 0 && globalStep % config.saveEvery == 0 {
                try saveCheckpoint(path: lastCheckpoint, epochCompleted: epoch)
            }
        }
    }

    /// kNN top-1 of the current query backbone (eval-mode batch norm).
    public func evaluateKNN(_ m: KNNMonitor) throws -> Double {
        let pre = evaluationPreprocess
        let bankF = try extractFeatures(encoder: step.query, dataset: m.bank, batch: 256, preprocess: pre)
        let testF = try extractFeatures(encoder: step.query, dataset: m.test, batch: 256, preprocess: pre)
        guard let bl = m.bank.labels, let tl = m.test.labels else { throw TrainError("kNN monitoring needs labelled data") }
        let classes = Int(max(bl.max() ?? 0, tl.max() ?? 0)) + 1
        let r = try knnClassify(trainFeatures: bankF, trainLabels: bl, testFeatures: testF, testLabels: tl,
                            dim: step.query.config.featureDim, classes: classes, k: m.k, t: m.t)
        return r.top1
    }

    // MARK: - Log and preview

    func openLog() -> FileHandle? {
        let path = out + "/log.jsonl"
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        let h = FileHandle(forWritingAtPath: path)
        h?.seekToEndOfFile()
        return h
    }

    func log(_ record: [String: Any]) {
        guard let h = logHandle, let d = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]) else { return }
        h.write(d); h.write("\n".data(using: .utf8)!)
    }

    /// Writes DIR/preview.png from the step that just ran: views, saliency, masked query, hard negative.
    func writeTrainingPreview(_ batch: Batch) throws {
        let path = out + "/preview.png"
        let n = min(8, config.batch)
        var views = batch.views
        if highPassInput {
            views[0] = highPassFilter(views[0], n: config.batch, height: config.resolution, width: config.resolution,
                                      channels: config.inChannels)
        }
        let img = renderTrainingPreview(step: step, views: views, count: n,
                                        mean: augmentConfig.mean, std: augmentConfig.std, highPass: highPassInput)
        try writePNG(path: path, image: img)
        observer?.message("wrote \(path)")
    }
}

/// Peak resident memory of this process in MB (Linux: ru_maxrss is in KB).
public func peakResidentMB() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_maxrss) / 1024
}

/// The first `count` samples of the step that just ran: original query view, its saliency, the
/// masked query and the masked hard negative, one row each.
public func renderTrainingPreview(step: TrainingStep, views: [[Float]], count: Int, mean: [Float], std: [Float],
                                  highPass: Bool) -> Image {
    let c = step.config
    return views[0].withUnsafeBufferPointer { v in
        maskPreview(views: v.baseAddress!, saliency: c.masking == .saliency ? step.lastQuerySaliency : nil,
                    query: step.lastQueryViews, hardNegative: step.lastHardViews, batch: c.batch,
                    height: c.resolution, width: c.resolution, channels: c.inChannels, grid: step.gridSize,
                    count: count, mean: mean, std: std, highPass: highPass)
    }
}
