// Evaluating frozen features: weighted kNN and a linear probe, plus the raw-pixels baseline.
//
// Letters: N train rows, M test rows, D feature dimension, C classes. Features are row-major [rows][D].
//
// kNN follows the MoCo CIFAR demo / InstDisc (Wu et al. 2018): rows are L2-normalised, a test row's
// similarity to each train row is their dot product, its k most similar train rows vote for their label
// with weight exp(sim / t), and classes are ranked by the summed votes. Top-1 / top-5: the true label
// is first / among the first five of that ranking.
//
// The linear probe is multinomial logistic regression on features standardised with the train mean and
// std, trained by mini-batch SGD with momentum and a cosine learning rate over the cached features. Its
// only setting, the weight decay, is chosen on a held-out 10% of train; the probe is then retrained on
// all of train with it and scored on test.
//
// Every entry point checks that its features are finite and that the probe did not diverge, and throws
// an EvaluationError otherwise: a NaN compares false with everything, so a ranking of NaN scores would
// otherwise count every row as a hit.
import Foundation
import Kernels
import Network
import Data

/// Features that are not finite, a probe that diverged, or labels that cannot be classes.
public struct EvaluationError: Error, CustomStringConvertible, LocalizedError {
    public var description: String
    public init(_ d: String) { description = d }
    public var errorDescription: String? { description }
}

/// Throws naming `source` and the first NaN or infinite value of `x` (rows of `dim` values).
public func checkFinite(_ x: [Float], dim: Int, source: String) throws {
    guard let i = x.firstIndex(where: { !$0.isFinite }) else { return }
    let bad = x.count - x.filter(\.isFinite).count
    throw EvaluationError(
        "\(source): not finite: row \(i / max(dim, 1)), column \(i % max(dim, 1)) is \(describeNonFinite(x[i]))"
            + (bad > 1 ? " (\(bad) values of \(x.count) are NaN or infinite)" : "")
            + "; features must be finite numbers")
}

// MARK: - Labels

/// Labels renumbered 0..<classes in the order of their values: sparse labels (0, 100000, ...) would
/// otherwise size every per-class buffer by the largest.
public struct DenseLabels: Sendable {
    public var train: [Int32], test: [Int32]
    /// The original label of each class.
    public var original: [Int64]
    public var classes: Int { original.count }

    /// Throws for a negative label (naming `trainSource` / `testSource`).
    public init(train: [Int64], test: [Int64], trainSource: String = "train labels", testSource: String = "test labels")
        throws
    {
        for (labels, source) in [(train, trainSource), (test, testSource)] {
            if let bad = labels.first(where: { $0 < 0 }) {
                throw EvaluationError("\(source): label \(bad) is negative; labels must be >= 0")
            }
        }
        original = Array(Set(train).union(test)).sorted()
        let index = Dictionary(uniqueKeysWithValues: original.enumerated().map { ($1, Int32($0)) })
        self.train = train.map { index[$0]! }
        self.test = test.map { index[$0]! }
    }
}

// MARK: - Ranking

/// Top-1 and top-5 accuracy (percent) of `scores` [M][C] against `labels`; ties rank the lower class first.
/// With fewer than 5 classes, top-5 counts the label among all C. A NaN score ranks above every
/// number, so a NaN row is never a hit.
public func topAccuracy(scores: UnsafePointer<Float>, labels: [Int32], classes: Int) -> (top1: Double, top5: Double) {
    let m = labels.count
    if m == 0 { return (0, 0) }
    var hit1 = 0, hit5 = 0
    for r in 0..<m {
        let row = scores + r * classes
        let label = Int(labels[r])
        let s = row[label]
        // Rank of the true label: classes scoring higher, or equal with a lower index.
        var rank = s.isNaN ? classes : 0
        for c in 0..<classes where c != label && (row[c].isNaN || row[c] > s || (row[c] == s && c < label)) {
            rank += 1
        }
        if rank == 0 { hit1 += 1 }
        if rank < 5 { hit5 += 1 }
    }
    return (100 * Double(hit1) / Double(m), 100 * Double(hit5) / Double(m))
}

