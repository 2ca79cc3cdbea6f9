import XCTest
import Kernels
import Data
import TestSupport
import Contrastive
import Network

final class EvaluationTests: XCTestCase {
    /// `classes` Gaussian clusters in `dim` dimensions around random centres: rows x dim features and labels.
    func clusters(rows: Int, dim: Int, classes: Int, spread: Float, seed: UInt64, centres seedCentres: UInt64 = 99) -> (
        [Float], [Int32]
    ) {
        var c = SplitMix64(seed: seedCentres)
        let centres = (0..<(classes * dim)).map { _ in c.normal() }
        var rng = SplitMix64(seed: seed)
        var x = [Float](), y = [Int32]()
        for r in 0..<rows {
            let label = r % classes
            y.append(Int32(label))
            for j in 0..<dim { x.append(centres[label * dim + j] + spread * rng.normal()) }
        }
        return (x, y)
    }

    func testKNNSeparatedClustersIsPerfect() throws {
        let (xtr, ytr) = clusters(rows: 500, dim: 16, classes: 5, spread: 0.05, seed: 1)
        let (xte, yte) = clusters(rows: 300, dim: 16, classes: 5, spread: 0.05, seed: 2)
        let r = try knnClassify(
            trainFeatures: xtr, trainLabels: ytr, testFeatures: xte, testLabels: yte, dim: 16, classes: 5, k: 20)
        XCTAssertEqual(r.top1, 100)
        XCTAssertEqual(r.top5, 100)
        // More test rows than one similarity block, and k above N (clamped).
        let (big, ybig) = clusters(rows: 700, dim: 16, classes: 5, spread: 0.05, seed: 3)
        let r2 = try knnClassify(
            trainFeatures: xtr, trainLabels: ytr, testFeatures: big, testLabels: ybig, dim: 16, classes: 5, k: 1000)
        XCTAssertEqual(r2.top1, 100)
    }

    /// Hand-checked votes in 2-D. Test point (1, 0). Train (angle from the test point, label):
    /// class 0: two rows at 10 degrees (sim 0.985); class 1: three rows at 40 degrees (sim 0.766).
    /// k = 2: only the two class-0 rows vote -> class 0.
    /// k = 5, t = 1: class 0 gets 2 e^0.985 = 5.35, class 1 gets 3 e^0.766 = 6.45 -> class 1.
    /// k = 5, t = 0.1: class 0 gets 2 e^9.85 = 37,900, class 1 gets 3 e^7.66 = 6,370 -> class 0.
    func testKNNWeightedVoteDependsOnKAndT() throws {
        func unit(_ deg: Double) -> [Float] { [Float(cos(deg * .pi / 180)), Float(sin(deg * .pi / 180))] }
        let train = unit(10) + unit(-10) + unit(40) + unit(-40) + unit(40).map { $0 * 3 }  // scale is normalised away
        let labels: [Int32] = [0, 0, 1, 1, 1]
        let test = [Float(2), 0]
        func predicted(k: Int, t: Float) -> Int {
            let s = knnScores(
                trainFeatures: train, trainLabels: labels, testFeatures: test, dim: 2, classes: 2, k: k, t: t)
            return s[1] > s[0] ? 1 : 0
        }
        XCTAssertEqual(predicted(k: 2, t: 1), 0)
        XCTAssertEqual(predicted(k: 5, t: 1), 1)
        XCTAssertEqual(predicted(k: 5, t: 0.1), 0)
        let s = knnScores(trainFeatures: train, trainLabels: labels, testFeatures: test, dim: 2, classes: 2, k: 5, t: 1)
        // Scores are relative to the best neighbour (e^((sim - best) / t)): the ratio is the hand-computed one.
        let ratio = Double(s[1] / s[0]),
            expected = 3 * exp(cos(40 * Double.pi / 180)) / (2 * exp(cos(10 * Double.pi / 180)))
        XCTAssertEqual(ratio, expected, accuracy: 1e-4)
        let acc = try knnClassify(
            trainFeatures: train, trainLabels: labels, testFeatures: test, testLabels: [1], dim: 2, classes: 2, k: 5,
            t: 1)
        XCTAssertEqual(acc.top1, 100)
        XCTAssertEqual(acc.top5, 100)  // fewer than 5 classes: every label is in the top 5
    }

