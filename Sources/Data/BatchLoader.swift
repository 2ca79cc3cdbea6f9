import Kernels
import Foundation

/// Where a `BatchLoader` stands: the next batch it returns is step `position` of `epoch`. Save it
/// with a checkpoint and pass it back to `BatchLoader.init(state:)` to resume with the same batches.
public struct LoaderState: Codable, Equatable, Sendable {
    public var epoch: Int
    public var position: Int
    public var seed: UInt64
    public init(epoch: Int = 0, position: Int = 0, seed: UInt64) {
        self.epoch = epoch
        self.position = position
        self.seed = seed
    }
}

/// One batch: `views[v]` is a contiguous NHWC buffer `[size][height][width][channels]` of normalised
/// floats; `indices[b]` is the dataset index of sample b, `labels` its labels when the dataset has
/// them.
public struct Batch: Sendable {
    public var views: [[Float]]
    public var indices: [Int]
    public var labels: [Int32]?
    public var epoch: Int
    public var step: Int
    public var size: Int { indices.count }
    public var height: Int
    public var width: Int
    public var channels: Int
}

/// This process's share of every batch in data-parallel training: shard `rank` of `ranks` equal,
/// consecutive parts of the global batch.
public struct LoaderShard: Sendable, Equatable {
    public var rank: Int, ranks: Int
    public init(rank: Int, ranks: Int) { self.rank = rank; self.ranks = ranks }
    public static let whole = LoaderShard(rank: 0, ranks: 1)
}

/// Prepares batches of `views` augmented views on background threads while the caller trains on
/// the previous ones (`prefetch` batches ahead).
///
/// Determinism: each epoch's order is a Fisher-Yates shuffle seeded by (seed, epoch); each sample's
/// views come from one `SplitMix64` seeded by (seed, epoch, dataset index), drawing view 0 then
/// view 1 ... So a batch depends only on (seed, epoch, step), never on the thread count or timing.
/// Batches are `count / batchSize` per epoch with `dropLast` (the default), else one more, smaller.
public final class BatchLoader {
    public let batchSize: Int
    public let viewCount: Int
    public let stepsPerEpoch: Int
    public let config: AugmentConfig
    let core: LoaderCore
    var nextBatch: Int  // global batch number of the next batch `next()` returns

    /// - Parameters:
    ///   - threads: background worker threads (at least 1).
    ///   - state: where to resume (its seed wins over `seed`); nil starts at epoch 0, step 0.
    ///   - shard: the part of each global batch of `batchSize` this loader returns (the same images,
    ///     with the same views, as those positions of a whole batch).
    public init(
        dataset: ImageDataset, config: AugmentConfig, batchSize: Int, views: Int = 2, threads: Int = 2,
        seed: UInt64 = 0, shuffle: Bool = true, dropLast: Bool = true, prefetch: Int = 2,
        state: LoaderState? = nil, shard: LoaderShard = .whole
    ) throws {
        guard batchSize >= 1, views >= 1, threads >= 1, prefetch >= 1 else {
            throw DataError(.invalidArgument, path: "", "batchSize, views, threads and prefetch must be at least 1")
        }
        guard shard.ranks >= 1, shard.rank >= 0, shard.rank < shard.ranks, batchSize % shard.ranks == 0 else {
            throw DataError(
                .invalidArgument, path: "", "a batch of \(batchSize) does not split into \(shard.ranks) shards")
        }
        let steps = dropLast ? dataset.count / batchSize : (dataset.count + batchSize - 1) / batchSize
        guard steps >= 1 else {
            throw DataError(
                .invalidArgument, path: dataset.source,
                "\(dataset.count) images are fewer than one batch of \(batchSize)")
        }
        let st = state ?? LoaderState(seed: seed)
        guard st.epoch >= 0, st.position >= 0, st.position <= steps else {
            throw DataError(.invalidArgument, path: "", "loader state \(st) out of range (\(steps) steps per epoch)")
        }
        self.batchSize = batchSize
        self.viewCount = views
        self.stepsPerEpoch = steps
        self.config = config
        nextBatch = st.epoch * steps + st.position
        let local = batchSize / shard.ranks
        core = LoaderCore(
            dataset: dataset, config: config, batchSize: local, globalBatch: batchSize,
            offset: shard.rank * local, views: views, seed: st.seed, shuffle: shuffle, steps: steps,
            prefetch: prefetch, firstBatch: nextBatch)
        for t in 0..<threads {
            let c = core
            let th = Thread { c.work() }
            th.name = "salient-loader-\(t)"
            th.start()
        }
    }