// MARK: - kNN

/// Test rows per similarity block: 256 x N floats of scratch at a time.
let knnBlockRows = 256

/// Weighted kNN class scores [M][C] (the summed exp(sim / t) votes of each test row's k nearest train rows).
/// Rows need not be normalised: this normalises copies. k is clamped to N.
public func knnScores(
    trainFeatures: [Float], trainLabels: [Int32], testFeatures: [Float], dim: Int, classes: Int,
    k: Int = 200, t: Float = 0.1
) -> [Float] {
    let n = trainLabels.count, m = testFeatures.count / max(dim, 1)
    precondition(dim > 0 && classes > 0 && k > 0 && t > 0, "knn: dim, classes, k and t must be positive")
    precondition(
        trainFeatures.count == n * dim && testFeatures.count == m * dim, "knn: feature counts do not match dim")
    precondition(
        trainLabels.allSatisfy { $0 >= 0 && Int($0) < classes }, "knn: train label out of range 0..<\(classes)")
    var scores = [Float](repeating: 0, count: m * classes)
    if n == 0 || m == 0 { return scores }
    let kk = min(k, n)
    var train = trainFeatures, test = testFeatures
    var norms = [Float](repeating: 0, count: max(n, m))
    train.withUnsafeMutableBufferPointer { p in
        l2NormalizeForward(rows: n, dim: dim, input: p.baseAddress!, output: p.baseAddress!, norms: &norms)
    }
    test.withUnsafeMutableBufferPointer { p in
        l2NormalizeForward(rows: m, dim: dim, input: p.baseAddress!, output: p.baseAddress!, norms: &norms)
    }
    let block = min(knnBlockRows, m)
    let sim = UnsafeMutablePointer<Float>.allocate(capacity: block * n)
    defer { sim.deallocate() }
    let invT = 1 / Double(t)
    train.withUnsafeBufferPointer { tr in
        test.withUnsafeBufferPointer { te in
            trainLabels.withUnsafeBufferPointer { lab in
                scores.withUnsafeMutableBufferPointer { sc in
                    let scores = sc.baseAddress!, labels = lab.baseAddress!
                    var r0 = 0
                    while r0 < m {
                        let rows = min(block, m - r0)
                        linearForward(
                            LinearShape(batch: rows, inFeatures: dim, outFeatures: n),
                            input: te.baseAddress! + r0 * dim, weight: tr.baseAddress!, bias: nil, output: sim)
                        parallelFor(rows) { lo, hi, _ in
                            // Per-thread heaps of the k best (similarity, train index) so far.
                            var hs = [Float](repeating: 0, count: kk), hix = [Int32](repeating: 0, count: kk)
                            var votes = [Double](repeating: 0, count: classes)
                            for r in lo..<hi {
                                knnSelect(sim + r * n, n: n, k: kk, sims: &hs, indices: &hix)
                                // Weights relative to the best neighbour: same ranking, no overflow for small t.
                                var best = -Float.infinity
                                for j in 0..<kk { best = max(best, hs[j]) }
                                for c in 0..<classes { votes[c] = 0 }
                                for j in 0..<kk {
                                    votes[Int(labels[Int(hix[j])])] += exp(Double(hs[j] - best) * invT)
                                }
                                let out = scores + (r0 + r) * classes
                                for c in 0..<classes { out[c] = Float(votes[c]) }
                            }
                        }
                        r0 += rows
                    }
                }
            }
        }
    }
    return scores
}