    func testKNNMatchesBruteForceReference() {
        let (xtr, ytr) = clusters(rows: 400, dim: 12, classes: 7, spread: 1.5, seed: 4)
        let (xte, _) = clusters(rows: 50, dim: 12, classes: 7, spread: 1.5, seed: 5)
        let k = 25, t: Float = 0.07
        let fast = knnScores(trainFeatures: xtr, trainLabels: ytr, testFeatures: xte, dim: 12, classes: 7, k: k, t: t)
        func normalized(_ v: ArraySlice<Float>) -> [Double] {
            let n = v.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            return v.map { Double($0) / n }
        }
        for r in 0..<50 {
            let q = normalized(xte[(r * 12)..<(r * 12 + 12)])
            let sims = (0..<400).map { i -> (Double, Int) in
                let p = normalized(xtr[(i * 12)..<(i * 12 + 12)])
                return (zip(q, p).reduce(0) { $0 + $1.0 * $1.1 }, i)
            }.sorted { $0.0 > $1.0 }
            var votes = [Double](repeating: 0, count: 7)
            for (s, i) in sims.prefix(k) { votes[Int(ytr[i])] += exp((s - sims[0].0) / Double(t)) }
            for c in 0..<7 { XCTAssertEqual(Double(fast[r * 7 + c]), votes[c], accuracy: 1e-3 * max(1, votes[c])) }
        }
    }

    func testTopAccuracyRanking() {
        // Row 0: label 2 is the best; row 1: label 0 is 6th of 6 -> only top-5 misses; ties rank the lower class first.
        let scores: [Float] = [
            0, 1, 5, 2, 3, 4,
            0, 1, 2, 3, 4, 5,
            1, 1, 0, 0, 0, 0
        ]
        let r = topAccuracy(scores: scores, labels: [2, 0, 1], classes: 6)
        XCTAssertEqual(r.top1, 100.0 / 3, accuracy: 1e-9)
        XCTAssertEqual(r.top5, 200.0 / 3, accuracy: 1e-9)
    }

    func testLinearProbeSeparableData() throws {
        // Linearly separable but not trivially: labels from a random linear map of the features.
        var rng = SplitMix64(seed: 7)
        let dim = 20, classes = 4
        let w = (0..<(classes * dim)).map { _ in rng.normal() }
        func data(_ n: Int) -> ([Float], [Int32]) {
            var x = [Float](), y = [Int32]()
            for _ in 0..<n {
                let row = (0..<dim).map { _ in rng.normal() * 3 + 1 }  // not standardised on purpose
                x += row
                var best = 0, bestV = -Float.infinity
                for c in 0..<classes {
                    var v: Float = 0
                    for j in 0..<dim { v += w[c * dim + j] * row[j] }
                    if v > bestV { bestV = v; best = c }
                }
                y.append(Int32(best))
            }
            return (x, y)
        }
        let (xtr, ytr) = data(2000), (xte, yte) = data(500)
        let r = try linearProbe(
            trainFeatures: xtr, trainLabels: ytr, testFeatures: xte, testLabels: yte, dim: dim, classes: classes,
            seed: 1)
        XCTAssertGreaterThan(r.top1, 95)
        XCTAssertEqual(r.validationTop1.count, 4)
        XCTAssertTrue(LinearProbeConfig().weightDecays.contains(r.weightDecay))
        XCTAssertEqual(r.epochs, 30)
    }

