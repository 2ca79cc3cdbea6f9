// A ResNet pass as one list of steps over numbered buffers, built once from the layout and the
// convolution plans. The memory planner walks the list for every buffer's lifetime, and the pass's
// forward() and backward() walk the same list to run it, so the memory plan cannot fall out of step
// with the order the kernels run in.
import Kernels

/// A buffer of a pass program: an index into `PassProgram.floats` (and the pass's pointer table).
public typealias BufferID = Int

/// One convolution of the backbone, its batch norm, and their plan.
public struct PassNode: Sendable {
    public internal(set) var unit: ConvBN
    public internal(set) var plan: ConvPlan
    var bnPixels: Int { plan.n * plan.oh * plan.ow }
}

/// A convolution, then its batch norm (training: batch statistics).
public struct ConvBNStep: Sendable {
    public var node: Int
    public var input: BufferID
    /// A node whose batch norm (+ ReLU) the convolution applies to `input` as it loads it: `input` is
    /// that node's convolution output, its normalised output is never written.
    public var inputAffine: Int?
    public var conv: BufferID
    /// Where the batch norm (+ ReLU) goes; nil: only its statistics, into mean and scale rows set
    /// `rowSet` for a consumer to apply.
    public var output: BufferID?
    /// Added before the ReLU (a block's end); may be `output` itself.
    public var residual: BufferID?
    public var rowSet: Int
}

public enum PassStep: Sendable {
    // Forward.
    case convBN(ConvBNStep)
    case maxPool(input: BufferID, output: BufferID)
    /// relu(BN(main) + BN(down)) into `output` from the two batch norms' rows (sets 0 and 1): a
    /// downsampling block's end when both batch norms computed statistics only.
    case batchNormSum(main: Int, mainConv: BufferID, down: Int, downConv: BufferID, output: BufferID)
    /// Global average pool into the pass's features.
    case averagePool(input: BufferID)

    // Backward.
    /// d(features) into d(last block output).
    case averagePoolBackward(grad: BufferID)
    /// Masks `grad` in place by the ReLU that wrote `output`.
    case reluBackward(output: BufferID, grad: BufferID)
    /// Rebuilds a mid-block output (batch norm + ReLU with the saved statistics) from its kept conv output.
    case batchNormRebuild(node: Int, conv: BufferID, output: BufferID)
    /// `mask`: the node's output, read for its ReLU mask (nil: the mask comes from `conv` and the saved
    /// statistics, or the node has no ReLU).
    case batchNormBackward(node: Int, conv: BufferID, mask: BufferID?, gradOutput: BufferID, gradConv: BufferID)
    /// Backward-weights from `input` (normalised by node `savedAffine`'s saved batch norm as it is
    /// loaded, when set) and backward-data into `gradInput` (added to it with `accumulate`).
    case convBackward(
        node: Int, input: BufferID, savedAffine: Int?, gradConv: BufferID, gradInput: BufferID?, accumulate: Bool)
    /// into += from: the identity shortcut's gradient.
    case addGradient(into: BufferID, from: BufferID)
    case maxPoolBackward(grad: BufferID, into: BufferID)
    /// The convolution alone: backward recomputes the stem's convolution output instead of keeping it.
    case convForward(node: Int, input: BufferID, output: BufferID)

    /// The buffers the step reads or writes, for the memory planner.
    public var buffers: [BufferID] {
        var all = reads
        for w in writes where !all.contains(w) { all.append(w) }
        return all
    }

    /// The buffers the step reads.
    public var reads: [BufferID] {
        switch self {
        case .convBN(let s): return [s.input] + [s.residual].compactMap { $0 }
        case .maxPool(let i, _), .averagePool(let i), .convForward(_, let i, _): return [i]
        case .batchNormSum(_, let m, _, let d, _): return [m, d]
        case .averagePoolBackward: return []
        case .reluBackward(let o, let g): return [o, g]
        case .batchNormRebuild(_, let c, _): return [c]
        case .batchNormBackward(_, let c, let m, let g, _): return [c] + [m].compactMap { $0 } + [g]
        case .convBackward(_, let i, _, let gc, let gi, let accumulate):
            return [i, gc] + (accumulate ? [gi].compactMap { $0 } : [])
        case .addGradient(let into, let from): return [into, from]
        case .maxPoolBackward(let g, _): return [g]
        }
    }

    /// The buffers the step writes.
    public var writes: [BufferID] {
        switch self {
        case .convBN(let s): return [s.conv] + [s.output].compactMap { $0 }
        case .maxPool(_, let o), .batchNormSum(_, _, _, _, let o), .batchNormRebuild(_, _, let o),
            .convForward(_, _, let o), .maxPoolBackward(_, let o):
            return [o]
        case .averagePool: return []
        case .averagePoolBackward(let g), .reluBackward(_, let g): return [g]
        case .batchNormBackward(_, _, _, _, let gc): return [gc]
        case .convBackward(_, _, _, _, let gi, _): return [gi].compactMap { $0 }
        case .addGradient(let into, _): return [into]
        }
    }
}

