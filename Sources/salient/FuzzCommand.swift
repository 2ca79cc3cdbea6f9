import ArgumentParser
import Foundation
import Data

/// `salient fuzz`: a seeded mutation loop over the PNG, JPEG, gzip and IDX parsers (`make fuzz`).
struct FuzzCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fuzz",
        abstract: """
            Fuzz the PNG / JPEG / gzip / IDX parsers with seeded mutations; fails on a crash or an \
            inconsistent result.
            """,
        shouldDisplay: false)

    @Option var iterations = 1_000_000
    @Option var seed: UInt64 = 1

    func validate() throws {
        if iterations < 1 { throw ValidationError("--iterations must be >= 1") }
    }

    func run() throws {
        let report = fuzzParsers(iterations: iterations, seed: seed)
        print(report)
        if report.invalid > 0 { throw ExitCode(1) }
    }
}