    func testLinearProbeOnNoiseIsNearChance() throws {
        var rng = SplitMix64(seed: 8)
        let dim = 32, classes = 10
        let xtr = (0..<(3000 * dim)).map { _ in rng.normal() },
            ytr = (0..<3000).map { _ in Int32(rng.int(below: classes)) }
        let xte = (0..<(2000 * dim)).map { _ in rng.normal() },
            yte = (0..<2000).map { _ in Int32(rng.int(below: classes)) }
        let r = try linearProbe(
            trainFeatures: xtr, trainLabels: ytr, testFeatures: xte, testLabels: yte, dim: dim, classes: classes,
            seed: 1)
        // Chance is 10% (top-5: 50%); 2000 test rows give a standard error of ~0.7 points.
        XCTAssertEqual(r.top1, 10, accuracy: 3)
        XCTAssertEqual(r.top5, 50, accuracy: 5)
        let k = try knnClassify(
            trainFeatures: xtr, trainLabels: ytr, testFeatures: xte, testLabels: yte, dim: dim, classes: classes)
        XCTAssertEqual(k.top1, 10, accuracy: 3)
    }

    func testLinearProbeIsDeterministic() throws {
        let (xtr, ytr) = clusters(rows: 600, dim: 10, classes: 3, spread: 2, seed: 9)
        let (xte, yte) = clusters(rows: 200, dim: 10, classes: 3, spread: 2, seed: 10)
        var config = LinearProbeConfig()
        config.epochs = 5
        let a = try linearProbe(
            trainFeatures: xtr, trainLabels: ytr, testFeatures: xte, testLabels: yte, dim: 10, classes: 3, seed: 3,
            config: config)
        let b = try linearProbe(
            trainFeatures: xtr, trainLabels: ytr, testFeatures: xte, testLabels: yte, dim: 10, classes: 3, seed: 3,
            config: config)
        XCTAssertEqual(a.top1, b.top1)
        XCTAssertEqual(a.top5, b.top5)
        XCTAssertEqual(a.trainLoss, b.trainLoss)
        XCTAssertEqual(a.validationTop1, b.validationTop1)
        XCTAssertEqual(a.learningRate, b.learningRate)
        // Whatever the thread count.
        let saved = Threads.count
        Threads.count = 1
        let c = try linearProbe(
            trainFeatures: xtr, trainLabels: ytr, testFeatures: xte, testLabels: yte, dim: 10, classes: 3, seed: 3,
            config: config)
        Threads.count = saved
        XCTAssertEqual(a.trainLoss, c.trainLoss)
        XCTAssertEqual(a.top1, c.top1)
        // A single weight decay: no hold-out.
        config.weightDecays = [1e-3]
        let d = try linearProbe(
            trainFeatures: xtr, trainLabels: ytr, testFeatures: xte, testLabels: yte, dim: 10, classes: 3, seed: 3,
            config: config)
        XCTAssertEqual(d.weightDecay, 1e-3)
        XCTAssertTrue(d.validationTop1.isEmpty)
    }

    func testRawPixelFeatures() throws {
        let ds = ImageDataset.synthetic(count: 5, width: 6, height: 4, channels: 3, seed: 1)
        let pre = Preprocess(resize: nil, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25])
        let f = try rawPixelFeatures(dataset: ds, preprocess: pre)
        XCTAssertEqual(f.count, 5 * 4 * 6 * 3)
        let img = try ds.image(at: 3)
        for i in 0..<(4 * 6 * 3) { XCTAssertEqual(f[3 * 72 + i], (img.pixels[i] - 0.5) / 0.25, accuracy: 1e-6) }
        let resized = try rawPixelFeatures(
            dataset: ds, preprocess: Preprocess(resize: 8, mean: [0, 0, 0], std: [1, 1, 1]))
        XCTAssertEqual(resized.count, 5 * 8 * 8 * 3)
    }
}

