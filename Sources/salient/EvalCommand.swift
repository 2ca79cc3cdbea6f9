import ArgumentParser
import Foundation
import Kernels
import Network
import Data
import Contrastive

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Evaluate frozen features: weighted kNN or a linear probe, top-1 / top-5 on a test set.",
        discussion: """
            Features come from exactly one source: --checkpoint FILE (a trained encoder), --random-init (an \
            untrained encoder: the baseline), --raw-pixels (flattened normalised pixels), each with --train and \
            --test datasets; or --features TRAIN.npy --test-features TEST.npy (from `salient extract`, labels \
            in TRAIN.labels.npy / TEST.labels.npy beside them).
            """,
        subcommands: [EvalKNNCommand.self, EvalLinearCommand.self])
}

/// Where the features come from, and how they are computed (shared by `eval knn` and `eval linear`).
struct EvalSourceOptions: ParsableArguments {
    @Option(help: "Encoder checkpoint (.safetensors): encoder-only or a trainer checkpoint.") var checkpoint: String?
    @Flag(help: "Evaluate an untrained encoder (--arch/--stem/--width, default resnet18/cifar/1; --seed).")
    var randomInit = false
    @Flag(help: "Evaluate the preprocessed pixels themselves (the raw-pixels baseline).") var rawPixels = false
    @Option(help: "Saved train features (.npy, N x D); labels in TRAIN.labels.npy.") var features: String?
    @Option(help: "Saved test features (.npy, M x D); labels in TEST.labels.npy.") var testFeatures: String?

    @Option(help: "Train images: a folder of PNGs in class subfolders, or an IDX images file.") var train: String?
    @Option(help: "Test images, as --train.") var test: String?
    @Option(help: "Use only the first N train images.") var limitTrain: Int?
    @Option(help: "Use only the first N test images.") var limitTest: Int?
    @OptionGroup var model: ModelOptions
    @Option(help: "Input channels of a --random-init encoder, 1 or 3 (default: the train images').") var inChannels:
        Int?
    @Option(help: "Seed of --random-init weights (and of the linear probe).") var seed: UInt64 = 0
    @OptionGroup var prep: PreprocessOptions
    @Option(help: "Images per forward pass.") var batch = 256
    @Option(
        help: "Folder where extracted features are kept and reused (keyed on checkpoint, data, limits, preprocessing).")
    var cache: String?
    @Flag(help: "Print one JSON object instead of text lines.") var json = false
    @OptionGroup var threadOptions: ThreadOptions

