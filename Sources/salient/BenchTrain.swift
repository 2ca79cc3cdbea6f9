import ArgumentParser
import Foundation
import Kernels
import Network
import Data
import Contrastive
import Cluster

struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: """
            Images/s of full training steps (masking and hard negatives included) on synthetic images, \
            and peak memory.
            """)

    @Option var method: ContrastiveMethod = .moco
    @Option var arch: ResNetArch = .resnet18
    @Option var stem: ResNetStem = .cifar
    @Option var width = 1.0
    @Option var batch = 64
    @Option var res = 32
    @Option var channels = 3
    @Option var masking: MaskMode = .saliency
    @Option var fill: MaskFill = .hp
    @Option(name: .customLong("hard-negatives")) var hardNegatives = 1
    @Option(help: "Timed steps (after 2 warm-up steps).") var steps = 5
    @Option(
        name: .customLong("bucket-kb"),
        help: "Under mpirun: gradient-sum bucket size in KB (0: one sum after backward, without overlap).")
    var bucketKB = GradientBuckets.defaultBucketBytes >> 10
    @Flag(help: "One JSON object per line.") var json = false
    @Flag(help: "Also print where the step's time goes.") var profile = false
    @Option(
        name: .customLong("schedule-model"),
        help: ArgumentHelp(
            """
            Run on one core as N threads would split the work and predict the N-thread speedup from the split \
            alone (no memory-bandwidth, clock or synchronisation limits).
            """,
            valueName: "N"))
    var scheduleModel: Int?
    @Flag(help: "With --schedule-model: list the parallel loops that lose most to an uneven split.")
    var scheduleLosses = false
    @OptionGroup var threadOptions: ThreadOptions

    func config() -> TrainConfig {
        var c = TrainConfig()
        c.method = method
        c.arch = arch; c.stem = stem; c.width = width; c.batch = batch; c.resolution = res; c.inChannels = channels
        c.masking = masking; c.fill = fill; c.hardNegatives = hardNegatives
        c.saliencyWarmup = 0  // time the encoder's own saliency (the steady state)
        c.queue = 4096
        return c
    }

    func validate() throws {
        if let p = config().problems().first { throw ValidationError(p) }
        if steps < 1 || steps > 10000 { throw ValidationError("--steps must be between 1 and 10000") }
        if bucketKB < 0 || bucketKB > 1 << 20 { throw ValidationError("--bucket-kb must be between 0 and 1048576") }
        if let m = scheduleModel, m < 1 || m > 1024 {
            throw ValidationError("--schedule-model must be between 1 and 1024, got \(m)")
        }
        if scheduleLosses && scheduleModel == nil {
            throw ValidationError("--schedule-losses needs --schedule-model N")
        }
    }

    func run() throws {
        let comm = try Communicator.world()
        try comm.failing { try bench(comm) }
        comm.finish()
    }

    func bench(_ comm: Communicator) throws {
        threadOptions.apply()
        applyRankThreads(comm, explicit: threadOptions.threads)
        // The model's thread count sizes every per-thread scratch, so it is set before the step is built.
        if let m = scheduleModel { ScheduleModel.begin(threads: m) }
        let c = config()
        if let p = c.problems(ranks: comm.size).first { throw ValidationError(p) }
        let step = TrainingStep(
            config: c, comm: comm, gradientBucketBytes: bucketKB << 10, execution: threadOptions.execution)
        var rng = SplitMix64(seed: 7 &+ UInt64(comm.rank))
        let n = c.batch / comm.size * c.resolution * c.resolution * c.inChannels
        let views = (0..<2).map { _ in (0..<n).map { _ in rng.normal() } }
        var loss: Float = 0
        for i in 0..<2 { loss = step.step(views: views, epoch: 1, step: i, lr: 0.01).loss }
        guard loss.isFinite else { throw BenchError(description: "warm-up step gave a non-finite loss") }
        step.profile = StepProfile()
        let profiler = profile ? PassProfiler() : nil
        step.passProfiler = profiler
        if let m = scheduleModel { ScheduleModel.begin(threads: m) }
        var times: [Double] = []
        let (commSeconds0, commBytes0) = (comm.seconds, comm.bytes)
        let exposed0 = step.buckets?.exposedSeconds ?? 0
        for i in 0..<steps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            loss = step.step(views: views, epoch: 1, step: 2 + i, lr: 0.01).loss
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9)
        }
        let model = scheduleModel.map { _ in ScheduleModel.end(printLosses: scheduleLosses) }
        let total = times.reduce(0, +)
        times.sort()
        let median = times[times.count / 2]
        let ips = Double(c.batch) / median
        let rss = peakResidentMB()
        if comm.isDistributed {
            let perStep = 1.0 / Double(steps)
            let waited = (comm.seconds - commSeconds0) * perStep, sent = (comm.bytes - commBytes0) * perStep
            let exposed = ((step.buckets?.exposedSeconds ?? 0) - exposed0) * perStep
            // The gradient sum alone, blocking, for what overlap hides of it.
            let params = step.query.store.parameterCount
            let grads = UnsafeMutablePointer<Float>.allocate(capacity: params)
            grads.initialize(repeating: 1, count: params)
            var sums: [Double] = []
            for _ in 0..<5 {
                comm.barrier("the benchmark")
                let t0 = Date()
                comm.sum(grads, count: params, "the benchmark's gradient sum")
                sums.append(Date().timeIntervalSince(t0))
            }
            grads.deallocate()
            sums.sort()
            let worstRSS =
                comm.allGather(withUnsafeBytes(of: rss) { Array($0) }, "the peak memory")
                .map { $0.withUnsafeBytes { $0.load(as: Double.self) } }.max() ?? rss
            guard comm.isRoot else { return }
            let alone = sums[sums.count / 2]
            if json {
                var r = BenchRecord(fields: [])
                r.add("op", c.method == .moco ? "moco_step" : "simclr_step"); r.add("ranks", comm.size)
                r.add("threads_per_rank", Threads.count); r.add("batch", c.batch); r.add("width", width)
                r.add("res", c.resolution); r.add("masking", masking.rawValue); r.add("img_per_s", ips);
                r.add("step_s", median)
                r.add("collective_s_per_step", waited); r.add("bytes_per_step", sent)
                r.add("gradient_sum_alone_s", alone); r.add("gradient_sum_exposed_s", exposed);
                r.add("bucket_kb", bucketKB)
                r.add("peak_rss_mb", worstRSS)
                print(r.json)
            } else {
                print(
                    String(
                        format: "%@ %@ width %.3g, global batch %d over %d ranks of %d thread(s), %dpx, masking %@/%@",
                        c.method.rawValue, arch.rawValue, width, c.batch, comm.size, Threads.count, c.resolution,
                        masking.rawValue, fill.rawValue))
                print(
                    String(
                        format:
                            "  %.1f images/s (median step %.3f s over %d steps), "
                            + "peak resident memory %.0f MB (the largest rank's)",
                        ips, median, steps, worstRSS))
                print(
                    String(
                        format: "  per step: %.1f ms in collectives (waiting included), %.2f MB sent by each rank",
                        1000 * waited, sent / 1e6))
                print(
                    String(
                        format:
                            "  gradient sum: %.1f ms alone, "
                            + "%.1f ms still to wait after backward (%.0f%% hidden by overlap)",
                        1000 * alone, 1000 * exposed, 100 * max(0, 1 - exposed / max(alone, 1e-9))))
            }
            return
        }
        if let m = scheduleModel, let model {
            // Per step: the time outside parallel loops stays serial; the loops take their modelled time.
            let outside = max(total - model.serial, 0), modelled = outside + model.parallel
            if json {
                var r = BenchRecord(fields: [])
                r.add("op", "schedule_model"); r.add("threads", m); r.add("batch", c.batch)
                r.add("serial_step_ms", 1000 * total / Double(steps));
                r.add("outside_loops_ms", 1000 * outside / Double(steps))
                r.add("model_step_ms", 1000 * modelled / Double(steps));
                r.add("model_speedup", total / max(modelled, 1e-12))
                r.add("loops_per_step", Double(model.loops) / Double(steps))
                print(r.json)
            } else {
                print(
                    String(
                        format: "schedule model, %d threads, batch %d: a step takes %.3f s on one core (%.3f s outside "
                            + "parallel loops, %.3f s in %.0f loops); split as %d threads would: %.3f s, %.2fx "
                            + "(the work split alone: no memory-bandwidth, clock or synchronisation limits)",
                        m, c.batch, total / Double(steps), outside / Double(steps), model.serial / Double(steps),
                        Double(model.loops) / Double(steps), m, modelled / Double(steps), total / max(modelled, 1e-12)))
            }
            // With --profile the breakdown follows: each kind's time on one core under the N-thread plan.
            if !profile { return }
        }
        let op = c.method == .moco ? "moco_step" : "simclr_step"
        if scheduleModel == nil {  // (the model printed its own line instead)
            if json {
                var r = BenchRecord(fields: [])
                r.add("op", op); r.add("arch", arch.rawValue); r.add("stem", stem.rawValue); r.add("width", width);
                r.add("batch", c.batch)
                r.add("res", c.resolution); r.add("threads", Threads.count); r.add("masking", masking.rawValue);
                r.add("fill", fill.rawValue)
                r.add("hard_negatives", c.masking == .none ? 0 : c.hardNegatives)
                r.add("img_per_s", ips); r.add("step_s", median); r.add("peak_rss_mb", rss)
                print(r.json)
            } else {
                print(
                    String(
                        format: "%@ %@ %@ width %.3g, batch %d, %dpx, %d thread(s), masking %@/%@, %d hard negative(s)",
                        op, arch.rawValue, stem.rawValue, width, c.batch, c.resolution, Threads.count,
                        masking.rawValue, fill.rawValue,
                        c.masking == .none ? 0 : c.hardNegatives))
                print(
                    String(
                        format: "  %.1f images/s (median step %.3f s over %d steps), peak resident memory %.0f MB",
                        ips, median, steps, rss))
            }
        }
        if profile {
            let p = step.profile, t = max(p.total, 1e-12)
            for (name, v) in [
                ("key forward", p.keyForward), ("saliency", p.saliency), ("masking", p.masking),
                ("hard negatives", p.hardNegatives), ("query forward", p.queryForward), ("loss", p.loss),
                ("backward", p.backward), ("optimizer+queue", p.optimizer)
            ] {
                print(
                    "  " + name.padding(toLength: 16, withPad: " ", startingAt: 0)
                        + String(format: " %7.1f ms/step  %5.1f%%", v / Double(p.steps) * 1000, v / t * 100))
            }
            print("  by kind of work (all passes of the step):")
            for op in PassOp.allCases {
                let v = profiler?.seconds[op.rawValue] ?? 0
                print(
                    "    " + op.label.padding(toLength: 46, withPad: " ", startingAt: 0)
                        + String(format: " %7.1f ms/step  %5.1f%%", v / Double(p.steps) * 1000, v / t * 100))
            }
            print("  convolutions by shape (C->K kernel/stride input):")
            for (label, v) in (profiler?.byShape ?? [:]).sorted(by: { $0.value > $1.value }) {
                print(
                    "    " + label.padding(toLength: 46, withPad: " ", startingAt: 0)
                        + String(format: " %7.1f ms/step  %5.1f%%", v / Double(p.steps) * 1000, v / t * 100))
            }
            print(String(format: "  planned buffers %.0f MB:", Double(step.allocatedBytes) / 1e6))
            for (name, b) in step.memoryBreakdown {
                print(
                    "    " + name.padding(toLength: 54, withPad: " ", startingAt: 0)
                        + String(format: " %6.1f MB", Double(b) / 1e6))
            }
        }
    }
}