extension EvaluationTests {
    /// The augmented probe asks for one set of features per epoch, in order, and learns through the
    /// per-epoch noise; with the same features every epoch and one weight decay it is the plain probe.
    func testAugmentedProbeUsesEveryEpochsFeatures() throws {
        let (xtr, ytr) = clusters(rows: 600, dim: 10, classes: 3, spread: 2, seed: 11)
        let (xte, yte) = clusters(rows: 200, dim: 10, classes: 3, spread: 2, seed: 12)
        var config = LinearProbeConfig()
        config.epochs = 6; config.weightDecays = [1e-4]
        var asked = [Int]()
        var rng = SplitMix64(seed: 5)
        let r = try augmentedLinearProbe(
            epochFeatures: { e in
                asked.append(e)
                return xtr.map { $0 + rng.normal() * 0.3 }
            }, trainLabels: ytr, testFeatures: xte, testLabels: yte, dim: 10, classes: 3, seed: 2, config: config)
        XCTAssertEqual(asked, Array(0..<6))
        XCTAssertEqual(r.weightDecay, 1e-4)
        let plain = try linearProbe(
            trainFeatures: xtr, trainLabels: ytr, testFeatures: xte, testLabels: yte, dim: 10,
            classes: 3, seed: 2, config: config)
        XCTAssertGreaterThan(plain.top1, 75)  // overlapping clusters: chance is 33%
        XCTAssertEqual(r.top1, plain.top1, accuracy: 3)
        let same = try augmentedLinearProbe(
            epochFeatures: { _ in xtr }, trainLabels: ytr, testFeatures: xte, testLabels: yte,
            dim: 10, classes: 3, seed: 2, config: config)
        XCTAssertEqual(same.top1, plain.top1)
        XCTAssertEqual(same.trainLoss, plain.trainLoss)
    }

    /// Augmented feature passes: deterministic for a (seed, pass), different across passes, and the
    /// centre crop keeps the middle of the image.
    func testAugmentedFeaturePassesAndCentreCrop() throws {
        let ds = ImageDataset.synthetic(count: 6, width: 28, height: 28, channels: 1, seed: 3)
        let e = Encoder(config: ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 1, width: 0.125))
        e.initialize(seed: 1)
        let pre = Preprocess.defaults(channels: 1, resize: 32)
        let cfg = FeatureAugmentation.linearEvaluation(size: 32, preprocess: pre)
        XCTAssertEqual(cfg.cropScale, 0.08...1)
        func pass(_ p: Int) throws -> [Float] {
            try extractFeatures(
                encoder: e, dataset: ds, batch: 4, preprocess: pre,
                augmentation: FeatureAugmentation(config: cfg, seed: 9, pass: p))
        }
        XCTAssertEqual(try pass(0), try pass(0))
        XCTAssertNotEqual(try pass(0), try pass(1))
        let img = Image(width: 5, height: 4, channels: 1, pixels: (0..<20).map(Float.init))
        let c = img.centerCropped(side: 2)
        XCTAssertEqual(c.width, 2); XCTAssertEqual(c.height, 2)
        XCTAssertEqual(c.pixels, [6, 7, 11, 12])
        var crop = pre
        crop.resize = 37; crop.centerCrop = 32
        let f = try extractFeatures(encoder: e, dataset: ds, batch: 4, preprocess: crop)
        XCTAssertEqual(f.count, 6 * e.config.featureDim)
    }
}

/// Non-finite input, a diverged probe and sparse labels: errors or renumbering, never a fake score.
final class EvaluationSafetyTests: XCTestCase {
    func testNaNScoresAreNeverAHit() {
        let scores: [Float] = [
            .nan, .nan, .nan,
            1, .nan, 0,
            2, 1, 0
        ]
        let r = topAccuracy(scores: scores, labels: [0, 0, 0], classes: 3)
        // Row 0: its label scores NaN; row 1: another class scores NaN (ranked above); row 2: a hit.
        XCTAssertEqual(r.top1, 100.0 / 3, accuracy: 1e-9)
        XCTAssertEqual(r.top5, 200.0 / 3, accuracy: 1e-9)
    }