    func validate() throws {
        var sources: [String] = []
        if checkpoint != nil { sources.append("--checkpoint") }
        if randomInit { sources.append("--random-init") }
        if rawPixels { sources.append("--raw-pixels") }
        if features != nil { sources.append("--features") }
        if sources.isEmpty {
            if testFeatures != nil { throw ValidationError("--test-features needs --features TRAIN.npy as well") }
            throw ValidationError(
                "give a feature source: --checkpoint FILE, --random-init, --raw-pixels (each with --train and --test), "
                    + "or --features TRAIN.npy --test-features TEST.npy")
        }
        if sources.count > 1 {
            throw ValidationError("give exactly one feature source, got \(sources.joined(separator: " and "))")
        }
        let imageOptions: [(String, Bool)] = [
            ("--train", train != nil), ("--test", test != nil), ("--limit-train", limitTrain != nil),
            ("--limit-test", limitTest != nil), ("--arch", model.arch != nil), ("--stem", model.stem != nil),
            ("--width", model.width != nil), ("--in-channels", inChannels != nil), ("--resize", prep.resize != nil),
            ("--mean", prep.mean != nil), ("--std", prep.std != nil), ("--cache", cache != nil)
        ]
        if let f = features {
            guard let tf = testFeatures else {
                throw ValidationError("--features needs --test-features TEST.npy as well")
            }
            if let used = imageOptions.first(where: { $0.1 }) {
                throw ValidationError(
                    "\(used.0) applies to images; --features/--test-features evaluate saved features as they are")
            }
            for p in [f, tf] where !FileManager.default.fileExists(atPath: p) {
                throw ValidationError("no such features file: \(p)")
            }
            return
        }
        if testFeatures != nil { throw ValidationError("--test-features goes with --features, not with \(sources[0])") }
        guard train != nil else {
            throw ValidationError("missing --train PATH (the images the classifier learns from)")
        }
        guard test != nil else { throw ValidationError("missing --test PATH (the images it is scored on)") }
        if let l = limitTrain, l < 1 { throw ValidationError("--limit-train must be >= 1, got \(l)") }
        if let l = limitTest, l < 1 { throw ValidationError("--limit-test must be >= 1, got \(l)") }
        if batch < 1 || batch > 65536 { throw ValidationError("--batch must be between 1 and 65536, got \(batch)") }
        if let c = inChannels {
            guard randomInit else {
                throw ValidationError("--in-channels is for --random-init (a checkpoint knows its channels)")
            }
            guard c == 1 || c == 3 else { throw ValidationError("--in-channels must be 1 or 3, got \(c)") }
        }
        if rawPixels {
            if let used = [
                ("--arch", model.arch != nil), ("--stem", model.stem != nil), ("--width", model.width != nil),
                ("--cache", cache != nil)
            ].first(where: { $0.1 }) {
                throw ValidationError("\(used.0) does not apply to --raw-pixels (no encoder)")
            }
        }
        if let c = cache {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: c, isDirectory: &isDir), !isDir.boolValue {
                throw ValidationError("--cache: '\(c)' exists and is not a folder")
            }
        }
    }

    /// Train and test features with their labels, from whichever source was given; checked (finite
    /// values, labels) with errors naming where they came from.
    func load() throws -> EvalFeatures {
        threadOptions.apply()
        if let f = features, let tf = testFeatures {
            let a = try readFeatures(f), b = try readFeatures(tf)
            guard a.dim == b.dim else {
                throw ValidationError("train features have \(a.dim) columns, test features \(b.dim) (\(f) vs \(tf))")
            }
            return try EvalFeatures(
                train: a.values, trainLabels: a.labels, test: b.values, testLabels: b.labels, dim: a.dim,
                trainSource: f, testSource: tf,
                trainLabelSource: labelsPath(forFeatures: f), testLabelSource: labelsPath(forFeatures: tf))
        }
        let trainPath = train!, testPath = test!
        if rawPixels {
            let trainSet = try openLabelled(trainPath, limit: limitTrain, channels: nil)
            let testSet = try openLabelled(testPath, limit: limitTest, channels: trainSet.channels, classesOf: trainSet)
            let pre = try prep.preprocess(channels: trainSet.channels)
            note("eval: raw pixels of \(trainSet.count) train / \(testSet.count) test images")
            let a = try rawPixelFeatures(dataset: trainSet, preprocess: pre)
            let b = try rawPixelFeatures(dataset: testSet, preprocess: pre)
            let dim = a.count / trainSet.count
            guard b.count == testSet.count * dim else {
                throw ValidationError("train and test images differ in size; pass --resize N")
            }
            return try EvalFeatures(
                train: a, trainLabels: trainSet.labels!.map(Int64.init), test: b,
                testLabels: testSet.labels!.map(Int64.init), dim: dim,
                trainSource: "the pixels of \(trainPath)", testSource: "the pixels of \(testPath)")
        }
        let src = try encoderSource()
        let (encoder, pre, trainSet, testSet) = (src.encoder, src.preprocess, src.trainSet, src.testSet)
        let config = encoder.config, dim = config.featureDim
        let encoderName = checkpoint ?? "the --random-init encoder (seed \(seed))"
        note("eval: \(config), \(trainSet.count) train / \(testSet.count) test images, \(Threads.count) thread(s)")
        let featureCache = cache.map { FeatureCache(folder: $0) }
        func extract(_ ds: ImageDataset, _ path: String, _ limit: Int?, _ split: String) throws -> [Float] {
            let key = featureCache.map { _ in
                FeatureCache.key(
                    encoderIdentity: src.identity, encoder: encoder, dataset: ds, limit: limit, preprocess: pre,
                    split: split)
            }
            if let featureCache, let key, let hit = featureCache.features(for: key, rows: ds.count, dim: dim) {
                note("eval: \(split) features from the cache (\(featureCache.folder))")
                return hit
            }
            let f = try extractWithProgress(encoder, ds, pre, label: split)
            try checkFinite(f, dim: dim, source: "the features of \(path) from \(encoderName)")
            if let featureCache, let key { try featureCache.store(f, labels: ds.labels, dim: dim, for: key) }
            return f
        }
        let a = try extract(trainSet, trainPath, limitTrain, "train")
        let b = try extract(testSet, testPath, limitTest, "test")
        return try EvalFeatures(
            train: a, trainLabels: trainSet.labels!.map(Int64.init), test: b,
            testLabels: testSet.labels!.map(Int64.init), dim: dim,
            trainSource: "the features of \(trainPath) from \(encoderName)",
            testSource: "the features of \(testPath) from \(encoderName)")
    }

    /// An encoder (from a checkpoint, or freshly initialised), the preprocessing its input needs, and the
    /// labelled train and test sets.
    struct EncoderSource {
        var encoder: Encoder, identity: String, preprocess: Preprocess
        var trainSet: ImageDataset, testSet: ImageDataset
    }

    /// `trainDecode`: how small the train set's JPEGs may be decoded (default: `decodeTarget`).
    func encoderSource(trainDecode: DecodeTarget? = nil) throws -> EncoderSource {
        let trainPath = train!, testPath = test!
        let encoder: Encoder
        let identity: String
        var checkpointInput: String? = nil
        if let path = checkpoint {
            let file = try SafeTensorsFile.read(path: path)
            checkpointInput = file.metadata["input"]
            let config = model.apply(to: try EncoderCheckpoint.inferConfig(file, path: path))
            encoder = try EncoderCheckpoint.loadEncoder(path: path, config: config, trainable: false)
            let attrs = try FileManager.default.attributesOfItem(atPath: path)
            let size = (attrs[.size] as? NSNumber)?.int64Value ?? -1
            let mtime = (attrs[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            identity = "checkpoint \(absolute(path)) size \(size) mtime \(mtime) config \(config)"
        } else {
            let channels: Int
            if let c = inChannels {
                channels = c
            } else {
                channels = try DatasetLoader.open(path: trainPath, limit: 1).channels
            }
            var config = model.apply(to: ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: channels, width: 1))
            config.inChannels = channels
            encoder = Encoder(config: config, trainable: false)
            encoder.initialize(seed: seed)
            identity = "random-init \(config) seed \(seed)"
        }
        let c = encoder.config.inChannels
        let pre = try prep.preprocess(channels: c, checkpointInput: checkpointInput)
        let trainSet = try openLabelled(trainPath, limit: limitTrain, channels: c, decode: trainDecode)
        return EncoderSource(
            encoder: encoder, identity: identity, preprocess: pre, trainSet: trainSet,
            testSet: try openLabelled(testPath, limit: limitTest, channels: c, classesOf: trainSet))
    }

    /// Features of `ds` with a progress line labelled `label`.
    func extractWithProgress(
        _ encoder: Encoder, _ ds: ImageDataset, _ pre: Preprocess, label: String,
        augmentation: FeatureAugmentation? = nil
    ) throws -> [Float] {
        let t0 = Date()
        return try extractFeatures(
            encoder: encoder, dataset: ds, batch: batch, preprocess: pre,
            augmentation: augmentation, execution: threadOptions.execution
        ) { done, total in
            let dt = Date().timeIntervalSince(t0)
            progressNote(
                String(format: "  %@: %d/%d images  %.0f img/s", label, done, total, Double(done) / max(dt, 1e-9)),
                done: done == total)
        }
    }

    /// How small a JPEG may be decoded: at least the --resize side (else at full size).
    var decodeTarget: DecodeTarget { prep.resize.map { DecodeTarget.resize($0) } ?? .full }

    /// A labelled dataset; with `classesOf`, its labels number `classesOf`'s classes (matched by name).
    func openLabelled(
        _ path: String, limit: Int?, channels: Int?, classesOf train: ImageDataset? = nil,
        decode: DecodeTarget? = nil
    ) throws -> ImageDataset {
        let ds = try DatasetLoader.open(path: path, limit: limit, channels: channels, decode: decode ?? decodeTarget)
        guard ds.labels != nil else {
            throw ValidationError(
                "\(path): no labels "
                    + "(use a folder with one subfolder per class, or an IDX file with its labels file beside it)")
        }
        return try train.map { try ds.relabeled(as: $0) } ?? ds
    }

    func readFeatures(_ path: String) throws -> (values: [Float], labels: [Int64], dim: Int) {
        let x = try NPYArray.read(path: path)
        guard x.shape.count == 2, let values = x.floats else {
            throw ValidationError(
                "\(path): expected a 2-D float32 array (N x D), got shape \(x.shape) \(x.storedDescription)")
        }
        let lp = labelsPath(forFeatures: path)
        guard FileManager.default.fileExists(atPath: lp) else {
            throw ValidationError(
                "\(path): labels not found; expected them in \(lp) (as `salient extract` writes them)")
        }
        let l = try NPYArray.read(path: lp)
        guard l.shape.count == 1, let ints = l.int64s else {
            throw ValidationError(
                "\(lp): expected a 1-D integer array of labels, got shape \(l.shape) \(l.storedDescription)")
        }
        guard ints.count == x.shape[0] else {
            throw ValidationError("\(lp) has \(ints.count) labels for \(x.shape[0]) rows of \(path)")
        }
        return (values, ints, x.shape[1])
    }

    func absolute(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.path
    }
}