struct BenchExtract: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract",
        abstract: "Images/s of feature extraction (eval-mode backbone forward) on synthetic images.")

    @Option var arch: ResNetArch = .resnet18
    @Option var stem: ResNetStem = .cifar
    @Option var width = 1.0
    @Option var batch = 256
    @Option var res = 32
    @Option var channels = 3
    @Option(help: "Timed batches (after 1 warm-up).") var steps = 3
    @Flag(help: "One JSON object per line.") var json = false
    @OptionGroup var threadOptions: ThreadOptions

    func validate() throws {
        var c = TrainConfig()
        c.arch = arch; c.stem = stem; c.width = width; c.batch = batch; c.resolution = res; c.inChannels = channels
        if let p = c.problems().first { throw ValidationError(p) }
        if steps < 1 || steps > 1000 { throw ValidationError("--steps must be between 1 and 1000") }
    }

    func run() throws {
        threadOptions.apply()
        let cfg = ResNetConfig(arch: arch, stem: stem, inChannels: channels, width: width)
        let enc = Encoder(config: cfg, trainable: false)
        enc.initialize(seed: 1)
        let pass = ResNetPass(
            layout: enc.backbone, batch: batch, height: res, width: res, keepActivations: false,
            config: threadOptions.execution)
        var rng = SplitMix64(seed: 9)
        for i in 0..<(batch * res * res * channels) { pass.input[i] = rng.normal() }
        pass.forward(input: pass.input, store: enc.store, mode: .eval)
        guard pass.features[0].isFinite else { throw BenchError(description: "non-finite features") }
        var times: [Double] = []
        for _ in 0..<steps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            pass.forward(input: pass.input, store: enc.store, mode: .eval)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9)
        }
        times.sort()
        let median = times[times.count / 2], ips = Double(batch) / median
        if json {
            var r = BenchRecord(fields: [])
            r.add("op", "extract"); r.add("arch", arch.rawValue); r.add("stem", stem.rawValue); r.add("width", width);
            r.add("batch", batch)
            r.add("res", res); r.add("threads", Threads.count); r.add("img_per_s", ips); r.add("step_s", median)
            r.add("peak_rss_mb", peakResidentMB())
            print(r.json)
        } else {
            print(
                String(
                    format:
                        "extract %@ %@ width %.3g, batch %d, %dpx, %d thread(s): "
                        + "%.1f images/s, peak resident memory %.0f MB",
                    arch.rawValue, stem.rawValue, width, batch, res, Threads.count, ips, peakResidentMB()))
        }
    }
}

