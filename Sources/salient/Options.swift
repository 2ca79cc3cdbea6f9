import ArgumentParser
import Foundation
import Network
import Contrastive

/// --arch/--stem/--width: override or complete what a checkpoint says.
struct ModelOptions: ParsableArguments {
    @Option(help: "resnet18 | resnet34 | resnet50 (default: from the checkpoint).") var arch: String?
    @Option(help: "cifar (3x3 stem, no pool) | imagenet (7x7 stem + max pool).") var stem: String?
    @Option(help: "Channel width multiplier, e.g. 0.25 gives 16-32-64-128 channels.") var width: Double?

    func validate() throws {
        if let a = arch, ResNetArch(rawValue: a) == nil {
            throw ValidationError(
                "--arch must be one of \(ResNetArch.allCases.map(\.rawValue).joined(separator: ", ")), got '\(a)'")
        }
        if let s = stem, ResNetStem(rawValue: s) == nil {
            throw ValidationError("--stem must be cifar or imagenet, got '\(s)'")
        }
        if let w = width, !(w > 0 && w <= 8) { throw ValidationError("--width must be in (0, 8], got \(w)") }
    }

    func apply(to c: ResNetConfig) -> ResNetConfig {
        var c = c
        if let a = arch { c.arch = ResNetArch(rawValue: a)! }
        if let s = stem { c.stem = ResNetStem(rawValue: s)! }
        if let w = width { c.width = w }
        return c
    }
}

/// --resize / --mean / --std.
struct PreprocessOptions: ParsableArguments {
    @Option(help: "Resize every image to N x N first (needed when sizes differ).") var resize: Int?
    @Option(help: "Per-channel mean, e.g. 0.485,0.456,0.406 (default: ImageNet's; 0.5 for 1 channel).") var mean:
        String?
    @Option(help: "Per-channel std, e.g. 0.229,0.224,0.225 (default: ImageNet's; 0.5 for 1 channel).") var std: String?
    @Option(
        name: .customLong("input"),
        help: """
            auto | plain | highpass: high-pass filter the images, as hp-fill training did (auto: as the \
            checkpoint says).
            """)
    var inputFilter = "auto"

    func validate() throws {
        if !["auto", "plain", "highpass"].contains(inputFilter) {
            throw ValidationError("--input must be auto, plain or highpass, got '\(inputFilter)'")
        }
        if let r = resize, r < 1 || r > 4096 { throw ValidationError("--resize must be between 1 and 4096, got \(r)") }
        _ = try parse(mean, "--mean"); _ = try parse(std, "--std")
        if let s = try parse(std, "--std"), s.contains(where: { $0 <= 0 }) {
            throw ValidationError("--std values must be > 0")
        }
    }

    func parse(_ s: String?, _ name: String) throws -> [Float]? {
        guard let s else { return nil }
        let v = s.split(separator: ",").map { Float($0.trimmingCharacters(in: .whitespaces)) }
        guard !v.isEmpty, v.allSatisfy({ $0 != nil && $0!.isFinite }) else {
            throw ValidationError("\(name) expects comma-separated numbers, got '\(s)'")
        }
        return v.map { $0! }
    }

    /// `checkpointInput` is the checkpoint's `input` metadata ("highpass" for hp-fill training).
    func preprocess(channels: Int, checkpointInput: String? = nil) throws -> Preprocess {
        var p = Preprocess.defaults(channels: channels, resize: resize)
        p.highPass = inputFilter == "highpass" || (inputFilter == "auto" && checkpointInput == "highpass")
        if let m = try parse(mean, "--mean") { p.mean = m }
        if let s = try parse(std, "--std") { p.std = s }
        guard p.mean.count == channels, p.std.count == channels else {
            throw ValidationError("--mean/--std need \(channels) value(s) for a \(channels)-channel encoder")
        }
        return p
    }
}

/// Prints to stderr (progress and notes; stdout keeps results).
func note(_ s: String, terminator: String = "\n") {
    FileHandle.standardError.write((s + terminator).data(using: .utf8)!)
}

/// A progress line rewritten in place on a terminal; on a pipe or file only the last one (`done`)
/// is written, so logs get one line instead of a run of carriage returns.
func progressNote(_ s: String, done: Bool) {
    if isatty(2) != 0 { note("\r\u{1B}[K" + s, terminator: done ? "\n" : "") } else if done { note(s) }
}

/// Where the labels of a features file live: FEATURES.npy -> FEATURES.labels.npy.
func labelsPath(forFeatures path: String) -> String {
    path.hasSuffix(".npy") ? String(path.dropLast(4)) + ".labels.npy" : path + ".labels.npy"
}

extension HardNegativeMode: ExpressibleByArgument {}
extension SaliencySource: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}
extension NoiseLevels: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}
extension TrainPreset: ExpressibleByArgument {}
extension ContrastiveMethod: ExpressibleByArgument {}
extension ResNetArch: ExpressibleByArgument {}
extension ResNetStem: ExpressibleByArgument {}
extension MaskMode: ExpressibleByArgument {}
extension MaskFill: ExpressibleByArgument {}
