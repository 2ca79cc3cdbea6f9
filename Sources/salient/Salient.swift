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

extension ConvAlgorithm: ExpressibleByArgument {
    public init?(argument: String) {
        guard let a = Self.allCases.first(where: { $0.name == argument }) else { return nil }
        self = a
    }
    public var defaultValueDescription: String { name }
    public static var allValueStrings: [String] { allCases.map(\.name) }
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
        _ = try convolution()
    }

    /// SALIENT_CONV's algorithm, nil when unset.
    static func convolution() throws -> ConvAlgorithm? {
        guard let text = value("SALIENT_CONV") else { return nil }
        guard let algorithm = ConvAlgorithm(argument: text) else {
            throw ValidationError("SALIENT_CONV must be winograd or direct, got '\(text)'")
        }
        return algorithm
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

    /// Sets the thread count; says so when there are more threads than cores.
    func apply() {
        if let t = threads { Threads.count = t }
        let cores = Threads.processors
        if Threads.count > cores {
            note(
                "note: \(Threads.count) threads on \(cores) core(s): "
                    + "every parallel loop is split \(Threads.count) ways "
                    + "and runs slower than on \(cores); leave --threads and SALIENT_THREADS out to use \(cores)")
        }
    }

    /// The convolution algorithm: --conv, else SALIENT_CONV (checked at start), else winograd.
    var algorithm: ConvAlgorithm { conv ?? (try? EnvironmentSettings.convolution()).flatMap { $0 } ?? .winograd }

    /// The kernels' settings for this command's passes, on the threads in use now (after apply()).
    var execution: ExecutionConfig { ExecutionConfig(convolution: algorithm, threads: Threads.count) }
}
