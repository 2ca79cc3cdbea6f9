// Forward and backward of a ResNet backbone for one (batch, height, width), with every activation,
// gradient and scratch buffer planned and allocated once, at construction. Nothing allocates in
// forward() or backward(). The pass is one list of steps over numbered buffers (PassProgram): the
// buffers are placed in one arena by their lifetimes over that list (ArenaPlan), and forward() and
// backward() run the same list. In a training pass backward's buffers for a stage live where the
// later stages' activations were.
import Kernels

public enum BatchNormMode: Sendable, Equatable {
    /// Batch statistics (running statistics updated). `splits` > 1 normalises each contiguous
    /// group of batch/splits samples on its own (MoCo's shuffle-BN stand-in); backward needs 1.
    case train(splits: Int)
    /// Batch statistics as `train`, the running statistics left untouched: the auxiliary no-grad
    /// forwards of a training step (saliency, hard negatives), whose masked or extra views must not
    /// reach the statistics used at evaluation.
    case batchStatistics(splits: Int)
    /// Running statistics.
    case eval

    /// The batch-norm groups of a batch-statistics mode (nil in eval mode).
    var splits: Int? {
        switch self {
        case .train(let s), .batchStatistics(let s): return s
        case .eval: return nil
        }
    }
}

public final class ResNetPass {
    public typealias Ptr = UnsafeMutablePointer<Float>

    /// A convolution + batch norm of the program and its saved batch statistics.
    struct Node {
        var spec: PassNode
        var mean: Ptr
        var invStd: Ptr
        var unit: ConvBN { spec.unit }
        var plan: ConvPlan { spec.plan }
        var bnPixels: Int { spec.bnPixels }
    }

    public let layout: ResNetLayout
    public let batch: Int, height: Int, width: Int
    /// Whether activations are kept for backward (training); otherwise buffers are recycled.
    public let keepsActivations: Bool
    /// The settings the pass was planned with; its kernels run with them for its lifetime.
    public let config: ExecutionConfig
    /// Where the pass adds its seconds per operation (bench train --profile), or nil.
    public var profiler: PassProfiler? = nil

    /// The steps forward() and backward() run.
    public let program: PassProgram
    var nodes: [Node] = []
    /// Where each of the program's buffers lives.
    var buffers: [Ptr] = []
    var pool: (shape: MaxPoolShape, argmax: UnsafeMutablePointer<Int32>)?
    /// The input batch [batch][height][width][inChannels]; write into it directly to skip forward()'s copy.
    public let input: Ptr
    /// Pooled features [batch][featureDim].
    public let features: Ptr
    /// The last block's output [batch][mapSize][mapSize][featureDim] (saliency reads it).
    public var lastFeatureMap: UnsafePointer<Float> { UnsafePointer(buffers[program.featureMap]) }
    public let mapHeight: Int, mapWidth: Int
    /// The arena every buffer but the input lives in, and its length in floats.
    let arena: Ptr
    let arenaCount: Int
    /// Whether the arena is borrowed (not allocated by this pass).
    public let borrowedArena: Bool
    public let workspace: ConvWorkspace
    var scratch: UnsafeMutableRawPointer { workspace.scratch }
    private var allocations: [UnsafeMutableRawPointer] = []
    /// Two sets of mean and scale rows (one per batch-norm group, affineRowCount floats a set) of batch
    /// norms applied by their consumer (ExecutionConfig.fusesBatchNorms): a mid-block one's by the next
    /// convolution, a downsampling block's two by the one pass that sums them.
    var affineMean: Ptr, affineScale: Ptr
    var affineRowCount = 0
    /// Mid-block batch norms applied inside the next convolution's input transform.
    public var fusedMidCount: Int { program.fusedMidCount }
    /// Bytes this pass allocated.
    public private(set) var allocatedBytes = 0
    var lastMode: BatchNormMode = .eval

