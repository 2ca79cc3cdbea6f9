// The training run: epochs of steps over a BatchLoader, a progress line and a JSONL log, atomic
// checkpoints after every epoch (and every `saveEvery` steps), bit-exact resumption, kNN monitoring.
import Cluster
//
// What a run guarantees:
// - One run per output folder: `run` holds an exclusive lock (flock) on DIR/.salient.lock until it
//   returns; a second run into the folder is refused, naming the first one's pid.
// - A fresh run never replaces an earlier one's checkpoint or log unless `overwrite` is set.
// - Checkpoints are written atomically (a temporary file renamed over the old one); temporary files
//   of writers that died are removed when a run starts.
// - A resumed run continues bit-exactly: every setting, the data (image count and fingerprint), the
//   thread count and the convolution algorithm must match the checkpoint, which is checked field by
//   field before anything is restored; a refusal names the option that differs.
// - `stopRequested` (a signal, in the command line) is checked between steps: the run writes a
//   checkpoint at that step boundary (the loader's position included, so it resumes mid-epoch) and
//   returns `.interrupted`.
// - Data-parallel (a Communicator of several ranks): rank 0 alone locks and writes the output folder;
//   the ranks agree at every step boundary whether any of them was asked to stop.
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
    func progress(
        epoch: Int, epochs: Int, step: Int, stepsPerEpoch: Int, loss: Float, accuracy: Float,
        imagesPerSecond: Double, eta: Double)
    func epochEnded(epoch: Int, loss: Float, accuracy: Float, knnTop1: Double?, seconds: Double)
    func message(_ s: String)
}

/// kNN monitoring: a labelled memory bank from the training data, a labelled test set.
public struct KNNMonitor {
    public let bank: ImageDataset
    public let test: ImageDataset
    public var k = 200
    public var t: Float = 0.1
    /// Throws, naming the dataset, when either has no labels.
    public init(bank: ImageDataset, test: ImageDataset) throws {
        guard test.labels != nil else {
            throw TrainError(
                "\(test.source): no labels for kNN monitoring "
                    + "(use a folder with one subfolder per class, or an IDX file with its labels file beside it)")
        }
        guard bank.labels != nil else {
            throw TrainError("\(bank.source): the kNN memory bank comes from the training images, which have no labels")
        }
        self.bank = bank; self.test = test
    }
}

/// How `Trainer.run` ended.
public enum RunOutcome: Sendable, Equatable {
    /// Every epoch ran (or there was nothing to train).
    case completed
    /// `stopRequested` said so: a checkpoint of the step boundary where it stopped was written.
    case interrupted
    /// `stopAfterSteps` was reached: it returned as a killed run would, without writing.
    case stoppedAfterSteps
}

public final class Trainer {
    public let config: TrainConfig
    public let out: String
    public let dataset: ImageDataset
    public let step: TrainingStep
    public var knn: KNNMonitor?
    public var writePreview = false
    public weak var observer: TrainObserver?
    /// Stop after this many steps in total, writing nothing (tests of killed runs); nil runs to the end.
    public var stopAfterSteps: Int? = nil
    /// Asked between steps (one call per step); true stops the run at that step boundary with a checkpoint.
    public var stopRequested: () -> Bool = { false }
    /// A fresh run (no resume) into a folder holding an earlier run's checkpoint or log replaces them;
    /// without it the run is refused.
    public var overwrite = false
    /// Loss above which a step counts as diverged; nil: ten times the largest loss the objective can
    /// give at the run's temperature (`lossLimit`), so that only a numerical blow-up stops the run.
    public var maxLoss: Float? = nil

    var loaderState: LoaderState
    public private(set) var globalStep = 0
    public private(set) var epoch = 0
    public private(set) var bestKNN: Double = -1
    /// Epoch and step of the last checkpoint written to `lastCheckpoint` by this run (nil: none yet).
    public private(set) var lastSaved: (epoch: Int, step: Int)? = nil
    var logHandle: FileHandle?
    var lockDescriptor: Int32 = -1
    /// What the dataset holds (datasetFingerprint), computed when first needed.
    lazy var dataFingerprint: String = (try? datasetFingerprint(dataset)) ?? "unreadable"