/// Features of both splits, checked: finite, labels >= 0, renumbered 0..<classes (DenseLabels).
struct EvalFeatures {
    static let maxClasses = 1 << 20
    var train: [Float], trainLabels: [Int32], test: [Float], testLabels: [Int32]
    var dim: Int, classes: Int

    /// `trainSource` / `testSource` name where the features come from (and `...LabelSource` where
    /// their labels do), in errors.
    init(
        train: [Float], trainLabels: [Int64], test: [Float], testLabels: [Int64], dim: Int,
        trainSource: String, testSource: String, trainLabelSource: String? = nil, testLabelSource: String? = nil
    ) throws {
        guard !trainLabels.isEmpty else { throw ValidationError("\(trainSource): no train rows") }
        guard !testLabels.isEmpty else { throw ValidationError("\(testSource): no test rows") }
        guard dim > 0 else { throw ValidationError("\(trainSource): features have no columns") }
        try checkFinite(train, dim: dim, source: trainSource)
        try checkFinite(test, dim: dim, source: testSource)
        let labels = try DenseLabels(
            train: trainLabels, test: testLabels, trainSource: trainLabelSource ?? trainSource,
            testSource: testLabelSource ?? testSource)
        guard labels.classes <= Self.maxClasses else {
            throw ValidationError(
                "\(trainLabelSource ?? trainSource): \(labels.classes) distinct labels; "
                    + "at most \(Self.maxClasses) classes are supported")
        }
        self.train = train; self.trainLabels = labels.train; self.test = test; self.testLabels = labels.test
        self.dim = dim
        classes = labels.classes
        let unseen = Set(testLabels).subtracting(trainLabels)
        if !unseen.isEmpty {
            note(
                "eval: note: test labels \(unseen.sorted().prefix(10).map(String.init).joined(separator: ", ")) "
                    + "never occur in train")
        }
    }
}

