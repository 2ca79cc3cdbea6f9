// Named training recipes: a whole TrainConfig for one scale. `salient train` starts from a preset
// (--preset, `small` by default) and every option given on the command line overrides its value.
import Network

public enum TrainPreset: String, Codable, CaseIterable, Sendable {
    /// Small images (28-64 px) on a small board: ResNet-18 with the CIFAR stem at width 0.25 (16-128
    /// channels), 32 px views, and the recipe that did best in docs/RESULTS.md's Fashion-MNIST study
    /// (row "SimCLR, batch 64"): plain SimCLR, no masking. `--masking saliency` alone turns on the best
    /// masked recipe of that study (mean fill, one hard negative at alpha 1).
    case small
    /// The paper's ImageNet-100 setting: ResNet-50, ImageNet stem, 224 px, MoCo v2 with a queue of
    /// 65,536 and m 0.999, lr 0.015 at batch 128, weight decay 1e-4, saliency masking with the hp fill.
    case imagenet100

    /// One line: the preset's model and recipe.
    public var summary: String { config(channels: 3).recipeSummary }

    /// The recipe for `channels`-channel images; `method` replaces the preset's objective, and the
    /// temperature follows it (0.5 for SimCLR, 0.2 for MoCo v2, as in the study).
    public func config(channels: Int, method: ContrastiveMethod? = nil) -> TrainConfig {
        var c = TrainConfig()
        c.inChannels = channels
        switch self {
        case .small:
            c.arch = .resnet18; c.stem = .cifar; c.width = 0.25; c.resolution = 32
            c.method = .simclr
            c.masking = .none; c.fill = .mean; c.hardNegatives = 1; c.alpha = 1
            c.batch = 64; c.lr = 0.06; c.weightDecay = 5e-4; c.epochs = 10
        case .imagenet100:
            c.arch = .resnet50; c.stem = .imagenet; c.width = 1; c.resolution = 224
            c.method = .moco; c.queue = 65536; c.mocoMomentum = 0.999
            c.masking = .saliency; c.fill = .hp; c.hardNegatives = 1; c.alpha = 2
            c.batch = 128; c.lr = 0.015; c.weightDecay = 1e-4; c.epochs = 200
        }
        if let method { c.method = method }
        c.temperature = c.method == .moco ? 0.2 : 0.5
        return c
    }
}

extension TrainConfig {
    /// The model and recipe in one line (presets in `salient help train`, the start of a run).
    public var recipeSummary: String {
        var s = "\(arch.rawValue) (\(stem.rawValue) stem, width \(width)), \(resolution) px, \(method.rawValue)"
        s += method == .moco ? " (queue \(queue), m \(mocoMomentum), T \(temperature))" : " (T \(temperature))"
        if masking != .none {
            s +=
                ", \(masking.rawValue) masking (\(fill.rawValue) fill"
                + (fill == .hp && hpNoise != .paper ? " noise \(hpNoise)" : "")
                + ", \(hardNegatives) hard negative(s), alpha \(alpha))"
        }
        return s + ", batch \(batch), lr \(lr), wd \(weightDecay), \(epochs) epochs"
    }
}
