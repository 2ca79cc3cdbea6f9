// `salient train` against the ways a long unattended run could be lost, stuck or silently wrong: a
// resume on other data or settings, a bad input found after an epoch, two runs in one folder, a fresh
// run over an old one, an interrupt.
import XCTest
import Foundation
import Network
#if canImport(Glibc)
    import Glibc
#endif

/// A training run small enough for a test: 8x8 gray images, a ResNet-18 at width 1/16, batch 8.
func tinyTrainArgs(data: String, out: String, epochs: Int) -> [String] {
    [
        "train", "--data", data, "--out", out, "--res", "8", "--width", "0.0625", "--batch", "8", "--bn-splits", "2",
        "--epochs", String(epochs), "--lr", "0.01"
    ]
}

/// The records of DIR/log.jsonl, each line parsed (a torn line fails the test).
func logRecords(_ dir: String, file: StaticString = #filePath, line: UInt = #line) -> [[String: Any]] {
    guard let text = try? String(contentsOfFile: dir + "/log.jsonl", encoding: .utf8) else { return [] }
    return text.split(separator: "\n").compactMap { l in
        let obj = try? JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any]
        if obj == nil { XCTFail("log.jsonl line is not a JSON object: \(l)", file: file, line: line) }
        return obj
    }
}

/// Whether DIR/log.jsonl has a step record yet (a run is under way).
func logHasStep(_ dir: String) -> Bool {
    ((try? String(contentsOfFile: dir + "/log.jsonl", encoding: .utf8)) ?? "").contains("\"type\":\"step\"")
}

final class TrainSafetyCLITests: XCTestCase {
    /// A resume on fewer images (whose epochs are shorter than the checkpoint's position) or on other
    /// images of the same count is refused, naming --data.
    func testResumeOnOtherDataIsRefused() throws {
        let dir = try makeTempDir(self, "train-data")
        let data = try writeIDX(dir: dir, name: "train", n: 64, seed: 1)
        let out = dir + "/run"
        let first = try runSalient(tinyTrainArgs(data: data, out: out, epochs: 1), timeout: 120)
        XCTAssertEqual(first.status, 0, first.stderr)
        let fewer = try writeIDX(dir: dir, name: "small", n: 8, seed: 1)
        let a = try runSalient(tinyTrainArgs(data: fewer, out: out, epochs: 2) + ["--resume"], timeout: 60)
        assertFailsCleanly(a, mentioning: ["--data", fewer, "8 images", "64"], "resume on fewer images")
        let other = try writeIDX(dir: dir, name: "other", n: 64, seed: 2)
        let b = try runSalient(tinyTrainArgs(data: other, out: out, epochs: 2) + ["--resume"], timeout: 60)
        assertFailsCleanly(b, mentioning: ["--data", other], "resume on other images")
        // The same images under another name are the same data.
        let copy = dir + "/copy-images-idx3-ubyte"
        try FileManager.default.copyItem(atPath: data, toPath: copy)
        try FileManager.default.copyItem(
            atPath: dir + "/train-labels-idx1-ubyte", toPath: dir + "/copy-labels-idx1-ubyte")
        let c = try runSalient(tinyTrainArgs(data: copy, out: out, epochs: 2) + ["--resume"], timeout: 120)
        XCTAssertEqual(c.status, 0, c.stderr)
    }

    /// Bit-exact continuation needs the thread count and convolution algorithm of the run: another
    /// one is refused, naming the option and the value to give.
    func testResumeWithOtherThreadsOrConvolutionIsRefused() throws {
        let dir = try makeTempDir(self, "train-threads")
        let data = try writeIDX(dir: dir, name: "train", n: 32, seed: 1)
        let out = dir + "/run"
        XCTAssertEqual(try runSalient(tinyTrainArgs(data: data, out: out, epochs: 1)).status, 0)
        let a = try runSalient(tinyTrainArgs(data: data, out: out, epochs: 2) + ["--resume", "--threads", "1"])
        assertFailsCleanly(a, mentioning: ["--threads", "2"], "resume on 1 thread")
        let b = try runSalient(tinyTrainArgs(data: data, out: out, epochs: 2) + ["--resume", "--conv", "direct"])
        assertFailsCleanly(b, mentioning: ["--conv", "winograd"], "resume with direct convolutions")
        let c = try runSalient(tinyTrainArgs(data: data, out: out, epochs: 2) + ["--resume", "--lr", "0.02"])
        assertFailsCleanly(c, mentioning: ["--lr", "0.01", "0.02"], "resume with another --lr")
    }

