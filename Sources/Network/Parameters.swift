// One flat block of parameters, with gradients and optimizer state in blocks of the same length
// (llm.c style), plus the non-trained buffers (batch-norm running statistics, counters).
// Tensors are named and shaped exactly as in torchvision's state_dict, weights in PyTorch layouts.

import Kernels

/// Where one named tensor lives.
public struct TensorSlot: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Trained: lives in `params` / `grads` / `momentum`.
        case parameter
        /// Float buffer (running mean / var): lives in `buffers`.
        case buffer
        /// int64 counter (num_batches_tracked): lives in `counters`.
        case counter
    }
    public var name: String
    public var shape: [Int]
    public var kind: Kind
    public var offset: Int
    public var count: Int { shape.reduce(1, *) }
}

/// Named tensors of one model, in flat, 64-byte aligned blocks allocated once.
public final class ParameterStore: @unchecked Sendable {
    public private(set) var slots: [TensorSlot] = []
    public private(set) var index: [String: Int] = [:]
    public private(set) var parameterCount = 0
    public private(set) var bufferCount = 0
    public private(set) var counterCount = 0
    public private(set) var params: UnsafeMutablePointer<Float>
    public private(set) var grads: UnsafeMutablePointer<Float>
    public private(set) var momentum: UnsafeMutablePointer<Float>
    public private(set) var buffers: UnsafeMutablePointer<Float>
    public private(set) var counters: UnsafeMutablePointer<Int64>
    private var sealed = false
    /// Whether `momentum` is allocated (full length): the store can be trained.
    public private(set) var isTrainable = false
    /// Whether `grads` is allocated (full length). A store trained with FusedSGD has none.
    public private(set) var hasGradients = false

    public init() {
        params = .allocate(capacity: 1); grads = .allocate(capacity: 1); momentum = .allocate(capacity: 1)
        buffers = .allocate(capacity: 1); counters = .allocate(capacity: 1)
    }

    deinit {
        params.deallocate(); grads.deallocate(); momentum.deallocate(); buffers.deallocate(); counters.deallocate()
    }

    /// Declares a tensor; returns its offset in its block. Only before `seal()`.
    @discardableResult
    public func declare(_ name: String, _ shape: [Int], _ kind: TensorSlot.Kind) -> Int {
        precondition(!sealed, "declare after seal")
        precondition(index[name] == nil, "duplicate tensor \(name)")
        let n = shape.reduce(1, *)
        let offset: Int
        switch kind {
        case .parameter: offset = parameterCount; parameterCount += (n + 15) & ~15
        case .buffer: offset = bufferCount; bufferCount += (n + 15) & ~15
        case .counter: offset = counterCount; counterCount += n
        }
        index[name] = slots.count
        slots.append(TensorSlot(name: name, shape: shape, kind: kind, offset: offset))
        return offset
    }

    /// Allocates the blocks (zeroed). Called once after every `declare`. A store that is never
    /// trained (MoCo's key encoder, extraction) passes `trainable: false` and gets no gradient or
    /// optimizer blocks; one trained with FusedSGD passes `gradients: false` (no gradient block).
    public func seal(trainable: Bool = true, gradients: Bool = true) {
        precondition(!sealed)
        sealed = true
        func alloc(_ n: Int) -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(n, 16) * 4, alignment: 64)
                .bindMemory(to: Float.self, capacity: max(n, 16))
            p.initialize(repeating: 0, count: max(n, 16))
            return p
        }
        params.deallocate(); grads.deallocate(); momentum.deallocate(); buffers.deallocate(); counters.deallocate()
        params = alloc(parameterCount)
        grads = alloc(trainable && gradients ? parameterCount : 0); momentum = alloc(trainable ? parameterCount : 0)
        isTrainable = trainable
        hasGradients = trainable && gradients
        buffers = alloc(bufferCount)
        counters = .allocate(capacity: max(counterCount, 1))
        counters.initialize(repeating: 0, count: max(counterCount, 1))
    }

    public func slot(_ name: String) -> TensorSlot? { index[name].map { slots[$0] } }

    /// Pointer to a float tensor (parameter or buffer).
    public func pointer(_ slot: TensorSlot) -> UnsafeMutablePointer<Float> {
        switch slot.kind {
        case .parameter: return params + slot.offset
        case .buffer: return buffers + slot.offset
        case .counter: preconditionFailure("\(slot.name) is an int64 counter")
        }
    }

    public func pointer(_ name: String) -> UnsafeMutablePointer<Float> {
        guard let s = slot(name) else { preconditionFailure("no tensor \(name)") }
        return pointer(s)
    }

    public func values(_ name: String) -> [Float] {
        guard let s = slot(name) else { return [] }
        return Array(UnsafeBufferPointer(start: pointer(s), count: s.count))
    }

    /// Copies every parameter, buffer and counter from `other` (same layout).
    public func copyState(from other: ParameterStore) {
        precondition(other.slots == slots, "layouts differ")
        params.update(from: other.params, count: parameterCount)
        buffers.update(from: other.buffers, count: bufferCount)
        counters.update(from: other.counters, count: counterCount)
    }

    public func zeroGrads() {
        precondition(hasGradients, "no gradient block")
        grads.update(repeating: 0, count: parameterCount)
    }
}

