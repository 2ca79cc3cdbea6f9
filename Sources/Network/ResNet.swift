// ResNet encoders (torchvision's resnet18/34/50 with a width multiplier and a CIFAR stem option),
// declared tensor by tensor in torchvision's state_dict order and names.
import Foundation
import Kernels

public enum ResNetArch: String, Codable, CaseIterable, Sendable {
    case resnet18, resnet34, resnet50
    public var blockCounts: [Int] {
        switch self {
        case .resnet18: [2, 2, 2, 2];
        case .resnet34, .resnet50: [3, 4, 6, 3]
        }
    }
    public var bottleneck: Bool { self == .resnet50 }
    public var expansion: Int { bottleneck ? 4 : 1 }
}

public enum ResNetStem: String, Codable, CaseIterable, Sendable {
    /// torchvision's: 7x7 stride-2 convolution, batch norm, ReLU, 3x3 stride-2 max pool.
    case imagenet
    /// For small images: 3x3 stride-1 convolution, batch norm, ReLU, no pool.
    case cifar
}

public struct ResNetConfig: Equatable, Sendable, CustomStringConvertible {
    public var arch: ResNetArch
    public var stem: ResNetStem
    public var inChannels: Int
    public var width: Double

    public init(arch: ResNetArch = .resnet18, stem: ResNetStem = .cifar, inChannels: Int = 3, width: Double = 1) {
        self.arch = arch; self.stem = stem; self.inChannels = inChannels; self.width = width
    }

    /// Channels of the four stages before expansion: round(64w), round(128w), round(256w), round(512w).
    public var stageWidths: [Int] { [64, 128, 256, 512].map { max(1, Int((Double($0) * width).rounded())) } }
    /// Length of the pooled feature vector.
    public var featureDim: Int { stageWidths[3] * arch.expansion }
    /// Total downsampling from input to the last feature map.
    public var reduction: Int { stem == .imagenet ? 32 : 8 }
    /// Side of the last feature map for an input of side `res` (the saliency grid).
    public func finalMapSize(_ res: Int) -> Int {
        var s = res
        if stem == .imagenet { s = (s + 2 * 3 - 7) / 2 + 1; s = (s + 2 - 3) / 2 + 1 }
        for _ in 0..<3 { s = (s + 2 - 3) / 2 + 1 }
        return s
    }
    public var description: String {
        "\(arch.rawValue) stem=\(stem.rawValue) in=\(inChannels) width=\(width)"
    }
}

/// One convolution followed by its batch norm (and ReLU when `relu`).
public struct ConvBN: Sendable {
    public var convName: String, bnName: String
    public var cin: Int, cout: Int, kernel: Int, stride: Int, pad: Int
    public var relu: Bool
    var weight = 0, gamma = 0, beta = 0, runningMean = 0, runningVar = 0, counter = 0

    func shape(n: Int, h: Int, w: Int) -> Conv2DShape {
        Conv2DShape(n: n, c: cin, h: h, w: w, k: cout, r: kernel, s: kernel, stride: stride, pad: pad)
    }
}

/// A residual block: 2 (basic) or 3 (bottleneck) ConvBN in a row, the last without ReLU, an optional
/// downsample ConvBN on the shortcut, then add and ReLU.
public struct ResidualBlock: Sendable {
    public var convs: [ConvBN]
    public var downsample: ConvBN?
}

/// The backbone's structure and where its tensors live in a ParameterStore.
public struct ResNetLayout: Sendable {
    public var config: ResNetConfig
    public var stem: ConvBN
    public var blocks: [ResidualBlock]

    /// Declares every backbone tensor (torchvision names, prefixed) in `store`.
    public init(_ config: ResNetConfig, store: ParameterStore, prefix: String = "") {
        self.config = config
        func unit(_ conv: String, _ bn: String, _ cin: Int, _ cout: Int, _ k: Int, _ st: Int, _ pad: Int, _ relu: Bool)
            -> ConvBN
        {
            var u = ConvBN(
                convName: prefix + conv, bnName: prefix + bn, cin: cin, cout: cout, kernel: k,
                stride: st, pad: pad, relu: relu)
            u.weight = store.declare(u.convName + ".weight", [cout, cin, k, k], .parameter)
            u.gamma = store.declare(u.bnName + ".weight", [cout], .parameter)
            u.beta = store.declare(u.bnName + ".bias", [cout], .parameter)
            u.runningMean = store.declare(u.bnName + ".running_mean", [cout], .buffer)
            u.runningVar = store.declare(u.bnName + ".running_var", [cout], .buffer)
            u.counter = store.declare(u.bnName + ".num_batches_tracked", [], .counter)
            return u
        }
        let w = config.stageWidths
        stem =
            config.stem == .imagenet
            ? unit("conv1", "bn1", config.inChannels, w[0], 7, 2, 3, true)
            : unit("conv1", "bn1", config.inChannels, w[0], 3, 1, 1, true)
        var blocks: [ResidualBlock] = []
        var inplanes = w[0]
        let e = config.arch.expansion
        for (li, count) in config.arch.blockCounts.enumerated() {
            let planes = w[li]
            for b in 0..<count {
                let st = (b == 0 && li > 0) ? 2 : 1
                let p = "layer\(li + 1).\(b)."
                var convs: [ConvBN]
                if config.arch.bottleneck {
                    convs = [
                        unit(p + "conv1", p + "bn1", inplanes, planes, 1, 1, 0, true),
                        unit(p + "conv2", p + "bn2", planes, planes, 3, st, 1, true),
                        unit(p + "conv3", p + "bn3", planes, planes * e, 1, 1, 0, false)
                    ]
                } else {
                    convs = [
                        unit(p + "conv1", p + "bn1", inplanes, planes, 3, st, 1, true),
                        unit(p + "conv2", p + "bn2", planes, planes, 3, 1, 1, false)
                    ]
                }
                var down: ConvBN? = nil
                if st != 1 || inplanes != planes * e {
                    down = unit(p + "downsample.0", p + "downsample.1", inplanes, planes * e, 1, st, 0, false)
                }
                blocks.append(ResidualBlock(convs: convs, downsample: down))
                inplanes = planes * e
            }
        }
        self.blocks = blocks
    }

    /// Every ConvBN in forward order.
    public var units: [ConvBN] {
        var u = [stem]
        for b in blocks { u += b.convs; if let d = b.downsample { u.append(d) } }
        return u
    }
}

/// torchvision's initialisation: conv weights Kaiming-normal (fan_out, ReLU gain), batch norm
/// weight 1, bias 0, running mean 0, running var 1.
public func initializeResNet(_ layout: ResNetLayout, store: ParameterStore, rng: inout SplitMix64) {
    for u in layout.units {
        let fanOut = Double(u.cout * u.kernel * u.kernel)
        let std = Float((2.0 / fanOut).squareRoot())
        let w = store.params + u.weight
        for i in 0..<(u.cout * u.cin * u.kernel * u.kernel) { w[i] = rng.normal() * std }
        (store.params + u.gamma).update(repeating: 1, count: u.cout)
        (store.params + u.beta).update(repeating: 0, count: u.cout)
        (store.buffers + u.runningMean).update(repeating: 0, count: u.cout)
        (store.buffers + u.runningVar).update(repeating: 1, count: u.cout)
        store.counters[u.counter] = 0
    }
}
