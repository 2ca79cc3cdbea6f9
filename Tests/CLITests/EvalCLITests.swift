// Runs the real `salient eval` binary (.build/release/salient).
import XCTest
import Foundation
import Network

final class EvalCLITests: XCTestCase {
    typealias Result = SalientRun

    func salient(_ args: [String], timeout: TimeInterval = 120) throws -> Result {
        try runSalient(args, timeout: timeout)
    }

    func tempDir() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("salient-eval-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d
    }

    /// Writes N x D features of `classes` clusters (class c near the unit vector e_c) and labels beside them.
    func writeFeatures(_ dir: URL, _ name: String, rows: Int, dim: Int, classes: Int, seed: UInt64, labels: Bool = true)
        throws -> String
    {
        var state = seed
        func noise() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(state >> 40) / Float(1 << 24) - 0.5
        }
        var x = [Float](), y = [Int64]()
        for r in 0..<rows {
            let c = r % classes
            y.append(Int64(c))
            for j in 0..<dim { x.append((j == c ? 1 : 0) + 0.2 * noise()) }
        }
        let path = dir.appendingPathComponent(name + ".npy").path
        try NPYArray(floats: x, shape: [rows, dim]).write(path: path)
        if labels {
            try NPYArray(int64s: y, shape: [rows]).write(path: dir.appendingPathComponent(name + ".labels.npy").path)
        }
        return path
    }

    func assertFails(_ args: [String], mentioning text: String, file: StaticString = #filePath, line: UInt = #line)
        throws
    {
        let r = try salient(args, timeout: 30)
        assertFailsCleanly(r, mentioning: [text], "\(args)", file: file, line: line)
        XCTAssertFalse(r.stdout.contains("top-1"), file: file, line: line)
    }

    func testBadArgumentsFailClearly() throws {
        let dir = try tempDir()
        let tr = try writeFeatures(dir, "train", rows: 20, dim: 4, classes: 2, seed: 1)
        let te = try writeFeatures(dir, "test", rows: 10, dim: 4, classes: 2, seed: 2)
        try assertFails(
            ["eval", "knn", "--checkpoint", "x.safetensors", "--features", tr, "--test-features", te],
            mentioning: "exactly one feature source")
        try assertFails(["eval", "linear", "--random-init", "--train", tr], mentioning: "missing --test")
        try assertFails(["eval", "knn"], mentioning: "give a feature source")
        try assertFails(["eval", "knn", "--features", tr], mentioning: "--test-features")
        try assertFails(
            ["eval", "knn", "--features", tr, "--test-features", te, "--train", tr],
            mentioning: "--train applies to images")
        try assertFails(
            ["eval", "knn", "--features", tr, "--test-features", te, "--k", "0"], mentioning: "--k must be >= 1")
        try assertFails(["eval", "knn", "--features", tr, "--test-features", te, "--t", "0"], mentioning: "--t must be")
        try assertFails(
            ["eval", "linear", "--features", tr, "--test-features", te, "--weight-decays", "a,b"],
            mentioning: "--weight-decays")
        try assertFails(
            ["eval", "knn", "--raw-pixels", "--width", "0.5", "--train", tr, "--test", te],
            mentioning: "--width does not apply")
        try assertFails(
            ["eval", "knn", "--features", dir.appendingPathComponent("nope.npy").path, "--test-features", te],
            mentioning: "no such features file")
        let unlabeled = try writeFeatures(dir, "bare", rows: 10, dim: 4, classes: 2, seed: 3, labels: false)
        try assertFails(["eval", "knn", "--features", tr, "--test-features", unlabeled], mentioning: "labels not found")
        let wide = try writeFeatures(dir, "wide", rows: 10, dim: 5, classes: 2, seed: 4)
        try assertFails(
            ["eval", "knn", "--features", tr, "--test-features", wide], mentioning: "4 columns, test features 5")
        try assertFails(
            [
                "eval", "knn", "--checkpoint", dir.appendingPathComponent("missing.safetensors").path,
                "--train", tr, "--test", te
            ], mentioning: "missing.safetensors")
    }

    func testKNNAndLinearOnSavedFeatures() throws {
        let dir = try tempDir()
        let tr = try writeFeatures(dir, "train", rows: 300, dim: 8, classes: 6, seed: 1)
        let te = try writeFeatures(dir, "test", rows: 120, dim: 8, classes: 6, seed: 2)
        let r = try salient(["eval", "knn", "--features", tr, "--test-features", te, "--k", "10"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "top-1: 100.00\ntop-5: 100.00\n")
        let j = try salient(["eval", "knn", "--features", tr, "--test-features", te, "--json"])
        XCTAssertEqual(j.status, 0, j.stderr)
        let obj = try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(obj?["top1"] as? Double, 100)
        XCTAssertEqual(obj?["method"] as? String, "knn")
        XCTAssertEqual(obj?["classes"] as? Int, 6)
        XCTAssertEqual(obj?["k"] as? Int, 200)
        let l = try salient(["eval", "linear", "--features", tr, "--test-features", te, "--epochs", "10"])
        XCTAssertEqual(l.status, 0, l.stderr)
        XCTAssertTrue(l.stdout.hasPrefix("top-1: 100.00\ntop-5: 100.00"), l.stdout)
    }

    func testRandomInitOnTinyImagesWithCache() throws {
        // Two classes of 8x8 images in IDX files (images, labels beside).
        let dir = try tempDir()
        try writeIDX(dir: dir.path, name: "train", n: 40, seed: 1)
        try writeIDX(dir: dir.path, name: "t10k", n: 20, seed: 2)
        let cache = dir.appendingPathComponent("cache").path
        let args = [
            "eval", "knn", "--random-init", "--width", "0.125", "--train",
            dir.appendingPathComponent("train-images-idx3-ubyte").path,
            "--test", dir.appendingPathComponent("t10k-images-idx3-ubyte").path, "--k", "5", "--cache", cache
        ]
        let a = try salient(args)
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertTrue(a.stdout.hasPrefix("top-1: "), a.stdout)
        let cached = try FileManager.default.contentsOfDirectory(atPath: cache)
        XCTAssertEqual(cached.filter { $0.hasSuffix(".labels.npy") }.count, 2, "\(cached)")
        let b = try salient(args)
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertEqual(a.stdout, b.stdout)
        XCTAssertTrue(b.stderr.contains("from the cache"), b.stderr)
        // A different seed is a different encoder: not served from the cache.
        let c = try salient(args + ["--seed", "5"])
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertFalse(c.stderr.contains("from the cache"), c.stderr)
    }
}