/// The steps of a ResNet pass: `forward` always, `backward` for a training pass (empty otherwise).
public struct PassProgram: Sendable {
    public internal(set) var nodes: [PassNode] = []
    /// Each buffer's length in floats.
    public internal(set) var floats: [Int] = []
    public internal(set) var forward: [PassStep] = []
    public internal(set) var backward: [PassStep] = []
    /// The input batch (owned by the pass, outside the planned memory: backward reads it again).
    public internal(set) var input: BufferID = 0
    /// The last block's output (the feature map saliency reads).
    public internal(set) var featureMap: BufferID = 0
    /// The last feature map's height and width.
    public internal(set) var mapHeight = 0, mapWidth = 0
    /// The max pool's output size, when the stem has one.
    public internal(set) var pool: MaxPoolShape? = nil
    /// Mid-block batch norms applied inside the next convolution's input transform.
    public var fusedMidCount: Int {
        forward.filter { if case .convBN(let s) = $0 { s.inputAffine != nil } else { false } }.count
    }

    mutating func buffer(_ count: Int) -> BufferID {
        floats.append(count)
        return floats.count - 1
    }

    mutating func node(_ unit: ConvBN, _ plan: ConvPlan) -> Int {
        nodes.append(PassNode(unit: unit, plan: plan))
        return nodes.count - 1
    }

    /// Whether a mid-block batch norm (+ ReLU) is applied inside the next convolution's input
    /// transform (forward and backward-weights), that convolution being `next`.
    static func appliesInNext(_ u: ConvBN, next: ConvPlan) -> Bool {
        u.relu && next.config.fusesBatchNorms && next.usesWinograd
    }

