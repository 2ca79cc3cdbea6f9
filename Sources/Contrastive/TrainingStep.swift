// One contrastive training step, with every buffer planned at construction.
//
// MoCo, as data flows: momentum update of the key encoder -> (network-free or imported saliency of the
// plain views) -> high-pass filter of both views for the hp fill -> key encoder forward of the key
// view (split batch norm) gives the keys AND its last feature map = saliency of the key view ->
// saliency of the query view (one more no-grad forward) -> saliency-constrained mask on the query,
// heavy salient mask on copies of the key view (per sample by default; `--hard-negative-mode shared`:
// the batch's first H, as the official code) -> key encoder forward of each hard negative (running
// batch-norm statistics untouched) -> query encoder forward/backward
// against [positive key, queue, alpha * hard negatives] / T, SGD applied tensor by tensor inside
// backward (FusedSGD: no gradient block) -> enqueue keys.
// SimCLR: one encoder; both views go through it together (2B) for NT-Xent; saliency and hard
// negatives come from no-grad forwards of the same encoder.
//
// Data-parallel (a Communicator of N ranks): each rank holds L = B/N samples of every global batch
// (the consecutive shard r*L ..< (r+1)*L) and computes what one process of B computes: the training
// forward and backward share batch-norm statistics (BNStatisticsSync), gradients are summed as
// backward produces them (GradientBuckets, applied by the fused SGD as they arrive); shuffle-BN and
// hard negatives work on the all-gathered key-side views, each rank taking whole batch-norm groups of
// the shuffled order, keys / saliency / hard-negative embeddings are all-gathered back; MoCo's queue
// receives all B keys on every rank; SimCLR's NT-Xent runs on the all-gathered 2B embeddings.
import Cluster
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
    public var total: Double {
        keyForward + saliency + masking + hardNegatives + queryForward + loss + backward + optimizer
    }
}

public final class TrainingStep {
    public let config: TrainConfig
    public let query: Encoder
    /// The objective and what it owns.
    public let objective: Objective
    /// The momentum (key) encoder; nil for SimCLR.
    public var key: Encoder? { if case .moco(let key, _, _) = objective { return key } else { return nil } }
    /// MoCo's queue of negative keys; nil for SimCLR.
    public var queue: KeyQueue? { if case .moco(_, let queue, _) = objective { return queue } else { return nil } }
    let saliencyEncoder: Encoder?
    let grid: Int
    /// `batch`: the global batch B; `local`: this rank's share L = B / ranks, starting at sample `first`.
    let res: Int, channels: Int, batch: Int, local: Int, first: Int
    public let comm: Communicator
    /// The gradient sums of a data-parallel step (nil with one process).
    public let buckets: GradientBuckets?
    let viewCount: Int
    let masking: MaskMode, fill: MaskFill
    public var maskConfig = MaskConfig()
    public var profile = StepProfile()

