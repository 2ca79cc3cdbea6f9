// One contrastive training step, with every buffer planned at construction.
//
// MoCo, as data flows: momentum update of the key encoder -> key encoder forward of the key view
// (split batch norm) gives the keys AND its last feature map = saliency of the key view -> saliency of
// the query view (one more no-grad forward, or the classical map during warm-up) -> saliency-
// constrained mask on the query, heavy salient mask on copies of the key view (one hard negative of
// its own per sample) -> key encoder forward of each hard negative -> query encoder forward/backward
// against [positive key, queue, alpha * hard negatives] / T, SGD applied tensor by tensor inside
// backward (FusedSGD: no gradient block) -> enqueue keys.
// SimCLR: one encoder; both views go through it together (2B) for NT-Xent; saliency and hard
// negatives come from no-grad forwards of the same encoder.
import Foundation
import Kernels
import Network
import Data

public struct StepResult: Sendable {
    public var loss: Float
    public var accuracy: Float
    public var lr: Float
}

/// Where a step's time goes (seconds, accumulated over steps until reset).
public struct StepProfile: Sendable {
    public var keyForward = 0.0, saliency = 0.0, masking = 0.0, hardNegatives = 0.0
    public var queryForward = 0.0, loss = 0.0, backward = 0.0, optimizer = 0.0, steps = 0
    public init() {}
    public var total: Double { keyForward + saliency + masking + hardNegatives + queryForward + loss + backward + optimizer }
}

public final class TrainingStep {
    public let config: TrainConfig
    public let query: Encoder
    /// The momentum (key) encoder; nil for SimCLR.
    public let key: Encoder?
    public let queue: KeyQueue?
    let saliencyEncoder: Encoder?
    let grid: Int
    let res: Int, channels: Int, batch: Int
    let viewCount: Int
    let masking: MaskMode, fill: MaskFill
    public var maskConfig = MaskConfig()
    public var profile = StepProfile()

    // Passes.
    let qPass: ResNetPass              // with activations, batch B (MoCo) or 2B (SimCLR)
    let nPass: ResNetPass              // no-grad, batch B: keys, saliency, hard negatives
    let sPass: ResNetPass?             // imported saliency encoder
    let qHead: MLPHeadPass
    let nHead: MLPHeadPass
    // Buffers.
    let queryView: UnsafeMutablePointer<Float>     // [B][R][R][C] (SimCLR: [2B], the two views)
    let keyView: UnsafeMutablePointer<Float>
    let hardView: UnsafeMutablePointer<Float>
    let blurred: UnsafeMutablePointer<Float>
    let filterScratch: UnsafeMutablePointer<Float>
    let qSaliency: UnsafeMutablePointer<Float>, kSaliency: UnsafeMutablePointer<Float>
    let qz: UnsafeMutablePointer<Float>, qNorms: UnsafeMutablePointer<Float>, gradZ: UnsafeMutablePointer<Float>
    let kz: UnsafeMutablePointer<Float>, kNorms: UnsafeMutablePointer<Float>
    let tz: UnsafeMutablePointer<Float>            // [B][H][D]
    let hz: UnsafeMutablePointer<Float>, hNorms: UnsafeMutablePointer<Float>
    /// Shuffle-BN: the permutation of the last no-grad forward and a [B][max(D, G*G)] staging area.
    var permutation: [Int]
    let shuffled: UnsafeMutablePointer<Float>
    /// Spatial cell masks of the last step's queries / hard negatives [B][G*G] (previews).
    public let queryCells: UnsafeMutablePointer<UInt8>, hardCells: UnsafeMutablePointer<UInt8>
    /// The query encoder's optimizer, applied inside backward.
    let sgd: FusedSGD
    let infoNCE: InfoNCE?
    let ntXent: NTXent?
    private var owned: [UnsafeMutableRawPointer] = []
    public private(set) var allocatedBytes = 0
    /// Where allocatedBytes goes (label, bytes).
    public private(set) var memoryBreakdown: [(String, Int)] = []

