// The contrastive projection head, kept apart from the backbone: Linear(D, D) -> ReLU -> Linear(D, out),
// named as MoCo v2's `fc.0` / `fc.2` so checkpoints read like the official ones.
import Kernels

public struct MLPHeadLayout: Sendable {
    public var inDim: Int, hidden: Int, outDim: Int
    var w0 = 0, b0 = 0, w2 = 0, b2 = 0

    public init(inDim: Int, hidden: Int, outDim: Int, store: ParameterStore, prefix: String = "") {
        self.inDim = inDim; self.hidden = hidden; self.outDim = outDim
        w0 = store.declare(prefix + "fc.0.weight", [hidden, inDim], .parameter)
        b0 = store.declare(prefix + "fc.0.bias", [hidden], .parameter)
        w2 = store.declare(prefix + "fc.2.weight", [outDim, hidden], .parameter)
        b2 = store.declare(prefix + "fc.2.bias", [outDim], .parameter)
    }

    /// PyTorch's nn.Linear default: weight and bias uniform in +-1/sqrt(fan_in).
    public func initialize(store: ParameterStore, rng: inout SplitMix64) {
        func fill(_ p: UnsafeMutablePointer<Float>, _ n: Int, _ fanIn: Int) {
            let b = 1 / Float(fanIn).squareRoot()
            for i in 0..<n { p[i] = rng.uniform(-b, b) }
        }
        fill(store.params + w0, hidden * inDim, inDim); fill(store.params + b0, hidden, inDim)
        fill(store.params + w2, outDim * hidden, hidden); fill(store.params + b2, outDim, hidden)
    }
}

/// Forward/backward buffers of the head for one batch size.
public final class MLPHeadPass {
    public let layout: MLPHeadLayout
    public let batch: Int
    let hidden: UnsafeMutablePointer<Float>  // after ReLU
    public let output: UnsafeMutablePointer<Float>  // [batch][outDim]
    let gradHidden: UnsafeMutablePointer<Float>
    /// d(loss)/d(features) after backward.
    public let gradFeatures: UnsafeMutablePointer<Float>
    var input: UnsafePointer<Float>?

    public init(layout: MLPHeadLayout, batch: Int) {
        self.layout = layout; self.batch = batch
        hidden = .allocate(capacity: batch * layout.hidden)
        output = .allocate(capacity: batch * layout.outDim)
        gradHidden = .allocate(capacity: batch * layout.hidden)
        gradFeatures = .allocate(capacity: batch * layout.inDim)
    }

    deinit { hidden.deallocate(); output.deallocate(); gradHidden.deallocate(); gradFeatures.deallocate() }

    public var allocatedBytes: Int { 4 * batch * (2 * layout.hidden + layout.outDim + layout.inDim) }

    public func forward(features: UnsafePointer<Float>, store: ParameterStore) {
        input = features
        let l = layout
        linearForward(
            LinearShape(batch: batch, inFeatures: l.inDim, outFeatures: l.hidden), input: features,
            weight: store.params + l.w0, bias: store.params + l.b0, output: hidden)
        reluForward(count: batch * l.hidden, input: hidden, output: hidden)
        linearForward(
            LinearShape(batch: batch, inFeatures: l.hidden, outFeatures: l.outDim), input: hidden,
            weight: store.params + l.w2, bias: store.params + l.b2, output: output)
    }

    /// Writes the head's parameter gradients (or, with `update`, applies them) and `gradFeatures`.
    public func backward(gradOutput: UnsafePointer<Float>, store: ParameterStore, update: FusedSGD? = nil) {
        guard let input else { preconditionFailure("backward before forward") }
        let l = layout
        // One linear layer's backward; with `update`, its weight and bias are stepped at once (their
        // last read, computing gradInput, is inside linearBackward).
        func linear(
            _ inDim: Int, _ outDim: Int, input x: UnsafePointer<Float>, weight w: Int, bias b: Int,
            gradOutput dy: UnsafePointer<Float>, gradInput dx: UnsafeMutablePointer<Float>
        ) {
            linearBackward(
                LinearShape(batch: batch, inFeatures: inDim, outFeatures: outDim), input: x,
                weight: store.params + w, gradOutput: dy, gradInput: dx,
                gradWeight: update?.first ?? store.grads + w, gradBias: update?.second ?? store.grads + b,
                accumulate: false)
            if let update {
                update.apply(store, offset: w, count: outDim * inDim, grad: update.first)
                update.apply(store, offset: b, count: outDim, grad: update.second)
            }
        }
        linear(
            l.hidden, l.outDim, input: hidden, weight: l.w2, bias: l.b2, gradOutput: gradOutput, gradInput: gradHidden)
        reluBackward(
            count: batch * l.hidden, output: hidden, gradOutput: gradHidden, gradInput: gradHidden,
            accumulate: false)
        linear(
            l.inDim, l.hidden, input: input, weight: l.w0, bias: l.b0, gradOutput: gradHidden, gradInput: gradFeatures)
    }
}

/// A backbone and (optionally) its projection head, in one ParameterStore so that one SGD loop
/// updates both.
public final class Encoder {
    public let config: ResNetConfig
    public let store: ParameterStore
    public let backbone: ResNetLayout
    public let head: MLPHeadLayout?

    /// `gradients: false`: a trainable store without a gradient block (trained with FusedSGD).
    public init(
        config: ResNetConfig, headDim: Int? = nil, prefix: String = "", trainable: Bool = true,
        gradients: Bool = true
    ) {
        self.config = config
        store = ParameterStore()
        backbone = ResNetLayout(config, store: store, prefix: prefix)
        let st = store
        head = headDim.map {
            MLPHeadLayout(
                inDim: config.featureDim, hidden: config.featureDim, outDim: $0,
                store: st, prefix: prefix)
        }
        store.seal(trainable: trainable, gradients: gradients)
    }

    public func initialize(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        initializeResNet(backbone, store: store, rng: &rng)
        head?.initialize(store: store, rng: &rng)
    }
}
