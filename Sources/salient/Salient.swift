import ArgumentParser
import Foundation
import Kernels
import Network

struct Salient: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "salient",
        abstract: "Contrastive self-supervised ResNet training on CPUs, with saliency-guided masking.",
        version: "0.1.0 (\(simdBuildName))",
        subcommands: [
            TrainCommand.self, ExtractCommand.self, EvalCommand.self, ExportCommand.self, PreviewCommand.self,
            BenchCommand.self, FuzzCommand.self
        ])
}

/// The convolution algorithm for 3x3 stride-1 layers.
enum ConvAlgorithm: String, CaseIterable, ExpressibleByArgument {
    case winograd, direct
}

/// Process-wide settings from the environment, checked like the options that override them:
/// SALIENT_THREADS (a thread count) and SALIENT_CONV (winograd or direct). An empty variable counts as unset.
enum EnvironmentSettings {
    static func value(_ name: String) -> String? {
        guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else { return nil }
        return v
    }

    /// Applies both variables (all cores and Winograd when unset), or throws naming the bad one.
    static func apply() throws {
        if let text = value("SALIENT_THREADS") {
            guard let n = Int(text.trimmingCharacters(in: .whitespaces)), Threads.allowedCounts.contains(n) else {
                throw ValidationError(
                    "SALIENT_THREADS must be a whole number of threads between 1 and \(Threads.maximumCount), "
                        + "got '\(text)'")
            }
            Threads.count = n
        } else {
            Threads.count = Threads.processors
        }
        if let text = value("SALIENT_CONV") {
            guard let algorithm = ConvAlgorithm(rawValue: text) else {
                throw ValidationError("SALIENT_CONV must be winograd or direct, got '\(text)'")
            }
            Conv2DShape.winogradEnabled = algorithm == .winograd
        }
    }
}

/// `--threads N` and `--conv` for every command that computes; they override SALIENT_THREADS and
/// SALIENT_CONV (checked at start, EnvironmentSettings), whose defaults are all cores and winograd.
struct ThreadOptions: ParsableArguments {
    @Option(name: .long, help: "Worker threads, 1-\(Threads.maximumCount) (default: SALIENT_THREADS or all cores).")
    var threads: Int?

    @Option(
        name: .long,
        help: """
            3x3 stride-1 convolutions: winograd (F(4x4,3x3), the default) or direct (default: SALIENT_CONV \
            or winograd).
            """)
    var conv: ConvAlgorithm?

    func validate() throws {
        if let t = threads, !Threads.allowedCounts.contains(t) {
            throw ValidationError("--threads must be between 1 and \(Threads.maximumCount), got \(t)")
        }
    }

    /// Sets the thread count and convolution algorithm; says so when there are more threads than cores.
    func apply() {
        if let t = threads { Threads.count = t }
        if let c = conv { Conv2DShape.winogradEnabled = c == .winograd }
        // SALIENT_FUSE_BN=0: mid-block batch norms write their output (benchmarks compare the two).
        ResNetPass.fusesBatchNorms = ProcessInfo.processInfo.environment["SALIENT_FUSE_BN"] != "0"
        let cores = Threads.processors
        if Threads.count > cores {
            note(
                "note: \(Threads.count) threads on \(cores) core(s): "
                    + "every parallel loop is split \(Threads.count) ways "
                    + "and runs slower than on \(cores); leave --threads and SALIENT_THREADS out to use \(cores)")
        }
    }

    /// The convolution algorithm in effect after apply().
    static var algorithm: String { Conv2DShape.winogradEnabled ? "winograd" : "direct" }
}