    public init(config: TrainConfig, saliencyEncoder: Encoder? = nil) {
        self.config = config
        let rc = config.resnet
        res = config.resolution; channels = config.inChannels; batch = config.batch
        grid = rc.finalMapSize(res)
        masking = config.masking
        fill = config.fill
        query = Encoder(config: rc, headDim: config.headDim, gradients: false)
        query.initialize(seed: config.seed)
        sgd = FusedSGD(store: query.store)
        sgd.momentum = config.sgdMomentum; sgd.weightDecay = config.weightDecay
        let isMoco = config.method == .moco
        viewCount = 2
        if isMoco {
            let k = Encoder(config: rc, headDim: config.headDim, trainable: false)
            k.store.copyState(from: query.store)
            key = k
            var rng = SplitMix64(seed: SplitMix64.derive(config.seed, 0x9_0E0E))
            queue = KeyQueue(length: config.queue, dim: config.headDim, rng: &rng)
        } else {
            key = nil; queue = nil
        }
        self.saliencyEncoder = saliencyEncoder
        let B = batch, R = res, C = channels, D = config.headDim, H = config.hardNegatives
        let qBatch = isMoco ? B : 2 * B
        qPass = ResNetPass(layout: query.backbone, batch: qBatch, height: R, width: R, keepActivations: true)
        // The no-grad forwards (keys, saliency, hard negatives) all run between the query pass's
        // backward and its next forward: they borrow its idle buffers and share its workspace.
        nPass = ResNetPass(layout: query.backbone, batch: B, height: R, width: R, keepActivations: false,
                           borrowing: qPass.idleBuffers, borrowedCount: qPass.idleBufferCount,
                           workspace: qPass.workspace)
        let workspace = qPass.workspace
        sPass = saliencyEncoder.map {
            ResNetPass(layout: $0.backbone, batch: B, height: R, width: R, keepActivations: false, workspace: workspace)
        }
        qHead = MLPHeadPass(layout: query.head!, batch: qBatch)
        nHead = MLPHeadPass(layout: (key ?? query).head!, batch: B)
        var bytes = qPass.allocatedBytes + nPass.allocatedBytes + (sPass?.allocatedBytes ?? 0)
            + qHead.allocatedBytes + nHead.allocatedBytes
        var owned: [UnsafeMutableRawPointer] = []
        func alloc<T>(_ n: Int, _ t: T.Type) -> UnsafeMutablePointer<T> {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(n, 1) * MemoryLayout<T>.stride, alignment: 64)
            owned.append(p); bytes += max(n, 1) * MemoryLayout<T>.stride
            return p.bindMemory(to: T.self, capacity: max(n, 1))
        }
        let img = R * R * C
        queryView = alloc(qBatch * img, Float.self)
        keyView = alloc(B * img, Float.self)
        hardView = alloc(B * img, Float.self)
        blurred = alloc(qBatch * img, Float.self)
        filterScratch = alloc(filterScratchCount(n: qBatch, height: R, width: R, channels: C), Float.self)
        qSaliency = alloc(B * grid * grid, Float.self); kSaliency = alloc(B * grid * grid, Float.self)
        qz = alloc(qBatch * D, Float.self); qNorms = alloc(qBatch, Float.self); gradZ = alloc(qBatch * D, Float.self)
        kz = alloc(B * D, Float.self); kNorms = alloc(B, Float.self)
        tz = alloc(max(B * H, 1) * D, Float.self)
        hz = alloc(B * D, Float.self); hNorms = alloc(B, Float.self)
        permutation = Array(0..<B)
        shuffled = alloc(B * max(D, grid * grid), Float.self)
        queryCells = alloc(B * grid * grid, UInt8.self); hardCells = alloc(B * grid * grid, UInt8.self)
        queryCells.initialize(repeating: 0, count: B * grid * grid)
        hardCells.initialize(repeating: 0, count: B * grid * grid)
        if isMoco {
            infoNCE = InfoNCE(batch: B, dim: D, queueLength: config.queue, hardNegatives: masking == .none ? 0 : H,
                              temperature: config.temperature, alpha: config.alpha)
            ntXent = nil
            bytes += infoNCE!.allocatedBytes
        } else {
            ntXent = NTXent(batch: B, dim: D, hardNegatives: masking == .none ? 0 : H,
                            temperature: config.temperature, alpha: config.alpha)
            infoNCE = nil
            bytes += ntXent!.allocatedBytes
        }
        self.owned = owned
        let parameterBytes = 8 * (query.store.parameterCount) + 4 * sgd.scratchCount
            + (key.map { 4 * $0.store.parameterCount } ?? 0) + (queue.map { 4 * $0.length * $0.dim } ?? 0)
        allocatedBytes = bytes + parameterBytes
        let ws = qPass.workspace.packCount * 4 + qPass.workspace.scratchBytes
        let passes = qPass.allocatedBytes + nPass.allocatedBytes + (sPass?.allocatedBytes ?? 0)
        memoryBreakdown = [
            ("parameters, momentum, key encoder, queue, SGD scratch", parameterBytes),
            ("training pass: arena of activations and gradients", qPass.allocatedBytes - ws),
            ("no-grad pass: own buffers (the rest borrowed)", nPass.allocatedBytes + (sPass?.allocatedBytes ?? 0)),
            ("convolution workspace: weight panels, scratch", ws),
            ("views, masks, heads, objective", bytes - passes),
        ]
    }

    deinit { for p in owned { p.deallocate() } }

    public var hardNegativeCount: Int { masking == .none ? 0 : config.hardNegatives }

    /// Runs one step on a batch of normalised views (plain: the step high-pass filters them itself for
    /// the hp fill, after any saliency that reads the plain views).
    /// `step` is the global step (it seeds the masks), `epoch` picks classical or own saliency.
    public func step(views: [[Float]], epoch: Int, step: Int, lr: Float) -> StepResult {
        let B = batch, img = res * res * channels
        precondition(views.count >= 2 && views[0].count == B * img && views[1].count == B * img, "batch shape mismatch")
        switch config.method {
        case .moco: return mocoStep(views, epoch: epoch, step: step, lr: lr)
        case .simclr: return simclrStep(views, epoch: epoch, step: step, lr: lr)
        }
    }

    @inline(__always) func timed(_ slot: WritableKeyPath<StepProfile, Double>, _ body: () -> Void) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        profile[keyPath: slot] += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
    }

    var useClassical: Bool { config.saliency == "classical" }

    /// Whether the encoder trains on high-pass views (the hp fill, PAPER.md): the step filters both
    /// views itself, after any saliency that must see the plain ones.
    public var highPassViews: Bool { masking != .none && fill == .hp }

    /// Whether this epoch's saliency reads the plain views (network-free, or an imported encoder)
    /// rather than the training encoder's own features of the views it trains on.
    func plainSaliency(epoch: Int) -> Bool {
        saliencyEncoder != nil || useClassical || epoch < config.saliencyWarmup
    }

    /// Saliency of the plain view `view` [B][R][R][C] into `out` [B][G*G]: from the imported encoder's
    /// last feature map (eval-mode batch norm) or the network-free map.
    func plainSaliency(of view: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>) {
        let B = batch
        if let s = saliencyEncoder, let sp = sPass {
            sp.forward(input: view, store: s.store, mode: .eval)
            saliencyFromFeatures(sp.lastFeatureMap, batch: B, height: sp.mapHeight, width: sp.mapWidth,
                                 channels: s.config.featureDim, grid: grid, output: out)
        } else {
            classicalSaliency(view, batch: B, height: res, width: res, channels: channels, grid: grid, output: out)
        }
    }

    /// Saliency of a training view from `encoder`'s last feature map: after the embedding forward that
    /// just ran on it (`afterForward`, its rows in shuffled order), or from a forward of its own that
    /// leaves the running batch-norm statistics untouched.
    func ownSaliency(of view: UnsafeMutablePointer<Float>, encoder: Encoder, afterForward: Bool,
                     out: UnsafeMutablePointer<Float>) {
        if !afterForward {
            nPass.forward(input: view, store: encoder.store, mode: .batchStatistics(splits: config.effectiveBNSplits))
        }
        saliencyFromFeatures(nPass.lastFeatureMap, batch: batch, height: nPass.mapHeight, width: nPass.mapWidth,
                             channels: encoder.config.featureDim, grid: grid, output: out)
        if afterForward { unshuffleRows(out, width: grid * grid) }
    }

    /// High-pass filters `count` views in place (the hp fill's input).
    func highPassInPlace(_ views: UnsafeMutablePointer<Float>, count: Int) {
        highPassFilter(views, blurred, scratch: filterScratch, n: count, height: res, width: res, channels: channels)
        views.update(from: blurred, count: count * res * res * channels)
    }

    /// Embeds `view` with `encoder` (no grad) into normalised rows at `out`. Shuffle-BN stand-in:
    /// the batch is permuted (seeded by step and `tag`) before a forward whose batch norm uses
    /// `bnSplits` groups, and the embeddings are put back in order, so that no sample's key shares
    /// its normalisation group with the same neighbours as its query. `lastFeatureMap` of nPass stays
    /// in permuted order: `unshuffleRows` puts per-sample results derived from it back. Only the key
    /// forward (`updateStatistics`) moves the encoder's running batch-norm statistics.
    func embed(_ view: UnsafeMutablePointer<Float>, encoder: Encoder, out: UnsafeMutablePointer<Float>,
               norms: UnsafeMutablePointer<Float>, step: Int, tag: UInt64, updateStatistics: Bool,
               splits: Int? = nil) {
        let B = batch, D = config.headDim, img = res * res * channels
        var rng = SplitMix64(seed: SplitMix64.derive(config.seed, UInt64(step), tag))
        for i in 0..<B { permutation[i] = i }
        for i in stride(from: B - 1, to: 0, by: -1) { permutation.swapAt(i, rng.int(below: i + 1)) }
        for i in 0..<B { (nPass.input + i * img).update(from: view + permutation[i] * img, count: img) }
        let s = splits ?? config.effectiveBNSplits
        nPass.forward(input: nPass.input, store: encoder.store,
                      mode: updateStatistics ? .train(splits: s) : .batchStatistics(splits: s))
        nHead.forward(features: nPass.features, store: encoder.store)
        l2NormalizeForward(rows: B, dim: D, input: nHead.output, output: shuffled, norms: norms)
        for i in 0..<B { (out + permutation[i] * D).update(from: shuffled + i * D, count: D) }
    }

    /// Puts rows computed from a shuffled forward (row i belongs to sample permutation[i]) in order.
    func unshuffleRows(_ rows: UnsafeMutablePointer<Float>, width: Int) {
        let B = batch
        for i in 0..<B { (shuffled + permutation[i] * width).update(from: rows + i * width, count: width) }
        rows.update(from: shuffled, count: B * width)
    }

    /// Hard negatives of the key-side views `source` (no grad, running statistics untouched).
    /// Per sample (our default): each sample's own view masked on its salient cells H times, each
    /// embedded with the key's batch-norm groups. Shared (the official code): the batch masked once
    /// and its first H images embedded one by one (batch-norm statistics of each image alone, as a
    /// batch of one), every query then facing the same H hard negatives.
    func hardNegatives(from source: UnsafeMutablePointer<Float>, saliency sal: UnsafeMutablePointer<Float>,
                       encoder: Encoder, step: Int) {
        let B = batch, H = hardNegativeCount, D = config.headDim, img = res * res * channels
        if H == 0 { return }
        if fill == .blur {
            timed(\.masking) { strongBlur(source, blurred, scratch: filterScratch, n: B, height: res, width: res, channels: channels) }
        }
        let shared = config.hardNegativeMode == .shared
        for h in 0..<(shared ? 1 : H) {
            timed(\.masking) {
                hardView.update(from: source, count: B * img)
                applyMasks(views: hardView, blurred: fill == .blur ? UnsafePointer(blurred) : nil, saliency: sal,
                           batch: B, height: res, width: res, channels: channels, grid: grid, role: .hardNegative,
                           mode: masking, fill: fill, config: maskConfig, seed: config.seed, step: step * H + h,
                           cellMasks: h == 0 ? hardCells : nil, records: nil)
            }
            timed(\.hardNegatives) {
                embed(hardView, encoder: encoder, out: hz, norms: hNorms, step: step, tag: 0x4A4E + UInt64(h),
                      updateStatistics: false, splits: shared ? B : nil)
                if shared {
                    for b in 0..<B { (tz + b * H * D).update(from: hz, count: H * D) }
                } else {
                    for b in 0..<B { (tz + (b * H + h) * D).update(from: hz + b * D, count: D) }
                }
            }
        }
    }

    func maskQueries(_ view: UnsafeMutablePointer<Float>, saliency sal: UnsafeMutablePointer<Float>, step: Int) {
        let B = batch
        timed(\.masking) {
            if fill == .blur { strongBlur(view, blurred, scratch: filterScratch, n: B, height: res, width: res, channels: channels) }
            applyMasks(views: view, blurred: fill == .blur ? UnsafePointer(blurred) : nil, saliency: sal,
                       batch: B, height: res, width: res, channels: channels, grid: grid, role: .query,
                       mode: masking, fill: fill, config: maskConfig, seed: config.seed, step: step,
                       cellMasks: queryCells, records: nil)
        }
    }

    func mocoStep(_ views: [[Float]], epoch: Int, step: Int, lr: Float) -> StepResult {
        let key = self.key!, queue = self.queue!, obj = infoNCE!
        let B = batch, img = res * res * channels
        views[0].withUnsafeBufferPointer { queryView.update(from: $0.baseAddress!, count: B * img) }
        views[1].withUnsafeBufferPointer { keyView.update(from: $0.baseAddress!, count: B * img) }
        // Key encoder follows the query encoder (parameters only; its BN statistics are its own).
        timed(\.optimizer) {
            momentumUpdate(count: key.store.parameterCount, target: key.store.params, source: query.store.params,
                           m: config.mocoMomentum)
        }
        let selfSaliency = masking == .saliency && !plainSaliency(epoch: epoch)
        if masking == .saliency && !selfSaliency {
            timed(\.saliency) {
                plainSaliency(of: keyView, out: kSaliency)
                plainSaliency(of: queryView, out: qSaliency)
            }
        }
        if highPassViews {
            timed(\.masking) { highPassInPlace(queryView, count: B); highPassInPlace(keyView, count: B) }
        }
        timed(\.keyForward) {
            embed(keyView, encoder: key, out: kz, norms: kNorms, step: step, tag: 0x4B45, updateStatistics: true)
        }
        if masking != .none {
            if selfSaliency {
                timed(\.saliency) {
                    ownSaliency(of: keyView, encoder: key, afterForward: true, out: kSaliency)
                    ownSaliency(of: queryView, encoder: key, afterForward: false, out: qSaliency)
                }
            }
            hardNegatives(from: keyView, saliency: kSaliency, encoder: key, step: step)
            maskQueries(queryView, saliency: qSaliency, step: step)
        }
        encodeQueries(rows: B)
        var result = ObjectiveResult(loss: 0, accuracy: 0)
        let hard = hardNegativeCount > 0 ? UnsafePointer(tz) : nil
        timed(\.loss) { result = obj.forward(q: qz, k: kz, queue: queue.keys, hard: hard) }
        if !result.loss.isFinite { return StepResult(loss: result.loss, accuracy: result.accuracy, lr: lr) }
        timed(\.backward) { obj.backward(k: kz, queue: queue.keys, hard: hard) }
        backwardAndUpdate(rows: B, gradEmbedding: obj.gradQuery, lr: lr)
        timed(\.optimizer) { queue.enqueue(kz, count: B) }
        profile.steps += 1
        return StepResult(loss: result.loss, accuracy: result.accuracy, lr: lr)
    }

    /// Query encoder forward (batch statistics, activations kept) of queryView's first `rows`
    /// images, projection head and normalisation into qz.
    func encodeQueries(rows: Int) {
        timed(\.queryForward) {
            qPass.forward(input: queryView, store: query.store, mode: .train(splits: 1))
            qHead.forward(features: qPass.features, store: query.store)
            l2NormalizeForward(rows: rows, dim: config.headDim, input: qHead.output, output: qz, norms: qNorms)
        }
    }

    /// From d(loss)/d(normalised embeddings) back through normalisation, head and backbone, with SGD
    /// applied to each tensor as soon as its gradient exists.
    func backwardAndUpdate(rows: Int, gradEmbedding: UnsafePointer<Float>, lr: Float) {
        sgd.lr = lr
        timed(\.backward) {
            l2NormalizeBackward(rows: rows, dim: config.headDim, output: qz, norms: qNorms, gradOutput: gradEmbedding,
                                gradInput: gradZ, accumulate: false)
            qHead.backward(gradOutput: gradZ, store: query.store, update: sgd)
            qPass.backward(gradFeatures: qHead.gradFeatures, store: query.store, update: sgd)
        }
    }

    func simclrStep(_ views: [[Float]], epoch: Int, step: Int, lr: Float) -> StepResult {
        let obj = ntXent!
        let B = batch, img = res * res * channels
        let first = queryView, second = queryView + B * img
        views[0].withUnsafeBufferPointer { first.update(from: $0.baseAddress!, count: B * img) }
        views[1].withUnsafeBufferPointer { second.update(from: $0.baseAddress!, count: B * img) }
        let selfSaliency = masking == .saliency && !plainSaliency(epoch: epoch)
        if masking == .saliency && !selfSaliency {
            timed(\.saliency) {
                plainSaliency(of: second, out: kSaliency)
                plainSaliency(of: first, out: qSaliency)
            }
        }
        if highPassViews { timed(\.masking) { highPassInPlace(first, count: 2 * B) } }
        if masking != .none {
            if selfSaliency {
                timed(\.saliency) {
                    ownSaliency(of: second, encoder: query, afterForward: false, out: kSaliency)
                    ownSaliency(of: first, encoder: query, afterForward: false, out: qSaliency)
                }
            }
            hardNegatives(from: second, saliency: kSaliency, encoder: query, step: step)
            maskQueries(first, saliency: qSaliency, step: step)
        }
        encodeQueries(rows: 2 * B)
        var result = ObjectiveResult(loss: 0, accuracy: 0)
        let hard = hardNegativeCount > 0 ? UnsafePointer(tz) : nil
        timed(\.loss) { result = obj.forward(z: qz, hard: hard) }
        if !result.loss.isFinite { return StepResult(loss: result.loss, accuracy: result.accuracy, lr: lr) }
        timed(\.backward) { obj.backward(z: qz, hard: hard) }
        backwardAndUpdate(rows: 2 * B, gradEmbedding: obj.gradZ, lr: lr)
        profile.steps += 1
        return StepResult(loss: result.loss, accuracy: result.accuracy, lr: lr)
    }

    /// The views of the last step after masking (query side), for previews: [B][R][R][C].
    public var lastQueryViews: UnsafePointer<Float> { UnsafePointer(queryView) }
    public var lastKeyViews: UnsafePointer<Float> { UnsafePointer(config.method == .moco ? keyView : queryView + batch * res * res * channels) }
    public var lastHardViews: UnsafePointer<Float> { UnsafePointer(hardView) }
    public var lastQuerySaliency: UnsafePointer<Float> { UnsafePointer(qSaliency) }
    /// The last step's hard-negative embeddings [B][H][D] (normalised), as the objective read them.
    public var lastHardNegativeEmbeddings: UnsafePointer<Float> { UnsafePointer(tz) }
    public var lastKeySaliency: UnsafePointer<Float> { UnsafePointer(kSaliency) }
    public var gridSize: Int { grid }
}
