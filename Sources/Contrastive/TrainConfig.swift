// Everything a training run is configured by; saved in checkpoints (as JSON metadata) so that a
// resumed run continues with the same settings.
import Foundation
import Kernels
import Network

public enum ContrastiveMethod: String, Codable, CaseIterable, Sendable { case moco, simclr }

/// Where saliency maps come from (PAPER.md). Saved and parsed as one string: "self", "classical"
/// or the imported encoder's path.
public enum SaliencySource: Codable, Equatable, Sendable, CustomStringConvertible {
    /// The key encoder's own last feature map (after `saliencyWarmup` epochs of the classical map).
    case own
    /// The network-free map (global colour contrast) throughout.
    case classical
    /// An imported encoder's last feature map (a safetensors checkpoint).
    case encoder(path: String)

    public init(_ text: String) {
        switch text {
        case "self": self = .own
        case "classical": self = .classical
        default: self = .encoder(path: text)
        }
    }

    public var description: String {
        switch self {
        case .own: "self"
        case .classical: "classical"
        case .encoder(let path): path
        }
    }

    public init(from decoder: any Swift.Decoder) throws {
        self.init(try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Swift.Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// How hard negatives are drawn (PAPER.md).
public enum HardNegativeMode: String, Codable, CaseIterable, Sendable {
    /// Every sample gets its own: its key-side view masked on its salient cells.
    case perSample = "per-sample"
    /// The official code's: the batch is masked once and its first H images, each encoded on its own,
    /// are the hard negatives of every query in the batch.
    case shared
}

/// Standard deviations of the hp fill's noise: in masked query views and in hard negatives. Parsed
/// from "Q,N", or from "Q" alone (N = Q * 0.14 / 0.18, the paper's ratio); saved as "Q,N".
public struct NoiseLevels: Codable, Equatable, Sendable, CustomStringConvertible {
    public var query: Float
    public var hardNegative: Float

    /// The paper's levels (for 224 px ImageNet views): MaskConfig's defaults.
    public static let paper = NoiseLevels(query: MaskConfig().querySigma, hardNegative: MaskConfig().negSigma)

    public init(query: Float, hardNegative: Float) {
        self.query = query
        self.hardNegative = hardNegative
    }

    public init?(_ text: String) {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2, let q = Float(parts[0]), q.isFinite else { return nil }
        if parts.count == 2 {
            guard let n = Float(parts[1]), n.isFinite else { return nil }
            self.init(query: q, hardNegative: n)
        } else {
            self.init(query: q, hardNegative: q * NoiseLevels.paper.hardNegative / NoiseLevels.paper.query)
        }
    }

    public var description: String { "\(query),\(hardNegative)" }

    /// Saved as its "Q,N" string, so that settings compare as strings (Trainer's resume check).
    public init(from decoder: any Swift.Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let levels = NoiseLevels(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "bad noise levels \(text)"))
        }
        self = levels
    }

    public func encode(to encoder: any Swift.Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

public struct TrainConfig: Codable, Equatable, Sendable {
    public var method: ContrastiveMethod = .moco
    public var arch: ResNetArch = .resnet18
    public var stem: ResNetStem = .cifar
    public var width: Double = 1
    public var inChannels: Int = 3
    /// Side of the square training views (RandomResizedCrop output).
    public var resolution: Int = 32
    public var epochs: Int = 10
    public var batch: Int = 64
    public var lr: Float = 0.06
    public var weightDecay: Float = 5e-4
    public var sgdMomentum: Float = 0.9
    public var warmupEpochs: Int = 0
    public var cosine: Bool = true
    public var queue: Int = 4096
    public var mocoMomentum: Float = 0.99
    public var temperature: Float = 0.2
    public var masking: MaskMode = .saliency
    public var fill: MaskFill = .hp
    public var alpha: Float = 2
    public var hardNegatives: Int = 1
    public var hardNegativeMode: HardNegativeMode = .perSample
    /// The hp fill's noise levels (query, hard negative).
    public var hpNoise: NoiseLevels = .paper
    public var saliency: SaliencySource = .own
    /// Epochs that use classical saliency before the encoder's own (when saliency is "self").
    public var saliencyWarmup: Int = 1
    public var seed: UInt64 = 1
    /// Batch-norm groups in the key encoder's forward (MoCo's shuffle-BN stand-in).
    public var bnSplits: Int = 8
    public var headDim: Int = 128
    public var limit: Int? = nil
    public var saveEvery: Int = 0

    public init() {}

    public var resnet: ResNetConfig {
        ResNetConfig(arch: arch, stem: stem, inChannels: inChannels, width: width)
    }

    /// The largest divisor of `batch` not above bnSplits.
    public var effectiveBNSplits: Int {
        var s = max(1, min(bnSplits, batch))
        while batch % s != 0 { s -= 1 }
        return s
    }

    /// Learning rate at a (fractional) epoch: linear warm-up, then cosine to zero (or constant).
    public func learningRate(epoch: Double) -> Float {
        if warmupEpochs > 0 && epoch < Double(warmupEpochs) {
            return lr * Float((epoch + 1e-9) / Double(warmupEpochs))
        }
        guard cosine, epochs > warmupEpochs else { return lr }
        let t = (epoch - Double(warmupEpochs)) / Double(epochs - warmupEpochs)
        return lr * Float(0.5 * (1 + cos(Double.pi * min(max(t, 0), 1))))
    }

    /// Problems with this configuration for a data-parallel run of `ranks` processes: the global batch
    /// must split into whole shards, and the shuffle-BN forwards (MoCo's keys, saliency and hard
    /// negatives) into whole batch-norm groups per rank.
    public func problems(ranks: Int) -> [String] {
        var p = problems()
        guard ranks > 1 else { return p }
        if batch % ranks != 0 {
            p.append("--batch \(batch) does not split over \(ranks) ranks: give a multiple of \(ranks)")
        } else if (method == .moco || masking != .none) && effectiveBNSplits % ranks != 0 {
            p.append(
                "the key encoder's \(effectiveBNSplits) batch-norm groups (--bn-splits) "
                    + "do not split over \(ranks) ranks: "
                    + "give --bn-splits a multiple of \(ranks) that divides --batch")
        } else if effectiveBNSplits / ranks > bnMaxGroups {
            p.append("--bn-splits \(bnSplits) gives each of \(ranks) ranks more than \(bnMaxGroups) batch-norm groups")
        }
        return p
    }

    /// Problems with this configuration, one line each (empty when valid).
    public func problems() -> [String] {
        var p: [String] = []
        if !(width > 0 && width <= 8) { p.append("--width must be in (0, 8], got \(width)") }
        if inChannels != 1 && inChannels != 3 { p.append("input channels must be 1 or 3, got \(inChannels)") }
        if resolution < 8 || resolution > 1024 { p.append("--res must be between 8 and 1024, got \(resolution)") }
        if epochs < 0 { p.append("--epochs must be >= 0, got \(epochs)") }
        if batch < 2 || batch > 8192 { p.append("--batch must be between 2 and 8192, got \(batch)") }
        if !(lr > 0 && lr < 100) { p.append("--lr must be in (0, 100), got \(lr)") }
        if !(weightDecay >= 0 && weightDecay < 1) { p.append("--wd must be in [0, 1), got \(weightDecay)") }
        if !(sgdMomentum >= 0 && sgdMomentum < 1) { p.append("--momentum must be in [0, 1), got \(sgdMomentum)") }
        if warmupEpochs < 0 { p.append("--warmup must be >= 0") }
        if queue < 1 { p.append("--queue must be >= 1, got \(queue)") }
        if !(mocoMomentum >= 0 && mocoMomentum < 1) { p.append("--moco-m must be in [0, 1), got \(mocoMomentum)") }
        if !(temperature > 0 && temperature <= 10) { p.append("--temperature must be in (0, 10], got \(temperature)") }
        if !(alpha >= 0 && alpha <= 100) { p.append("--alpha must be in [0, 100], got \(alpha)") }
        if hardNegatives < 0 || hardNegatives > 16 {
            p.append("--hard-negatives must be between 0 and 16, got \(hardNegatives)")
        }
        if hardNegativeMode == .shared && hardNegatives > batch {
            p.append("--hard-negatives \(hardNegatives) shared needs a batch of at least as many images (\(batch))")
        }
        if !(hpNoise.query >= 0 && hpNoise.query <= 10 && hpNoise.hardNegative >= 0 && hpNoise.hardNegative <= 10) {
            p.append("--hp-noise levels must be in [0, 10], got \(hpNoise)")
        }
        if saliencyWarmup < 0 { p.append("--saliency-warmup must be >= 0") }
        if headDim < 1 { p.append("head dimension must be >= 1") }
        if let l = limit, l < batch { p.append("--limit \(l) is smaller than one batch (\(batch))") }
        if saveEvery < 0 { p.append("--save-every must be >= 0") }
        let r = resnet
        if r.finalMapSize(resolution) < 1 { p.append("--res \(resolution) is too small for the \(stem) stem") }
        return p
    }

    public func json() -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(data: try! enc.encode(self), encoding: .utf8)!
    }

    /// Decodes a saved configuration; settings it predates take their defaults.
    public static func from(json: String) throws -> TrainConfig {
        let defaults = try JSONSerialization.jsonObject(with: Data(TrainConfig().json().utf8)) as? [String: Any] ?? [:]
        guard let saved = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "not a JSON object"))
        }
        let merged = defaults.merging(saved) { _, s in s }
        return try JSONDecoder().decode(TrainConfig.self, from: JSONSerialization.data(withJSONObject: merged))
    }
}
