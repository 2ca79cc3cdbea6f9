// Process-wide settings from the environment and the command line: checked like options, refused
// with a message naming them, never a crash or a silent fallback.
import XCTest
import Foundation
import Network

final class CommandSafetyCLITests: XCTestCase {
    /// Tiny saved features to run `eval knn` on (the quickest command that computes).
    func features() throws -> String {
        let dir = try makeTempDir(self, "threads")
        let path = dir + "/f.npy"
        try NPYArray(floats: (0..<40).map { Float($0 % 4 == ($0 / 4) % 2 ? 1 : 0) }, shape: [10, 4]).write(path: path)
        try NPYArray(int64s: (0..<10).map { Int64($0 % 2) }, shape: [10]).write(path: dir + "/f.labels.npy")
        return path
    }

    func testSalientThreadsIsValidatedLikeTheOption() throws {
        let f = try features()
        for value in ["100000", "abc", "0", "-3", "2x"] {
            let r = try runSalient(
                ["eval", "knn", "--features", f, "--test-features", f], timeout: 60,
                environment: ["SALIENT_THREADS": value])
            assertFailsCleanly(r, mentioning: ["SALIENT_THREADS", "'\(value)'"], "SALIENT_THREADS=\(value)")
            XCTAssertFalse(r.stdout.contains("top-1"), r.stdout)
        }
        let ok = try runSalient(
            ["eval", "knn", "--features", f, "--test-features", f], environment: ["SALIENT_THREADS": "1"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        let conv = try runSalient(
            ["eval", "knn", "--features", f, "--test-features", f], environment: ["SALIENT_CONV": "fast"])
        assertFailsCleanly(conv, mentioning: ["SALIENT_CONV", "'fast'"], "SALIENT_CONV=fast")
    }

    func testMoreThreadsThanCoresAreSaid() throws {
        let f = try features()
        let r = try runSalient(["eval", "knn", "--features", f, "--test-features", f, "--threads", "1000"], timeout: 60)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("1000 threads") && r.stderr.contains("core"), r.stderr)
        let over = try runSalient(
            ["eval", "knn", "--features", f, "--test-features", f, "--threads", "5000"], timeout: 60)
        assertFailsCleanly(over, mentioning: ["--threads must be between 1 and"], "--threads 5000")
    }

    /// An error found while running (not a mistake in the arguments) is printed alone, without the
    /// usage line.
    func testRunTimeErrorsPrintNoUsage() throws {
        let dir = try makeTempDir(self, "usage")
        let train = try writeIDX(dir: dir, name: "train", n: 8, seed: 1, labels: false)
        let r = try runSalient(["eval", "knn", "--random-init", "--width", "0.125", "--train", train, "--test", train])
        assertFailsCleanly(r, mentioning: [train, "no labels"], "unlabelled images")
        XCTAssertFalse(r.stderr.contains("Usage:"), r.stderr)
        // A mistake in the arguments still shows it.
        let u = try runSalient(["eval", "knn", "--k", "0", "--features", "x.npy", "--test-features", "y.npy"])
        XCTAssertTrue(u.stderr.contains("Usage:"), u.stderr)
    }
}
