// Seconds per operation of ResNet passes, for `salient bench train --profile`: a pass with a profiler
// reads the clock around each operation; a pass without one (the default) does not.

import Kernels

/// Kinds of work in a pass, for `bench train --profile`.
public enum PassOp: Int, CaseIterable, Sendable {
    case convWinograd, convDirect, pack, bwdDataWinograd, bwdDataDirect, bwdWeightWinograd, bwdWeightDirect
    case bnForward, bnBackward, elementwise, optimizer

    public var label: String {
        switch self {
        case .convWinograd: return "conv forward, 3x3 (Winograd; stride 2: 64->128, 128->256)"
        case .convDirect: return "conv forward, direct (stem, wide stride 2, 1x1)"
        case .pack: return "weight packing / Winograd weight transform"
        case .bwdDataWinograd: return "conv backward-data, 3x3 stride 1 (Winograd)"
        case .bwdDataDirect: return "conv backward-data, direct"
        case .bwdWeightWinograd: return "conv backward-weights, 3x3 stride 1 (Winograd)"
        case .bwdWeightDirect: return "conv backward-weights, direct"
        case .bnForward: return "batch norm (+ReLU) forward"
        case .bnBackward: return "batch norm backward (+ rebuilt activations)"
        case .elementwise: return "residual add, ReLU, pooling"
        case .optimizer: return "SGD inside backward"
        }
    }
}

/// Seconds per PassOp, and per convolution shape and direction, summed over the passes that share it.
public final class PassProfiler {
    public private(set) var seconds = [Double](repeating: 0, count: PassOp.allCases.count)
    /// Convolution seconds by layer shape and direction ("fwd 64->128 3x3/2 32x32" ...).
    public private(set) var byShape: [String: Double] = [:]

    public init() {}

    func add(_ op: PassOp, shape: Conv2DShape?, _ dir: String, _ sec: Double) {
        seconds[op.rawValue] += sec
        if let shape { byShape[dir + " " + shape.profileLabel, default: 0] += sec }
    }
}

extension Conv2DShape {
    var profileLabel: String { "\(c)->\(k) \(r)x\(s)/\(stride) \(h)x\(w)" }
}

extension ResNetPass {
    /// Runs `body`, adding its seconds to the profiler under `op` (and the convolution's shape) if any.
    @inline(__always)
    func timed(_ op: PassOp, shape: Conv2DShape? = nil, _ dir: String = "", _ body: () -> Void) {
        guard let profiler else { body(); return }
        let t0 = ContinuousClock.now
        body()
        let d = ContinuousClock.now - t0
        profiler.add(op, shape: shape, dir, Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18)
    }
}