/// The k largest of s[0..<n] (k <= n) into sims/indices (unordered), via a min-heap of size k: each
/// value is compared with the heap's smallest and most are rejected there. Among equal values the
/// earlier index is kept, so the choice does not depend on threads.
@inline(__always)
func knnSelect(_ s: UnsafePointer<Float>, n: Int, k: Int, sims: inout [Float], indices: inout [Int32]) {
    sims.withUnsafeMutableBufferPointer { hv in
        indices.withUnsafeMutableBufferPointer { hix in
            let v = hv.baseAddress!, ix = hix.baseAddress!
            // Heap order: smaller value first; among equal values the later index first (it goes first).
            @inline(__always) func less(_ a: Int, _ b: Int) -> Bool {
                v[a] < v[b] || (v[a] == v[b] && ix[a] > ix[b])
            }
            @inline(__always) func siftDown(_ start: Int) {
                var i = start
                while true {
                    let l = 2 * i + 1, r = l + 1
                    var m = i
                    if l < k && less(l, m) { m = l }
                    if r < k && less(r, m) { m = r }
                    if m == i { return }
                    v.swapAt(i, m); ix.swapAt(i, m)
                    i = m
                }
            }
            for j in 0..<k { v[j] = s[j]; ix[j] = Int32(j) }
            var i = k / 2 - 1
            while i >= 0 { siftDown(i); i -= 1 }
            for j in k..<n where s[j] > v[0] {
                v[0] = s[j]; ix[0] = Int32(j)
                siftDown(0)
            }
        }
    }
}

extension UnsafeMutablePointer {
    @inline(__always) fileprivate func swapAt(_ a: Int, _ b: Int) {
        let t = self[a]; self[a] = self[b]; self[b] = t
    }
}

/// Weighted kNN accuracy (percent): InstDisc / MoCo-demo voting over the k nearest train rows by cosine
/// similarity, weights exp(sim / t). Test labels must lie in 0..<classes. Throws for non-finite features.
public func knnClassify(
    trainFeatures: [Float], trainLabels: [Int32], testFeatures: [Float], testLabels: [Int32],
    dim: Int, classes: Int, k: Int = 200, t: Float = 0.1
) throws -> (top1: Double, top5: Double) {
    precondition(testLabels.count * dim == testFeatures.count, "knn: test labels do not match test rows")
    precondition(testLabels.allSatisfy { $0 >= 0 && Int($0) < classes }, "knn: test label out of range 0..<\(classes)")
    try checkFinite(trainFeatures, dim: dim, source: "train features")
    try checkFinite(testFeatures, dim: dim, source: "test features")
    let scores = knnScores(
        trainFeatures: trainFeatures, trainLabels: trainLabels, testFeatures: testFeatures,
        dim: dim, classes: classes, k: k, t: t)
    return scores.withUnsafeBufferPointer { topAccuracy(scores: $0.baseAddress!, labels: testLabels, classes: classes) }
}

// MARK: - Linear probe

/// Settings of `linearProbe`; the defaults suit 10-1000 classes and 10^3-10^6 rows.
public struct LinearProbeConfig: Sendable, Equatable {
    /// Weight decays tried on the held-out part of train (the first best one wins).
    public var weightDecays: [Float] = [0, 1e-4, 1e-3, 1e-2]
    /// Fraction of train held out to choose the weight decay (0: no choice, the first value is used).
    public var validationFraction: Double = 0.1
    public var epochs: Int = 30
    public var batch: Int = 256
    public var momentum: Float = 0.9
    /// Peak learning rate; nil: 20 / (largest eigenvalue of the standardised features' second moment), at
    /// most 1. The eigenvalue grows with how correlated the features are (from 1 for independent ones to D
    /// for identical ones). Worst-case stability would ask for ~4 / it, but softmax saturation makes larger
    /// steps safe, and at 1 / it the probe underfits in 30 epochs (Fashion-MNIST, 5000 rows, random-init
    /// ResNet-18/4 features: 75.5 vs 78.0 top-1); test top-1 stayed within 1 point for 0.03 <= lr <= 1 on
    /// those features and on raw pixels.
    public var learningRate: Float? = nil
    public init() {}
}

