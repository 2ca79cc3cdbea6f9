// `salient eval` and `extract` against inputs that could give a silently wrong answer: non-finite
// features or weights, a diverged probe, a replaced dataset or checkpoint under the feature cache,
// sparse labels, an integer array where features belong.
import XCTest
import Foundation
import Network

final class EvalSafetyCLITests: XCTestCase {
    let fixtures = salientPackageRoot.appendingPathComponent("fixtures").path

    /// rows x dim float32 features (`value(row, column)`) and int64 labels beside them.
    func writeFeatures(
        _ path: String, rows: Int, dim: Int, labels: [Int64]? = nil,
        value: (Int, Int) -> Float
    ) throws {
        var x = [Float]()
        for r in 0..<rows { for j in 0..<dim { x.append(value(r, j)) } }
        try NPYArray(floats: x, shape: [rows, dim]).write(path: path)
        try NPYArray(int64s: labels ?? (0..<rows).map { Int64($0 % 2) }, shape: [rows])
            .write(path: String(path.dropLast(4)) + ".labels.npy")
    }

    /// Two well separated classes: row r is near e_(r % 2).
    func separable(_ r: Int, _ j: Int) -> Float { (j == r % 2 ? 1 : 0) + 0.01 * Float((r * 7 + j * 3) % 5) }

    func testNonFiniteFeaturesAreAnErrorNamingTheFile() throws {
        let dir = try makeTempDir(self, "eval-nan")
        let nan = dir + "/n.npy", good = dir + "/good.npy", inf = dir + "/inf.npy"
        try writeFeatures(nan, rows: 8, dim: 4) { _, _ in .nan }
        try writeFeatures(good, rows: 8, dim: 4, value: separable)
        try writeFeatures(inf, rows: 8, dim: 4) { r, j in r == 5 && j == 2 ? .infinity : self.separable(r, j) }
        for method in ["knn", "linear"] {
            let a = try runSalient(["eval", method, "--features", nan, "--test-features", nan])
            assertFailsCleanly(a, mentioning: [nan, "NaN"], "\(method) on NaN features")
            XCTAssertFalse(a.stdout.contains("top-1"), a.stdout)
            let b = try runSalient(["eval", method, "--features", good, "--test-features", inf])
            assertFailsCleanly(b, mentioning: [inf, "row 5", "inf"], "\(method) on an infinite test feature")
            XCTAssertFalse(b.stdout.contains("top-1"), b.stdout)
            // Run-time errors print the error alone, not the usage line.
            XCTAssertFalse(b.stderr.contains("Usage:"), b.stderr)
        }
    }