    public var lastCheckpoint: String { out + "/last.safetensors" }
    public var bestCheckpoint: String { out + "/best.safetensors" }

    /// The ranks of a data-parallel run: rank 0 alone writes the output folder (checkpoints, log,
    /// preview); every rank trains on its shard of each global batch.
    public let comm: Communicator

    public init(
        config: TrainConfig, dataset: ImageDataset, out: String, saliencyEncoder: Encoder? = nil,
        comm: Communicator = .single, execution: ExecutionConfig = .standard
    ) throws {
        let problems = config.problems(ranks: comm.size) + [config.batchNormSplitProblem].compactMap { $0 }
        if !problems.isEmpty { throw TrainError(problems.joined(separator: "\n")) }
        self.comm = comm
        guard dataset.count >= config.batch else {
            throw TrainError("\(dataset.source): \(dataset.count) images is fewer than one batch of \(config.batch)")
        }
        self.config = config
        self.out = out
        self.dataset = dataset
        step = TrainingStep(config: config, saliencyEncoder: saliencyEncoder, comm: comm, execution: execution)
        loaderState = LoaderState(epoch: 0, position: 0, seed: config.seed)
    }

    deinit { unlockOutput() }

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

    public var lockPath: String { out + "/.salient.lock" }
    /// Files of a run in the folder (a fresh run refuses to replace them without `overwrite`).
    public var runFiles: [String] { [lastCheckpoint, bestCheckpoint, out + "/log.jsonl", out + "/preview.png"] }
    /// Optimizer steps in one epoch (the loader drops the last, partial batch).
    public var stepsPerEpoch: Int { dataset.count / config.batch }