/// SGD (torch.optim.SGD with momentum and weight decay, as sgdStep) applied tensor by tensor while
/// backward produces the gradients: each gradient goes to `scratch` and updates its tensor at once,
/// so training needs no gradient block as large as the model. A layer's update runs after the last
/// read of its parameters (its backward-data), so the result equals backward followed by sgdStep.
public final class FusedSGD {
    public var lr: Float = 0, momentum: Float = 0.9, weightDecay: Float = 0
    /// Room for the largest parameter tensor plus the largest vector (a layer's weight and bias, or
    /// gamma and beta, live here together).
    public let scratch: UnsafeMutablePointer<Float>
    public let scratchCount: Int
    let vectorOffset: Int

    public init(store: ParameterStore) {
        let counts = store.slots.filter { $0.kind == .parameter }.map { ($0.count, $0.shape.count) }
        let largest = ((counts.map(\.0).max() ?? 0) + 15) & ~15
        let vector = ((counts.filter { $0.1 == 1 }.map(\.0).max() ?? 0) + 15) & ~15
        vectorOffset = largest
        scratchCount = max(largest + vector, 16)
        scratch = .allocate(capacity: scratchCount)
        scratch.initialize(repeating: 0, count: scratchCount)
    }

    deinit { scratch.deallocate() }

    /// Where backward writes the gradient of the tensor (or the first of two tensors) it is about to
    /// produce, and of a second one (bias / beta).
    public var first: UnsafeMutablePointer<Float> { scratch }
    public var second: UnsafeMutablePointer<Float> { scratch + vectorOffset }

    /// Sums gradients over the processes of a data-parallel run before they are applied (nil: one process).
    public var exchange: GradientExchange?

    /// Applies the step to `count` parameters at `offset` from the gradient at `grad`; with an
    /// exchange, hands the gradient to it instead, and the step is applied when its sum arrives
    /// (`finish` at the latest).
    public func apply(_ store: ParameterStore, offset: Int, count: Int, grad: UnsafePointer<Float>) {
        if let exchange {
            exchange.submit(offset: offset, count: count, grad: grad, sgd: self, store: store)
        } else {
            step(store, offset: offset, count: count, grad: grad)
        }
    }

    /// Waits for every gradient sum still on its way and applies those steps (no-op with one process).
    public func finish() {
        exchange?.finish()
    }

    /// The SGD step itself, on `count` parameters at `offset`.
    public func step(_ store: ParameterStore, offset: Int, count: Int, grad: UnsafePointer<Float>) {
        sgdStep(
            count: count, params: store.params + offset, grads: grad, momentumBuffer: store.momentum + offset,
            lr: lr, momentum: momentum, weightDecay: weightDecay)
    }
}

/// Gradient sums over the processes of a data-parallel run, overlapped with backward: `submit` takes
/// a tensor's gradient as soon as it is final (it copies it), `apply` runs with the summed gradient
/// once it arrives (`sgd.step`, during a later submit or in `finish`), so that the update of a layer
/// overlaps the backward of the layers before it.
public protocol GradientExchange: AnyObject {
    func submit(offset: Int, count: Int, grad: UnsafePointer<Float>, sgd: FusedSGD, store: ParameterStore)
    func finish()
}