/// `top-1: X` / `top-5: Y`, or with --json the whole report as one JSON object.
func printResult(json: Bool, _ report: EvaluationReport) {
    if json {
        print(report.json())
    } else {
        print(String(format: "top-1: %.2f", report.top1))
        print(String(format: "top-5: %.2f", report.top5))
    }
}

struct EvalKNNCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "knn",
        abstract: "Weighted kNN (InstDisc / MoCo demo) on L2-normalised features: top-1 / top-5 percent.")

    @OptionGroup var source: EvalSourceOptions
    @Option(help: "Neighbours that vote.") var k = 200
    @Option(help: "Temperature: a neighbour's vote is exp(similarity / t).") var t: Float = 0.1

    func validate() throws {
        if k < 1 { throw ValidationError("--k must be >= 1, got \(k)") }
        if !(t > 0 && t.isFinite) { throw ValidationError("--t must be a positive number, got \(t)") }
    }

    func run() throws {
        let t0 = Date()
        let f = try source.load()
        let t1 = Date()
        let r = try knnClassify(
            trainFeatures: f.train, trainLabels: f.trainLabels, testFeatures: f.test, testLabels: f.testLabels,
            dim: f.dim, classes: f.classes, k: k, t: t)
        let t2 = Date()
        note(
            String(
                format: "eval knn: %d train, %d test, dim %d, %d classes, k %d, t %g; features %.1f s, kNN %.2f s",
                f.trainLabels.count, f.testLabels.count, f.dim, f.classes, min(k, f.trainLabels.count), Double(t),
                t1.timeIntervalSince(t0), t2.timeIntervalSince(t1)))
        var report = EvaluationReport(
            method: "knn", top1: r.top1, top5: r.top5, train: f.trainLabels.count,
            test: f.testLabels.count, dim: f.dim, classes: f.classes,
            seconds: t2.timeIntervalSince(t0))
        report.k = min(k, f.trainLabels.count); report.t = EvaluationReport.decimal(t)
        printResult(json: source.json, report)
    }
}