    /// Unlabelled --knn-data is reported before the first step, naming the file.
    func testUnlabelledKNNDataIsReportedBeforeTraining() throws {
        let dir = try makeTempDir(self, "train-knn")
        let data = try writeIDX(dir: dir, name: "train", n: 32, seed: 1)
        let test = try writeIDX(dir: dir, name: "test", n: 16, seed: 2, labels: false)
        let out = dir + "/run"
        let r = try runSalient(tinyTrainArgs(data: data, out: out, epochs: 2) + ["--knn-data", test], timeout: 60)
        assertFailsCleanly(r, mentioning: [test, "labels"], "unlabelled --knn-data")
        XCTAssertFalse(r.stderr.contains("epoch 1"), r.stderr)
        XCTAssertFalse(logHasStep(out))
    }

    /// A second run into the folder of a running one is refused; the first goes on, and SIGTERM then
    /// stops it with a checkpoint (exit 143) and an intact log.
    func testSecondRunIntoABusyFolderIsRefused() throws {
        let dir = try makeTempDir(self, "train-lock")
        let data = try writeIDX(dir: dir, name: "train", n: 256, seed: 1)
        let out = dir + "/run"
        let first = try SalientProcess(tinyTrainArgs(data: data, out: out, epochs: 200))
        XCTAssertTrue(waitUntil(timeout: 60) { logHasStep(out) }, "the first run did not start")
        let second = try runSalient(tinyTrainArgs(data: data, out: out, epochs: 200) + ["--resume"], timeout: 60)
        assertFailsCleanly(second, mentioning: [out, "pid \(first.pid)"], "a second run into a busy folder")
        first.signal(SIGTERM)
        let r = first.wait(timeout: 60)
        XCTAssertFalse(r.signalled, r.stderr)
        XCTAssertEqual(r.status, 143, r.stderr)
        XCTAssertTrue(r.stderr.contains(out + "/last.safetensors"), r.stderr)
        XCTAssertFalse(logRecords(out).isEmpty)
    }