public struct LinearProbeResult: Sendable {
    /// Test accuracy, percent.
    public var top1: Double, top5: Double
    /// The chosen weight decay and the validation top-1 of every candidate (in config order).
    public var weightDecay: Float
    public var validationTop1: [Double]
    public var epochs: Int
    public var learningRate: Float
    /// Mean training loss of the last epoch of the final fit.
    public var trainLoss: Float

    public init(
        top1: Double, top5: Double, weightDecay: Float, validationTop1: [Double], epochs: Int,
        learningRate: Float, trainLoss: Float
    ) {
        self.top1 = top1; self.top5 = top5; self.weightDecay = weightDecay; self.validationTop1 = validationTop1
        self.epochs = epochs; self.learningRate = learningRate; self.trainLoss = trainLoss
    }
}

/// Multinomial logistic regression on frozen features: standardise with train statistics, choose the weight
/// decay on a held-out part of train, retrain on all of train, score on test. Deterministic for a seed.
/// Throws for non-finite features and for a fit whose loss or weights stop being finite.
public func linearProbe(
    trainFeatures: [Float], trainLabels: [Int32], testFeatures: [Float], testLabels: [Int32],
    dim: Int, classes: Int, seed: UInt64 = 0, config: LinearProbeConfig = .init(),
    progress: ((String) -> Void)? = nil
) throws -> LinearProbeResult {
    let n = trainLabels.count, m = testLabels.count
    precondition(dim > 0 && classes > 0 && n > 0, "linear probe: needs train rows, dim and classes")
    precondition(
        trainFeatures.count == n * dim && testFeatures.count == m * dim, "linear probe: feature counts do not match dim"
    )
    precondition(
        trainLabels.allSatisfy { $0 >= 0 && Int($0) < classes }
            && testLabels.allSatisfy { $0 >= 0 && Int($0) < classes },
        "linear probe: label out of range 0..<\(classes)")
    precondition(!config.weightDecays.isEmpty && config.epochs > 0 && config.batch > 0, "linear probe: bad config")
    try checkFinite(trainFeatures, dim: dim, source: "train features")
    try checkFinite(testFeatures, dim: dim, source: "test features")

    let standardizer = FeatureStandardizer(trainFeatures, rows: n, dim: dim)
    let xs = standardizer.apply(trainFeatures), xt = standardizer.apply(testFeatures)
    let lr = config.learningRate ?? min(1, 20 / largestEigenvalue(xs, rows: n, dim: dim, seed: seed))

    // Choose the weight decay on a held-out part of train.
    var order = Array(0..<n)
    var rng = SplitMix64(seed: SplitMix64.derive(seed, RandomStream.probeSplit.rawValue))
    for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, rng.int(below: i + 1)) }
    let held = config.weightDecays.count > 1 ? Int((Double(n) * config.validationFraction).rounded()) : 0
    var chosen = config.weightDecays[0]
    var validation = [Double]()
    if held > 0 && held < n {
        let valIdx = Array(order[0..<held]).sorted(), fitIdx = Array(order[held...]).sorted()
        let xv = gatherRows(xs, valIdx, dim), yv = valIdx.map { trainLabels[$0] }
        let xf = gatherRows(xs, fitIdx, dim), yf = fitIdx.map { trainLabels[$0] }
        var best = -1.0
        for wd in config.weightDecays {
            let model = try trainSoftmaxRegression(
                x: xf, y: yf, dim: dim, classes: classes, weightDecay: wd, lr: lr,
                config: config, seed: seed)
            let acc = model.accuracy(xv, yv).top1
            validation.append(acc)
            progress?(String(format: "weight decay %g: validation top-1 %.2f", Double(wd), acc))
            if acc > best { best = acc; chosen = wd }
        }
    }
    let model = try trainSoftmaxRegression(
        x: xs, y: trainLabels, dim: dim, classes: classes, weightDecay: chosen, lr: lr,
        config: config, seed: seed)
    let acc = model.accuracy(xt, testLabels)
    return LinearProbeResult(
        top1: acc.top1, top5: acc.top5, weightDecay: chosen, validationTop1: validation,
        epochs: config.epochs, learningRate: lr, trainLoss: model.lastLoss)
}

