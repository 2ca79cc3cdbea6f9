// Offline feature extraction: pooled backbone features (before any head), eval-mode batch norm.
import Cluster
import Foundation
import Kernels
import Network
import Data

/// How images become network input: optional square resize, then (x - mean) / std per channel.
public struct Preprocess: Sendable, Equatable {
    public var resize: Int?
    public var mean: [Float]
    public var std: [Float]
    /// High-pass filter the normalised images (x - GaussianBlur, scaled with resolution), as the
    /// hp fill's training views were: encoders trained that way are evaluated on the same input.
    public var highPass = false
    /// After the resize, keep the centre `centerCrop` x `centerCrop` pixels (the paper's linear
    /// evaluation: resize to 256/224 of the view, centre crop).
    public var centerCrop: Int?

    public static let imagenetMean: [Float] = [0.485, 0.456, 0.406]
    public static let imagenetStd: [Float] = [0.229, 0.224, 0.225]

    /// ImageNet statistics for 3 channels, 0.5 / 0.5 for 1 channel.
    public static func defaults(channels: Int, resize: Int? = nil) -> Preprocess {
        channels == 1
            ? Preprocess(resize: resize, mean: [0.5], std: [0.5])
            : Preprocess(resize: resize, mean: imagenetMean, std: imagenetStd)
    }

    public init(resize: Int?, mean: [Float], std: [Float]) {
        self.resize = resize; self.mean = mean; self.std = std
    }

    /// Writes image `index` of `dataset` as [H][W][C] at `out`, converting channels to `channels`.
    public func fill(
        _ dataset: ImageDataset, index: Int, channels: Int, height: Int, width: Int,
        into out: UnsafeMutablePointer<Float>
    ) throws {
        var img = try dataset.image(at: index)
        if img.channels != channels { img = img.converted(toChannels: channels) }
        if let r = resize, img.width != r || img.height != r { img = img.resized(width: r, height: r) }
        if let s = centerCrop, img.width > s || img.height > s { img = img.centerCropped(side: s) }
        guard img.width == width, img.height == height else {
            throw DataError(
                .invalidArgument, path: dataset.name(at: index),
                "image is \(img.width)x\(img.height), expected \(width)x\(height) like the first image; pass --resize N"
            )
        }
        let c = channels
        img.pixels.withUnsafeBufferPointer { src in
            for i in 0..<(height * width) {
                for ch in 0..<c { out[i * c + ch] = (src[i * c + ch] - mean[ch]) / std[ch] }
            }
        }
    }
}

/// Random views for features: each image of a pass gets its own augmentation drawn from
/// SplitMix64(derive(seed, pass, index)) (the augmented linear probe: one pass per epoch).
public struct FeatureAugmentation: Sendable {
    public var config: AugmentConfig
    public var seed: UInt64
    public var pass: Int
    public init(config: AugmentConfig, seed: UInt64, pass: Int) {
        self.config = config; self.seed = seed; self.pass = pass
    }

    /// The paper's linear-evaluation views at `size` px: RandomResizedCrop (scale 0.08-1, torchvision's
    /// default) and a horizontal flip, normalised by `preprocess`'s mean and std.
    public static func linearEvaluation(size: Int, preprocess: Preprocess) -> AugmentConfig {
        var c = AugmentConfig.evaluation(size: size)
        c.randomCrop = true
        c.cropScale = 0.08...1
        c.flipProbability = 0.5
        let k = preprocess.mean.count
        c.mean = k == 3 ? preprocess.mean : [Float](repeating: preprocess.mean[0], count: 3)
        c.std = k == 3 ? preprocess.std : [Float](repeating: preprocess.std[0], count: 3)
        return c
    }
}