struct EvalLinearCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "linear",
        abstract: "Linear probe: softmax regression on frozen, standardised features: top-1 / top-5 percent.",
        discussion: """
            The weight decay is chosen among --weight-decays on a held-out 10% of train, then the probe is \
            retrained on all of train and scored on test. SGD with momentum 0.9 and a cosine learning rate; \
            deterministic for a --seed.
            """)

    @OptionGroup var source: EvalSourceOptions
    @Option(help: "Training epochs over the (cached) features.") var epochs = 30
    @Option(help: "Comma-separated weight decays to choose from.") var weightDecays = "0,1e-4,1e-3,1e-2"
    @Option(help: "Rows per SGD step.") var probeBatch = 256
    @Option(
        help: """
            Peak learning rate (default: 20 / the largest eigenvalue of the standardised features' second \
            moment, at most 1).
            """) var lr: Float?
    @Flag(
        help: """
            The paper's linear evaluation: every epoch new random views of the train images (random resized \
            crop, scale 0.08-1, and flip, at --resize px); test images resized to 256/224 of that and \
            centre-cropped. Weight decay: the first of --weight-decays. Costs a pass over the train images \
            per epoch.
            """)
    var augment = false

    func parsedDecays() throws -> [Float] {
        let v = weightDecays.split(separator: ",").map { Float($0.trimmingCharacters(in: .whitespaces)) }
        guard !v.isEmpty, v.allSatisfy({ $0 != nil && $0! >= 0 && $0!.isFinite }) else {
            throw ValidationError("--weight-decays expects comma-separated numbers >= 0, got '\(weightDecays)'")
        }
        return v.map { $0! }
    }

    func validate() throws {
        if epochs < 1 || epochs > 10000 { throw ValidationError("--epochs must be between 1 and 10000, got \(epochs)") }
        if probeBatch < 1 || probeBatch > 65536 {
            throw ValidationError("--probe-batch must be between 1 and 65536, got \(probeBatch)")
        }
        if let lr, !(lr > 0 && lr.isFinite) { throw ValidationError("--lr must be a positive number, got \(lr)") }
        _ = try parsedDecays()
        if augment {
            guard source.checkpoint != nil || source.randomInit else {
                throw ValidationError(
                    "--augment needs an encoder (--checkpoint or --random-init): it extracts new views every epoch")
            }
            guard source.prep.resize != nil else {
                throw ValidationError("--augment needs --resize N, the side of the views")
            }
            if source.cache != nil {
                throw ValidationError("--cache does not apply to --augment (every epoch's views are new)")
            }
        }
    }

    var probeConfig: LinearProbeConfig {
        get throws {
            var config = LinearProbeConfig()
            config.epochs = epochs
            config.weightDecays = try parsedDecays()
            config.batch = probeBatch
            config.learningRate = lr
            return config
        }
    }

    func run() throws {
        if augment { return try runAugmented() }
        let t0 = Date()
        let f = try source.load()
        let t1 = Date()
        let config = try probeConfig
        let r = try linearProbe(
            trainFeatures: f.train, trainLabels: f.trainLabels, testFeatures: f.test, testLabels: f.testLabels,
            dim: f.dim, classes: f.classes, seed: source.seed, config: config
        ) { note("  " + $0) }
        let t2 = Date()
        note(
            String(
                format:
                    "eval linear: %d train, %d test, dim %d, %d classes, weight decay %g, lr %.3g, %d epochs, "
                    + "train loss %.4f; features %.1f s, probe %.1f s",
                f.trainLabels.count, f.testLabels.count, f.dim, f.classes, Double(r.weightDecay),
                Double(r.learningRate),
                r.epochs, Double(r.trainLoss), t1.timeIntervalSince(t0), t2.timeIntervalSince(t1)))
        printResult(
            json: source.json,
            EvaluationReport(
                method: "linear", probe: r, train: f.trainLabels.count,
                test: f.testLabels.count, dim: f.dim, classes: f.classes,
                seconds: t2.timeIntervalSince(t0)))
    }
}