    func testNonFiniteFeaturesThrowNamingTheSplit() {
        let good: [Float] = [1, 0, 0, 1, 1, 0.1, 0.1, 1], labels: [Int32] = [0, 1, 0, 1]
        var bad = good
        bad[5] = .infinity
        XCTAssertThrowsError(
            try knnClassify(
                trainFeatures: good, trainLabels: labels, testFeatures: bad, testLabels: labels,
                dim: 2, classes: 2)
        ) { e in
            XCTAssertTrue("\(e)".contains("test features") && "\(e)".contains("row 2, column 1 is +infinity"), "\(e)")
        }
        let nan = [Float](repeating: .nan, count: 8)
        XCTAssertThrowsError(
            try linearProbe(
                trainFeatures: nan, trainLabels: labels, testFeatures: good, testLabels: labels,
                dim: 2, classes: 2)
        ) { e in
            XCTAssertTrue("\(e)".contains("train features") && "\(e)".contains("NaN"), "\(e)")
        }
        XCTAssertThrowsError(
            try augmentedLinearProbe(
                epochFeatures: { $0 == 1 ? nan : good }, trainLabels: labels,
                testFeatures: good, testLabels: labels, dim: 2, classes: 2)
        ) { e in
            XCTAssertTrue("\(e)".contains("epoch 2"), "\(e)")
        }
    }

    func testDivergedProbeThrows() throws {
        var rng = SplitMix64(seed: 3)
        let x = (0..<(200 * 4)).map { _ in rng.normal() }, y = (0..<200).map { Int32($0 % 3) }
        var config = LinearProbeConfig()
        config.epochs = 3; config.learningRate = 1e30
        XCTAssertThrowsError(
            try linearProbe(
                trainFeatures: x, trainLabels: y, testFeatures: x, testLabels: y, dim: 4,
                classes: 3, config: config)
        ) { e in
            XCTAssertTrue("\(e)".contains("diverged") && "\(e)".contains("--lr"), "\(e)")
        }
        config.learningRate = nil
        let r = try linearProbe(
            trainFeatures: x, trainLabels: y, testFeatures: x, testLabels: y, dim: 4, classes: 3, config: config)
        XCTAssertTrue(r.trainLoss.isFinite)
    }

    func testDenseLabelsRenumberInOrder() throws {
        let d = try DenseLabels(train: [200_000, 0, 100_000, 0], test: [100_000, 300_000])
        XCTAssertEqual(d.classes, 4)
        XCTAssertEqual(d.original, [0, 100_000, 200_000, 300_000])
        XCTAssertEqual(d.train, [2, 0, 1, 0])
        XCTAssertEqual(d.test, [1, 3])
        XCTAssertThrowsError(try DenseLabels(train: [0, -1], test: [0], trainSource: "a.labels.npy")) { e in
            XCTAssertTrue("\(e)".contains("a.labels.npy") && "\(e)".contains("-1"), "\(e)")
        }
    }
}

