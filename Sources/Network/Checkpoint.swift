// Moving encoders between salient and PyTorch: safetensors with torchvision's names and layouts.
//
// An encoder-only file has bare torchvision names (`conv1.weight`, `layer1.0.bn1.running_mean`, ...).
// A trainer checkpoint has `encoder_q.` / `encoder_k.` prefixes (heads as `encoder_q.fc.0.weight`, ...)
// plus optimizer and trainer state. Loading accepts either, and MoCo's `module.encoder_q.` too.
import Foundation

public struct CheckpointError: Error, CustomStringConvertible, LocalizedError {
    public var path: String
    public var reason: String
    public init(path: String, reason: String) { self.path = path; self.reason = reason }
    public var description: String { "\(path): \(reason)" }
    public var errorDescription: String? { description }
}

extension ParameterStore {
    /// Adds every tensor (parameters, buffers, int64 counters) under `prefix` + name to `file`.
    public func export(into file: inout SafeTensorsFile, prefix: String = "", stripPrefix: String = "") {
        for s in slots {
            var name = s.name
            if !stripPrefix.isEmpty, name.hasPrefix(stripPrefix) { name.removeFirst(stripPrefix.count) }
            switch s.kind {
            case .counter:
                file[prefix + name] = .init(int64s: [counters[s.offset]], shape: s.shape)
            default:
                file[prefix + name] = .init(
                    floats: Array(UnsafeBufferPointer(start: pointer(s), count: s.count)), shape: s.shape)
            }
        }
    }

    /// Loads every tensor of this store from `file` (names with `prefix`). Tensors of the file that
    /// this store lacks are ignored when `ignoring(name)` says so, reported otherwise.
    /// Throws with the first mismatches (missing, wrong shape, wrong dtype, NaN or infinite values,
    /// unexpected) listed; the store is unchanged then.
    public func load(
        from file: SafeTensorsFile, prefix: String = "", path: String,
        ignoring: (String) -> Bool = { _ in false }
    ) throws {
        var problems: [String] = []
        var pending: [(TensorSlot, [Float]?, [Int64]?)] = []
        for s in slots {
            let name = prefix + s.name
            guard let t = file[name] else { problems.append("missing \(name) \(s.shape)"); continue }
            if t.shape != s.shape && !(s.shape.isEmpty && t.count == 1) {
                problems.append("\(name): shape \(t.shape) in file, expected \(s.shape)")
                continue
            }
            if s.kind == .counter {
                guard let v = t.int64s else {
                    problems.append("\(name): dtype \(t.dtype.rawValue) cannot be read as int64")
                    continue
                }
                pending.append((s, nil, v))
            } else {
                guard let v = t.floats else {
                    problems.append("\(name): dtype \(t.dtype.rawValue) cannot be read as float")
                    continue
                }
                if let problem = nonFiniteProblem(v, name: name) { problems.append(problem); continue }
                pending.append((s, v, nil))
            }
        }
        for name in file.names where name.hasPrefix(prefix) {
            let bare = String(name.dropFirst(prefix.count))
            if self.slot(bare) == nil && !ignoring(bare) { problems.append("unexpected tensor \(name)") }
        }
        if !problems.isEmpty {
            let shown = problems.prefix(8).joined(separator: "\n  ")
            let more = problems.count > 8 ? "\n  ... and \(problems.count - 8) more" : ""
            throw CheckpointError(path: path, reason: "does not fit the requested model:\n  \(shown)\(more)")
        }
        for (s, floats, ints) in pending {
            if let ints {
                counters[s.offset] = ints[0]
            } else if let floats {
                floats.withUnsafeBufferPointer { pointer(s).update(from: $0.baseAddress!, count: s.count) }
            }
        }
    }
}

/// "NAME holds N NaN/infinite values (first at index I: NaN)", or nil when every value is finite: a
/// checkpoint whose training diverged cannot give meaningful features or a resumable run.
public func nonFiniteProblem(_ v: [Float], name: String) -> String? {
    guard let i = v.firstIndex(where: { !$0.isFinite }) else { return nil }
    let count = v.reduce(0) { $0 + ($1.isFinite ? 0 : 1) }
    return "\(name) holds \(count) NaN or infinite value(s) of \(v.count) "
        + "(first at index \(i): \(describeNonFinite(v[i])))"
}

/// "NaN", "+infinity" or "-infinity" (Swift prints "nan" and "inf"); other values as Swift prints them.
public func describeNonFinite(_ v: Float) -> String {
    v.isNaN ? "NaN" : v == .infinity ? "+infinity" : v == -.infinity ? "-infinity" : "\(v)"
}

public enum EncoderCheckpoint {
    /// Prefixes under which an encoder's backbone may be stored, tried in order.
    public static let knownPrefixes = ["", "encoder_q.", "module.encoder_q.", "module.", "backbone.", "encoder."]

