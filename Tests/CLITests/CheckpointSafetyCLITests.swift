// Checkpoints against crafted or misdirected files: every field read back is checked, the error names
// the file, nothing traps; `export` never replaces a trainer checkpoint.
import XCTest
import Foundation
import Network

final class CheckpointSafetyCLITests: XCTestCase {
    /// A finished one-epoch run: its folder and data.
    func trainedRun() throws -> (dir: String, data: String, out: String) {
        let dir = try makeTempDir(self, "checkpoint")
        let data = try writeIDX(dir: dir, name: "train", n: 32, seed: 1)
        let out = dir + "/run"
        let r = try runSalient(tinyTrainArgs(data: data, out: out, epochs: 1) + ["--method", "moco", "--queue", "16"])
        XCTAssertEqual(r.status, 0, r.stderr)
        return (dir, data, out)
    }

    /// Rewrites DIR/last.safetensors with `change` applied, then resumes it: a clean failure naming
    /// the checkpoint and every text of `mentioning`.
    func assertResumeRefused(
        _ run: (dir: String, data: String, out: String), mentioning texts: [String],
        _ change: (inout SafeTensorsFile) -> Void, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let path = run.out + "/last.safetensors"
        let original = try SafeTensorsFile.read(path: path)
        var f = original
        change(&f)
        try f.write(path: path)
        defer { try? original.write(path: path) }
        let r = try runSalient(
            tinyTrainArgs(data: run.data, out: run.out, epochs: 2) + ["--method", "moco", "--queue", "16", "--resume"],
            timeout: 60)
        assertFailsCleanly(r, mentioning: [path] + texts, "resume of a crafted checkpoint", file: file, line: line)
    }

    func testCraftedTrainerStateIsRefused() throws {
        let run = try trainedRun()
        try assertResumeRefused(run, mentioning: ["queue_ptr", "1000000"]) { f in
            f["queue_ptr"] = .init(int64s: [1_000_000], shape: [1])
        }
        try assertResumeRefused(run, mentioning: ["queue_ptr"]) { f in f["queue_ptr"] = .init(int64s: [], shape: [0]) }
        try assertResumeRefused(run, mentioning: ["trainer.state", "-5"]) { f in
            var s = f["trainer.state"]!.int64s!
            s[0] = -5
            f["trainer.state"] = .init(int64s: s, shape: [5])
        }
        try assertResumeRefused(run, mentioning: ["trainer.state"]) { f in
            var s = f["trainer.state"]!.int64s!
            s[3] = 999  // position past the end of the epoch
            f["trainer.state"] = .init(int64s: s, shape: [5])
        }
        try assertResumeRefused(run, mentioning: ["trainer.best_knn"]) { f in
            f["trainer.best_knn"] = .init(floats: [], shape: [0])
        }
        try assertResumeRefused(run, mentioning: ["encoder_q.conv1.weight", "NaN"]) { f in
            let t = f["encoder_q.conv1.weight"]!
            f["encoder_q.conv1.weight"] = .init(floats: t.floats!.map { _ in .nan }, shape: t.shape)
        }
        try assertResumeRefused(run, mentioning: ["config"]) { f in f.metadata["config"] = "{\"batch\": \"eight\"}" }
    }

    /// Metadata that would size an absurd model (or none at all) is refused before anything is built.
    func testCraftedModelMetadataIsRefused() throws {
        let run = try trainedRun()
        let path = run.out + "/last.safetensors"
        for (key, value) in [("width", "1e9"), ("width", "nan"), ("width", "0.5")] {
            var f = try SafeTensorsFile.read(path: path)
            f.metadata[key] = value
            let crafted = run.dir + "/crafted.safetensors"
            try f.write(path: crafted)
            let r = try runSalient(
                ["extract", "--checkpoint", crafted, "--data", run.data, "--out", run.dir + "/f.npy"], timeout: 60)
            assertFailsCleanly(r, mentioning: [crafted, "width"], "\(key) \(value)")
        }
    }

    /// export never writes over a trainer checkpoint: not over its own input, not over another run's.
    func testExportDoesNotReplaceATrainerCheckpoint() throws {
        let run = try trainedRun()
        let path = run.out + "/last.safetensors"
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        let same = try runSalient(["export", "--checkpoint", path, "--out", path])
        assertFailsCleanly(same, mentioning: [path], "export over its own input")
        let other = run.dir + "/other.safetensors"
        try FileManager.default.copyItem(atPath: path, toPath: other)
        let over = try runSalient(["export", "--checkpoint", path, "--out", other])
        assertFailsCleanly(over, mentioning: [other, "trainer checkpoint"], "export over a trainer checkpoint")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: other)), before)
        let ok = try runSalient(["export", "--checkpoint", path, "--out", run.dir + "/encoder.safetensors"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
    }
}