/// Per-feature standardisation with the mean and std of a set of rows (Double sums).
struct FeatureStandardizer {
    var shift: [Float], scale: [Float]
    let dim: Int

    init(_ x: [Float], rows n: Int, dim: Int) {
        self.dim = dim
        var mean = [Double](repeating: 0, count: dim), sq = [Double](repeating: 0, count: dim)
        for r in 0..<n {
            for j in 0..<dim { let v = Double(x[r * dim + j]); mean[j] += v; sq[j] += v * v }
        }
        shift = [Float](repeating: 0, count: dim); scale = [Float](repeating: 1, count: dim)
        for j in 0..<dim {
            let mu = mean[j] / Double(n), varj = max(0, sq[j] / Double(n) - mu * mu)
            shift[j] = Float(mu)
            scale[j] = varj > 1e-12 ? Float(1 / varj.squareRoot()) : 1
        }
    }

    func apply(_ x: [Float]) -> [Float] {
        var y = x
        let rows = x.count / dim, dim = self.dim, shift = self.shift, scale = self.scale
        y.withUnsafeMutableBufferPointer { p in
            let base = p.baseAddress!
            parallelFor(rows) { lo, hi, _ in
                for r in lo..<hi { for j in 0..<dim { base[r * dim + j] = (base[r * dim + j] - shift[j]) * scale[j] } }
            }
        }
        return y
    }
}

func gatherRows(_ x: [Float], _ idx: [Int], _ dim: Int) -> [Float] {
    var out = [Float](repeating: 0, count: idx.count * dim)
    x.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            for (i, r) in idx.enumerated() {
                (dst.baseAddress! + i * dim).update(from: src.baseAddress! + r * dim, count: dim)
            }
        }
    }
    return out
}

/// Largest eigenvalue of (1/N) [x 1]^T [x 1] (the bias column included) by power iteration over at most
/// 16384 rows: it bounds the curvature of the logistic loss (times 1/2), so it sets the step size.
func largestEigenvalue(_ x: [Float], rows: Int, dim: Int, seed: UInt64, iterations: Int = 15) -> Float {
    let n = min(rows, 16384), d1 = dim + 1
    var rng = SplitMix64(seed: SplitMix64.derive(seed, RandomStream.probeEigenvector.rawValue))
    var v = (0..<d1).map { _ in rng.uniform(-1, 1) }
    var xv = [Float](repeating: 0, count: n), acc = [Float](repeating: 0, count: d1)
    var lambda: Float = 1
    let sh = LinearShape(batch: n, inFeatures: dim, outFeatures: 1)
    for _ in 0..<iterations {
        let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        if !(norm > 0) { break }
        for j in 0..<d1 { v[j] /= norm }
        // xv = [x 1] v, then acc = [x 1]^T xv: the forward and weight gradient of a one-output linear layer.
        v.withUnsafeBufferPointer { vp in
            linearForward(sh, input: x, weight: vp.baseAddress!, bias: vp.baseAddress! + dim, output: &xv)
        }
        acc.withUnsafeMutableBufferPointer { ap in
            linearBackward(
                sh, input: x, weight: v, gradOutput: xv, gradInput: nil, gradWeight: ap.baseAddress!,
                gradBias: ap.baseAddress! + dim, accumulate: false)
        }
        var dot: Float = 0
        for j in 0..<d1 { acc[j] /= Float(n); dot += acc[j] * v[j] }
        lambda = dot
        v = acc
    }
    return max(lambda, 1e-6)
}

