import ArgumentParser
import Foundation
import Kernels
import Network
import Data
import Contrastive
import Cluster

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Contrastive pretraining (MoCo v2 or SimCLR) with saliency-guided masking and hard negatives.",
        discussion: """
            Presets (--preset; options given on the command line override them):
            \(TrainPreset.allCases.map { "  \($0.rawValue): \($0.summary)" }.joined(separator: "\n"))

            Writes DIR/last.safetensors after every epoch (atomically; DIR/best.safetensors too with --knn-data), \
            DIR/log.jsonl, and with --preview DIR/preview.png. `salient extract` reads the checkpoints. \
            One run at a time uses DIR (it is locked); a fresh run into a DIR holding an earlier one \
            needs --overwrite. \
            Ctrl-C or SIGTERM stops at the end of the step with a checkpoint of it (exit 130 or 143). \
            --resume continues a run exactly: same options, data, --threads and --conv (only --epochs and --save-every \
            may change); what differs is named.
            """)

    @Option(help: "Training images: a folder of PNGs or an IDX images file.") var data: String
    @Option(help: "Output folder.") var out: String
    @Option(
        help: ArgumentHelp(
            "The recipe to start from; every option below given on the command line overrides it.",
            valueName: TrainPreset.allCases.map(\.rawValue).joined(separator: "|")))
    var preset: TrainPreset = .small
    @Option(help: "Contrastive objective (preset).") var method: ContrastiveMethod?
    @Option(help: "Backbone (preset).") var arch: ResNetArch?
    @Option(help: "cifar (3x3 stem, no pool) | imagenet (7x7 stem + max pool) (preset).") var stem: ResNetStem?
    @Option(help: "Channel width multiplier; 0.25 gives 16-32-64-128 channels (preset).") var width: Double?
    @Option(help: "Training view side in pixels, the RandomResizedCrop output (preset).") var res: Int?
    @Option(help: "Input channels: 1 (gray) or 3 (default: 1 for gray data, else 3).") var channels: Int?
    @Option(help: "Epochs (preset).") var epochs: Int?
    @Option(help: "Images per step (preset).") var batch: Int?
    @Option(help: "Peak learning rate, cosine schedule (preset).") var lr: Float?
    @Option(help: "Weight decay (preset).") var wd: Float?
    @Option(help: "SGD momentum (preset).") var momentum: Float?
    @Option(help: "Linear warm-up epochs (preset).") var warmup: Int?
    @Flag(help: "Constant learning rate instead of cosine.") var noCosine = false
    @Option(help: "MoCo queue length (preset).") var queue: Int?
    @Option(name: .customLong("moco-m"), help: "MoCo key-encoder momentum (preset).") var mocoM: Float?
    @Option(help: "Softmax temperature (preset: 0.5 for SimCLR, 0.2 for MoCo v2).") var temperature: Float?
    @Option(help: "Where masks go: saliency-constrained, uniformly random, or no masking (preset).") var masking:
        MaskMode?
    @Option(help: "How masked cells are filled: hp (noise on high-pass views), blur, mean (preset).") var fill:
        MaskFill?
    @Option(
        name: .customLong("hp-noise"),
        help: ArgumentHelp(
            """
            Noise levels of the hp fill: query,hard-negative standard deviations, or one value for the \
            query (the hard negative's follows the paper's 0.14/0.18). Default: the paper's, set for \
            224 px ImageNet views.
            """,
            valueName: "Q[,N]"))
    var hpNoise: NoiseLevels?
    @Option(help: "Weight of the hard-negative logits (preset).") var alpha: Float?
    @Option(name: .customLong("hard-negatives"), help: "Hard negatives per sample (preset).") var hardNegatives: Int?
    @Option(
        name: .customLong("hard-negative-mode"),
        help: """
            per-sample (each sample masks its own key view) | shared (the official code: the batch's first \
            H masked images, shared by every query).
            """)
    var hardNegativeMode: HardNegativeMode?
    @Option(
        help: ArgumentHelp(
            """
            Saliency maps: the key encoder's own (self), network-free (classical), or an imported encoder's \
            (a safetensors file).
            """,
            valueName: "self|classical|CHECKPOINT"))
    var saliency: SaliencySource?
    @Option(name: .customLong("saliency-warmup"), help: "Epochs of classical saliency before the encoder's own.")
    var saliencyWarmup: Int?
    @Option(name: .customLong("bn-splits"), help: "Batch-norm groups in the key encoder (shuffle-BN stand-in).")
    var bnSplits: Int?
    @Option(help: "Use only the first N training images.") var limit: Int?
    @Option var seed: UInt64 = 1
    @Option(name: .customLong("save-every"), help: "Also checkpoint every N steps (0: only at epoch ends).")
    var saveEvery = 0
    @Option(name: .customLong("knn-data"), help: "Labelled test set for a kNN top-1 after every epoch.") var knnData:
        String?
    @Option(name: .customLong("knn-bank"), help: "Training images used as the kNN memory bank.") var knnBank = 5000
    @Option(name: .customLong("knn-limit"), help: "Test images used for kNN.") var knnLimit = 2000
    @Flag(help: "Write DIR/preview.png: the first batch's views with saliency and masks.") var preview = false
    @Flag(help: "Continue from DIR/last.safetensors.") var resume = false
    @Flag(help: "Replace an earlier run in DIR (its checkpoints, log and preview) instead of refusing.") var overwrite =
        false
    @Flag(name: .customLong("skip-bad"), help: "Skip unreadable images (their count is reported).") var skipBad = false
    @Option(
        name: .customLong("peer-timeout"),
        help: """
            Under mpirun: seconds a rank waits for the others in a collective before it ends the job (a rank \
            that died, a network that dropped).
            """)
    var peerTimeout: Double = 60
    @OptionGroup var threadOptions: ThreadOptions

    /// The preset's recipe with every option given on the command line applied.
    func makeConfig(channels: Int) -> TrainConfig {
        var c = preset.config(channels: channels, method: method)
        func set<T>(_ v: T?, _ k: WritableKeyPath<TrainConfig, T>) { if let v { c[keyPath: k] = v } }
        set(arch, \.arch); set(stem, \.stem); set(width, \.width); set(res, \.resolution)
        set(epochs, \.epochs); set(batch, \.batch); set(lr, \.lr); set(wd, \.weightDecay); set(momentum, \.sgdMomentum)
        set(warmup, \.warmupEpochs); set(queue, \.queue); set(mocoM, \.mocoMomentum); set(temperature, \.temperature)
        set(masking, \.masking); set(fill, \.fill); set(alpha, \.alpha); set(hardNegatives, \.hardNegatives)
        set(hardNegativeMode, \.hardNegativeMode); set(saliency, \.saliency); set(saliencyWarmup, \.saliencyWarmup)
        set(hpNoise, \.hpNoise); set(bnSplits, \.bnSplits)
        if noCosine { c.cosine = false }
        c.limit = limit; c.seed = seed; c.saveEvery = saveEvery
        return c
    }

    func validate() throws {
        if let c = channels, c != 1 && c != 3 { throw ValidationError("--channels must be 1 or 3, got \(c)") }
        let config = makeConfig(channels: channels ?? 3)
        if let p = config.problems().first ?? config.batchNormSplitProblem { throw ValidationError(p) }
        if resume && overwrite {
            throw ValidationError("--resume continues the run in --out, --overwrite replaces it: give one")
        }
        if knnBank < 1 || knnLimit < 1 { throw ValidationError("--knn-bank and --knn-limit must be >= 1") }
        if !(peerTimeout >= 1 && peerTimeout <= 86400) {
            throw ValidationError("--peer-timeout must be between 1 and 86400 seconds, got \(peerTimeout)")
        }
        if resume && !FileManager.default.fileExists(atPath: out + "/last.safetensors") {
            throw ValidationError("--resume: \(out)/last.safetensors does not exist")
        }
    }

    func run() throws {
        let comm = try Communicator.world(timeout: peerTimeout)
        let interrupted = try comm.failing { try train(comm) }
        comm.finish()
        if let code = interrupted { throw ExitCode(code) }
    }

    /// Trains; returns the exit status of an interrupted run (nil when it ran to its end).
    func train(_ comm: Communicator) throws -> Int32? {
        threadOptions.apply()
        applyRankThreads(comm, explicit: threadOptions.threads)
        // JPEGs decode (DCT-scaled) just large enough for the smallest random crop of a view.
        let resolution = makeConfig(channels: channels ?? 3).resolution
        let dataset = try DatasetLoader.open(
            path: data, limit: limit, skipBad: skipBad, channels: channels,
            decode: .views(AugmentConfig.mocoV2(size: resolution)))
        var config = makeConfig(channels: channels ?? dataset.channels)
        config.limit = limit
        if let p = config.problems(ranks: comm.size).first { throw ValidationError(p) }
        // Every rank must train the same model on the same data with the same binary.
        comm.requireSame(
            "\(Salient.configuration.version)\n\(config.json())\n\(dataset.count) \(dataset.source)\n"
                + "\(resume) \(knnData ?? "") \(knnBank) \(knnLimit) \(saveEvery) \(threadOptions.algorithm.name)",
            "the binary, options or data")
        var saliencyEncoder: Encoder? = nil
        if case .encoder(let path) = config.saliency {
            saliencyEncoder = try EncoderCheckpoint.loadEncoder(path: path, trainable: false)
            if saliencyEncoder!.config.inChannels != config.inChannels {
                throw ValidationError(
                    "--saliency \(path): encoder takes \(saliencyEncoder!.config.inChannels) channels, "
                        + "the data has \(config.inChannels)")
            }
        }
        let trainer = try Trainer(
            config: config, dataset: dataset, out: out, saliencyEncoder: saliencyEncoder, comm: comm,
            execution: threadOptions.execution)
        let printer = ProgressPrinter()
        if comm.isRoot { trainer.observer = printer }
        trainer.writePreview = preview
        trainer.overwrite = overwrite
        if let k = knnData {
            let bank = try DatasetLoader.open(
                path: data, limit: min(knnBank, dataset.count), skipBad: skipBad,
                channels: config.inChannels, decode: .resize(config.resolution))
            // Test labels follow the bank's classes by name.
            let test = try DatasetLoader.open(
                path: k, limit: knnLimit, skipBad: skipBad, channels: config.inChannels,
                decode: .resize(config.resolution)
            ).relabeled(as: bank)
            trainer.knn = try KNNMonitor(bank: bank, test: test)
        }
        let g = config.resnet.finalMapSize(config.resolution)
        if comm.isRoot {
            note("train: \(dataset.count) images from \(data), preset \(preset.rawValue) with the options given:")
            note("       \(config.recipeSummary)")
            if config.masking != .none {
                note(
                    "       saliency \(config.saliency) (grid \(g)x\(g)), "
                        + "hard negatives \(config.hardNegativeMode.rawValue)")
            }
            if hpNoise != nil && (config.masking == .none || config.fill != .hp) {
                note("       --hp-noise has no effect: it sets the hp fill's noise, and this run masks with no hp fill")
            }
            note(
                "       \(Threads.count) thread(s)"
                    + (comm.isDistributed
                        ? " in each of \(comm.size) ranks, "
                            + "\(config.batch / comm.size) images of each batch of \(config.batch) per rank"
                        : ""))
            if let n = config.batchNormSplitNote { note("       note: \(n)") }
        }
        let t0 = Date()
        Interrupts.install()
        trainer.stopRequested = { Interrupts.received != 0 }
        let outcome = try trainer.run(resumeFrom: resume ? out + "/last.safetensors" : nil)
        printer.finish()
        if outcome == .interrupted {
            let sig = Interrupts.received
            if comm.isRoot {
                note(
                    "interrupted by \(sig > 0 ? Interrupts.name(sig) : "another rank's signal") "
                        + "at epoch \(trainer.epoch + 1), step \(trainer.globalStep): "
                        + "\(trainer.lastCheckpoint) holds this step; continue with the same command and --resume")
            }
            return 128 + (sig > 0 ? sig : 15)
        }
        let dt = Date().timeIntervalSince(t0)
        if !comm.isRoot { return nil }
        print(
            String(
                format: "done: %d epoch(s) in %.1f s, peak resident memory %.0f MB; checkpoint %@",
                trainer.epoch, dt, peakResidentMB(), trainer.lastCheckpoint))
        if trainer.bestKNN >= 0 {
            print(String(format: "best kNN top-1: %.2f%% (%@)", trainer.bestKNN, trainer.bestCheckpoint))
        }
        if !dataset.skipped.isEmpty { print("skipped \(dataset.skipped.count) unreadable file(s)") }
        return nil
    }
}