    /// The prefix under which `file` holds a backbone (the one whose `conv1.weight` exists).
    public static func backbonePrefix(_ file: SafeTensorsFile) -> String? {
        knownPrefixes.first { file[$0 + "conv1.weight"] != nil && file[$0 + "layer1.0.conv1.weight"] != nil }
    }

    /// Architecture from metadata when present, else from tensor shapes.
    public static func inferConfig(_ file: SafeTensorsFile, path: String) throws -> ResNetConfig {
        guard let prefix = backbonePrefix(file), let c1 = file[prefix + "conv1.weight"], c1.shape.count == 4 else {
            throw CheckpointError(
                path: path,
                reason:
                    "no ResNet backbone found (no conv1.weight / layer1.0.conv1.weight under any of the prefixes "
                    + "\(knownPrefixes.filter { !$0.isEmpty }) or bare)")
        }
        let m = file.metadata
        let stem: ResNetStem = ResNetStem(rawValue: m["stem"] ?? "") ?? (c1.shape[2] == 7 ? .imagenet : .cifar)
        let arch: ResNetArch
        if let a = m["arch"], let parsed = ResNetArch(rawValue: a) {
            arch = parsed
        } else if file[prefix + "layer1.0.conv3.weight"] != nil {
            arch = .resnet50
        } else if file[prefix + "layer3.5.conv1.weight"] != nil {
            arch = .resnet34
        } else {
            arch = .resnet18
        }
        let stemChannels = c1.shape[0], inChannels = c1.shape[1]
        guard inChannels == 1 || inChannels == 3 else {
            throw CheckpointError(
                path: path,
                reason: "\(prefix)conv1.weight takes \(inChannels) input channels; salient reads 1 (gray) or 3 (RGB)")
        }
        let width: Double
        if let text = m["width"] {
            guard let w = Double(text), w > 0, w <= 8 else {
                throw CheckpointError(
                    path: path, reason: "metadata width '\(text)' is not a width multiplier in (0, 8]")
            }
            let config = ResNetConfig(arch: arch, stem: stem, inChannels: inChannels, width: w)
            guard config.stageWidths[0] == stemChannels else {
                throw CheckpointError(
                    path: path,
                    reason:
                        "metadata width \(text) gives \(config.stageWidths[0]) stem channels, "
                        + "but \(prefix)conv1.weight has \(stemChannels)")
            }
            width = w
        } else {
            guard stemChannels >= 1 && stemChannels <= 512 else {
                throw CheckpointError(
                    path: path,
                    reason:
                        "\(prefix)conv1.weight has \(stemChannels) output channels; "
                        + "a width multiplier in (0, 8] gives 1-512")
            }
            width = Double(stemChannels) / 64
        }
        return ResNetConfig(arch: arch, stem: stem, inChannels: inChannels, width: width)
    }

    /// Reads a backbone (and its MoCo head when `headDim` is given and present) into a new Encoder.
    /// `config` overrides what the file says; a mismatch is reported with the first differences.
    /// `trainable: false` allocates no gradient or optimizer blocks (extraction, evaluation).
    public static func loadEncoder(
        path: String, config: ResNetConfig? = nil, headDim: Int? = nil,
        trainable: Bool = true
    ) throws -> Encoder {
        let file = try SafeTensorsFile.read(path: path)
        let cfg = try config ?? inferConfig(file, path: path)
        guard let prefix = backbonePrefix(file) else {
            throw CheckpointError(path: path, reason: "no ResNet backbone found")
        }
        let wantsHead = headDim != nil && file[prefix + "fc.0.weight"] != nil
        let enc = Encoder(config: cfg, headDim: wantsHead ? headDim : nil, trainable: trainable)
        try enc.store.load(from: file, prefix: prefix, path: path) { name in
            // torchvision's classifier and MoCo heads are not part of a backbone.
            name.hasPrefix("fc.") || name.contains(".") == false
        }
        return enc
    }

    /// Writes the backbone alone, bare torchvision names, with arch/stem/width metadata.
    public static func saveBackbone(_ enc: Encoder, path: String, extraMetadata: [String: String] = [:]) throws {
        var file = SafeTensorsFile(metadata: metadata(enc.config).merging(extraMetadata) { _, b in b })
        for s in enc.store.slots where !s.name.hasPrefix("fc.") {
            switch s.kind {
            case .counter: file[s.name] = .init(int64s: [enc.store.counters[s.offset]], shape: s.shape)
            default: file[s.name] = .init(floats: enc.store.values(s.name), shape: s.shape)
            }
        }
        try file.write(path: path)
    }

    public static func metadata(_ c: ResNetConfig) -> [String: String] {
        [
            "arch": c.arch.rawValue, "stem": c.stem.rawValue, "width": String(c.width),
            "in_channels": String(c.inChannels)
        ]
    }
}