    func testDivergedLinearProbeIsAnError() throws {
        let dir = try makeTempDir(self, "eval-lr")
        let f = dir + "/f.npy"
        try writeFeatures(f, rows: 40, dim: 4, value: separable)
        let r = try runSalient([
            "eval", "linear", "--features", f, "--test-features", f, "--lr", "1e30", "--epochs", "3"
        ])
        assertFailsCleanly(r, mentioning: ["diverged", "--lr"], "eval linear --lr 1e30")
        XCTAssertFalse(r.stdout.contains("top-1"), r.stdout)
        // The same features at the default learning rate score.
        let ok = try runSalient(["eval", "linear", "--features", f, "--test-features", f, "--epochs", "3"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.hasPrefix("top-1: 100.00"), ok.stdout)
    }

    /// A copy of the committed model with `change` applied to its tensors.
    func modifiedModel(_ dir: String, _ name: String, _ change: (inout SafeTensorsFile) -> Void) throws -> String {
        var file = try SafeTensorsFile.read(path: fixtures + "/models/resnet18_cifar_w0125.safetensors")
        change(&file)
        let path = dir + "/" + name
        try file.write(path: path)
        return path
    }

    func testCheckpointWithNonFiniteWeightsOrFeaturesIsAnError() throws {
        let dir = try makeTempDir(self, "eval-nan-weights")
        let train = try writeIDX(dir: dir, name: "train", n: 16, seed: 1)
        let test = try writeIDX(dir: dir, name: "t10k", n: 8, seed: 2)
        let nanWeights = try modifiedModel(dir, "nan.safetensors") { f in
            var w = f["layer1.0.conv1.weight"]!.floats!
            w[3] = .nan
            f["layer1.0.conv1.weight"] = .init(floats: w, shape: f["layer1.0.conv1.weight"]!.shape)
        }
        let r = try runSalient(["eval", "knn", "--checkpoint", nanWeights, "--train", train, "--test", test])
        assertFailsCleanly(r, mentioning: [nanWeights, "layer1.0.conv1.weight", "NaN"], "eval knn, NaN weights")
        XCTAssertFalse(r.stdout.contains("top-1"), r.stdout)
        let x = try runSalient(["extract", "--checkpoint", nanWeights, "--data", train, "--out", dir + "/f.npy"])
        assertFailsCleanly(x, mentioning: [nanWeights, "layer1.0.conv1.weight"], "extract, NaN weights")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/f.npy"))
        // Finite weights so large that the features overflow.
        let huge = try modifiedModel(dir, "huge.safetensors") { f in
            for name in f.names where name.hasSuffix("conv1.weight") || name.hasSuffix("conv2.weight") {
                f[name] = .init(floats: f[name]!.floats!.map { $0 * 1e30 }, shape: f[name]!.shape)
            }
        }
        let h = try runSalient(["eval", "knn", "--checkpoint", huge, "--train", train, "--test", test])
        assertFailsCleanly(h, mentioning: [huge, "not finite"], "eval knn, overflowing features")
        XCTAssertFalse(h.stdout.contains("top-1"), h.stdout)
    }

    /// The cache serves features only for the same images and the same encoder bytes: replacing either
    /// in place (even keeping the modification time) is a miss.
    func testFeatureCacheNoticesReplacedImagesAndWeights() throws {
        let dir = try makeTempDir(self, "eval-cache")
        let train = try writeIDX(dir: dir, name: "train", n: 16, seed: 1)
        let test = try writeIDX(dir: dir, name: "t10k", n: 8, seed: 2)
        let model = try modifiedModel(dir, "m.safetensors") { _ in }
        let cache = dir + "/cache"
        let args = [
            "eval", "knn", "--checkpoint", model, "--train", train, "--test", test, "--k", "3", "--cache", cache
        ]
        let a = try runSalient(args)
        XCTAssertEqual(a.status, 0, a.stderr)
        let b = try runSalient(args)
        XCTAssertTrue(
            b.stderr.contains("train features from the cache") && b.stderr.contains("test features from the cache"),
            b.stderr)
        // New train images of the same size, written over the old file, its modification time restored.
        let fm = FileManager.default
        let mtime = try fm.attributesOfItem(atPath: train)[.modificationDate] as! Date
        try writeIDX(dir: dir, name: "train", n: 16, seed: 99)
        try fm.setAttributes([.modificationDate: mtime], ofItemAtPath: train)
        let c = try runSalient(args)
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertFalse(c.stderr.contains("train features from the cache"), c.stderr)
        XCTAssertTrue(c.stderr.contains("test features from the cache"), c.stderr)
        // Other weights in the checkpoint, same size, same modification time.
        let mmtime = try fm.attributesOfItem(atPath: model)[.modificationDate] as! Date
        _ = try modifiedModel(dir, "m.safetensors") { f in
            f["conv1.weight"] = .init(floats: f["conv1.weight"]!.floats!.map { -$0 }, shape: f["conv1.weight"]!.shape)
        }
        try fm.setAttributes([.modificationDate: mmtime], ofItemAtPath: model)
        let d = try runSalient(args)
        XCTAssertEqual(d.status, 0, d.stderr)
        XCTAssertFalse(d.stderr.contains("from the cache"), d.stderr)
    }

    /// Labels far apart (0, 100000, 200000, ...) are classes like any others: ten classes, not 900001.
    func testSparseLabelsAreRenumbered() throws {
        let dir = try makeTempDir(self, "eval-sparse")
        let f = dir + "/f.npy"
        try writeFeatures(f, rows: 60, dim: 10, labels: (0..<60).map { Int64($0 % 10) * 100_000 }) { r, j in
            (j == r % 10 ? 1 : 0) + 0.01 * Float((r + j) % 3)
        }
        for method in ["knn", "linear"] {
            let r = try runSalient(
                ["eval", method, "--features", f, "--test-features", f, "--json"]
                    + (method == "linear" ? ["--epochs", "5"] : ["--k", "1"]))
            XCTAssertEqual(r.status, 0, r.stderr)
            let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            XCTAssertEqual(obj?["classes"] as? Int, 10, r.stdout)
            XCTAssertEqual(obj?["top1"] as? Double, 100, r.stdout)
        }
    }

    /// A 32-bit integer array where features belong is reported as what it is.
    func testWrongDtypeIsReportedAsStored() throws {
        let dir = try makeTempDir(self, "eval-i4")
        let path = dir + "/ints.npy"
        var header = Array("{'descr': '<i4', 'fortran_order': False, 'shape': (8, 4), }".utf8)
        while (10 + header.count + 1) % 64 != 0 { header.append(0x20) }
        header.append(0x0A)
        let bytes: [UInt8] =
            [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, UInt8(header.count), 0] + header
            + [UInt8](repeating: 1, count: 8 * 4 * 4)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        try NPYArray(int64s: (0..<8).map { Int64($0 % 2) }, shape: [8]).write(path: dir + "/ints.labels.npy")
        let r = try runSalient(["eval", "knn", "--features", path, "--test-features", path])
        assertFailsCleanly(r, mentioning: [path, "<i4"], "int32 features")
        XCTAssertFalse(r.stderr.contains("<i8"), r.stderr)
    }
}
