import ArgumentParser
import Foundation
import Kernels
import Network

struct Salient: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "salient",
        abstract: "Contrastive self-supervised ResNet training on CPUs, with saliency-guided masking.",
        version: "0.1.0 (\(simdBuildName))",
        subcommands: [TrainCommand.self, ExtractCommand.self, EvalCommand.self, ExportCommand.self, PreviewCommand.self, BenchCommand.self, FuzzCommand.self])
}

/// `--threads N` shared by every command that computes; falls back to SALIENT_THREADS, then all cores.
struct ThreadOptions: ParsableArguments {
    @Option(name: .long, help: "Worker threads (default: SALIENT_THREADS or all cores).")
    var threads: Int?

    @Option(name: .long, help: "3x3 stride-1 convolutions: winograd (F(4x4,3x3), the default) or direct (default: SALIENT_CONV or winograd).")
    var conv: String?

    func validate() throws {
        if let t = threads, t < 1 || t > 4096 {
            throw ValidationError("--threads must be between 1 and 4096, got \(t)")
        }
        if let c = conv, c != "winograd" && c != "direct" {
            throw ValidationError("--conv must be winograd or direct, got '\(c)'")
        }
    }

    func apply() {
        if let t = threads { Threads.count = t }
        let env = ProcessInfo.processInfo.environment["SALIENT_CONV"]
        Conv2DShape.winogradEnabled = (conv ?? env ?? "winograd") != "direct"
        // SALIENT_FUSE_BN=0: mid-block batch norms write their output (benchmarks compare the two).
        ResNetPass.fusesBatchNorms = ProcessInfo.processInfo.environment["SALIENT_FUSE_BN"] != "0"
    }

    /// The convolution algorithm in effect after apply().
    static var algorithm: String { Conv2DShape.winogradEnabled ? "winograd" : "direct" }
}