/// A trained softmax regression: W [C][D] and b [C].
struct SoftmaxModel {
    var weight: [Float], bias: [Float]
    let dim: Int, classes: Int
    var lastLoss: Float = 0

    func logits(_ x: [Float]) -> [Float] {
        let rows = x.count / dim
        var out = [Float](repeating: 0, count: rows * classes)
        linearForward(
            LinearShape(batch: rows, inFeatures: dim, outFeatures: classes), input: x, weight: weight, bias: bias,
            output: &out)
        return out
    }

    func accuracy(_ x: [Float], _ y: [Int32]) -> (top1: Double, top5: Double) {
        let l = logits(x)
        return l.withUnsafeBufferPointer { topAccuracy(scores: $0.baseAddress!, labels: y, classes: classes) }
    }
}

/// Mini-batch SGD (momentum, cosine learning rate from `lr` to 0) on mean cross-entropy + wd/2 |W|^2
/// (no decay on the bias), from zero weights; the epoch order comes from the seed. Throws when an
/// epoch's loss or the weights stop being finite (the learning rate is too high for the features).
func trainSoftmaxRegression(
    x: [Float], y: [Int32], dim: Int, classes: Int, weightDecay: Float, lr: Float,
    config: LinearProbeConfig, seed: UInt64
) throws -> SoftmaxModel {
    try trainSoftmaxRegression(
        epochFeatures: { _ in x }, y: y, dim: dim, classes: classes, weightDecay: weightDecay,
        lr: lr, config: config, seed: seed)
}

/// As above, with the rows of each epoch from `epochFeatures(epoch)` (N x dim, same row order as `y`):
/// new random views of the same images every epoch for the augmented probe.
func trainSoftmaxRegression(
    epochFeatures: (Int) throws -> [Float], y: [Int32], dim: Int, classes: Int,
    weightDecay: Float, lr: Float, config: LinearProbeConfig, seed: UInt64
) throws
    -> SoftmaxModel
{
    let n = y.count, wCount = classes * dim
    let batch = min(config.batch, n)
    let stepsPerEpoch = (n + batch - 1) / batch, total = stepsPerEpoch * config.epochs
    // One parameter block [W | b], gradients and momentum in blocks of the same length.
    var params = [Float](repeating: 0, count: wCount + classes)
    var grads = params, momentum = params
    var xb = [Float](repeating: 0, count: batch * dim), yb = [Int32](repeating: 0, count: batch)
    var probs = [Float](repeating: 0, count: batch * classes)
    var order = Array(0..<n)
    var lastLoss = 0.0
    var step = 0
    for epoch in 0..<config.epochs {
        let x = try epochFeatures(epoch)
        precondition(x.count == n * dim, "linear probe: an epoch's features do not match the labels")
        var rng = SplitMix64(seed: SplitMix64.derive(seed, UInt64(epoch), RandomStream.probeEpochOrder.rawValue))
        for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, rng.int(below: i + 1)) }
        var epochLoss = 0.0
        x.withUnsafeBufferPointer { xp in
            params.withUnsafeMutableBufferPointer { pp in
                grads.withUnsafeMutableBufferPointer { gp in
                    momentum.withUnsafeMutableBufferPointer { mp in
                        xb.withUnsafeMutableBufferPointer { xbp in
                            probs.withUnsafeMutableBufferPointer { prp in
                                let P = pp.baseAddress!, G = gp.baseAddress!, M = mp.baseAddress!
                                let X = xp.baseAddress!, XB = xbp.baseAddress!, PR = prp.baseAddress!
                                var start = 0
                                while start < n {
                                    let rows = min(batch, n - start)
                                    for i in 0..<rows {
                                        (XB + i * dim).update(from: X + order[start + i] * dim, count: dim)
                                        yb[i] = y[order[start + i]]
                                    }
                                    let sh = LinearShape(batch: rows, inFeatures: dim, outFeatures: classes)
                                    linearForward(sh, input: XB, weight: P, bias: P + wCount, output: PR)
                                    let loss = yb.withUnsafeBufferPointer { lb in
                                        let l = softmaxCrossEntropyForward(
                                            rows: rows, classes: classes, logits: PR,
                                            labels: lb.baseAddress!, probs: PR)
                                        softmaxCrossEntropyBackward(
                                            rows: rows, classes: classes, probs: PR,
                                            labels: lb.baseAddress!, scale: 1 / Float(rows),
                                            gradLogits: PR)
                                        return l
                                    }
                                    epochLoss += Double(loss) * Double(rows)
                                    linearBackward(
                                        sh, input: XB, weight: P, gradOutput: PR, gradInput: nil,
                                        gradWeight: G, gradBias: G + wCount, accumulate: false)
                                    let rate = lr * Float(0.5 * (1 + cos(Double.pi * Double(step) / Double(total))))
                                    sgdStep(
                                        count: wCount, params: P, grads: G, momentumBuffer: M, lr: rate,
                                        momentum: config.momentum, weightDecay: weightDecay)
                                    sgdStep(
                                        count: classes, params: P + wCount, grads: G + wCount,
                                        momentumBuffer: M + wCount, lr: rate, momentum: config.momentum,
                                        weightDecay: 0)
                                    step += 1
                                    start += rows
                                }
                            }
                        }
                    }
                }
            }
        }
        lastLoss = epochLoss / Double(n)
        if !lastLoss.isFinite || !params.allSatisfy(\.isFinite) {
            throw EvaluationError(
                String(
                    format: "the linear probe diverged: train loss %@ in epoch %d of %d at learning rate %g "
                        + "(weight decay %g); give a lower --lr", "\(Float(lastLoss))", epoch + 1,
                    config.epochs, Double(lr), Double(weightDecay)))
        }
    }
    return SoftmaxModel(
        weight: Array(params[0..<wCount]), bias: Array(params[wCount...]), dim: dim, classes: classes,
        lastLoss: Float(lastLoss))
}