    /// `borrowing`: memory owned by someone else and idle while this pass runs (a training pass's
    /// `idleArena`), used for this pass's arena when it is large enough; only for a pass that keeps no
    /// activations. `workspace`: weight panels and scratch shared with passes that never run at the
    /// same time as this one. `sharedArena: false` gives every buffer its own memory (tests compare
    /// the two plans).
    public init(
        layout: ResNetLayout, batch: Int, height: Int, width: Int, keepActivations: Bool,
        config: ExecutionConfig = .standard, borrowing: UnsafeMutableBufferPointer<Float>? = nil,
        workspace: ConvWorkspace? = nil, sharedArena: Bool = true
    ) {
        precondition(batch > 0 && height > 0 && width > 0)
        precondition(borrowing == nil || !keepActivations, "a training pass owns its arena")
        self.layout = layout; self.batch = batch; self.height = height; self.width = width
        self.keepsActivations = keepActivations
        self.config = config
        var allocs: [UnsafeMutableRawPointer] = []
        var bytes = 0
        func alloc(_ floats: Int) -> Ptr {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(floats, 16) * 4, alignment: 64)
            allocs.append(p); bytes += max(floats, 16) * 4
            return p.bindMemory(to: Float.self, capacity: max(floats, 16))
        }
        let program = PassProgram(
            layout: layout, batch: batch, height: height, width: width, config: config, training: keepActivations)
        self.program = program
        mapHeight = program.mapHeight; mapWidth = program.mapWidth
        // Shared buffers sized by the largest convolution.
        var maxPack = 0, maxScratch = 0, maxSums = 0
        let t = max(config.threads, 1)
        for n in program.nodes {
            let p = n.plan
            // Per-tile sums, then the shift (K floats). Forward and backward-data panels are never
            // live at once: one buffer holds either.
            if p.usesWinograd { maxSums = max(maxSums, ConvOutputSums.count(p) + ConvOutputSums.stride(p)) }
            maxPack = max(maxPack, p.packedForwardCount, p.packedBackwardDataCount)
            maxScratch = max(
                maxScratch, p.scratchBytes(threads: t),
                batchNormScratchBytes(BatchNormShape(pixels: n.bnPixels, channels: p.k), threads: t))
        }
        let ws = workspace ?? ConvWorkspace()
        self.workspace = ws
        bytes += ws.reserve(packFloats: maxPack, scratchBytes: maxScratch + 64, sumsFloats: maxSums)
        // The pass owns its input: backward reads it again, so it must outlive forward()'s argument.
        let inputBuffer = alloc(program.floats[program.input])
        self.input = inputBuffer
        nodes = program.nodes.map { n in
            Node(spec: n, mean: alloc(n.unit.cout), invStd: alloc(n.unit.cout))
        }
        pool = program.pool.map { ps in
            let am = UnsafeMutableRawPointer.allocate(byteCount: max(ps.outputCount, 16) * 4, alignment: 64)
            allocs.append(am); bytes += max(ps.outputCount, 16) * 4
            return (ps, am.bindMemory(to: Int32.self, capacity: ps.outputCount))
        }
        let (offsets, count) = program.arena(shared: sharedArena)
        arenaCount = count
        if let borrowing, borrowing.count >= count, let base = borrowing.baseAddress {
            arena = base; borrowedArena = true
        } else {
            arena = alloc(count); borrowedArena = false
        }
        buffers = offsets.map { [arena] in $0.map { arena + $0 } ?? inputBuffer }
        features = alloc(batch * layout.config.featureDim)
        let rows = batch * bnPadded(layout.blocks.flatMap(\.convs).map(\.cout).max() ?? 1)
        affineRowCount = rows
        affineMean = alloc(2 * rows); affineScale = alloc(2 * rows)
        allocations = allocs
        allocatedBytes = bytes
    }

    deinit { for p in allocations { p.deallocate() } }

    /// Bytes of the pass's arena (activations, temporaries and, in training, gradients), borrowed or not.
    public var arenaBytes: Int { arenaCount * 4 }

    /// A training pass's arena: its contents do not outlive one forward + backward, so a no-grad pass
    /// that runs entirely between this pass's backward and its next forward may borrow it (nil for a
    /// pass that keeps no activations).
    public var idleArena: UnsafeMutableBufferPointer<Float>? {
        keepsActivations ? UnsafeMutableBufferPointer(start: arena, count: arenaCount) : nil
    }

    // MARK: Forward

    /// Runs the backbone on `input` [batch][height][width][inChannels] (NHWC, normalised) and
    /// writes the pooled features. In train mode running statistics are updated.
    public func forward(input: UnsafePointer<Float>, store: ParameterStore, mode: BatchNormMode) {
        precondition(Threads.count <= config.threads, "thread count grew after planning")
        lastMode = mode
        if input != UnsafePointer(self.input) { self.input.update(from: input, count: program.floats[program.input]) }
        for step in program.forward {
            switch step {
            case .convBN(let s):
                convBN(s, store, mode)
            case .maxPool(let i, let o):
                let pool = pool!
                timed(.elementwise) {
                    maxPoolForward(pool.shape, input: buffers[i], output: buffers[o], argmax: pool.argmax)
                }
            case .batchNormSum(let m, let mc, let d, let dc, let o):
                timed(.bnForward) {
                    applySum(
                        main: nodes[m], mainConv: buffers[mc], down: nodes[d], downConv: buffers[dc], store, mode,
                        output: buffers[o])
                }
            case .averagePool(let i):
                timed(.elementwise) {
                    globalAvgPoolForward(
                        n: batch, pixels: mapHeight * mapWidth, channels: layout.config.featureDim,
                        input: buffers[i], output: features)
                }
            default:
                preconditionFailure("backward step in the forward program")
            }
        }
    }

    /// Convolution then batch norm (or only its statistics) of one program step.
    func convBN(_ s: ConvBNStep, _ store: ParameterStore, _ mode: BatchNormMode) {
        let n = nodes[s.node], u = n.unit
        let y = buffers[s.conv]
        timed(.pack) { conv2dPackForward(n.plan, weights: store.params + u.weight, packed: workspace.pack) }
        // Training-mode batch statistics from the Winograd forward's epilogue (per-tile sums around the
        // running mean, copied first: the batch norm updates it) rather than from reading y back.
        var sums: ConvOutputSums? = nil
        if mode.splits != nil, n.plan.usesWinograd, config.statisticsInEpilogue {
            precondition(workspace.sumsCount >= ConvOutputSums.count(n.plan) + u.cout, "workspace sums not planned")
            let shift = workspace.sums + ConvOutputSums.count(n.plan)
            shift.update(from: store.buffers + u.runningMean, count: u.cout)
            sums = ConvOutputSums(sums: workspace.sums, shift: shift)
        }
        let inputAffine = s.inputAffine.map { midAffine(nodes[$0], store, mode) }
        timed(
            n.plan.usesWinograd || n.plan.usesWinogradStride2 ? .convWinograd : .convDirect, shape: n.plan.shape, "fwd"
        ) {
            conv2dForward(
                n.plan, input: buffers[s.input], packed: workspace.pack, output: y, scratch: scratch,
                inputAffine: inputAffine, outputSums: sums)
        }
        timed(.bnForward) {
            bnForward(
                n, store, mode, conv: y, residual: s.residual.map { buffers[$0] }, output: s.output.map { buffers[$0] },
                rowSet: s.rowSet, sums: sums)
        }
    }

    /// Batch norm over several processes (data-parallel training: this pass holds one process's share
    /// of the batch): training-mode forwards (and, in `sharedBatch` mode, backward) use it.
    public var statisticsSync: BNStatisticsSync?


    /// Batch norm of `conv` into `output`; with no output, only the statistics (training: saved, the
    /// running ones updated, each group's mean and scale rows left in rows set `rowSet`).
    func bnForward(
        _ n: Node, _ store: ParameterStore, _ mode: BatchNormMode, conv: Ptr, residual: Ptr?, output: Ptr?,
        rowSet: Int = 0, sums: ConvOutputSums? = nil
    ) {
        let u = n.unit, C = u.cout
        let relu = u.relu || residual != nil
        switch mode {
        case .eval:
            guard let output else { return }  // affineRows reads the running statistics itself
            batchNormForwardInference(
                BatchNormShape(pixels: n.bnPixels, channels: C), input: conv,
                gamma: store.params + u.gamma, beta: store.params + u.beta,
                runningMean: store.buffers + u.runningMean, runningVar: store.buffers + u.runningVar,
                eps: 1e-5, relu: relu, residual: residual, output: output)
        case .train(let splits), .batchStatistics(let splits):
            let s = max(1, min(splits, batch))
            let momentum: Float = mode == .train(splits: splits) ? 0.1 : 0  // 0: running statistics untouched
            let sync = momentum != 0 ? statisticsSync : nil
            precondition(
                sync?.mode != .splitGroups || s <= bnMaxGroups,
                "split groups over processes: at most \(bnMaxGroups) per process")
            precondition(batch % s == 0, "batch \(batch) not divisible into \(s) batch-norm splits")
            // Up to bnMaxGroups splits in one call (two parallel regions for all of them).
            let px = n.bnPixels / s, cp = bnPadded(C)
            var i = 0
            while i < s {
                let g = min(bnMaxGroups, s - i)
                let sh = BatchNormShape(pixels: g * px, channels: C)
                let gamma = store.params + u.gamma
                let rm = store.buffers + u.runningMean, rv = store.buffers + u.runningVar
                // This call's groups' tiles of the epilogue's sums (whole images per group).
                let tileSums = sums.map { o -> BNTileSums in
                    let tpg = n.plan.wgTiles / s, stride = ConvOutputSums.stride(n.plan)
                    return BNTileSums(
                        sums: o.sums + i * tpg * 2 * stride, tiles: g * tpg, stride: stride, shift: o.shift)
                }
                if let output {
                    batchNormForwardTraining(
                        sh, input: conv + i * px * C, gamma: gamma, beta: store.params + u.beta,
                        runningMean: rm, runningVar: rv, momentum: momentum, eps: 1e-5, relu: relu,
                        residual: residual.map { $0 + i * px * C }, output: output + i * px * C,
                        saveMean: n.mean, saveInvStd: n.invStd, groups: g, scratch: scratch,
                        tileSums: tileSums, sync: sync, wide: config.wideTiles)
                } else {
                    batchNormTrainingStatistics(
                        sh, input: conv + i * px * C, gamma: gamma, runningMean: rm, runningVar: rv,
                        momentum: momentum, eps: 1e-5, saveMean: n.mean, saveInvStd: n.invStd, groups: g,
                        mean: affineMean + rowSet * affineRowCount + i * cp,
                        scale: affineScale + rowSet * affineRowCount + i * cp, scratch: scratch,
                        tileSums: tileSums, sync: sync, wide: config.wideTiles)
                }
                i += g
            }
            if momentum != 0 { store.counters[u.counter] += 1 }
        }
    }

    /// The mean and scale rows of a batch norm whose statistics bnForward left in rows set `set`
    /// (training: one row per group) or whose running statistics apply (eval: written here, one row),
    /// and the number of groups.
    func affineRows(_ n: Node, _ store: ParameterStore, _ mode: BatchNormMode, set: Int)
        -> (mean: Ptr, scale: Ptr, groups: Int)
    {
        let u = n.unit
        let mean = affineMean + set * affineRowCount, scale = affineScale + set * affineRowCount
        switch mode {
        case .eval:
            batchNormInferenceAffine(
                channels: u.cout, gamma: store.params + u.gamma, runningMean: store.buffers + u.runningMean,
                runningVar: store.buffers + u.runningVar, eps: 1e-5, mean: mean, scale: scale)
            return (mean, scale, 1)
        case .train(let splits), .batchStatistics(let splits):
            return (mean, scale, max(1, min(splits, batch)))
        }
    }

    /// The affine of a mid-block batch norm (+ ReLU), rows set 0, for the next convolution to apply to its input.
    func midAffine(_ n: Node, _ store: ParameterStore, _ mode: BatchNormMode) -> ConvInputAffine {
        let r = affineRows(n, store, mode, set: 0)
        return ConvInputAffine(
            mean: r.mean, scale: r.scale, shift: store.params + n.unit.beta, groupStride: bnPadded(n.unit.cout),
            imagesPerGroup: batch / r.groups)
    }

    /// relu(BN(main) + BN(down)) into `output`: a downsampling block's end from the two batch norms'
    /// rows (sets 0 and 1).
    func applySum(
        main m: Node, mainConv: Ptr, down d: Node, downConv: Ptr, _ store: ParameterStore, _ mode: BatchNormMode,
        output: Ptr
    ) {
        let a = affineRows(m, store, mode, set: 0), b = affineRows(d, store, mode, set: 1)
        batchNormApplySum(
            BatchNormShape(pixels: d.bnPixels, channels: d.unit.cout), input: downConv, mean: b.mean, scale: b.scale,
            beta: store.params + d.unit.beta,
            addend: BNAddend(x: mainConv, mean: a.mean, scale: a.scale, shift: store.params + m.unit.beta),
            output: output, groups: b.groups, groupStride: bnPadded(d.unit.cout), wide: config.wideTiles)
    }

    // MARK: Backward

    /// Back-propagates d(loss)/d(features) [batch][featureDim] through the backbone of the last
    /// forward (train mode, one split), writing every backbone parameter's gradient into store.grads.
    /// With `update`, each parameter tensor is updated by SGD as soon as its gradient exists (and its
    /// last read is done) instead of writing store.grads.
    public func backward(gradFeatures: UnsafePointer<Float>, store: ParameterStore, update: FusedSGD? = nil) {
        precondition(keepsActivations, "backward needs a pass planned with keepActivations")
        precondition(update == nil ? store.hasGradients : store.isTrainable, "backward needs a store with gradients")
        precondition(lastMode == .train(splits: 1), "backward needs a forward in train mode with one split")
        for step in program.backward {
            switch step {
            case .averagePoolBackward(let g):
                timed(.elementwise) {
                    globalAvgPoolBackward(
                        n: batch, pixels: mapHeight * mapWidth, channels: layout.config.featureDim,
                        gradOutput: gradFeatures, gradInput: buffers[g], accumulate: false)
                }
            case .reluBackward(let o, let g):
                timed(.elementwise) {
                    reluBackward(
                        count: program.floats[g], output: buffers[o], gradOutput: buffers[g], gradInput: buffers[g],
                        accumulate: false)
                }
            case .batchNormRebuild(let i, let c, let o):
                let n = nodes[i], u = n.unit
                timed(.bnBackward) {
                    batchNormApplySaved(
                        BatchNormShape(pixels: n.bnPixels, channels: u.cout), input: buffers[c],
                        gamma: store.params + u.gamma, beta: store.params + u.beta, saveMean: n.mean,
                        saveInvStd: n.invStd, relu: u.relu, output: buffers[o], scratch: scratch, wide: config.wideTiles
                    )
                }
            case .batchNormBackward(let i, let c, let m, let g, let gc):
                bnBackward(
                    nodes[i], store, conv: buffers[c], output: m.map { buffers[$0] }, gradOut: buffers[g],
                    gradIn: buffers[gc], update: update)
            case .convBackward(let i, let x, let saved, let gc, let gi, let accumulate):
                convBackward(
                    nodes[i], store, input: buffers[x], inputAffine: saved.map { savedAffine(nodes[$0], store) },
                    gradConv: buffers[gc], gradInput: gi.map { buffers[$0] }, accumulate: accumulate, update: update)
            case .addGradient(let into, let from):
                timed(.elementwise) {
                    addForward(
                        count: program.floats[into], buffers[into], buffers[from], relu: false, output: buffers[into])
                }
            case .maxPoolBackward(let g, let into):
                let pool = pool!
                timed(.elementwise) {
                    maxPoolBackward(pool.shape, gradOutput: buffers[g], argmax: pool.argmax, gradInput: buffers[into])
                }
            case .convForward(let i, let x, let o):
                let n = nodes[i]
                timed(.pack) {
                    conv2dPackForward(n.plan, weights: store.params + n.unit.weight, packed: workspace.pack)
                }
                timed(.convDirect, shape: n.plan.shape, "fwd") {
                    conv2dForward(
                        n.plan, input: buffers[x], packed: workspace.pack, output: buffers[o], scratch: scratch)
                }
            default:
                preconditionFailure("forward step in the backward program")
            }
        }
    }

    /// The affine that rebuilds a mid-block output from its kept conv output, as batchNormApplySaved
    /// does (mean and gamma * invstd rows of whole vectors), for the next convolution's backward-weights.
    func savedAffine(_ n: Node, _ store: ParameterStore) -> ConvInputAffine {
        let u = n.unit
        batchNormSavedAffine(
            channels: u.cout, gamma: store.params + u.gamma, saveMean: n.mean, saveInvStd: n.invStd,
            mean: affineMean, scale: affineScale)
        return ConvInputAffine(
            mean: affineMean, scale: affineScale, shift: store.params + u.beta, groupStride: 0,
            imagesPerGroup: batch)
    }

    /// `conv`: the node's convolution output; `output`: its BN output, read for its ReLU mask when it
    /// has one (nil: the mask comes from the conv output and the saved statistics).
    func bnBackward(
        _ n: Node, _ store: ParameterStore, conv: Ptr, output: Ptr?, gradOut: UnsafePointer<Float>, gradIn: Ptr,
        update: FusedSGD?
    ) {
        let u = n.unit
        timed(.bnBackward) {
            batchNormBackward(
                BatchNormShape(pixels: n.bnPixels, channels: u.cout), input: conv,
                output: u.relu ? output.map { UnsafePointer($0) } : nil, gradOutput: gradOut,
                gamma: store.params + u.gamma, beta: store.params + u.beta, saveMean: n.mean,
                saveInvStd: n.invStd, relu: u.relu,
                gradInput: gradIn, gradGamma: update?.first ?? store.grads + u.gamma,
                gradBeta: update?.second ?? store.grads + u.beta, accumulate: false, scratch: scratch,
                sync: statisticsSync?.mode == .sharedBatch ? statisticsSync : nil, wide: config.wideTiles)
        }
        if let update {
            timed(.optimizer) {
                update.apply(store, offset: u.gamma, count: u.cout, grad: update.first)
                update.apply(store, offset: u.beta, count: u.cout, grad: update.second)
            }
        }
    }


    /// `inputAffine`: the input is the normalised `input` (a mid-block output never written).
    func convBackward(
        _ n: Node, _ store: ParameterStore, input: Ptr, inputAffine: ConvInputAffine? = nil, gradConv: Ptr,
        gradInput: Ptr?, accumulate: Bool, update: FusedSGD?
    ) {
        let wg = n.plan.usesWinograd
        precondition(inputAffine == nil || wg, "an input affine needs the Winograd backward-weights")
        let gradWeight = update?.first ?? store.grads + n.unit.weight
        timed(wg ? .bwdWeightWinograd : .bwdWeightDirect, shape: n.plan.shape, "bwd-w") {
            conv2dBackwardWeight(
                n.plan, input: input, gradOutput: gradConv, gradWeight: gradWeight,
                accumulate: false, scratch: scratch, inputAffine: inputAffine)
        }
        if let gradInput {
            timed(.pack) {
                conv2dPackBackwardData(n.plan, weights: store.params + n.unit.weight, packed: workspace.pack)
            }
            timed(wg ? .bwdDataWinograd : .bwdDataDirect, shape: n.plan.shape, "bwd-d") {
                conv2dBackwardData(
                    n.plan, gradOutput: gradConv, packed: workspace.pack, gradInput: gradInput,
                    accumulate: accumulate, scratch: scratch)
            }
        }
        // The weights' last read (their backward-data panel) is done: update them.
        if let update {
            timed(.optimizer) {
                update.apply(store, offset: n.unit.weight, count: n.plan.weightCount, grad: gradWeight)
            }
        }
    }
}