struct BenchLoader: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loader",
        abstract: "Images/s of the data loader: two augmented views per image, on background threads.",
        discussion: """
            With --data a folder of JPEGs, images are decoded as small as the views allow (DCT scaling, \
            DecodeTarget.views) unless --full-decode; --stream decodes every image on each access (nothing \
            decoded is held in memory), as a PyTorch ImageFolder does. --decode-compare instead times, on one \
            thread, the decode of each image plus one view's crop and resample at full size and DCT-scaled.
            """)

    @Option(help: "A dataset (PNG/JPEG folder or IDX file); default: synthetic 32x32 RGB images.") var data: String?
    @Option var res = 32
    @Option var batch = 256
    @Option(help: "Loader threads.") var threads = 2
    @Option var limit = 8192
    @Option(help: "Timed batches (after one warm-up batch).") var batches = 20
    @Flag(help: "Decode every image on each access instead of holding decoded images in memory.") var stream = false
    @Flag(help: "Decode JPEGs at full size (no DCT scaling).") var fullDecode = false
    @Flag(help: "Time decode + one view per image, full size against DCT-scaled, on one thread (needs --data).")
    var decodeCompare = false
    @Flag(help: "High-pass filter the views (the hp fill's input).") var highPass = false
    @Flag(help: "One JSON object per line.") var json = false

    func validate() throws {
        if res < 8 || res > 1024 { throw ValidationError("--res must be between 8 and 1024, got \(res)") }
        if batch < 1 || threads < 1 || batches < 1 || limit < 1 {
            throw ValidationError("--batch, --threads, --batches and --limit must be at least 1")
        }
        if decodeCompare && data == nil { throw ValidationError("--decode-compare needs --data FOLDER") }
    }

    func run() throws {
        var cfg = AugmentConfig.mocoV2(size: res)
        cfg.highPass = highPass
        if decodeCompare, let data { return try compareDecodes(data, cfg) }
        let target: DecodeTarget = fullDecode ? .full : .views(cfg)
        let t0 = DispatchTime.now().uptimeNanoseconds
        let ds =
            try data.map {
                try DatasetLoader.open(path: $0, limit: limit, memoryBudget: stream ? 0 : nil, decode: target)
            }
            ?? ImageDataset.synthetic(count: min(limit, 8192), width: res, height: res, channels: 3)
        let openSeconds = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        let ips = try benchmarkLoader(
            dataset: ds, config: cfg, batchSize: min(batch, ds.count), views: 2, threads: threads,
            batches: batches)
        let rss = peakResidentMB()
        if json {
            var r = BenchRecord(fields: [])
            r.add("op", "loader"); r.add("res", res); r.add("batch", min(batch, ds.count)); r.add("threads", threads)
            r.add("images", ds.count); r.add("in_memory", ds.isInMemory ? 1 : 0);
            r.add("dct_scaling", fullDecode ? 0 : 1)
            r.add("img_per_s", ips); r.add("open_s", openSeconds); r.add("peak_rss_mb", rss)
            print(r.json)
        } else if data == nil {
            print(
                String(
                    format:
                        "loader: %.0f images/s (two %dx%d views each, %d thread(s), synthetic), "
                        + "peak resident memory %.0f MB",
                    ips, res, res, threads, rss))
        } else {
            print(
                String(
                    format: "loader: %.1f images/s (two %dx%d views each, %d thread(s), %@; %d images %@, JPEGs %@), "
                        + "peak resident memory %.0f MB; open %.1f s",
                    ips, res, res, threads, ds.source, ds.count, ds.isInMemory ? "in memory" : "decoded on each access",
                    fullDecode ? "at full size" : "DCT-scaled for the views", rss, openSeconds))
        }
    }

    func compareDecodes(_ path: String, _ cfg: AugmentConfig) throws {
        let ds = try DatasetLoader.open(path: path, limit: limit, memoryBudget: 0)
        let files = try (0..<ds.count).map { try readFileBytes(ds.name(at: $0)) }
        let b = try benchmarkDecode(files: files, config: cfg)
        let mp = try (0..<ds.count).map { i -> Double in
            let f = files[i]
            if let info = try? jpegInfo(f) { return Double(info.width * info.height) / 1e6 }
            let p = try pngInfo(f)
            return Double(p.width * p.height) / 1e6
        }
        let reductions = b.reductions.sorted { $0.key < $1.key }.map { "1/\($0.key): \($0.value)" }.joined(
            separator: ", ")
        if json {
            var r = BenchRecord(fields: [])
            r.add("op", "decode_compare"); r.add("res", res); r.add("images", b.images)
            r.add("mean_mpix", mp.reduce(0, +) / Double(mp.count))
            r.add("full_ms", b.fullSeconds * 1000); r.add("scaled_ms", b.scaledSeconds * 1000);
            r.add("speedup", b.speedup)
            print(r.json)
        } else {
            print(
                String(
                    format:
                        "decode + one %dpx view, 1 thread, %d images of %.1f MP on average (%@): full size %.1f ms, "
                        + "DCT-scaled %.1f ms per image: %.2fx", res, b.images, mp.reduce(0, +) / Double(mp.count),
                    reductions,
                    b.fullSeconds * 1000, b.scaledSeconds * 1000, b.speedup))
        }
    }
}