/// The paper's linear evaluation (MoCo's main_lincls, on frozen features): every epoch the probe sees
/// the features of new random views of the train images (`epochFeatures(epoch)`: random resized crop and
/// flip), the test images are resized and centre-cropped (`testFeatures`). Features are standardised with
/// the statistics of epoch 0's; the weight decay is `config.weightDecays[0]` (no held-out choice: each
/// candidate would cost a pass over the images per epoch); the learning rate as `linearProbe`'s. Throws as
/// `linearProbe` does, and for an epoch's features that are not finite.
public func augmentedLinearProbe(
    epochFeatures: (Int) throws -> [Float], trainLabels: [Int32], testFeatures: [Float],
    testLabels: [Int32], dim: Int, classes: Int, seed: UInt64 = 0,
    config: LinearProbeConfig = .init()
) throws -> LinearProbeResult {
    let n = trainLabels.count
    precondition(
        dim > 0 && classes > 0 && n > 0 && !config.weightDecays.isEmpty && config.epochs > 0,
        "linear probe: bad input")
    try checkFinite(testFeatures, dim: dim, source: "test features")
    func epoch(_ e: Int) throws -> [Float] {
        let x = try epochFeatures(e)
        try checkFinite(x, dim: dim, source: "train features of epoch \(e + 1)")
        return x
    }
    let first = try epoch(0)
    let s = FeatureStandardizer(first, rows: n, dim: dim)
    let x0 = s.apply(first)
    let lr = config.learningRate ?? min(1, 20 / largestEigenvalue(x0, rows: n, dim: dim, seed: seed))
    let model = try trainSoftmaxRegression(
        epochFeatures: { e in e == 0 ? x0 : s.apply(try epoch(e)) },
        y: trainLabels, dim: dim, classes: classes,
        weightDecay: config.weightDecays[0], lr: lr, config: config, seed: seed)
    let acc = model.accuracy(s.apply(testFeatures), testLabels)
    return LinearProbeResult(
        top1: acc.top1, top5: acc.top5, weightDecay: config.weightDecays[0], validationTop1: [],
        epochs: config.epochs, learningRate: lr, trainLoss: model.lastLoss)
}