    deinit { core.stop() }

    /// Where the next `next()` starts (save this to resume).
    public var state: LoaderState {
        LoaderState(epoch: nextBatch / stepsPerEpoch, position: nextBatch % stepsPerEpoch, seed: core.seed)
    }

    /// The next batch, waiting for the workers when it is not ready yet. Rethrows the first error a
    /// worker hit (a streamed file that became unreadable).
    public func next() throws -> Batch {
        let b = try core.take(nextBatch)
        nextBatch += 1
        return b
    }
}

/// The state shared by the loader and its workers, guarded by `cond`.
final class LoaderCore: @unchecked Sendable {
    struct Slot {
        var batch = -1  // global batch number held, -1 none
        var size = 0
        var done = 0
        var indices: [Int] = []
        var views: [UnsafeMutablePointer<Float>]
    }
    let dataset: ImageDataset
    let config: AugmentConfig
    /// Items per batch of this loader; the global batch they are a part of, from position `offset`.
    let batchSize: Int, globalBatch: Int, offset: Int
    let views: Int, steps: Int, prefetch: Int
    let seed: UInt64
    let shuffle: Bool
    let viewFloats: Int
    let cond = NSCondition()
    var slots: [Slot]
    var nextItem: Int  // global item number (batch * batchSize + j) to hand out
    var consumed: Int  // global batch number of the next batch to take
    var stopped = false
    var failure: Error? = nil
    var perms: [Int: [Int]] = [:]

    init(
        dataset: ImageDataset, config: AugmentConfig, batchSize: Int, globalBatch: Int, offset: Int, views: Int,
        seed: UInt64, shuffle: Bool, steps: Int, prefetch: Int, firstBatch: Int
    ) {
        self.dataset = dataset
        self.config = config
        self.batchSize = batchSize
        self.globalBatch = globalBatch
        self.offset = offset
        self.views = views
        self.seed = seed
        self.shuffle = shuffle
        self.steps = steps
        self.prefetch = prefetch
        viewFloats = config.size * config.size * dataset.channels
        slots = (0..<prefetch).map { _ in
            Slot(
                views: (0..<views).map { _ in
                    let p = UnsafeMutablePointer<Float>.allocate(
                        capacity: batchSize * config.size * config.size * dataset.channels)
                    return p
                })
        }
        nextItem = firstBatch * batchSize
        consumed = firstBatch
    }

    deinit { for s in slots { for p in s.views { p.deallocate() } } }

    /// The order of an epoch (called with the lock held).
    func permutation(_ epoch: Int) -> [Int] {
        if let p = perms[epoch] { return p }
        var p = Array(0..<dataset.count)
        if shuffle {
            var rng = SplitMix64(seed: SplitMix64.derive(seed, UInt64(epoch), RandomStream.epochOrder.rawValue))
            for i in stride(from: p.count - 1, to: 0, by: -1) { p.swapAt(i, rng.int(below: i + 1)) }
        }
        perms = perms.filter { $0.key >= epoch - 1 }
        perms[epoch] = p
        return p
    }

    func stop() {
        cond.lock()
        stopped = true
        cond.broadcast()
        cond.unlock()
    }

    func work() {
        cond.lock()
        while true {
            if stopped { break }
            let g = nextItem / batchSize, j = nextItem % batchSize
            if g - consumed >= prefetch { cond.wait(); continue }
            let si = g % prefetch
            if slots[si].batch != g {
                let epoch = g / steps, step = g % steps
                let perm = permutation(epoch)
                let lo = min(perm.count, step * globalBatch + offset), hi = min(perm.count, lo + batchSize)
                slots[si].batch = g
                slots[si].size = hi - lo
                slots[si].done = 0
                slots[si].indices = Array(perm[lo..<hi])
            }
            nextItem += 1
            if j >= slots[si].size { continue }
            let index = slots[si].indices[j]
            let outs = slots[si].views.map { $0 + j * viewFloats }
            let epoch = g / steps
            cond.unlock()
            var err: Error? = nil
            do {
                let img = try dataset.image(at: index)
                var rng = SplitMix64(seed: SplitMix64.derive(seed, UInt64(epoch), UInt64(index)))
                for v in 0..<views { augment(img, config: config, rng: &rng, into: outs[v]) }
            } catch { err = error }
            cond.lock()
            if let err, failure == nil { failure = err }
            slots[si].done += 1
            if slots[si].done == slots[si].size || err != nil { cond.broadcast() }
        }
        cond.unlock()
    }