    // Passes.
    let qPass: ResNetPass  // with activations, batch B (MoCo) or 2B (SimCLR)
    let nPass: ResNetPass  // no-grad, batch B: keys, saliency, hard negatives
    let sPass: ResNetPass?  // imported saliency encoder
    let qHead: MLPHeadPass
    let nHead: MLPHeadPass
    // Buffers.
    let queryView: UnsafeMutablePointer<Float>  // [B][R][R][C] (SimCLR: [2B], the two views)
    let keyView: UnsafeMutablePointer<Float>  // [L] this rank's key-side views
    let keyAll: UnsafeMutablePointer<Float>  // [B] every rank's key-side views (= keyView with one rank)
    let hardView: UnsafeMutablePointer<Float>
    let blurred: UnsafeMutablePointer<Float>
    let filterScratch: UnsafeMutablePointer<Float>
    let qSaliency: UnsafeMutablePointer<Float>, kSaliency: UnsafeMutablePointer<Float>
    let qz: UnsafeMutablePointer<Float>, qNorms: UnsafeMutablePointer<Float>, gradZ: UnsafeMutablePointer<Float>
    let kz: UnsafeMutablePointer<Float>, kNorms: UnsafeMutablePointer<Float>
    let tz: UnsafeMutablePointer<Float>  // [B][H][D]
    let hz: UnsafeMutablePointer<Float>, hNorms: UnsafeMutablePointer<Float>
    /// Shuffle-BN: the permutation of the last no-grad forward, a [B][max(D, G*G)] staging area and
    /// this rank's [L][max(D, G*G)] share before it is gathered.
    var permutation: [Int]
    let shuffled: UnsafeMutablePointer<Float>
    let shuffledLocal: UnsafeMutablePointer<Float>
    /// SimCLR: the 2B embeddings of all ranks, gathered ([rank][first L | second L]) and in the
    /// objective's order ([first B | second B]).
    let zGathered: UnsafeMutablePointer<Float>, zAll: UnsafeMutablePointer<Float>
    /// Spatial cell masks of the last step's queries / hard negatives [B][G*G] (previews).
    public let queryCells: UnsafeMutablePointer<UInt8>, hardCells: UnsafeMutablePointer<UInt8>
    /// The query encoder's optimizer, applied inside backward.
    let sgd: FusedSGD
    private var owned: [UnsafeMutableRawPointer] = []
    public private(set) var allocatedBytes = 0
    /// Where allocatedBytes goes (label, bytes).
    public private(set) var memoryBreakdown: [(String, Int)] = []

    /// The kernels' settings every pass of the step was planned with.
    public let execution: ExecutionConfig
    /// Where the step's passes add their seconds per operation (bench train --profile), or nil.
    public var passProfiler: PassProfiler? {
        get { qPass.profiler }
        set { for p in [qPass, nPass, sPass].compactMap({ $0 }) { p.profiler = newValue } }
    }