/// Features of every image of `dataset`, in dataset order: N x featureDim, row-major.
/// `progress(done, total)` is called after each batch. With `augmentation`, each image is a random view
/// of `augmentation.config.size` px instead of `preprocess`'s resize (high-pass still applies).
public func extractFeatures(
    encoder: Encoder, dataset: ImageDataset, batch: Int, preprocess: Preprocess,
    augmentation: FeatureAugmentation? = nil, range: Range<Int>? = nil, execution: ExecutionConfig = .standard,
    progress: ((Int, Int) -> Void)? = nil
) throws -> [Float] {
    guard dataset.count > 0 else { throw DataError(.emptyDataset, path: dataset.source, "no images") }
    let rows = range ?? 0..<dataset.count
    let n = rows.count, base = rows.lowerBound
    precondition(base >= 0 && rows.upperBound <= dataset.count, "extractFeatures: range outside the dataset")
    if n == 0 { return [] }
    let first = try dataset.image(at: 0)
    var h = preprocess.centerCrop ?? preprocess.resize ?? first.height
    var w = preprocess.centerCrop ?? preprocess.resize ?? first.width
    if let a = augmentation { h = a.config.size; w = a.config.size }
    let c = encoder.config.inChannels
    guard preprocess.mean.count == c, preprocess.std.count == c else {
        throw DataError(
            .invalidArgument, path: dataset.source,
            "mean/std have \(preprocess.mean.count) values, the encoder takes \(c) channels")
    }
    let b = min(batch, n)
    let pass = ResNetPass(
        layout: encoder.backbone, batch: b, height: h, width: w, keepActivations: false, config: execution)
    let filterIn = preprocess.highPass ? UnsafeMutablePointer<Float>.allocate(capacity: b * h * w * c) : nil
    let filterScratch =
        preprocess.highPass
        ? UnsafeMutablePointer<Float>.allocate(capacity: filterScratchCount(n: b, height: h, width: w, channels: c))
        : nil
    defer { filterIn?.deallocate(); filterScratch?.deallocate() }
    let D = encoder.config.featureDim
    var features = [Float](repeating: 0, count: n * D)
    var start = 0
    while start < n {
        let count = min(b, n - start)
        let per = h * w * c
        // Fill in parallel: decoding and resizing are per image.
        var failure: Error? = nil
        let lock = NSLock()
        let input = pass.input
        parallelFor(count) { lo, hi, _ in
            for i in lo..<hi {
                do {
                    if let a = augmentation {
                        var img = try dataset.image(at: base + start + i)
                        if img.channels != c { img = img.converted(toChannels: c) }
                        var rng = SplitMix64(seed: SplitMix64.derive(a.seed, UInt64(a.pass), UInt64(base + start + i)))
                        augment(img, config: a.config, rng: &rng, into: input + i * per)
                    } else {
                        try preprocess.fill(
                            dataset, index: base + start + i, channels: c, height: h, width: w,
                            into: input + i * per)
                    }
                } catch { lock.lock(); if failure == nil { failure = error }; lock.unlock() }
            }
        }
        if let failure { throw failure }
        if count < b { (input + count * per).update(repeating: 0, count: (b - count) * per) }
        if let fi = filterIn, let fs = filterScratch {
            fi.update(from: input, count: b * per)
            highPassFilter(fi, input, scratch: fs, n: b, height: h, width: w, channels: c)
        }
        pass.forward(input: input, store: encoder.store, mode: .eval)
        features.withUnsafeMutableBufferPointer { f in
            (f.baseAddress! + start * D).update(from: pass.features, count: count * D)
        }
        start += count
        progress?(start, n)
    }
    return features
}

/// Features of every image of `dataset` computed by all ranks together: rank r extracts the r-th of
/// `comm.size` equal parts (the last one shorter), and every rank receives all N x featureDim rows in
/// dataset order, the same values as one process computes.
public func extractFeatures(
    encoder: Encoder, dataset: ImageDataset, batch: Int, preprocess: Preprocess,
    comm: Communicator, execution: ExecutionConfig = .standard, progress: ((Int, Int) -> Void)? = nil
) throws -> [Float] {
    guard comm.isDistributed else {
        return try extractFeatures(
            encoder: encoder, dataset: dataset, batch: batch, preprocess: preprocess, execution: execution,
            progress: progress)
    }
    let n = dataset.count, D = encoder.config.featureDim
    let share = (n + comm.size - 1) / comm.size
    let lo = min(n, comm.rank * share), hi = min(n, lo + share)
    var mine = try extractFeatures(
        encoder: encoder, dataset: dataset, batch: batch, preprocess: preprocess,
        range: lo..<hi, execution: execution
    ) { done, _ in progress?(min(n, done * comm.size), n) }
    mine += [Float](repeating: 0, count: (share - (hi - lo)) * D)
    var all = [Float](repeating: 0, count: comm.size * share * D)
    mine.withUnsafeBufferPointer { m in
        all.withUnsafeMutableBufferPointer {
            comm.allGather(m.baseAddress!, count: share * D, into: $0.baseAddress!, "gathering features")
        }
    }
    return Array(all[0..<(n * D)])
}