/// The feature cache's key changes with anything the features depend on, and only then.
final class FeatureCacheTests: XCTestCase {
    func testKeyFollowsWeightsFilesAndPreprocessing() throws {
        let dir = NSTemporaryDirectory() + "salient-cache-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func writeImages(seed: UInt8) throws {
            for i in 0..<3 {
                try writePNG(
                    path: dir + "/\(i).png", width: 4, height: 4, channels: 1,
                    pixels: (0..<16).map { UInt8(truncatingIfNeeded: $0 * 7 + i + Int(seed)) })
            }
        }
        try writeImages(seed: 0)
        let ds = try DatasetLoader.open(path: dir)
        let e = Encoder(
            config: ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 1, width: 0.0625), trainable: false)
        e.initialize(seed: 1)
        let pre = Preprocess.defaults(channels: 1, resize: 8)
        func key(_ d: ImageDataset = ds, _ p: Preprocess = pre) -> String {
            FeatureCache.key(encoderIdentity: "test", encoder: e, dataset: d, limit: nil, preprocess: p, split: "train")
        }
        let k0 = key()
        XCTAssertEqual(key(), k0)
        let cache = FeatureCache(folder: dir + "/cache")
        try cache.store([1, 2, 3, 4, 5, 6], labels: nil, dim: 2, for: k0)
        XCTAssertEqual(cache.features(for: k0, rows: 3, dim: 2), [1, 2, 3, 4, 5, 6])
        XCTAssertNil(cache.features(for: k0, rows: 2, dim: 3))
        // Other preprocessing, other weights, images rewritten in place: other keys, misses.
        var other = pre
        other.highPass = true
        XCTAssertNotEqual(key(ds, other), k0)
        let w = e.store.params[0]
        e.store.params[0] = w + 1
        XCTAssertNotEqual(key(), k0)
        e.store.params[0] = w
        XCTAssertEqual(key(), k0)
        try writeImages(seed: 1)
        XCTAssertNotEqual(key(try DatasetLoader.open(path: dir)), k0)
        XCTAssertNil(cache.features(for: key(try DatasetLoader.open(path: dir)), rows: 3, dim: 2))
    }

    func testFingerprintFollowsContentNotPlace() throws {
        let a = ImageDataset.synthetic(count: 20, width: 6, height: 6, channels: 1, seed: 1)
        let b = ImageDataset.synthetic(count: 20, width: 6, height: 6, channels: 1, seed: 1)
        let c = ImageDataset.synthetic(count: 20, width: 6, height: 6, channels: 1, seed: 2)
        XCTAssertEqual(try datasetFingerprint(a), try datasetFingerprint(b))
        XCTAssertNotEqual(try datasetFingerprint(a), try datasetFingerprint(c))
    }
}

final class EvaluationReportTests: XCTestCase {
    /// The --json line: snake-case keys in sorted order, Float settings in their shortest decimal form,
    /// absent fields left out, a non-finite loss as a string rather than invalid JSON.
    func testReportJSON() throws {
        let probe = LinearProbeResult(
            top1: 86.17, top5: 99.5, weightDecay: 5e-4, validationTop1: [85, 86.5],
            epochs: 30, learningRate: 0.1, trainLoss: .nan)
        let text = EvaluationReport(
            method: "linear", probe: probe, train: 60000, test: 10000, dim: 128,
            classes: 10, seconds: 12.5
        ).json()
        XCTAssertFalse(text.contains("\n"))
        XCTAssertTrue(text.contains("\"weight_decay\":0.0005"), text)
        XCTAssertTrue(text.contains("\"train_loss\":\"nan\""), text)
        XCTAssertFalse(text.contains("\"k\""), text)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        XCTAssertEqual(obj["top1"] as? Double, 86.17)
        XCTAssertEqual(obj["validation_top1"] as? [Double], [85, 86.5])
        XCTAssertEqual(obj["lr"] as? Double, 0.1)
        XCTAssertEqual(obj["method"] as? String, "linear")
        let keys = text.split(separator: ",").compactMap { $0.split(separator: "\"").dropFirst().first }
            .filter { obj[String($0)] != nil }
        XCTAssertEqual(keys.map(String.init), keys.map(String.init).sorted())

        var knn = EvaluationReport(
            method: "knn", top1: 80, top5: 99, train: 10, test: 5, dim: 4, classes: 2, seconds: 1)
        knn.k = 10; knn.t = EvaluationReport.decimal(0.1)
        let o2 = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(knn.json().utf8)) as? [String: Any])
        XCTAssertEqual(o2["t"] as? Double, 0.1); XCTAssertEqual(o2["k"] as? Int, 10)
        XCTAssertNil(o2["weight_decay"])
    }
}
