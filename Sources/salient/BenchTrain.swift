import ArgumentParser
import Foundation
import Kernels
import Network
import Data
import Contrastive

struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Images/s of full training steps (masking and hard negatives included) on synthetic images, and peak memory.")

    @Option(help: "moco | simclr") var method = "moco"
    @Option var arch = "resnet18"
    @Option var stem = "cifar"
    @Option var width = 1.0
    @Option var batch = 64
    @Option var res = 32
    @Option var channels = 3
    @Option(help: "saliency | random | none") var masking = "saliency"
    @Option(help: "hp | blur | mean") var fill = "hp"
    @Option(name: .customLong("hard-negatives")) var hardNegatives = 1
    @Option(help: "Timed steps (after 2 warm-up steps).") var steps = 5
    @Flag(help: "One JSON object per line.") var json = false
    @Flag(help: "Also print where the step's time goes.") var profile = false
    @OptionGroup var threadOptions: ThreadOptions

    func config() -> TrainConfig {
        var c = TrainConfig()
        c.method = ContrastiveMethod(rawValue: method) ?? .moco
        c.arch = arch; c.stem = stem; c.width = width; c.batch = batch; c.resolution = res; c.inChannels = channels
        c.masking = masking; c.fill = fill; c.hardNegatives = hardNegatives
        c.saliencyWarmup = 0          // time the encoder's own saliency (the steady state)
        c.queue = 4096
        return c
    }

    func validate() throws {
        if ContrastiveMethod(rawValue: method) == nil { throw ValidationError("--method must be moco or simclr, got '\(method)'") }
        if let p = config().problems().first { throw ValidationError(p) }
        if steps < 1 || steps > 10000 { throw ValidationError("--steps must be between 1 and 10000") }
    }

    func run() throws {
        threadOptions.apply()
        let c = config()
        let step = TrainingStep(config: c)
        var rng = SplitMix64(seed: 7)
        let n = c.batch * c.resolution * c.resolution * c.inChannels
        let views = (0..<2).map { _ in (0..<n).map { _ in rng.normal() } }
        var loss: Float = 0
        for i in 0..<2 { loss = step.step(views: views, epoch: 1, step: i, lr: 0.01).loss }
        guard loss.isFinite else { throw BenchError(description: "warm-up step gave a non-finite loss") }
        step.profile = StepProfile()
        var times: [Double] = []
        for i in 0..<steps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            loss = step.step(views: views, epoch: 1, step: 2 + i, lr: 0.01).loss
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9)
        }
        times.sort()
        let median = times[times.count / 2]
        let ips = Double(c.batch) / median
        let rss = peakResidentMB()
        let op = c.method == .moco ? "moco_step" : "simclr_step"
        if json {
            var r = BenchRecord(fields: [])
            r.add("op", op); r.add("arch", arch); r.add("stem", stem); r.add("width", width); r.add("batch", c.batch)
            r.add("res", c.resolution); r.add("threads", Threads.count); r.add("masking", masking); r.add("fill", fill)
            r.add("hard_negatives", c.masking == "none" ? 0 : c.hardNegatives)
            r.add("img_per_s", ips); r.add("step_s", median); r.add("peak_rss_mb", rss)
            print(r.json)
        } else {
            print(String(format: "%@ %@ %@ width %.3g, batch %d, %dpx, %d thread(s), masking %@/%@, %d hard negative(s)",
                         op, arch, stem, width, c.batch, c.resolution, Threads.count, masking, fill,
                         c.masking == "none" ? 0 : c.hardNegatives))
            print(String(format: "  %.1f images/s (median step %.3f s over %d steps), peak resident memory %.0f MB",
                         ips, median, steps, rss))
        }
        if profile {
            let p = step.profile, t = max(p.total, 1e-12)
            for (name, v) in [("key forward", p.keyForward), ("saliency", p.saliency), ("masking", p.masking),
                              ("hard negatives", p.hardNegatives), ("query forward", p.queryForward), ("loss", p.loss),
                              ("backward", p.backward), ("optimizer+queue", p.optimizer)] {
                print(String(format: "  %-16@ %7.1f ms/step  %5.1f%%", name as NSString, v / Double(p.steps) * 1000, v / t * 100))
            }
        }
    }
}