/// Under mpirun without --threads or SALIENT_THREADS: the cores shared among the ranks of this machine.
func applyRankThreads(_ comm: Communicator, explicit: Int?) {
    guard comm.isDistributed, explicit == nil, ProcessInfo.processInfo.environment["SALIENT_THREADS"] == nil else {
        return
    }
    let local = Int(ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"] ?? "") ?? 1
    Threads.count = max(1, Threads.processors / max(1, local))
}

/// The live progress line (stderr, rewritten in place on a terminal) and epoch summaries.
final class ProgressPrinter: TrainObserver {
    let tty = isatty(2) != 0
    var open = false

    func progress(
        epoch: Int, epochs: Int, step: Int, stepsPerEpoch: Int, loss: Float, accuracy: Float,
        imagesPerSecond: Double, eta: Double
    ) {
        let line = String(
            format: "epoch %d/%d  step %d/%d  loss %.4f  acc %5.1f%%  %.1f img/s  ETA %@",
            epoch, epochs, step, stepsPerEpoch, loss, accuracy * 100, imagesPerSecond, formatDuration(eta))
        if tty {
            note("\r\u{1B}[K" + line, terminator: ""); open = true
        } else if step == stepsPerEpoch || step % max(1, stepsPerEpoch / 4) == 0 {
            note(line)
        }
    }

    func epochEnded(epoch: Int, loss: Float, accuracy: Float, knnTop1: Double?, seconds: Double) {
        finish()
        var s = String(
            format: "epoch %d: loss %.4f  contrastive acc %.1f%%  %.1f s", epoch, loss, accuracy * 100, seconds)
        if let k = knnTop1 { s += String(format: "  kNN top-1 %.2f%%", k) }
        note(s)
    }

    func message(_ s: String) { finish(); note(s) }

    func finish() { if open { note(""); open = false } }
}

func formatDuration(_ s: Double) -> String {
    guard s.isFinite else { return "?" }
    let t = Int(s.rounded())
    if t >= 3600 { return "\(t / 3600)h\(String(format: "%02d", (t % 3600) / 60))m" }
    if t >= 60 { return "\(t / 60)m\(String(format: "%02d", t % 60))s" }
    return "\(t)s"
}