    /// `comm`: the ranks of a data-parallel run (B must split into whole shards and whole shuffle-BN
    /// groups per rank: see `TrainConfig.problems(ranks:)`).
    /// `gradientBucketBytes`: the gradient sums' bucket size (0: one sum after backward, no overlap).
    public init(
        config: TrainConfig, saliencyEncoder: Encoder? = nil, comm: Communicator = .single,
        gradientBucketBytes: Int = GradientBuckets.defaultBucketBytes, execution: ExecutionConfig = .standard
    ) {
        self.config = config
        self.execution = execution
        self.comm = comm
        let rc = config.resnet
        res = config.resolution; channels = config.inChannels; batch = config.batch
        precondition(config.problems(ranks: comm.size).isEmpty, "training step: \(config.problems(ranks: comm.size))")
        local = config.batch / comm.size
        first = comm.rank * local
        grid = rc.finalMapSize(res)
        masking = config.masking
        fill = config.fill
        maskConfig.querySigma = config.hpNoise.query
        maskConfig.negSigma = config.hpNoise.hardNegative
        query = Encoder(config: rc, headDim: config.headDim, gradients: false)
        query.initialize(seed: config.seed)
        sgd = FusedSGD(store: query.store)
        sgd.momentum = config.sgdMomentum; sgd.weightDecay = config.weightDecay
        let params = query.store.parameterCount
        buckets =
            comm.isDistributed
            ? GradientBuckets(
                comm: comm, parameters: params,
                bucketBytes: gradientBucketBytes > 0 ? gradientBucketBytes : 4 * params + 4) : nil
        sgd.exchange = buckets
        let isMoco = config.method == .moco
        viewCount = 2
        var key: Encoder? = nil, queue: KeyQueue? = nil
        if isMoco {
            let k = Encoder(config: rc, headDim: config.headDim, trainable: false)
            k.store.copyState(from: query.store)
            key = k
            var rng = SplitMix64(seed: SplitMix64.derive(config.seed, RandomStream.queueInit.rawValue))
            queue = KeyQueue(length: config.queue, dim: config.headDim, rng: &rng)
        }
        self.saliencyEncoder = saliencyEncoder
        let B = batch, L = local, R = res, C = channels, D = config.headDim, H = config.hardNegatives
        let qBatch = isMoco ? L : 2 * L
        qPass = ResNetPass(
            layout: query.backbone, batch: qBatch, height: R, width: R, keepActivations: true, config: execution)
        qPass.statisticsSync = comm.statisticsSync
        // The no-grad forwards (keys, saliency, hard negatives) all run between the query pass's
        // backward and its next forward: they borrow its idle buffers and share its workspace.
        nPass = ResNetPass(
            layout: query.backbone, batch: L, height: R, width: R, keepActivations: false, config: execution,
            borrowing: qPass.idleArena,
            workspace: qPass.workspace)
        nPass.statisticsSync = comm.groupStatisticsSync
        let workspace = qPass.workspace
        sPass = saliencyEncoder.map {
            ResNetPass(
                layout: $0.backbone, batch: L, height: R, width: R, keepActivations: false, config: execution,
                workspace: workspace)
        }
        qHead = MLPHeadPass(layout: query.head!, batch: qBatch)
        nHead = MLPHeadPass(layout: (key ?? query).head!, batch: L)
        var bytes =
            qPass.allocatedBytes + nPass.allocatedBytes + (sPass?.allocatedBytes ?? 0)
            + qHead.allocatedBytes + nHead.allocatedBytes
        var owned: [UnsafeMutableRawPointer] = []
        func alloc<T>(_ n: Int, _ t: T.Type) -> UnsafeMutablePointer<T> {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(n, 1) * MemoryLayout<T>.stride, alignment: 64)
            owned.append(p); bytes += max(n, 1) * MemoryLayout<T>.stride
            return p.bindMemory(to: T.self, capacity: max(n, 1))
        }
        let img = R * R * C
        let distributed = comm.isDistributed
        queryView = alloc(qBatch * img, Float.self)
        keyView = alloc(L * img, Float.self)
        keyAll = distributed ? alloc(B * img, Float.self) : keyView
        hardView = alloc(B * img, Float.self)
        blurred = alloc(max(qBatch, B) * img, Float.self)
        filterScratch = alloc(filterScratchCount(n: max(qBatch, B), height: R, width: R, channels: C), Float.self)
        qSaliency = alloc(L * grid * grid, Float.self); kSaliency = alloc(B * grid * grid, Float.self)
        qz = alloc(qBatch * D, Float.self); qNorms = alloc(qBatch, Float.self); gradZ = alloc(qBatch * D, Float.self)
        kz = alloc(B * D, Float.self); kNorms = alloc(L, Float.self)
        tz = alloc(max(B * H, 1) * D, Float.self)
        hz = alloc(B * D, Float.self); hNorms = alloc(L, Float.self)
        permutation = Array(0..<B)
        shuffled = alloc(B * max(D, grid * grid), Float.self)
        shuffledLocal = distributed ? alloc(L * max(D, grid * grid), Float.self) : shuffled
        zGathered = distributed && !isMoco ? alloc(2 * B * D, Float.self) : qz
        zAll = distributed && !isMoco ? alloc(2 * B * D, Float.self) : qz
        queryCells = alloc(L * grid * grid, UInt8.self); hardCells = alloc(B * grid * grid, UInt8.self)
        queryCells.initialize(repeating: 0, count: L * grid * grid)
        hardCells.initialize(repeating: 0, count: B * grid * grid)
        if let key, let queue {
            let loss = InfoNCE(
                batch: L, dim: D, queueLength: config.queue, hardNegatives: masking == .none ? 0 : H,
                temperature: config.temperature, alpha: config.alpha)
            objective = .moco(key: key, queue: queue, loss: loss)
            bytes += loss.allocatedBytes
        } else {
            let loss = NTXent(
                batch: B, dim: D, hardNegatives: masking == .none ? 0 : H,
                temperature: config.temperature, alpha: config.alpha)
            objective = .simclr(loss: loss)
            bytes += loss.allocatedBytes
        }
        self.owned = owned
        let parameterBytes =
            8 * (query.store.parameterCount) + 4 * sgd.scratchCount + (buckets?.allocatedBytes ?? 0)
            + (key.map { 4 * $0.store.parameterCount } ?? 0) + (queue.map { 4 * $0.length * $0.dim } ?? 0)
        allocatedBytes = bytes + parameterBytes
        let ws = qPass.workspace.packCount * 4 + qPass.workspace.scratchBytes
        let passes = qPass.allocatedBytes + nPass.allocatedBytes + (sPass?.allocatedBytes ?? 0)
        memoryBreakdown = [
            (
                "parameters, momentum, key encoder, queue, SGD scratch" + (distributed ? ", gradient buckets" : ""),
                parameterBytes
            ),
            ("training pass: arena of activations and gradients", qPass.allocatedBytes - ws),
            ("no-grad pass: own buffers (the rest borrowed)", nPass.allocatedBytes + (sPass?.allocatedBytes ?? 0)),
            ("convolution workspace: weight panels, scratch", ws),
            ("views, masks, heads, objective", bytes - passes)
        ]
    }

    deinit { for p in owned { p.deallocate() } }

    public var hardNegativeCount: Int { masking == .none ? 0 : config.hardNegatives }

    /// Runs one step on a batch of normalised views (plain: the step high-pass filters them itself for
    /// the hp fill, after any saliency that reads the plain views): views[v] holds this rank's L
    /// samples of the global batch. `step` is the global step (it seeds the masks), `epoch` picks
    /// classical or own saliency.
    public func step(views: [[Float]], epoch: Int, step: Int, lr: Float) -> StepResult {
        let img = res * res * channels
        precondition(
            views.count >= 2 && views[0].count == local * img && views[1].count == local * img,
            "batch shape mismatch")
        let r: StepResult
        switch objective {
        case .moco(let key, let queue, let loss):
            r = mocoStep(views, key: key, queue: queue, loss: loss, epoch: epoch, step: step, lr: lr)
        case .simclr(let loss): r = simclrStep(views, loss: loss, epoch: epoch, step: step, lr: lr)
        }
        return r
    }

    @inline(__always) func timed(_ slot: WritableKeyPath<StepProfile, Double>, _ body: () -> Void) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        profile[keyPath: slot] += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
    }

    var useClassical: Bool { config.saliency == .classical }

    /// Whether the encoder trains (and is evaluated) on high-pass views (the hp fill, PAPER.md): the step
    /// filters both views itself, after any saliency that must see the plain ones.
    public var highPassViews: Bool { masking != .none && fill == .hp }

    /// Whether this epoch's saliency reads the plain views (network-free, or an imported encoder)
    /// rather than the training encoder's own features of the views it trains on.
    func plainSaliency(epoch: Int) -> Bool {
        saliencyEncoder != nil || useClassical || epoch < config.saliencyWarmup
    }

    /// The key encoder's batch-norm groups of a no-grad forward on this rank (whole groups of the
    /// global batch's `splits`).
    func localSplits(_ splits: Int) -> Int { max(1, splits / comm.size) }

    /// Saliency of this rank's plain views `view` [L][R][R][C] into `out` [L][G*G]: from the imported
    /// encoder's last feature map (eval-mode batch norm) or the network-free map.
    func plainSaliency(of view: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>) {
        if let s = saliencyEncoder, let sp = sPass {
            sp.forward(input: view, store: s.store, mode: .eval)
            saliencyFromFeatures(
                sp.lastFeatureMap, batch: local, height: sp.mapHeight, width: sp.mapWidth,
                channels: s.config.featureDim, grid: grid, output: out)
        } else {
            classicalSaliency(view, batch: local, height: res, width: res, channels: channels, grid: grid, output: out)
        }
    }

    /// Saliency of this rank's training views [L] from `encoder`'s last feature map, from a forward of
    /// its own that leaves the running batch-norm statistics untouched.
    func ownSaliency(of view: UnsafeMutablePointer<Float>, encoder: Encoder, out: UnsafeMutablePointer<Float>) {
        nPass.forward(
            input: view, store: encoder.store,
            mode: .batchStatistics(splits: localSplits(config.effectiveBNSplits)))
        saliencyFromFeatures(
            nPass.lastFeatureMap, batch: local, height: nPass.mapHeight, width: nPass.mapWidth,
            channels: encoder.config.featureDim, grid: grid, output: out)
    }

    /// Rows [L][width] that `body` writes for this rank's samples, gathered from every rank into `out`
    /// [B][width] in sample order.
    func gathered(width: Int, into out: UnsafeMutablePointer<Float>, _ body: (UnsafeMutablePointer<Float>) -> Void) {
        body(shuffledLocal)
        comm.allGather(shuffledLocal, count: local * width, into: out, "gathering per-sample rows")
    }

    /// Rows [L][width] in `shuffledLocal` for the positions first ..< first + L of the last shuffled
    /// forward, gathered from every rank and put back in sample order into `out` [B][width].
    func unshuffled(width: Int, into out: UnsafeMutablePointer<Float>) {
        comm.allGather(shuffledLocal, count: local * width, into: shuffled, "gathering a shuffled forward")
        for p in 0..<batch { (out + permutation[p] * width).update(from: shuffled + p * width, count: width) }
    }

    /// Every rank's key-side views [B] (this rank's [L] `views` with one process).
    func keySideAll(_ views: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard comm.isDistributed else { return views }
        comm.allGather(views, count: local * res * res * channels, into: keyAll, "gathering the key views")
        return keyAll
    }

    /// High-pass filters `count` views in place (the hp fill's input).
    func highPassInPlace(_ views: UnsafeMutablePointer<Float>, count: Int) {
        highPassFilter(views, blurred, scratch: filterScratch, n: count, height: res, width: res, channels: channels)
        views.update(from: blurred, count: count * res * res * channels)
    }

    /// Embeds `view` [B] (every rank's samples) with `encoder` (no grad) into normalised rows at `out`
    /// [B][D]. Shuffle-BN stand-in: the batch is permuted (seeded by step and `tag`) before a forward
    /// whose batch norm uses `bnSplits` groups (each rank runs its whole groups of the shuffled order),
    /// and the embeddings are gathered and put back in order, so that no sample's key shares its
    /// normalisation group with the same neighbours as its query. `lastFeatureMap` of nPass holds this
    /// rank's share in shuffled order: `unshuffled` puts per-sample results derived from it back. Only
    /// the key forward (`updateStatistics`) moves the encoder's running batch-norm statistics.
    func embed(
        _ view: UnsafeMutablePointer<Float>, encoder: Encoder, out: UnsafeMutablePointer<Float>,
        norms: UnsafeMutablePointer<Float>, step: Int, tag: UInt64, updateStatistics: Bool,
        splits: Int? = nil
    ) {
        let B = batch, D = config.headDim, img = res * res * channels
        var rng = SplitMix64(seed: SplitMix64.derive(config.seed, UInt64(step), tag))
        for i in 0..<B { permutation[i] = i }
        for i in stride(from: B - 1, to: 0, by: -1) { permutation.swapAt(i, rng.int(below: i + 1)) }
        for i in 0..<local { (nPass.input + i * img).update(from: view + permutation[first + i] * img, count: img) }
        let s = localSplits(splits ?? config.effectiveBNSplits)
        nPass.forward(
            input: nPass.input, store: encoder.store,
            mode: updateStatistics ? .train(splits: s) : .batchStatistics(splits: s))
        nHead.forward(features: nPass.features, store: encoder.store)
        l2NormalizeForward(rows: local, dim: D, input: nHead.output, output: shuffledLocal, norms: norms)
        unshuffled(width: D, into: out)
    }

    /// Hard negatives of the key-side views `source` [B] (no grad, running statistics untouched), for
    /// every sample of the global batch.
    /// Per sample (our default): each sample's own view masked on its salient cells H times, each
    /// embedded with the key's batch-norm groups. Shared (the official code): the batch masked once
    /// and its first H images embedded one by one (batch-norm statistics of each image alone, as a
    /// batch of one), every query then facing the same H hard negatives.
    func hardNegatives(
        from source: UnsafeMutablePointer<Float>, saliency sal: UnsafeMutablePointer<Float>,
        encoder: Encoder, step: Int
    ) {
        let B = batch, H = hardNegativeCount, D = config.headDim, img = res * res * channels
        if H == 0 { return }
        if fill == .blur {
            timed(\.masking) {
                strongBlur(source, blurred, scratch: filterScratch, n: B, height: res, width: res, channels: channels)
            }
        }
        let shared = config.hardNegativeMode == .shared
        for h in 0..<(shared ? 1 : H) {
            timed(\.masking) {
                hardView.update(from: source, count: B * img)
                applyMasks(
                    views: hardView, blurred: fill == .blur ? UnsafePointer(blurred) : nil,
                    saliency: maskSaliency(sal), batch: B, height: res, width: res, channels: channels, grid: grid,
                    role: .hardNegative,
                    mode: masking, fill: fill, config: maskConfig, seed: config.seed, step: step * H + h,
                    cellMasks: h == 0 ? hardCells : nil, records: nil)
            }
            timed(\.hardNegatives) {
                embed(
                    hardView, encoder: encoder, out: hz, norms: hNorms, step: step,
                    tag: RandomStream.hardNegativeShuffle.rawValue + UInt64(h), updateStatistics: false,
                    splits: shared ? B : nil)
                if shared {
                    for b in 0..<B { (tz + b * H * D).update(from: hz, count: H * D) }
                } else {
                    for b in 0..<B { (tz + (b * H + h) * D).update(from: hz + b * D, count: D) }
                }
            }
        }
    }

    /// Masks this rank's query views [L] (samples first ..< first + L of the batch).
    func maskQueries(_ view: UnsafeMutablePointer<Float>, saliency sal: UnsafeMutablePointer<Float>, step: Int) {
        timed(\.masking) {
            if fill == .blur {
                strongBlur(view, blurred, scratch: filterScratch, n: local, height: res, width: res, channels: channels)
            }
            applyMasks(
                views: view, blurred: fill == .blur ? UnsafePointer(blurred) : nil,
                saliency: maskSaliency(sal), batch: local, height: res, width: res, channels: channels, grid: grid,
                role: .query,
                mode: masking, fill: fill, config: maskConfig, seed: config.seed, step: step,
                cellMasks: queryCells, records: nil, firstIndex: first)
        }
    }

    /// The saliency the masks may read: only saliency masking computes it; random masking then draws
    /// its hard-negative cell counts from the assumed foreground share instead.
    func maskSaliency(_ sal: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float>? {
        masking == .saliency ? sal : nil
    }

    /// Saliency of both views: the query's [L] into qSaliency, the key side's for every sample [B] into
    /// kSaliency. Plain-view saliency runs before the hp filter (`plain`), the encoder's own after it.
    func saliencies(
        query: UnsafeMutablePointer<Float>, key: UnsafeMutablePointer<Float>, encoder: Encoder,
        plain: Bool, keyAlreadyEmbedded: Bool = false
    ) {
        timed(\.saliency) {
            if plain {
                gathered(width: grid * grid, into: kSaliency) { plainSaliency(of: key, out: $0) }
                plainSaliency(of: query, out: qSaliency)
            } else {
                if keyAlreadyEmbedded {
                    // The key embedding forward just ran on this rank's share of the shuffled key views.
                    saliencyFromFeatures(
                        nPass.lastFeatureMap, batch: local, height: nPass.mapHeight,
                        width: nPass.mapWidth, channels: encoder.config.featureDim, grid: grid,
                        output: shuffledLocal)
                    unshuffled(width: grid * grid, into: kSaliency)
                } else {
                    gathered(width: grid * grid, into: kSaliency) { ownSaliency(of: key, encoder: encoder, out: $0) }
                }
                ownSaliency(of: query, encoder: encoder, out: qSaliency)
            }
        }
    }

    /// The loss and accuracy of this rank's rows, averaged over the ranks.
    func averaged(_ r: ObjectiveResult) -> ObjectiveResult {
        guard comm.isDistributed else { return r }
        var v: [Double] = [Double(r.loss), Double(r.accuracy)]
        v.withUnsafeMutableBufferPointer { comm.sum($0.baseAddress!, count: 2, "the step's loss") }
        return ObjectiveResult(loss: Float(v[0] / Double(comm.size)), accuracy: Float(v[1] / Double(comm.size)))
    }

    func mocoStep(
        _ views: [[Float]], key: Encoder, queue: KeyQueue, loss obj: InfoNCE, epoch: Int, step: Int, lr: Float
    ) -> StepResult {
        let B = batch, L = local, img = res * res * channels, D = config.headDim, H = config.hardNegatives
        views[0].withUnsafeBufferPointer { queryView.update(from: $0.baseAddress!, count: L * img) }
        views[1].withUnsafeBufferPointer { keyView.update(from: $0.baseAddress!, count: L * img) }
        // Key encoder follows the query encoder (parameters only; its BN statistics are its own).
        timed(\.optimizer) {
            momentumUpdate(
                count: key.store.parameterCount, target: key.store.params, source: query.store.params,
                m: config.mocoMomentum)
        }
        let selfSaliency = masking == .saliency && !plainSaliency(epoch: epoch)
        if masking == .saliency && !selfSaliency {
            saliencies(query: queryView, key: keyView, encoder: key, plain: true)
        }
        if highPassViews {
            timed(\.masking) {
                highPassInPlace(queryView, count: L); highPassInPlace(keyView, count: L)
            }
        }
        let keys = keySideAll(keyView)
        timed(\.keyForward) {
            embed(
                keys, encoder: key, out: kz, norms: kNorms, step: step, tag: RandomStream.keyShuffle.rawValue,
                updateStatistics: true)
        }
        if masking != .none {
            if selfSaliency {
                saliencies(query: queryView, key: keyView, encoder: key, plain: false, keyAlreadyEmbedded: true)
            }
            hardNegatives(from: keys, saliency: kSaliency, encoder: key, step: step)
            maskQueries(queryView, saliency: qSaliency, step: step)
        }
        encodeQueries(rows: L)
        var result = ObjectiveResult(loss: 0, accuracy: 0)
        let k = UnsafePointer(kz + first * D)
        let hard = hardNegativeCount > 0 ? UnsafePointer(tz + first * H * D) : nil
        timed(\.loss) { result = averaged(obj.forward(q: qz, k: k, queue: queue.keys, hard: hard)) }
        if !result.loss.isFinite { return StepResult(loss: result.loss, accuracy: result.accuracy, lr: lr) }
        timed(\.backward) {
            obj.backward(k: k, queue: queue.keys, hard: hard)
            // The objective is the mean over the global batch: this rank's rows weigh L / B.
            if comm.isDistributed { scale(count: L * D, obj.gradQuery, by: 1 / Float(comm.size)) }
        }
        backwardAndUpdate(rows: L, gradEmbedding: obj.gradQuery, lr: lr)
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
    /// applied to each tensor as soon as its gradient exists (data-parallel: as soon as its sum over
    /// the ranks arrives).
    func backwardAndUpdate(rows: Int, gradEmbedding: UnsafePointer<Float>, lr: Float) {
        sgd.lr = lr
        timed(\.backward) {
            l2NormalizeBackward(
                rows: rows, dim: config.headDim, output: qz, norms: qNorms, gradOutput: gradEmbedding,
                gradInput: gradZ, accumulate: false)
            qHead.backward(gradOutput: gradZ, store: query.store, update: sgd)
            qPass.backward(gradFeatures: qHead.gradFeatures, store: query.store, update: sgd)
        }
        timed(\.optimizer) { sgd.finish() }
    }

    func simclrStep(_ views: [[Float]], loss obj: NTXent, epoch: Int, step: Int, lr: Float) -> StepResult {
        let B = batch, L = local, img = res * res * channels, D = config.headDim
        let first = queryView, second = queryView + L * img
        views[0].withUnsafeBufferPointer { first.update(from: $0.baseAddress!, count: L * img) }
        views[1].withUnsafeBufferPointer { second.update(from: $0.baseAddress!, count: L * img) }
        let selfSaliency = masking == .saliency && !plainSaliency(epoch: epoch)
        if masking == .saliency && !selfSaliency {
            saliencies(query: first, key: second, encoder: query, plain: true)
        }
        if highPassViews { timed(\.masking) { highPassInPlace(first, count: 2 * L) } }
        if masking != .none {
            if selfSaliency { saliencies(query: first, key: second, encoder: query, plain: false) }
            hardNegatives(from: keySideAll(second), saliency: kSaliency, encoder: query, step: step)
            maskQueries(first, saliency: qSaliency, step: step)
        }
        encodeQueries(rows: 2 * L)
        // NT-Xent over the global batch: every rank gathers all 2B embeddings, in [first B | second B]
        // order, and computes the whole objective; its rows' gradients are exactly one process's.
        var z = UnsafePointer(qz)
        if comm.isDistributed {
            comm.allGather(qz, count: 2 * L * D, into: zGathered, "gathering the embeddings")
            for r in 0..<comm.size {
                (zAll + r * L * D).update(from: zGathered + r * 2 * L * D, count: L * D)
                (zAll + (B + r * L) * D).update(from: zGathered + (r * 2 + 1) * L * D, count: L * D)
            }
            z = UnsafePointer(zAll)
        }
        var result = ObjectiveResult(loss: 0, accuracy: 0)
        let hard = hardNegativeCount > 0 ? UnsafePointer(tz) : nil
        timed(\.loss) { result = obj.forward(z: z, hard: hard) }
        if !result.loss.isFinite { return StepResult(loss: result.loss, accuracy: result.accuracy, lr: lr) }
        var grad = UnsafePointer(obj.gradZ)
        timed(\.backward) {
            obj.backward(z: z, hard: hard)
            if comm.isDistributed {
                // This rank's rows: its first views, then its second views (the gathered buffer is free).
                zGathered.update(from: obj.gradZ + self.first * D, count: L * D)
                (zGathered + L * D).update(from: obj.gradZ + (B + self.first) * D, count: L * D)
                grad = UnsafePointer(zGathered)
            }
        }
        backwardAndUpdate(rows: 2 * L, gradEmbedding: grad, lr: lr)
        profile.steps += 1
        return StepResult(loss: result.loss, accuracy: result.accuracy, lr: lr)
    }

    /// The views of the last step after masking (query side), for previews: [B][R][R][C].
    public var lastQueryViews: UnsafePointer<Float> { UnsafePointer(queryView) }
    public var lastKeyViews: UnsafePointer<Float> {
        UnsafePointer(config.method == .moco ? keyView : queryView + local * res * res * channels)
    }
    public var lastHardViews: UnsafePointer<Float> { UnsafePointer(hardView) }
    public var lastQuerySaliency: UnsafePointer<Float> { UnsafePointer(qSaliency) }
    /// The last step's hard-negative embeddings [B][H][D] (normalised), as the objective read them.
    public var lastHardNegativeEmbeddings: UnsafePointer<Float> { UnsafePointer(tz) }
    public var lastKeySaliency: UnsafePointer<Float> { UnsafePointer(kSaliency) }
    public var gridSize: Int { grid }
}

/// x *= s over `count` floats.
func scale(count: Int, _ x: UnsafeMutablePointer<Float>, by s: Float) {
    for i in 0..<count { x[i] *= s }
}

/// The contrastive objective of a training step, with what only it owns.
public enum Objective {
    /// MoCo v2: a momentum key encoder, a queue of negative keys, InfoNCE over the queries.
    case moco(key: Encoder, queue: KeyQueue, loss: InfoNCE)
    /// SimCLR: the batch's 2B views against each other, NT-Xent.
    case simclr(loss: NTXent)
}
