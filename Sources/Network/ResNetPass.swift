// Forward and backward of a ResNet backbone for one (batch, height, width), with every activation,
// gradient and scratch buffer planned and allocated once, at construction. Nothing allocates in
// forward() or backward(). A training pass places all its activations, forward temporaries,
// gradients and rebuilt activations in one arena by lifetime (ArenaPlan): backward's buffers for a
// stage live where the later stages' activations were.
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

    struct Node {
        var unit: ConvBN
        var plan: ConvPlan
        var input: Ptr
        var conv: Ptr
        var out: Ptr
        var mean: Ptr
        var invStd: Ptr
        /// Training passes do not keep mid-block outputs: backward rebuilds them here from `conv`.
        var recompute: Ptr?
        /// Training: d(conv output) (batch norm backward writes it) and d(node output) of mid-block
        /// nodes and the stem (the next node's backward-data writes it).
        var gradConv: Ptr?
        var gradOut: Ptr?
        var bnPixels: Int { plan.n * plan.oh * plan.ow }
    }

    struct Block {
        var convs: [Node]
        var down: Node?
        var input: Ptr
        var out: Ptr
        /// Training: d(block output) and d(block input) (the previous block's gradOut).
        var gradOut: Ptr?
        var gradIn: Ptr?
    }

    public let layout: ResNetLayout
    public let batch: Int, height: Int, width: Int
    /// Whether activations are kept for backward (training); otherwise buffers are recycled.
    public let keepsActivations: Bool
    /// The settings the pass was planned with; its kernels run with them for its lifetime.
    public let config: ExecutionConfig
    /// Where the pass adds its seconds per operation (bench train --profile), or nil.
    public var profiler: PassProfiler? = nil

    var stem: Node
    var pool: (shape: MaxPoolShape, out: Ptr, argmax: UnsafeMutablePointer<Int32>)?
    var blocks: [Block] = []
    /// The input batch [batch][height][width][inChannels]; write into it directly to skip forward()'s copy.
    public let input: Ptr
    /// Pooled features [batch][featureDim].
    public let features: Ptr
    /// The last block's output [batch][mapSize][mapSize][featureDim] (saliency reads it).
    public var lastFeatureMap: UnsafePointer<Float> { UnsafePointer(blocks.last!.out) }
    public let mapHeight: Int, mapWidth: Int
    /// A training pass's arena (every activation and gradient) and the largest activation, in floats.
    var arena: Ptr? = nil
    /// Training: where backward recomputes the stem's convolution output.
    var stemConvRebuilt: Ptr? = nil
    var arenaCount = 0
    var maxActivation = 0
    public let workspace: ConvWorkspace
    var scratch: UnsafeMutableRawPointer { workspace.scratch }
    private var allocations: [UnsafeMutableRawPointer] = []
    /// Two sets of mean and scale rows (one per batch-norm group, affineRowCount floats a set) of batch
    /// norms applied by their consumer (fusesBatchNorms): a mid-block one's by the next convolution,
    /// a downsampling block's two by the one pass that sums them.
    var affineMean: Ptr, affineScale: Ptr
    var affineRowCount = 0
    /// Whether batch norms hand their normalisation to the consumer instead of writing their output:
    /// a block's mid batch norm + ReLU runs inside the next convolution's Winograd input transform
    /// (forward and backward-weights), and a downsampling block's main-path batch norm inside the
    /// shortcut's (one pass writes relu(BN(main) + BN(shortcut))). Their statistics stay passes of their
    /// own (ExecutionConfig.fusesBatchNorms).
    /// Whether a mid-block batch norm (+ ReLU) is applied inside the next convolution's input transform,
    /// that convolution being `next`.
    static func appliesInNext(_ u: ConvBN, next: ConvPlan) -> Bool {
        u.relu && next.config.fusesBatchNorms && next.usesWinograd
    }
    /// Mid-block batch norms the last forward applied inside the next convolution.
    public private(set) var fusedMidCount = 0
    /// Bytes this pass allocated.
    public private(set) var allocatedBytes = 0
    var lastMode: BatchNormMode = .eval

    /// `borrowing`: for a pass that keeps no activations, buffers of at least the largest activation
    /// owned by someone else and idle while this pass runs (a training pass's `idleBuffers`), used
    /// for its recycled activations instead of new allocations. `workspace`: weight panels and
    /// scratch shared with passes that never run at the same time as this one. `sharedArena: false`
    /// gives every buffer of a training pass its own memory (tests compare the two plans).
    public init(
        layout: ResNetLayout, batch: Int, height: Int, width: Int, keepActivations: Bool,
        config: ExecutionConfig = .standard, borrowing: [UnsafeMutablePointer<Float>] = [],
        borrowedCount: Int = 0, workspace: ConvWorkspace? = nil, sharedArena: Bool = true
    ) {
        precondition(batch > 0 && height > 0 && width > 0)
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
        // Shapes first, to size the shared buffers.
        var maxAct = 0, maxPackF = 0, maxPackB = 0, maxScratch = 0, maxSums = 0
        let t = max(config.threads, 1)
        var h = height, w = width
        func note(_ sh: ConvPlan) {
            maxAct = max(maxAct, sh.outputCount, sh.inputCount)
            // Per-tile sums, then the shift (K floats).
            if sh.usesWinograd { maxSums = max(maxSums, ConvOutputSums.count(sh) + ConvOutputSums.stride(sh)) }
            maxPackF = max(maxPackF, sh.packedForwardCount); maxPackB = max(maxPackB, sh.packedBackwardDataCount)
            maxScratch = max(
                maxScratch, sh.scratchBytes(threads: t),
                batchNormScratchBytes(BatchNormShape(pixels: sh.n * sh.oh * sh.ow, channels: sh.k), threads: t))
        }
        let stemShape = ConvPlan(layout.stem.shape(n: batch, h: h, w: w), config)
        note(stemShape)
        h = stemShape.oh; w = stemShape.ow
        var poolShape: MaxPoolShape? = nil
        if layout.config.stem == .imagenet {
            let ps = MaxPoolShape(n: batch, c: layout.stem.cout, h: h, w: w)
            poolShape = ps
            h = ps.oh; w = ps.ow
        }
        var blockShapes: [([ConvPlan], ConvPlan?)] = []
        for b in layout.blocks {
            var shapes: [ConvPlan] = []
            var bh = h, bw = w
            for u in b.convs {
                let s = ConvPlan(u.shape(n: batch, h: bh, w: bw), config); note(s); shapes.append(s); bh = s.oh;
                bw = s.ow
            }
            let ds = b.downsample.map { ConvPlan($0.shape(n: batch, h: h, w: w), config) }
            if let ds { note(ds) }
            blockShapes.append((shapes, ds))
            h = bh; w = bw
        }
        mapHeight = h; mapWidth = w
        maxActivation = maxAct
        // Forward and backward-data panels are never live at once: one buffer holds either.
        let ws = workspace ?? ConvWorkspace()
        self.workspace = ws
        bytes += ws.reserve(packFloats: max(maxPackF, maxPackB), scratchBytes: maxScratch + 64, sumsFloats: maxSums)
        // The pass owns its input: backward reads it again, so it must outlive forward()'s argument.
        let inputBuffer = alloc(stemShape.inputCount)
        self.input = inputBuffer
        func stats(_ u: ConvBN) -> (Ptr, Ptr) { (alloc(u.cout), alloc(u.cout)) }
        let poolArgmax = poolShape.map { ps -> UnsafeMutablePointer<Int32> in
            let am = UnsafeMutableRawPointer.allocate(byteCount: max(ps.outputCount, 16) * 4, alignment: 64)
            allocs.append(am); bytes += max(ps.outputCount, 16) * 4
            return am.bindMemory(to: Int32.self, capacity: ps.outputCount)
        }

        if keepActivations {
            // Simulate forward and backward in the order they run, then place every buffer by lifetime.
            var plan = ArenaPlan()
            let stemConv = plan.add(stemShape.outputCount), stemOut = plan.add(stemShape.outputCount)
            plan.step(stemConv, stemOut)
            let poolOut = poolShape.map { plan.add($0.outputCount) }
            if let poolOut { plan.step(stemOut, poolOut) }
            struct Ids {
                var conv: [Int] = [], out: [Int] = [], rebuilt: [Int?] = [], gradConv: [Int] = []
                var gradOut: [Int?] = [], downConv: Int? = nil, downGrad: Int? = nil
                var input = 0, gradIn = 0
            }
            var ids: [Ids] = []
            var cur = poolOut ?? stemOut
            for (bi, b) in layout.blocks.enumerated() {
                let (shapes, ds) = blockShapes[bi]
                var k = Ids(); k.input = cur
                var x = cur
                let last = b.convs.count - 1
                for i in b.convs.indices {
                    k.conv.append(plan.add(shapes[i].outputCount)); k.out.append(plan.add(shapes[i].outputCount))
                    // The last batch norm adds the shortcut when it is the block input.
                    plan.step(x, k.conv[i], k.out[i], i == last && ds == nil ? cur : nil)
                    x = k.out[i]
                }
                if let ds {
                    // The downsample's batch norm adds into the block output in place.
                    k.downConv = plan.add(ds.outputCount)
                    plan.step(cur, k.downConv, x)
                }
                cur = x
                ids.append(k)
            }
            plan.step(cur)  // global average pool
            var gOut = plan.add(blockShapes.last!.0.last!.outputCount)
            plan.step(gOut)  // its backward
            for bi in layout.blocks.indices.reversed() {
                let (shapes, ds) = blockShapes[bi]
                var k = ids[bi]
                let n = shapes.count
                plan.step(k.out[n - 1], gOut)  // ReLU backward of the block output
                k.rebuilt = (0..<n).map { _ in nil }
                k.gradOut = (0..<n).map { _ in nil }
                k.gradConv = Array(repeating: 0, count: n)
                // Mid-block outputs are rebuilt for backward, unless the next convolution reads them
                // through its input transform (fusesBatchNorms): then nothing holds them at all.
                for i in 0..<(n - 1) where !Self.appliesInNext(layout.blocks[bi].convs[i], next: shapes[i + 1]) {
                    k.rebuilt[i] = plan.add(shapes[i].outputCount); plan.step(k.conv[i], k.rebuilt[i])
                }
                var dIn = gOut
                for i in (0..<n).reversed() {
                    k.gradConv[i] = plan.add(shapes[i].outputCount)
                    plan.step(k.conv[i], k.rebuilt[i], dIn, k.gradConv[i])  // batch norm backward
                    let target = plan.add(i > 0 ? shapes[i - 1].outputCount : shapes[0].inputCount)
                    if i > 0 { k.gradOut[i - 1] = target } else { k.gradIn = target }
                    // conv backward
                    plan.step(i > 0 ? k.rebuilt[i - 1] ?? k.conv[i - 1] : k.input, k.gradConv[i], target)
                    dIn = target
                }
                if let ds {
                    k.downGrad = plan.add(ds.outputCount)
                    plan.step(k.downConv, gOut, k.downGrad)
                    plan.step(k.input, k.downGrad, k.gradIn)
                } else {
                    plan.step(k.gradIn, gOut)
                }
                k.gradOut[n - 1] = gOut
                ids[bi] = k
                gOut = k.gradIn
            }
            var stemGrad = gOut
            if poolOut != nil { stemGrad = plan.add(stemShape.outputCount); plan.step(gOut, stemGrad) }
            // The stem's convolution output is not kept: backward runs the (cheap, 3-channel) stem
            // convolution again once everything else is dead.
            let stemConvAgain = plan.add(stemShape.outputCount)
            plan.step(stemConvAgain)
            let stemGradConv = plan.add(stemShape.outputCount)
            plan.step(stemConvAgain, stemOut, stemGrad, stemGradConv)
            plan.step(stemGradConv)
            arenaCount = plan.place(shared: sharedArena)
            let base = alloc(arenaCount)
            arena = base
            func at(_ id: Int) -> Ptr { base + plan.items[id].offset }
            func maybe(_ id: Int?) -> Ptr? { id.map { base + plan.items[$0].offset } }

            let (sm, si) = stats(layout.stem)
            stem = Node(
                unit: layout.stem, plan: stemShape, input: inputBuffer, conv: at(stemConv), out: at(stemOut),
                mean: sm, invStd: si, gradConv: at(stemGradConv), gradOut: at(stemGrad))
            stemConvRebuilt = at(stemConvAgain)
            if let ps = poolShape, let poolOut, let poolArgmax { pool = (ps, at(poolOut), poolArgmax) }
            for (bi, b) in layout.blocks.enumerated() {
                let (shapes, ds) = blockShapes[bi]
                let k = ids[bi]
                var nodes: [Node] = []
                for (i, u) in b.convs.enumerated() {
                    let (m, v) = stats(u)
                    nodes.append(
                        Node(
                            unit: u, plan: shapes[i], input: i == 0 ? at(k.input) : at(k.out[i - 1]),
                            conv: at(k.conv[i]), out: at(k.out[i]), mean: m, invStd: v,
                            recompute: maybe(k.rebuilt[i]), gradConv: at(k.gradConv[i]), gradOut: maybe(k.gradOut[i])))
                }
                let down = b.downsample.map { u -> Node in
                    let (m, v) = stats(u)
                    return Node(
                        unit: u, plan: ds!, input: at(k.input), conv: at(k.downConv!), out: at(k.out.last!),
                        mean: m, invStd: v, gradConv: maybe(k.downGrad))
                }
                blocks.append(
                    Block(
                        convs: nodes, down: down, input: at(k.input), out: at(k.out.last!),
                        gradOut: at(k.gradOut.last!!), gradIn: at(k.gradIn)))
            }
        } else {
            // Five recycled buffers of the largest activation, borrowed when someone lends them.
            let lend = borrowedCount >= maxAct ? borrowing.prefix(5) : []
            let shared = Array(lend) + (lend.count..<5).map { _ in alloc(maxAct) }
            let X = 0, Y = 1, T1 = 2, T2 = 3, T3 = 4
            func node(_ u: ConvBN, _ sh: ConvPlan, _ input: Ptr, out: Int, outPtr: Ptr? = nil) -> Node {
                let (m, v) = stats(u)
                return Node(
                    unit: u, plan: sh, input: input, conv: shared[T1], out: outPtr ?? shared[out], mean: m, invStd: v)
            }
            stem = node(layout.stem, stemShape, inputBuffer, out: poolShape == nil ? X : T2)
            var cur = stem.out
            if let ps = poolShape, let poolArgmax {
                pool = (ps, shared[X], poolArgmax)
                cur = shared[X]
            }
            var inRole = X, outRole = Y
            for (bi, b) in layout.blocks.enumerated() {
                let (shapes, ds) = blockShapes[bi]
                let blockOut = shared[outRole]
                var nodes: [Node] = []
                var x = cur
                let midRoles = [T2, T3]
                for (i, u) in b.convs.enumerated() {
                    let last = i == b.convs.count - 1
                    let n = node(u, shapes[i], x, out: last ? outRole : midRoles[i % 2], outPtr: last ? blockOut : nil)
                    nodes.append(n); x = n.out
                }
                let down = b.downsample.map { node($0, ds!, cur, out: outRole, outPtr: blockOut) }
                blocks.append(Block(convs: nodes, down: down, input: cur, out: blockOut))
                cur = blockOut
                swap(&inRole, &outRole)
            }
        }
        features = alloc(batch * layout.config.featureDim)
        let rows = batch * bnPadded(layout.blocks.flatMap(\.convs).map(\.cout).max() ?? 1)
        affineRowCount = rows
        affineMean = alloc(2 * rows); affineScale = alloc(2 * rows)
        allocations = allocs
        allocatedBytes = bytes
    }

    deinit { for p in allocations { p.deallocate() } }

    /// Bytes of a training pass's arena (activations, temporaries, gradients; 0 for other passes).
    public var arenaBytes: Int { arenaCount * 4 }

    /// Length in floats of each of `idleBuffers` (0 for a pass that keeps no activations).
    public var idleBufferCount: Int { arena == nil ? 0 : maxActivation }
    /// Disjoint buffers of `idleBufferCount` floats in a training pass's arena: its contents do not
    /// outlive one forward + backward, so a no-grad pass that runs entirely between this pass's
    /// backward and its next forward may borrow them.
    public var idleBuffers: [UnsafeMutablePointer<Float>] {
        guard let arena, maxActivation > 0 else { return [] }
        return (0..<(arenaCount / maxActivation)).map { arena + $0 * maxActivation }
    }

    // MARK: Forward

    /// Runs the backbone on `input` [batch][height][width][inChannels] (NHWC, normalised) and
    /// writes the pooled features. In train mode running statistics are updated.
    public func forward(input: UnsafePointer<Float>, store: ParameterStore, mode: BatchNormMode) {
        precondition(Threads.count <= config.threads, "thread count grew after planning")
        lastMode = mode
        if input != UnsafePointer(self.input) { self.input.update(from: input, count: stem.plan.inputCount) }
        convBN(stem, store, mode)
        fusedMidCount = 0
        if let pool {
            timed(.elementwise) { maxPoolForward(pool.shape, input: stem.out, output: pool.out, argmax: pool.argmax) }
        }
        for b in blocks {
            // The shortcut is added (and the block's ReLU applied) by the last batch norm of the block:
            // the main path's when the shortcut is the input, else the downsample's, which adds the
            // main path's output (normalising it itself when fusesBatchNorms, else reading it back in
            // place). No separate pass over the block output.
            let last = b.convs.count - 1
            var affine: ConvInputAffine? = nil, affineInput = b.input
            for (i, n) in b.convs.enumerated() {
                let fuse = i < last && Self.appliesInNext(n.unit, next: b.convs[i + 1].plan)
                let statsOnly = fuse || (i == last && b.down != nil && config.fusesBatchNorms)
                let convOut = statsOnly ? mainConvOut(n) : n.conv
                convBN(
                    n, store, mode, residual: i == last && b.down == nil ? b.input : nil,
                    input: affine == nil ? n.input : affineInput, inputAffine: affine, convOutput: convOut,
                    statisticsOnly: statsOnly)
                affine = fuse ? midAffine(n, store, mode) : nil
                if fuse { fusedMidCount += 1 }
                affineInput = convOut
            }
            if let d = b.down {
                if config.fusesBatchNorms {
                    // The main path's batch norm (statistics above, rows set 0) is applied by the
                    // shortcut's, which adds the two: the main path's output is never written.
                    convBN(d, store, mode, statisticsOnly: true, rowSet: 1)
                    let m = b.convs[last]
                    timed(.bnForward) {
                        applySum(main: m, mainConv: mainConvOut(m), down: d, store, mode, output: b.out)
                    }
                } else {
                    convBN(d, store, mode, residual: b.out, output: b.out)
                }
            }
        }
        timed(.elementwise) {
            globalAvgPoolForward(
                n: batch, pixels: mapHeight * mapWidth, channels: layout.config.featureDim,
                input: blocks.last!.out, output: features)
        }
    }

    /// Where a node whose batch norm only computes statistics keeps its conv output: a no-grad pass's
    /// conv buffer is every node's, so there it goes to the node's (otherwise unwritten) output buffer.
    func mainConvOut(_ n: Node) -> Ptr { keepsActivations ? n.conv : n.out }

    /// Convolution of `input` (the node's own by default; with `inputAffine`, normalised as it is
    /// loaded) into `convOutput` (the node's conv buffer by default), then batch norm into `output`
    /// (the node's own by default; with `residual`, added before the ReLU: a block's end), or with
    /// `statisticsOnly` only its statistics (rows set `rowSet`; see affineRows).
    func convBN(
        _ n: Node, _ store: ParameterStore, _ mode: BatchNormMode, residual: Ptr? = nil, output: Ptr? = nil,
        input: Ptr? = nil, inputAffine: ConvInputAffine? = nil, convOutput: Ptr? = nil, statisticsOnly: Bool = false,
        rowSet: Int = 0
    ) {
        let u = n.unit
        let y = convOutput ?? n.conv
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
        timed(
            n.plan.usesWinograd || n.plan.usesWinogradStride2 ? .convWinograd : .convDirect, shape: n.plan.shape, "fwd"
        ) {
            conv2dForward(
                n.plan, input: input ?? n.input, packed: workspace.pack, output: y, scratch: scratch,
                inputAffine: inputAffine, outputSums: sums)
        }
        timed(.bnForward) {
            bnForward(
                n, store, mode, conv: y, residual: residual, output: statisticsOnly ? nil : output ?? n.out,
                rowSet: rowSet, sums: sums)
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
        main m: Node, mainConv: Ptr, down d: Node, _ store: ParameterStore, _ mode: BatchNormMode, output: Ptr
    ) {
        let a = affineRows(m, store, mode, set: 0), b = affineRows(d, store, mode, set: 1)
        batchNormApplySum(
            BatchNormShape(pixels: d.bnPixels, channels: d.unit.cout), input: d.conv, mean: b.mean, scale: b.scale,
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
        let D = layout.config.featureDim
        timed(.elementwise) {
            globalAvgPoolBackward(
                n: batch, pixels: mapHeight * mapWidth, channels: D, gradOutput: gradFeatures,
                gradInput: blocks.last!.gradOut!, accumulate: false)
        }
        for b in blocks.reversed() {
            let gOut = b.gradOut!, gIn = b.gradIn!
            // d(block output), masked by its ReLU in place.
            let count = b.convs.last!.plan.outputCount
            timed(.elementwise) {
                reluBackward(count: count, output: b.out, gradOutput: gOut, gradInput: gOut, accumulate: false)
            }
            // Rebuild the mid-block outputs this pass did not keep (BN + ReLU of the kept conv outputs),
            // where the plan has room for them; the others are never written (below).
            for n in b.convs {
                guard let r = n.recompute else { continue }
                timed(.bnBackward) {
                    let u = n.unit
                    batchNormApplySaved(
                        BatchNormShape(pixels: n.bnPixels, channels: u.cout), input: n.conv,
                        gamma: store.params + u.gamma, beta: store.params + u.beta, saveMean: n.mean,
                        saveInvStd: n.invStd, relu: u.relu, output: r, scratch: scratch, wide: config.wideTiles)
                }
            }
            // Node i: BN backward reads d(out) and writes gradConv; conv backward reads it and writes
            // d(out) of node i-1 (of the block input for node 0). gOut stays intact for the shortcut.
            // A mid-block output without a rebuilt copy: its batch norm's ReLU mask comes from the kept
            // conv output and the saved statistics, and the next convolution's backward-weights applies
            // the batch norm as its input transform loads it (the bits of the rebuilt copy, either way).
            let last = b.convs.count - 1
            var dIn = UnsafePointer(gOut)
            for i in b.convs.indices.reversed() {
                let n = b.convs[i]
                let target = i == 0 ? gIn : b.convs[i - 1].gradOut!
                var input = b.input, affine: ConvInputAffine? = nil
                if i > 0 {
                    let m = b.convs[i - 1]
                    if let r = m.recompute { input = r } else { input = m.conv; affine = savedAffine(m, store) }
                }
                bnBackward(
                    n, store, output: n.recompute ?? (i == last ? n.out : nil), gradOut: dIn, gradIn: n.gradConv!,
                    update: update)
                convBackward(
                    n, store, input: input, inputAffine: affine, gradConv: n.gradConv!, gradInput: target,
                    accumulate: false, needInput: true, update: update)
                dIn = UnsafePointer(target)
            }
            // Now gIn = d(block input) from the main path; gOut = d(block output) after ReLU (the shortcut's).
            if let d = b.down {
                bnBackward(d, store, output: d.out, gradOut: gOut, gradIn: d.gradConv!, update: update)
                convBackward(
                    d, store, input: b.input, gradConv: d.gradConv!, gradInput: gIn, accumulate: true, needInput: true,
                    update: update)
            } else {
                timed(.elementwise) {
                    addForward(count: b.convs[0].plan.inputCount, gIn, gOut, relu: false, output: gIn)
                }
            }
        }
        // Stem: d(stem output), through the pool's backward when there is one.
        let stemGrad = stem.gradOut!
        if let pool {
            timed(.elementwise) {
                maxPoolBackward(pool.shape, gradOutput: blocks[0].gradIn!, argmax: pool.argmax, gradInput: stemGrad)
            }
        }
        var stemNode = stem
        stemNode.conv = stemConvRebuilt!
        timed(.pack) {
            conv2dPackForward(stem.plan, weights: store.params + stem.unit.weight, packed: workspace.pack)
        }
        timed(.convDirect, shape: stem.plan.shape, "fwd") {
            conv2dForward(
                stem.plan, input: stem.input, packed: workspace.pack, output: stemNode.conv, scratch: scratch)
        }
        bnBackward(stemNode, store, output: stem.out, gradOut: stemGrad, gradIn: stem.gradConv!, update: update)
        convBackward(
            stem, store, input: stem.input, gradConv: stem.gradConv!, gradInput: nil, accumulate: false,
            needInput: false,
            update: update)
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

    /// `output`: the node's BN output, read for its ReLU mask when it has one (nil: the mask comes from
    /// the conv output and the saved statistics).
    func bnBackward(
        _ n: Node, _ store: ParameterStore, output: Ptr?, gradOut: UnsafePointer<Float>, gradIn: Ptr,
        update: FusedSGD?
    ) {
        let u = n.unit
        timed(.bnBackward) {
            batchNormBackward(
                BatchNormShape(pixels: n.bnPixels, channels: u.cout), input: n.conv,
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
        gradInput: Ptr?, accumulate: Bool, needInput: Bool, update: FusedSGD?
    ) {
        let wg = n.plan.usesWinograd
        precondition(
            inputAffine == nil || wg,
            "this pass was planned with mid-block batch norms inside Winograd transforms; Winograd is now off")
        let gradWeight = update?.first ?? store.grads + n.unit.weight
        timed(wg ? .bwdWeightWinograd : .bwdWeightDirect, shape: n.plan.shape, "bwd-w") {
            conv2dBackwardWeight(
                n.plan, input: input, gradOutput: gradConv, gradWeight: gradWeight,
                accumulate: false, scratch: scratch, inputAffine: inputAffine)
        }
        if let gradInput, needInput {
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