    func take(_ g: Int) throws -> Batch {
        cond.lock()
        let si = g % prefetch
        while !(slots[si].batch == g && slots[si].done == slots[si].size) {
            if let failure { cond.unlock(); throw failure }
            cond.wait()
        }
        if let failure { cond.unlock(); throw failure }
        let s = slots[si]
        cond.unlock()
        // Workers cannot touch this slot until `consumed` moves past it.
        let out = s.views.map { Array(UnsafeBufferPointer(start: $0, count: s.size * viewFloats)) }
        let labels = dataset.labels.map { l in s.indices.map { l[$0] } }
        cond.lock()
        consumed = g + 1
        cond.broadcast()
        cond.unlock()
        return Batch(
            views: out, indices: s.indices, labels: labels, epoch: g / steps, step: g % steps,
            height: config.size, width: config.size, channels: dataset.channels)
    }
}

/// Loader throughput in images per second (each image giving `views` augmented views) over
/// `batches` batches after one warm-up batch.
public func benchmarkLoader(
    dataset: ImageDataset, config: AugmentConfig, batchSize: Int = 256, views: Int = 2,
    threads: Int = 2, batches: Int = 20, seed: UInt64 = 0
) throws -> Double {
    let loader = try BatchLoader(
        dataset: dataset, config: config, batchSize: min(batchSize, dataset.count),
        views: views, threads: threads, seed: seed, prefetch: 2)
    _ = try loader.next()
    let t0 = DispatchTime.now().uptimeNanoseconds
    var n = 0
    for _ in 0..<batches { n += try loader.next().size }
    let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    return Double(n) / dt
}

/// What `benchmarkDecode` measured: seconds per image of decoding plus one view's crop and resample,
/// at full size and at the DCT reduction `target` allows, on one thread.
public struct DecodeBenchmark: Sendable {
    public var images: Int
    public var fullSeconds: Double
    public var scaledSeconds: Double
    /// Images decoded at each reduction (1, 2, 4, 8) under the target.
    public var reductions: [Int: Int]
    public var speedup: Double { fullSeconds / scaledSeconds }
}

/// Decode + one view, per image, on the calling thread: each of `files` (PNG or JPEG bytes, already
/// in memory: no file I/O is timed) is decoded at full size and at `DecodeTarget.views(config)`, and
/// each decode is followed by what the loader does before the colour steps: the 8-bit -> float
/// conversion, a RandomResizedCrop box and the antialiased resample to config.size. Full and scaled
/// decodes alternate image by image, `rounds` times over the files; the crop box fractions are the
/// same for both. A scaled decode that is not within the view's needs would be a bug: checked.
public func benchmarkDecode(files: [[UInt8]], config: AugmentConfig, rounds: Int = 3) throws -> DecodeBenchmark {
    let target = DecodeTarget.views(config)
    let out = UnsafeMutablePointer<Float>.allocate(capacity: config.size * config.size * 3)
    defer { out.deallocate() }
    var full = 0.0, scaled = 0.0
    var reductions = [Int: Int]()
    func oneView(_ bytes: [UInt8], _ t: DecodeTarget, seed: UInt64) throws -> (Double, Int) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        var reduction = 1
        let p: Pixels8
        if hasJPEGSignature(bytes) {
            let d = try decodeJPEG8(bytes, target: t, maxPixels: defaultMaxPixels, name: "bench")
            (p, reduction) = (d.pixels, d.reduction)
        } else {
            p = try decodeImage8(bytes, target: t, maxPixels: defaultMaxPixels, name: "bench").pixels
        }
        let img = p.floatImage(channels: p.channels)
        var rng = SplitMix64(seed: seed)
        let box = randomResizedCropBox(
            height: img.height, width: img.width, scale: config.cropScale,
            ratio: config.cropRatio, rng: &rng)
        img.pixels.withUnsafeBufferPointer { src in
            resampleBilinear(
                src.baseAddress!, height: img.height, width: img.width, channels: img.channels,
                top: box.top, left: box.left, cropHeight: box.height, cropWidth: box.width,
                outHeight: config.size, outWidth: config.size, out: out)
        }
        return (Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9, reduction)
    }
    for round in 0..<rounds {
        for (i, f) in files.enumerated() {
            let seed = SplitMix64.derive(UInt64(round), UInt64(i))
            full += try oneView(f, .full, seed: seed).0
            let (t, r) = try oneView(f, target, seed: seed)
            scaled += t
            if round == 0 { reductions[r, default: 0] += 1 }
        }
    }
    let n = Double(files.count * rounds)
    return DecodeBenchmark(
        images: files.count, fullSeconds: full / n, scaledSeconds: scaled / n, reductions: reductions)
}