    /// The program of `layout` on (batch, height, width) with every convolution planned with `config`.
    /// The shortcut is added (and the block's ReLU applied) by the last batch norm of each block: the
    /// main path's when the shortcut is the input, else the downsample's, which adds the main path's
    /// output (normalising it itself when `config.fusesBatchNorms`, else reading it back in place), so
    /// no pass of its own goes over a block output. With `training`, backward: each block's ReLU mask,
    /// its mid-block outputs rebuilt (unless the next convolution applies their batch norm as it
    /// loads them), then its nodes last to first, the shortcut last (adding into d(block input)), and
    /// the stem's convolution recomputed once everything else is dead.
    init(layout: ResNetLayout, batch: Int, height: Int, width: Int, config: ExecutionConfig, training: Bool) {
        let stemPlan = ConvPlan(layout.stem.shape(n: batch, h: height, w: width), config)
        input = buffer(stemPlan.inputCount)
        let stem = node(layout.stem, stemPlan)
        let stemConv = buffer(stemPlan.outputCount), stemOut = buffer(stemPlan.outputCount)
        forward.append(.convBN(ConvBNStep(node: stem, input: input, conv: stemConv, output: stemOut, rowSet: 0)))
        var h = stemPlan.oh, w = stemPlan.ow
        var cur = stemOut
        if layout.config.stem == .imagenet {
            let ps = MaxPoolShape(n: batch, c: layout.stem.cout, h: h, w: w)
            pool = ps
            let out = buffer(ps.outputCount)
            forward.append(.maxPool(input: cur, output: out))
            cur = out
            h = ps.oh; w = ps.ow
        }

        struct BlockIDs {
            var nodes: [Int] = [], conv: [BufferID] = [], down: Int? = nil, downConv: BufferID? = nil
            var input = 0, output = 0
            var fused: [Bool] = []
        }
        var blocks: [BlockIDs] = []
        for b in layout.blocks {
            var k = BlockIDs()
            k.input = cur
            var bh = h, bw = w
            var plans: [ConvPlan] = []
            for u in b.convs {
                let p = ConvPlan(u.shape(n: batch, h: bh, w: bw), config)
                plans.append(p); k.nodes.append(node(u, p))
                bh = p.oh; bw = p.ow
            }
            let downPlan = b.downsample.map { ConvPlan($0.shape(n: batch, h: h, w: w), config) }
            let last = b.convs.count - 1
            k.output = buffer(plans[last].outputCount)
            var x = cur, affine: Int? = nil
            for i in b.convs.indices {
                let fuse = i < last && Self.appliesInNext(b.convs[i], next: plans[i + 1])
                let statisticsOnly = fuse || (i == last && downPlan != nil && config.fusesBatchNorms)
                let conv = buffer(plans[i].outputCount)
                k.conv.append(conv); k.fused.append(fuse)
                let out = statisticsOnly ? nil : i == last ? k.output : buffer(plans[i].outputCount)
                forward.append(
                    .convBN(
                        ConvBNStep(
                            node: k.nodes[i], input: x, inputAffine: affine, conv: conv, output: out,
                            residual: i == last && downPlan == nil ? cur : nil, rowSet: 0)))
                affine = fuse ? k.nodes[i] : nil
                x = out ?? conv
            }
            if let downPlan, let d = b.downsample {
                let dn = node(d, downPlan), dc = buffer(downPlan.outputCount)
                k.down = dn; k.downConv = dc
                if config.fusesBatchNorms {
                    forward.append(.convBN(ConvBNStep(node: dn, input: cur, conv: dc, rowSet: 1)))
                    forward.append(
                        .batchNormSum(
                            main: k.nodes[last], mainConv: k.conv[last], down: dn, downConv: dc, output: k.output))
                } else {
                    forward.append(
                        .convBN(
                            ConvBNStep(node: dn, input: cur, conv: dc, output: k.output, residual: k.output, rowSet: 0))
                    )
                }
            }
            blocks.append(k)
            cur = k.output
            h = bh; w = bw
        }
        featureMap = cur
        mapHeight = h; mapWidth = w
        forward.append(.averagePool(input: cur))
        guard training else { return }

        var gOut = buffer(floats[cur])
        backward.append(.averagePoolBackward(grad: gOut))
        for k in blocks.reversed() {
            backward.append(.reluBackward(output: k.output, grad: gOut))
            let n = k.nodes.count
            var rebuilt: [BufferID?] = Array(repeating: nil, count: n)
            for i in 0..<(n - 1) where !k.fused[i] {
                let r = buffer(floats[k.conv[i]])
                rebuilt[i] = r
                backward.append(.batchNormRebuild(node: k.nodes[i], conv: k.conv[i], output: r))
            }
            // Node i: batch norm backward reads d(out) and writes d(conv); conv backward reads it and
            // writes d(out) of node i-1 (of the block input for node 0). gOut stays for the shortcut.
            var dIn = gOut
            for i in (0..<n).reversed() {
                let u = nodes[k.nodes[i]].unit
                let gradConv = buffer(floats[k.conv[i]])
                backward.append(
                    .batchNormBackward(
                        node: k.nodes[i], conv: k.conv[i], mask: u.relu ? rebuilt[i] : nil, gradOutput: dIn,
                        gradConv: gradConv))
                let target = buffer(i > 0 ? floats[k.conv[i - 1]] : floats[k.input])
                let input = i == 0 ? k.input : rebuilt[i - 1] ?? k.conv[i - 1]
                let saved = i > 0 && rebuilt[i - 1] == nil ? k.nodes[i - 1] : nil
                backward.append(
                    .convBackward(
                        node: k.nodes[i], input: input, savedAffine: saved, gradConv: gradConv, gradInput: target,
                        accumulate: false))
                dIn = target
            }
            // dIn = d(block input) from the main path; gOut = d(block output) after the ReLU (the shortcut's).
            if let dn = k.down, let dc = k.downConv {
                let gradConv = buffer(floats[dc])
                backward.append(.batchNormBackward(node: dn, conv: dc, mask: nil, gradOutput: gOut, gradConv: gradConv))
                backward.append(
                    .convBackward(
                        node: dn, input: k.input, savedAffine: nil, gradConv: gradConv, gradInput: dIn,
                        accumulate: true))
            } else {
                backward.append(.addGradient(into: dIn, from: gOut))
            }
            gOut = dIn
        }
        if pool != nil {
            let g = buffer(floats[stemOut])
            backward.append(.maxPoolBackward(grad: gOut, into: g))
            gOut = g
        }
        let stemConvAgain = buffer(floats[stemConv]), stemGradConv = buffer(floats[stemConv])
        backward.append(.convForward(node: stem, input: input, output: stemConvAgain))
        backward.append(
            .batchNormBackward(
                node: stem, conv: stemConvAgain, mask: stemOut, gradOutput: gOut, gradConv: stemGradConv))
        backward.append(
            .convBackward(
                node: stem, input: input, savedAffine: nil, gradConv: stemGradConv, gradInput: nil, accumulate: false))
    }

    /// Every buffer but the input placed in one arena by its lifetime over forward then backward: each
    /// buffer's offset in floats (nil for the input) and the arena's length. `shared: false` gives every
    /// buffer its own memory (tests compare the two).
    func arena(shared: Bool) -> (offsets: [Int?], floats: Int) {
        var plan = ArenaPlan()
        var item: [Int?] = Array(repeating: nil, count: floats.count)
        for s in forward + backward {
            var used: [Int] = []
            for b in s.buffers where b != input {
                if item[b] == nil { item[b] = plan.add(floats[b]) }
                used.append(item[b]!)
            }
            plan.step(used)
        }
        let total = plan.place(shared: shared)
        precondition(!plan.hasConflict || !shared, "arena plan: live buffers share memory")
        return (item.map { $0.map { plan.items[$0].offset } }, total)
    }
}
