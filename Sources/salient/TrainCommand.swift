import ArgumentParser
import Foundation
import Kernels
import Network
import Data
import Contrastive

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Contrastive pretraining (MoCo v2 or SimCLR) with saliency-guided masking and hard negatives.",
        discussion: """
        Writes DIR/last.safetensors after every epoch (atomically; DIR/best.safetensors too with --knn-data), \
        DIR/log.jsonl, and with --preview DIR/preview.png. `salient extract` reads the checkpoints. \
        --resume continues an interrupted run exactly (same options and thread count).
        """)

    @Option(help: "Training images: a folder of PNGs or an IDX images file.") var data: String
    @Option(help: "Output folder.") var out: String
    @Option(help: "moco | simclr") var method = "moco"
    @Option(help: "resnet18 | resnet34 | resnet50") var arch = "resnet18"
    @Option(help: "cifar | imagenet") var stem = "cifar"
    @Option(help: "Channel width multiplier (0.25 gives 16-32-64-128).") var width = 1.0
    @Option(help: "Training view side in pixels (RandomResizedCrop output).") var res = 32
    @Option(help: "Input channels: 1 (gray) or 3 (default: 1 for gray data, else 3).") var channels: Int?
    @Option var epochs = 10
    @Option var batch = 64
    @Option(help: "Peak learning rate (cosine schedule).") var lr: Float = 0.06
    @Option(help: "Weight decay.") var wd: Float = 5e-4
    @Option(help: "SGD momentum.") var momentum: Float = 0.9
    @Option(help: "Linear warm-up epochs.") var warmup = 0
    @Flag(help: "Constant learning rate instead of cosine.") var noCosine = false
    @Option(help: "MoCo queue length.") var queue = 4096
    @Option(name: .customLong("moco-m"), help: "MoCo key-encoder momentum.") var mocoM: Float = 0.99
    @Option var temperature: Float = 0.2
    @Option(help: "saliency | random | none") var masking = "saliency"
    @Option(help: "hp | blur | mean") var fill = "hp"
    @Option(help: "Weight of the hard-negative logits.") var alpha: Float = 2
    @Option(name: .customLong("hard-negatives"), help: "Hard negatives per sample.") var hardNegatives = 1
    @Option(name: .customLong("hard-negative-mode"),
            help: "per-sample (each sample masks its own key view) | shared (the official code: the batch's first H masked images, shared by every query).")
    var hardNegativeMode: HardNegativeMode = .perSample
    @Option(help: "self | classical | CHECKPOINT (an imported encoder).") var saliency = "self"
    @Option(name: .customLong("saliency-warmup"), help: "Epochs of classical saliency before the encoder's own.") var saliencyWarmup = 1
    @Option(name: .customLong("bn-splits"), help: "Batch-norm groups in the key encoder (shuffle-BN stand-in).") var bnSplits = 8
    @Option(help: "Use only the first N training images.") var limit: Int?
    @Option var seed: UInt64 = 1
    @Option(name: .customLong("save-every"), help: "Also checkpoint every N steps (0: only at epoch ends).") var saveEvery = 0
    @Option(name: .customLong("knn-data"), help: "Labelled test set for a kNN top-1 after every epoch.") var knnData: String?
    @Option(name: .customLong("knn-bank"), help: "Training images used as the kNN memory bank.") var knnBank = 5000
    @Option(name: .customLong("knn-limit"), help: "Test images used for kNN.") var knnLimit = 2000
    @Flag(help: "Write DIR/preview.png: the first batch's views with saliency and masks.") var preview = false
    @Flag(help: "Continue from DIR/last.safetensors.") var resume = false
    @Flag(name: .customLong("skip-bad"), help: "Skip unreadable images (their count is reported).") var skipBad = false
    @OptionGroup var threadOptions: ThreadOptions

    func makeConfig(channels: Int) -> TrainConfig {
        var c = TrainConfig()
        c.method = ContrastiveMethod(rawValue: method) ?? .moco
        c.arch = arch; c.stem = stem; c.width = width; c.inChannels = channels; c.resolution = res
        c.epochs = epochs; c.batch = batch; c.lr = lr; c.weightDecay = wd; c.sgdMomentum = momentum
        c.warmupEpochs = warmup; c.cosine = !noCosine; c.queue = queue; c.mocoMomentum = mocoM
        c.temperature = temperature; c.masking = masking; c.fill = fill; c.alpha = alpha
        c.hardNegatives = hardNegatives; c.hardNegativeMode = hardNegativeMode; c.saliency = saliency; c.saliencyWarmup = saliencyWarmup
        c.bnSplits = bnSplits; c.limit = limit; c.seed = seed; c.saveEvery = saveEvery
        return c
    }

    func validate() throws {
        if ContrastiveMethod(rawValue: method) == nil { throw ValidationError("--method must be moco or simclr, got '\(method)'") }
        if let c = channels, c != 1 && c != 3 { throw ValidationError("--channels must be 1 or 3, got \(c)") }
        let problems = makeConfig(channels: channels ?? 3).problems()
        if let p = problems.first { throw ValidationError(p) }
        if knnBank < 1 || knnLimit < 1 { throw ValidationError("--knn-bank and --knn-limit must be >= 1") }
        if resume && !FileManager.default.fileExists(atPath: out + "/last.safetensors") {
            throw ValidationError("--resume: \(out)/last.safetensors does not exist")
        }
    }

    func run() throws {
        threadOptions.apply()
        let dataset = try DatasetLoader.open(path: data, limit: limit, skipBad: skipBad, channels: channels)
        var config = makeConfig(channels: channels ?? dataset.channels)
        config.limit = limit
        var saliencyEncoder: Encoder? = nil
        if saliency != "self" && saliency != "classical" {
            saliencyEncoder = try EncoderCheckpoint.loadEncoder(path: saliency, trainable: false)
            if saliencyEncoder!.config.inChannels != config.inChannels {
                throw ValidationError("--saliency \(saliency): encoder takes \(saliencyEncoder!.config.inChannels) channels, the data has \(config.inChannels)")
            }
        }
        let trainer = try Trainer(config: config, dataset: dataset, out: out, saliencyEncoder: saliencyEncoder)
        let printer = ProgressPrinter()
        trainer.observer = printer
        trainer.writePreview = preview
        if let k = knnData {
            let test = try DatasetLoader.open(path: k, limit: knnLimit, skipBad: skipBad, channels: config.inChannels)
            let bank = try DatasetLoader.open(path: data, limit: min(knnBank, dataset.count), skipBad: skipBad,
                                              channels: config.inChannels)
            trainer.knn = KNNMonitor(bank: bank, test: test)
        }
        let rc = config.resnet
        note("train: \(config.method.rawValue) \(rc), \(dataset.count) images \(config.resolution)px from \(data)")
        note("       batch \(config.batch), lr \(config.lr), masking \(config.masking)/\(config.fill), alpha \(config.alpha), " +
             "hard negatives \(config.masking == "none" ? 0 : config.hardNegatives), saliency \(config.saliency) " +
             "(grid \(rc.finalMapSize(config.resolution))x\(rc.finalMapSize(config.resolution))), \(Threads.count) thread(s)")
        let t0 = Date()
        try trainer.run(resumeFrom: resume ? out + "/last.safetensors" : nil)
        printer.finish()
        let dt = Date().timeIntervalSince(t0)
        print(String(format: "done: %d epoch(s) in %.1f s, peak resident memory %.0f MB; checkpoint %@",
                     trainer.epoch, dt, peakResidentMB(), trainer.lastCheckpoint))
        if trainer.bestKNN >= 0 { print(String(format: "best kNN top-1: %.2f%% (%@)", trainer.bestKNN, trainer.bestCheckpoint)) }
        if !dataset.skipped.isEmpty { print("skipped \(dataset.skipped.count) unreadable file(s)") }
    }
}

/// The live progress line (stderr, rewritten in place on a terminal) and epoch summaries.
final class ProgressPrinter: TrainObserver {
    let tty = isatty(2) != 0
    var open = false

    func progress(epoch: Int, epochs: Int, step: Int, stepsPerEpoch: Int, loss: Float, accuracy: Float,
                  imagesPerSecond: Double, eta: Double) {
        let line = String(format: "epoch %d/%d  step %d/%d  loss %.4f  acc %5.1f%%  %.1f img/s  ETA %@",
                          epoch, epochs, step, stepsPerEpoch, loss, accuracy * 100, imagesPerSecond, formatDuration(eta))
        if tty { note("\r\u{1B}[K" + line, terminator: ""); open = true }
        else if step == stepsPerEpoch || step % max(1, stepsPerEpoch / 4) == 0 { note(line) }
    }

    func epochEnded(epoch: Int, loss: Float, accuracy: Float, knnTop1: Double?, seconds: Double) {
        finish()
        var s = String(format: "epoch %d: loss %.4f  contrastive acc %.1f%%  %.1f s", epoch, loss, accuracy * 100, seconds)
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