// MARK: - Raw pixels

/// Every image of `dataset` preprocessed (resize, normalise) and flattened: N x (H * W * C), row-major,
/// C = the preprocess's channel count. The features of the raw-pixels baseline.
public func rawPixelFeatures(dataset: ImageDataset, preprocess: Preprocess) throws -> [Float] {
    let n = dataset.count
    guard n > 0 else { throw DataError(.emptyDataset, path: dataset.source, "no images") }
    let first = try dataset.image(at: 0)
    let h = preprocess.resize ?? first.height, w = preprocess.resize ?? first.width
    let c = preprocess.mean.count
    guard c == 1 || c == 3, preprocess.std.count == c else {
        throw DataError(
            .invalidArgument, path: dataset.source,
            "mean/std need 1 or 3 values, got \(preprocess.mean.count)/\(preprocess.std.count)")
    }
    let per = h * w * c
    var out = [Float](repeating: 0, count: n * per)
    var failure: Error? = nil
    let lock = NSLock()
    out.withUnsafeMutableBufferPointer { p in
        let base = p.baseAddress!
        parallelFor(n) { lo, hi, _ in
            for i in lo..<hi {
                do {
                    try preprocess.fill(dataset, index: i, channels: c, height: h, width: w, into: base + i * per)
                } catch { lock.lock(); if failure == nil { failure = error }; lock.unlock() }
            }
        }
    }
    if let failure { throw failure }
    return out
}

/// What `salient eval knn|linear --json` prints: one JSON object, keys in snake case and sorted, absent
/// fields left out.
public struct EvaluationReport: Encodable, Sendable {
    public var method: String
    public var top1: Double, top5: Double
    /// kNN: the neighbours that voted and the temperature.
    public var k: Int?, t: Double?
    /// Linear probes: the chosen weight decay, every candidate's validation top-1, the schedule and the
    /// final training loss.
    public var weightDecay: Double?, validationTop1: [Double]?, epochs: Int?, lr: Double?, trainLoss: Double?
    public var train: Int, test: Int, dim: Int, classes: Int
    public var seconds: Double

    public init(
        method: String, top1: Double, top5: Double, train: Int, test: Int, dim: Int, classes: Int,
        seconds: Double
    ) {
        self.method = method; self.top1 = top1; self.top5 = top5
        self.train = train; self.test = test; self.dim = dim; self.classes = classes; self.seconds = seconds
    }

    /// A linear probe's report; Float settings keep their shortest decimal form (5e-4 prints as 0.0005).
    public init(
        method: String, probe r: LinearProbeResult, train: Int, test: Int, dim: Int, classes: Int,
        seconds: Double
    ) {
        self.init(
            method: method, top1: r.top1, top5: r.top5, train: train, test: test, dim: dim, classes: classes,
            seconds: seconds)
        weightDecay = Self.decimal(r.weightDecay); lr = Self.decimal(r.learningRate)
        trainLoss = Double(r.trainLoss); epochs = r.epochs
        validationTop1 = r.validationTop1.isEmpty ? nil : r.validationTop1
    }

    /// A Float setting as the decimal number it prints as (Float(0.1) becomes 0.1, not 0.10000000149).
    public static func decimal(_ f: Float) -> Double { Double("\(f)") ?? Double(f) }

    /// The JSON text, one line; non-finite numbers become the strings "nan", "inf", "-inf".
    public func json() -> String {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys]
        e.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf",
            nan: "nan")
        // Every member is a number, string or array of numbers: encoding cannot fail.
        return String(decoding: try! e.encode(self), as: UTF8.self)
    }
}