extension EvalLinearCommand {
    /// `--augment`: the probe trained on new random views of the train images every epoch.
    func runAugmented() throws {
        let t0 = Date()
        source.threadOptions.apply()
        let side = source.prep.resize!
        // The train views are random crops down to 8% of the area: their JPEGs decode large enough for that.
        let src = try source.encoderSource(
            trainDecode: .views(
                FeatureAugmentation.linearEvaluation(
                    size: side, preprocess: try source.prep.preprocess(channels: 3))))
        var testPre = src.preprocess
        testPre.resize = Int((Double(side) * 256 / 224).rounded())
        testPre.centerCrop = side
        let config = try probeConfig
        let views = FeatureAugmentation.linearEvaluation(size: side, preprocess: src.preprocess)

        note(
            "eval linear --augment: \(src.encoder.config), "
                + "\(src.trainSet.count) train / \(src.testSet.count) test images, "
                + "\(config.epochs) epochs of new \(side) px views, \(Threads.count) thread(s)")
        let test = try source.extractWithProgress(src.encoder, src.testSet, testPre, label: "test (centre crop)")
        let labels = try DenseLabels(
            train: src.trainSet.labels!.map(Int64.init), test: src.testSet.labels!.map(Int64.init))
        let (trainLabels, testLabels, classes) = (labels.train, labels.test, labels.classes)
        let dim = src.encoder.config.featureDim
        let encoderName = source.checkpoint ?? "the --random-init encoder (seed \(source.seed))"
        try checkFinite(test, dim: dim, source: "the features of \(source.test!) from \(encoderName)")
        let r = try augmentedLinearProbe(
            epochFeatures: { e in
                try source.extractWithProgress(
                    src.encoder, src.trainSet, src.preprocess, label: "epoch \(e + 1)/\(config.epochs) views",
                    augmentation: FeatureAugmentation(config: views, seed: source.seed, pass: e))
            }, trainLabels: trainLabels, testFeatures: test, testLabels: testLabels, dim: dim, classes: classes,
            seed: source.seed, config: config)
        let dt = Date().timeIntervalSince(t0)
        note(
            String(
                format:
                    "eval linear --augment: %d train, %d test, dim %d, %d classes, weight decay %g, lr %.3g, "
                    + "%d epochs, train loss %.4f; %.1f s",
                trainLabels.count, testLabels.count, dim, classes, Double(r.weightDecay), Double(r.learningRate),
                r.epochs, Double(r.trainLoss), dt))
        printResult(
            json: source.json,
            EvaluationReport(
                method: "linear-augmented", probe: r, train: trainLabels.count,
                test: testLabels.count, dim: dim, classes: classes,
                seconds: dt))
    }
}