    /// Creates the folder, takes its lock, removes temporary files of dead writers, refuses to replace
    /// an earlier run unless resuming or `overwrite`, and checks the folder can hold what the run
    /// writes, before any training.
    public func prepareOutput(resuming: Bool) throws {
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: out, withIntermediateDirectories: true) } catch {
            throw TrainError("\(out): cannot create the output folder (\(error.localizedDescription))")
        }
        try lockOutput()
        let removed = removeStaleTemporaries()
        if !removed.isEmpty {
            observer?.message(
                "removed \(removed.count) temporary file(s) of an interrupted write: \(removed.joined(separator: ", "))"
            )
        }
        if !resuming {
            let previous = runFiles.filter { fm.fileExists(atPath: $0) }
            if !previous.isEmpty && !overwrite {
                throw TrainError(
                    "\(out) holds an earlier run "
                        + "(\(previous.map { ($0 as NSString).lastPathComponent }.joined(separator: ", "))): "
                        + "continue it with --resume, or replace it with --overwrite")
            }
        }
        let probe = out + "/.write-test-\(getpid())"
        guard fm.createFile(atPath: probe, contents: Data(count: 4096)) else {
            throw TrainError("\(out): the output folder is not writable")
        }
        try? fm.removeItem(atPath: probe)
        var st = statvfs()
        if statvfs(out, &st) == 0 {
            let free = Double(st.f_bavail) * Double(st.f_frsize)
            let need = Double(checkpointSpaceNeeded(resuming: resuming))
            if free < need {
                throw TrainError(
                    String(
                        format: "%@: only %.1f MB free, the run needs about %.1f MB for its checkpoints",
                        out, free / 1e6, need / 1e6))
            }
        }
        if !resuming && overwrite { for f in runFiles { try? fm.removeItem(atPath: f) } }
    }

    /// Bytes the run's checkpoints still need: one file for each checkpoint it will create (DIR/best
    /// too with kNN monitoring) that is not there yet, plus one temporary copy while one is rewritten.
    public func checkpointSpaceNeeded(resuming: Bool) -> Int {
        let files = [lastCheckpoint] + (knn != nil ? [bestCheckpoint] : [])
        let new = files.filter { !resuming || !FileManager.default.fileExists(atPath: $0) }.count
        return checkpointBytesEstimate * (new + 1)
    }

    var checkpointBytesEstimate: Int {
        let p = step.query.store.parameterCount + step.query.store.bufferCount
        return 4 * (3 * p + (step.queue.map { $0.length * $0.dim } ?? 0)) + 1 << 16
    }

    /// Takes an exclusive lock on the folder (held until `unlockOutput`, or the process ends), or
    /// throws naming the run that holds it.
    func lockOutput() throws {
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw TrainError("\(lockPath): cannot open the folder's lock file (\(String(cString: strerror(errno))))")
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let why = errno
            close(fd)
            guard why == EWOULDBLOCK else {
                throw TrainError("\(lockPath): cannot lock the output folder (\(String(cString: strerror(why))))")
            }
            let holder = ((try? String(contentsOfFile: lockPath, encoding: .utf8)) ?? "").trimmingCharacters(
                in: .whitespacesAndNewlines)
            throw TrainError(
                "\(out) is in use by another salient run (\(holder.isEmpty ? "its pid is not recorded" : holder)): "
                    + "wait for it to end, or choose another --out")
        }
        let text = "pid \(getpid()), started \(ISO8601DateFormatter().string(from: Date()))\n"
        _ = ftruncate(fd, 0)
        _ = text.withCString { write(fd, $0, strlen($0)) }
        lockDescriptor = fd
    }

    func unlockOutput() {
        if lockDescriptor >= 0 { close(lockDescriptor); lockDescriptor = -1 }
    }

    /// Removes `NAME.tmp-PID` and `.write-test-PID` files of processes that no longer run (an
    /// atomic write cut short by a kill); returns their names.
    func removeStaleTemporaries() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []
        var removed: [String] = []
        for name in names {
            let marker = name.hasPrefix(".write-test-") ? ".write-test-" : ".tmp-"
            guard let r = name.range(of: marker, options: .backwards), let pid = Int32(name[r.upperBound...]),
                pid > 0, pid != getpid(), !processIsAlive(pid)
            else { continue }
            if (try? FileManager.default.removeItem(atPath: out + "/" + name)) != nil { removed.append(name) }
        }
        return removed.sorted()
    }

    // MARK: - Checkpoints

    /// What a resumed run must match besides the settings: the data, and what changes the bits.
    var runIdentity: [String: String] {
        [
            "data": dataset.source, "data_images": String(dataset.count), "data_fingerprint": dataFingerprint,
            "steps_per_epoch": String(stepsPerEpoch), "threads": String(Threads.count),
            "conv": step.execution.convolution.name, "simd": simdBuildName
        ]
    }

    public func saveCheckpoint(path: String, epochCompleted: Int) throws {
        guard comm.isRoot else { return }
        var file = SafeTensorsFile(
            metadata: EncoderCheckpoint.metadata(step.query.config).merging([
                "format": "salient-trainer-1", "method": config.method.rawValue, "epoch": String(epochCompleted),
                "step": String(globalStep), "config": config.json(), "resolution": String(config.resolution),
                "input": highPassInput ? "highpass" : "plain"
            ]) { _, b in b }.merging(runIdentity) { _, b in b })
        step.query.store.export(into: &file, prefix: "encoder_q.")
        if let k = step.key { k.store.export(into: &file, prefix: "encoder_k.") }
        for s in step.query.store.slots where s.kind == .parameter {
            file["optimizer.momentum." + s.name] = .init(
                floats: Array(UnsafeBufferPointer(start: step.query.store.momentum + s.offset, count: s.count)),
                shape: s.shape)
        }
        if let q = step.queue {
            file["queue"] = .init(
                floats: Array(UnsafeBufferPointer(start: q.keys, count: q.length * q.dim)), shape: [q.length, q.dim])
            file["queue_ptr"] = .init(int64s: [Int64(q.pointer)], shape: [1])
        }
        file["trainer.state"] = .init(
            int64s: [
                Int64(globalStep), Int64(epochCompleted), Int64(loaderState.epoch),
                Int64(loaderState.position), Int64(bitPattern: loaderState.seed)
            ], shape: [5])
        file["trainer.best_knn"] = .init(floats: [Float(bestKNN)], shape: [1])
        try file.write(path: path)
        if path == lastCheckpoint { lastSaved = (epochCompleted, globalStep) }
    }

    /// Restores everything a checkpoint holds; the run continues bit-exactly. Every setting, the data,
    /// the thread count and the convolution algorithm must be the checkpoint's (a refusal names the
    /// option); every tensor and counter is checked (shape, range, finite values) before anything is
    /// restored. Errors name the file.
    public func resume(from path: String) throws {
        func fail(_ s: String) -> TrainError { TrainError("\(path): \(s)") }
        let file = try SafeTensorsFile.read(path: path)
        let m = file.metadata
        guard m["format"] == "salient-trainer-1", let cfgJSON = m["config"] else {
            throw fail("not a salient trainer checkpoint (encoder-only files cannot be resumed)")
        }
        let saved: TrainConfig
        do { saved = try TrainConfig.from(json: cfgJSON) } catch {
            throw fail("its config metadata cannot be read (\(error)): not a checkpoint this salient can resume")
        }
        var mine = config, theirs = saved
        mine.epochs = 0; theirs.epochs = 0; mine.saveEvery = 0; theirs.saveEvery = 0
        let differences = theirs.differences(to: mine)
        guard differences.isEmpty else {
            throw fail(
                "was written with other settings: \(differences.joined(separator: "; ")). "
                    + "Resume with the checkpoint's values (only --epochs and --save-every may change)")
        }
        try checkRunIdentity(m, path: path)

        // Read and check everything, then restore.
        let spe = stepsPerEpoch
        let st = try file.int64s("trainer.state")
        guard st.count == 5 else { throw fail("trainer.state has \(st.count) values, expected 5") }
        let (gs, ep, loaderEpoch, position) = (st[0], st[1], st[2], st[3])
        guard gs >= 0, ep >= 0, position >= 0, position < spe, loaderEpoch == ep,
            gs == ep * Int64(spe) + position
        else {
            throw fail(
                "trainer.state \(st) (step, epoch, loader epoch, loader position, seed) is not a position in "
                    + "a run of \(spe) steps per epoch")
        }
        guard UInt64(bitPattern: st[4]) == config.seed else {
            throw fail("trainer.state seed \(UInt64(bitPattern: st[4])) is not the run's --seed \(config.seed)")
        }
        let best = try file.floats("trainer.best_knn")
        guard best.count == 1, best[0] == -1 || (best[0] >= 0 && best[0] <= 100) else {
            throw fail("trainer.best_knn \(best) is not one accuracy in 0...100 (or -1: none yet)")
        }
        var momenta: [(TensorSlot, [Float])] = []
        for s in step.query.store.slots where s.kind == .parameter {
            let name = "optimizer.momentum." + s.name
            let v = try file.floats(name, shape: s.shape)
            if let p = nonFiniteProblem(v, name: name) { throw fail(p) }
            momenta.append((s, v))
        }
        var queueState: ([Float], Int)? = nil
        if let q = step.queue {
            let keys = try file.floats("queue", shape: [q.length, q.dim])
            if let p = nonFiniteProblem(keys, name: "queue") { throw fail(p) }
            let ptr = try file.int64s("queue_ptr")
            guard ptr.count == 1, ptr[0] >= 0, ptr[0] < Int64(q.length) else {
                throw fail("queue_ptr \(ptr) is not one index into the queue of \(q.length) keys")
            }
            queueState = (keys, Int(ptr[0]))
        }
        try step.query.store.load(from: file, prefix: "encoder_q.", path: path) { _ in true }
        if let k = step.key { try k.store.load(from: file, prefix: "encoder_k.", path: path) { _ in true } }
        for (s, v) in momenta {
            v.withUnsafeBufferPointer {
                (step.query.store.momentum + s.offset).update(from: $0.baseAddress!, count: s.count)
            }
        }
        if let q = step.queue, let (keys, ptr) = queueState { q.restore(keys: keys, pointer: ptr) }
        globalStep = Int(gs); epoch = Int(ep)
        loaderState = LoaderState(epoch: Int(loaderEpoch), position: Int(position), seed: config.seed)
        bestKNN = Double(best[0])
        lastSaved = (epoch, globalStep)
    }

    /// The data, thread count and convolution algorithm of a checkpoint (`m`, its metadata) against
    /// this run's; fields a checkpoint lacks are not checked.
    func checkRunIdentity(_ m: [String: String], path: String) throws {
        let here = runIdentity
        let data = m["data"] ?? "its data"
        if let n = m["data_images"], n != here["data_images"] {
            throw TrainError(
                "--data: \(path) was trained on \(data) (\(n) images); this run's --data \(dataset.source) "
                    + "has \(dataset.count) images. Resume with the same data")
        }
        if let f = m["data_fingerprint"], f != here["data_fingerprint"] {
            throw TrainError(
                "--data: \(dataset.source) does not hold the images \(path) was trained on (\(data)): "
                    + "the image names, labels or pixels differ. Resume with the same data")
        }
        if let t = m["threads"], t != here["threads"] {
            throw TrainError(
                "--threads: \(path) was written by a run on \(t) thread(s), this one has \(Threads.count). "
                    + "A run continues bit-exactly only on its own thread count: resume with --threads \(t)")
        }
        if let c = m["conv"], c != here["conv"] {
            throw TrainError(
                "--conv: \(path) was written by a run with --conv \(c), this one has --conv \(here["conv"]!). "
                    + "Resume with --conv \(c)")
        }
        if let s = m["simd"], s != here["simd"] {
            observer?.message(
                "note: \(path) was written by a \(s) build, this is \(simdBuildName): the run continues, "
                    + "but not bit-exactly as it would have on the first build")
        }
    }

    // MARK: - Run

    /// Trains until the last epoch, `stopRequested` or `stopAfterSteps`. Everything that can be checked
    /// (the folder, its lock, a resumed checkpoint, the data) is checked before the first step.
    @discardableResult
    public func run(resumeFrom: String? = nil) throws -> RunOutcome {
        defer { if comm.isRoot { unlockOutput() } }
        if comm.isRoot { try prepareOutput(resuming: resumeFrom != nil) }
        if let r = resumeFrom {
            if comm.isRoot { try resume(from: r) }
            shareState()
            observer?.message("resumed from \(r): epoch \(epoch), step \(globalStep)")
        } else {
            try saveCheckpoint(path: lastCheckpoint, epochCompleted: 0)
        }
        logHandle = comm.isRoot ? try openLog() : nil
        defer { try? logHandle?.close() }
        if config.epochs == 0 || epoch >= config.epochs {
            observer?.message("nothing to train: checkpoint at \(lastCheckpoint) (epoch \(epoch))")
            return .completed
        }
        let loader = try BatchLoader(
            dataset: dataset, config: augmentConfig, batchSize: config.batch, views: 2,
            threads: max(1, min(2, Threads.count)), seed: config.seed, shuffle: true, dropLast: true,
            prefetch: 2, state: loaderState,
            shard: LoaderShard(rank: comm.rank, ranks: comm.size))
        precondition(loader.stepsPerEpoch == stepsPerEpoch, "the loader's epoch differs from the trainer's")
        let runStart = Date()
        var imagesDone = 0
        var epochLoss = 0.0, epochAcc = 0.0, epochSteps = 0
        var epochStart = Date()
        var lastPrint = Date.distantPast
        let limit = lossLimit
        while epoch < config.epochs {
            if let stop = stopAfterSteps, globalStep >= stop { return .stoppedAfterSteps }
            if stopRequestedByAnyRank() {
                if lastSaved?.step != globalStep { try saveCheckpoint(path: lastCheckpoint, epochCompleted: epoch) }
                log(["type": "interrupted", "epoch": epoch + 1, "step": globalStep])
                return .interrupted
            }
            // Where the loader stands: the step of the epoch that this batch is.
            let posInEpoch = loaderState.position
            let batch = try loader.next()
            let lr = config.learningRate(epoch: Double(epoch) + Double(posInEpoch) / Double(stepsPerEpoch))
            let r = step.step(views: batch.views, epoch: epoch, step: globalStep, lr: lr)
            if writePreview && globalStep == 0 && comm.isRoot { try writeTrainingPreview(batch) }
            if !r.loss.isFinite || r.loss > limit {
                throw TrainError(
                    String(
                        format:
                            "loss became %@ at epoch %d, step %d (lr %.4g): stopped. "
                            + "The last good checkpoint is %@. %@",
                        r.loss.isFinite ? String(format: "%.3g", r.loss) : "\(r.loss)", epoch + 1, globalStep,
                        Double(lr), lastGoodCheckpoint, divergenceAdvice(atStep: globalStep)))
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
                observer?.progress(
                    epoch: epoch + 1, epochs: config.epochs, step: posInEpoch + 1, stepsPerEpoch: stepsPerEpoch,
                    loss: r.loss, accuracy: r.accuracy, imagesPerSecond: ips, eta: eta)
            }
            if globalStep % 10 == 0 {
                log([
                    "type": "step", "epoch": epoch + 1, "step": globalStep, "loss": Double(r.loss),
                    "acc": Double(r.accuracy),
                    "lr": Double(lr), "img_per_s": ips
                ])
            }
            let endOfEpoch = posInEpoch + 1 == stepsPerEpoch
            if endOfEpoch {
                epoch += 1
                var top1: Double? = nil
                if let knn {
                    do { top1 = try evaluateKNN(knn) } catch {
                        throw TrainError(
                            "\(error). Stopped after epoch \(epoch); the last good checkpoint is \(lastGoodCheckpoint)")
                    }
                }
                let seconds = now.timeIntervalSince(epochStart)
                try saveCheckpoint(path: lastCheckpoint, epochCompleted: epoch)
                if let t = top1, t > bestKNN {
                    bestKNN = t
                    try saveCheckpoint(path: bestCheckpoint, epochCompleted: epoch)
                }
                let ml = Float(epochLoss / Double(max(epochSteps, 1))),
                    ma = Float(epochAcc / Double(max(epochSteps, 1)))
                var rec: [String: Any] = [
                    "type": "epoch", "epoch": epoch, "step": globalStep, "loss": Double(ml),
                    "acc": Double(ma), "seconds": seconds,
                    "img_per_s": Double(epochSteps * config.batch) / max(seconds, 1e-9),
                    "peak_rss_mb": peakResidentMB()
                ]
                if let t = top1 { rec["knn_top1"] = t }
                log(rec)
                observer?.epochEnded(epoch: epoch, loss: ml, accuracy: ma, knnTop1: top1, seconds: seconds)
                epochLoss = 0; epochAcc = 0; epochSteps = 0; epochStart = Date()
            } else if config.saveEvery > 0 && globalStep % config.saveEvery == 0 {
                try saveCheckpoint(path: lastCheckpoint, epochCompleted: epoch)
            }
        }
        return .completed
    }

    /// "PATH (epoch E, step S)" of the last checkpoint this run wrote or resumed from.
    var lastGoodCheckpoint: String {
        lastSaved.map { "\(lastCheckpoint) (epoch \($0.epoch), step \($0.step))" } ?? lastCheckpoint
    }

    /// `maxLoss`, or ten times the largest loss the objective can give: logits are similarities in
    /// [-1, 1] (hard negatives times alpha) divided by T, so a row's loss is at most
    /// (1 + max(1, alpha)) / T + log(columns). A low temperature alone then never counts as divergence.
    public var lossLimit: Float {
        if let maxLoss { return maxLoss }
        let columns = Float(1 + config.queue + 2 * config.batch)
        let logits: Float = (1 + max(1, config.alpha)) / config.temperature
        return 10 * (logits + Float(Foundation.log(Double(columns))))
    }

    /// What to change after a diverged step.
    func divergenceAdvice(atStep s: Int) -> String {
        if config.temperature < 0.05 {
            return String(
                format: "--temperature %g is very low: the logits are similarities divided by it, so the loss and its "
                    + "gradients grow as 1/T; use a temperature of 0.05-0.5 (the presets use 0.2 and 0.5)",
                Double(config.temperature))
        }
        if s < 10 && config.warmupEpochs == 0 {
            return "Try a lower --lr, or a --warmup of an epoch or more"
        }
        return "Try a lower --lr"
    }

    /// kNN top-1 of the current query backbone (eval-mode batch norm). Throws, naming the dataset,
    /// when the encoder's features are not finite.
    public func evaluateKNN(_ m: KNNMonitor) throws -> Double {
        let pre = evaluationPreprocess
        let dim = step.query.config.featureDim
        let bankF = try extractFeatures(
            encoder: step.query, dataset: m.bank, batch: 256, preprocess: pre, comm: comm, execution: step.execution)
        try checkFinite(bankF, dim: dim, source: "kNN monitor: the encoder's features of \(m.bank.source)")
        let testF = try extractFeatures(
            encoder: step.query, dataset: m.test, batch: 256, preprocess: pre, comm: comm, execution: step.execution)
        try checkFinite(testF, dim: dim, source: "kNN monitor: the encoder's features of \(m.test.source)")
        let bl = m.bank.labels!, tl = m.test.labels!
        let classes = Int(max(bl.max() ?? 0, tl.max() ?? 0)) + 1
        let r = try knnClassify(
            trainFeatures: bankF, trainLabels: bl, testFeatures: testF, testLabels: tl,
            dim: dim, classes: classes, k: m.k, t: m.t)
        return r.top1
    }

    /// Data-parallel: rank 0's training state (read from a checkpoint) to every rank.
    func shareState() {
        guard comm.isDistributed else { return }
        func share<T>(_ p: UnsafeMutablePointer<T>, _ n: Int) {
            comm.broadcast(UnsafeMutableRawPointer(p), bytes: n * MemoryLayout<T>.stride, "sharing the resumed state")
        }
        for (i, s) in ([step.query.store] + (step.key.map { [$0.store] } ?? [])).enumerated() {
            share(s.params, s.parameterCount); share(s.buffers, s.bufferCount); share(s.counters, s.counterCount)
            if i == 0 { share(s.momentum, s.parameterCount) }
        }
        var scalars: [Int64] = [
            Int64(globalStep), Int64(epoch), Int64(loaderState.epoch), Int64(loaderState.position),
            Int64(bitPattern: loaderState.seed), Int64(bitPattern: bestKNN.bitPattern)
        ]
        if let q = step.queue {
            share(q.keys, q.length * q.dim)
            scalars.append(Int64(q.pointer))
        }
        scalars.withUnsafeMutableBufferPointer { share($0.baseAddress!, $0.count) }
        globalStep = Int(scalars[0]); epoch = Int(scalars[1])
        loaderState = LoaderState(
            epoch: Int(scalars[2]), position: Int(scalars[3]), seed: UInt64(bitPattern: scalars[4]))
        bestKNN = Double(bitPattern: UInt64(bitPattern: scalars[5]))
        if let q = step.queue { q.restore(pointer: Int(scalars[6])) }
    }

    /// Whether this rank, or any rank of a data-parallel run, was asked to stop (all ranks stop at the
    /// same step boundary).
    func stopRequestedByAnyRank() -> Bool {
        let mine = stopRequested()
        guard comm.isDistributed else { return mine }
        var v: Double = mine ? 1 : 0
        comm.sum(&v, count: 1, "agreeing on a stop")
        return v > 0
    }

    // MARK: - Log and preview

    /// DIR/log.jsonl opened for appending (O_APPEND: every record lands at the end of the file, in
    /// one write, whoever else writes to it).
    func openLog() throws -> FileHandle {
        let path = out + "/log.jsonl"
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw TrainError("\(path): cannot open the log (\(String(cString: strerror(errno))))") }
        return FileHandle(fileDescriptor: fd, closeOnDealloc: true)
    }

    /// Appends one JSON line.
    func log(_ record: [String: Any]) {
        guard let h = logHandle, var d = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys])
        else { return }
        d.append(0x0A)
        h.write(d)
    }

    /// Writes DIR/preview.png from the step that just ran: views, saliency, masked query, hard negative
    /// (without masking: the two views of each image).
    func writeTrainingPreview(_ batch: Batch) throws {
        let path = out + "/preview.png"
        let n = min(8, config.batch)
        var views = batch.views
        if highPassInput {
            views[0] = highPassFilter(
                views[0], n: config.batch, height: config.resolution, width: config.resolution,
                channels: config.inChannels)
        }
        let img = renderTrainingPreview(
            step: step, views: views, count: n,
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
/// masked query and the masked hard negative, one row each; without masking, the query and key views.
public func renderTrainingPreview(
    step: TrainingStep, views: [[Float]], count: Int, mean: [Float], std: [Float],
    highPass: Bool
) -> Image {
    let c = step.config
    if c.masking == .none {
        return views[0].withUnsafeBufferPointer { q in
            views[1].withUnsafeBufferPointer { k in
                viewPairPreview(
                    first: q.baseAddress!, second: k.baseAddress!, batch: c.batch, height: c.resolution,
                    width: c.resolution, channels: c.inChannels, count: count, mean: mean, std: std)
            }
        }
    }
    return views[0].withUnsafeBufferPointer { v in
        maskPreview(
            views: v.baseAddress!, saliency: c.masking == .saliency ? step.lastQuerySaliency : nil,
            query: step.lastQueryViews, hardNegative: step.lastHardViews, batch: c.batch,
            height: c.resolution, width: c.resolution, channels: c.inChannels, grid: step.gridSize,
            count: count, mean: mean, std: std, highPass: highPass)
    }
}

/// Whether a process with this id exists (signal 0 probes without sending anything).
func processIsAlive(_ pid: Int32) -> Bool { kill(pid, 0) == 0 || errno == EPERM }

extension TrainConfig {
    /// The command-line option of each setting, for messages about differences.
    static let optionNames: [String: String] = [
        "method": "--method", "arch": "--arch", "stem": "--stem", "width": "--width", "inChannels": "--channels",
        "resolution": "--res", "epochs": "--epochs", "batch": "--batch", "lr": "--lr", "weightDecay": "--wd",
        "sgdMomentum": "--momentum", "warmupEpochs": "--warmup", "cosine": "--no-cosine (cosine)", "queue": "--queue",
        "mocoMomentum": "--moco-m", "temperature": "--temperature", "masking": "--masking", "fill": "--fill",
        "alpha": "--alpha", "hardNegatives": "--hard-negatives", "hardNegativeMode": "--hard-negative-mode",
        "hpNoise": "--hp-noise",
        "saliency": "--saliency", "saliencyWarmup": "--saliency-warmup", "seed": "--seed", "bnSplits": "--bn-splits",
        "headDim": "head dimension", "limit": "--limit", "saveEvery": "--save-every"
    ]

    /// "--OPTION THEIRS there, MINE here" for every setting that differs between `self` (there) and `other` (here).
    public func differences(to other: TrainConfig) -> [String] {
        func fields(_ c: TrainConfig) -> [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(c.json().utf8))) as? [String: Any] ?? [:]
        }
        let a = fields(self), b = fields(other)
        return Set(a.keys).union(b.keys).sorted().compactMap { k in
            let x = a[k].map { "\($0)" } ?? "none", y = b[k].map { "\($0)" } ?? "none"
            return x == y ? nil : "\(Self.optionNames[k] ?? k) \(x) there, \(y) here"
        }
    }

    /// Images per batch-norm group of the key encoder's forward (the batch split into effectiveBNSplits).
    public var batchNormGroupSize: Int { batch / effectiveBNSplits }

    /// Groups of one image have no spread to normalise by: refused.
    public var batchNormSplitProblem: String? {
        batchNormGroupSize >= 2
            ? nil
            : "--bn-splits \(bnSplits) with --batch \(batch) gives batch-norm groups of 1 image, "
                + "whose statistics are degenerate: "
                + "use --bn-splits \(batch / 2) or fewer"
    }

    /// A note when --bn-splits does not divide the batch and fewer groups are used.
    public var batchNormSplitNote: String? {
        effectiveBNSplits == bnSplits
            ? nil
            : "--bn-splits \(bnSplits) does not divide --batch \(batch): "
                + "the key encoder uses \(effectiveBNSplits) groups of \(batchNormGroupSize)"
    }
}