    /// A fresh run into a folder that holds a finished one is refused (its checkpoint and log stay as
    /// they were) unless --overwrite, which starts a new log.
    func testFreshRunOverAnOldOneNeedsOverwrite() throws {
        let dir = try makeTempDir(self, "train-overwrite")
        let data = try writeIDX(dir: dir, name: "train", n: 32, seed: 1)
        let out = dir + "/run"
        XCTAssertEqual(try runSalient(tinyTrainArgs(data: data, out: out, epochs: 1)).status, 0)
        let checkpoint = try Data(contentsOf: URL(fileURLWithPath: out + "/last.safetensors"))
        let log = try Data(contentsOf: URL(fileURLWithPath: out + "/log.jsonl"))
        let r = try runSalient(tinyTrainArgs(data: data, out: out, epochs: 1) + ["--seed", "2"])
        assertFailsCleanly(r, mentioning: [out, "--resume", "--overwrite"], "a fresh run over an old one")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/last.safetensors")), checkpoint)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/log.jsonl")), log)
        let o = try runSalient(tinyTrainArgs(data: data, out: out, epochs: 1) + ["--seed", "2", "--overwrite"])
        XCTAssertEqual(o.status, 0, o.stderr)
        XCTAssertNotEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/last.safetensors")), checkpoint)
        XCTAssertEqual(logRecords(out).filter { $0["type"] as? String == "epoch" }.count, 1)
    }

    /// Ctrl-C mid-epoch writes a checkpoint at the step boundary, says where, exits 130; resuming
    /// from it ends with exactly the weights of an uninterrupted run. A temporary file of a dead
    /// writer is removed at the start.
    func testInterruptWritesACheckpointThatResumesExactly() throws {
        let dir = try makeTempDir(self, "train-interrupt")
        let data = try writeIDX(dir: dir, name: "train", n: 2048, seed: 1)
        let whole = dir + "/whole", cut = dir + "/cut"
        let args = { (out: String) in tinyTrainArgs(data: data, out: out, epochs: 3) + ["--seed", "4"] }
        XCTAssertEqual(try runSalient(args(whole), timeout: 300).status, 0)
        let run = try SalientProcess(args(cut))
        XCTAssertTrue(waitUntil(timeout: 60) { logHasStep(cut) }, "the run did not start")
        run.signal(SIGINT)
        let r = run.wait(timeout: 60)
        XCTAssertFalse(r.signalled, "killed by the signal: \(r.stderr)")
        XCTAssertEqual(r.status, 130, r.stderr)
        XCTAssertTrue(r.stderr.contains("interrupted") && r.stderr.contains(cut + "/last.safetensors"), r.stderr)
        let saved = try SafeTensorsFile.read(path: cut + "/last.safetensors")
        let step = Int(saved.metadata["step"] ?? "") ?? 0
        XCTAssertGreaterThan(step, 0, "the checkpoint is not the one at the interrupt")
        // A dead writer's temporary file.
        let dead = Process()
        dead.executableURL = URL(fileURLWithPath: "/bin/true")
        try dead.run(); dead.waitUntilExit()
        let stale = cut + "/last.safetensors.tmp-\(dead.processIdentifier)"
        try Data(count: 1000).write(to: URL(fileURLWithPath: stale))
        let resumed = try runSalient(args(cut) + ["--resume"], timeout: 300)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale), "a stale temporary file was left")
        let a = try SafeTensorsFile.read(path: whole + "/last.safetensors")
        let b = try SafeTensorsFile.read(path: cut + "/last.safetensors")
        XCTAssertEqual(a.metadata["step"], b.metadata["step"])
        for name in a.names where name.hasPrefix("encoder_q.") {
            XCTAssertEqual(a[name], b[name], "\(name) differs after the interrupted run resumed")
        }
    }

    /// Batch-norm groups of one image are refused; a --bn-splits that does not divide the batch is
    /// adjusted with a note.
    func testBatchNormSplitsAreCheckedAndAdjustmentsSaid() throws {
        let dir = try makeTempDir(self, "train-bn")
        let data = try writeIDX(dir: dir, name: "train", n: 24, seed: 1)
        var args = tinyTrainArgs(data: data, out: dir + "/a", epochs: 1)
        args[args.firstIndex(of: "--bn-splits")! + 1] = "8"
        assertFailsCleanly(try runSalient(args), mentioning: ["--bn-splits 8", "--batch 8", "1 image"], "groups of 1")
        var odd = tinyTrainArgs(data: data, out: dir + "/b", epochs: 1)
        odd[odd.firstIndex(of: "--batch")! + 1] = "12"
        odd[odd.firstIndex(of: "--bn-splits")! + 1] = "5"
        let r = try runSalient(odd)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("--bn-splits 5") && r.stderr.contains("4 groups of 3"), r.stderr)
    }

    /// --hp-noise is parsed and checked before any work: a malformed or out-of-range level is refused
    /// naming the option; a valid one is said in the recipe line and saved with the run, and said to
    /// have no effect on a run without the hp fill.
    func testHighPassNoiseLevelsAreCheckedAndSaved() throws {
        let dir = try makeTempDir(self, "train-hp-noise")
        let data = try writeIDX(dir: dir, name: "train", n: 16, seed: 1)
        let base = tinyTrainArgs(data: data, out: dir + "/a", epochs: 1) + ["--masking", "saliency", "--fill", "hp"]
        for bad in ["abc", "0.1,", "0.1,0.2,0.3"] {
            assertFailsCleanly(try runSalient(base + ["--hp-noise", bad]), mentioning: ["--hp-noise", bad], bad)
        }
        assertFailsCleanly(
            try runSalient(base + ["--hp-noise", "0.1,-1"]), mentioning: ["--hp-noise levels must be in [0, 10]"], "-1")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/a/last.safetensors"))
        let r = try runSalient(base + ["--hp-noise", "0.05,0.04"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("hp fill noise 0.05,0.04"), r.stderr)
        XCTAssertFalse(r.stderr.contains("no effect"), r.stderr)
        let mean = try runSalient(
            tinyTrainArgs(data: data, out: dir + "/b", epochs: 1) + ["--masking", "saliency", "--fill", "mean"]
                + ["--hp-noise", "0.05"])
        XCTAssertEqual(mean.status, 0, mean.stderr)
        XCTAssertTrue(mean.stderr.contains("--hp-noise has no effect"), mean.stderr)
        let meta = try SafeTensorsFile.read(path: dir + "/a/last.safetensors").metadata
        XCTAssertTrue(meta.values.contains { $0.contains("\"hpNoise\"") && $0.contains("0.04") }, "\(meta)")
    }
}
