// Data-parallel training under Open MPI's mpirun (installed by `make setup`): two ranks of a global
// batch of 64 against one process with a batch of 64.
import XCTest
import Foundation
import Network

final class MPITests: XCTestCase {
    /// mpirun on PATH, or a failure: `make setup` installs openmpi-bin.
    func mpirun() throws -> String {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
            let p = "\(dir)/mpirun"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        XCTFail("mpirun is not installed: `make setup` installs openmpi-bin and libopenmpi-dev")
        throw MissingBinary()
    }

    /// What every mpirun here needs: root allowed, one thread per rank.
    let mpiEnvironment: [String: String?] = [
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "SALIENT_THREADS": "1"
    ]

    /// mpirun starting `ranks` copies of the binary (the launcher of SalientProcess).
    func mpiLauncher(_ ranks: Int) throws -> [String] {
        [try mpirun(), "-np", String(ranks), "--oversubscribe", "--bind-to", "none"]
    }

    /// Starts `salient args` under `mpirun -np ranks` (ranks of one thread each).
    func startRanks(_ ranks: Int, _ args: [String]) throws -> SalientProcess {
        try SalientProcess(args, environment: mpiEnvironment, launcher: try mpiLauncher(ranks))
    }

    /// Runs `salient args` under `mpirun -np ranks` (ranks of one thread each).
    func runRanks(_ ranks: Int, _ args: [String], timeout: TimeInterval = 300) throws -> SalientRun {
        try runSalient(args, timeout: timeout, environment: mpiEnvironment, launcher: try mpiLauncher(ranks))
    }

    /// ||a - b|| / ||a|| of every float tensor whose name starts with `prefix`, worst first, and over
    /// all of them together (last entry, named "all").
    func differences(_ a: SafeTensorsFile, _ b: SafeTensorsFile, prefix: String) throws -> [(Double, String)] {
        var out: [(Double, String)] = []
        var dAll = 0.0, nAll = 0.0
        for name in a.names where name.hasPrefix(prefix) && a[name]?.floats != nil {
            guard let x = a[name]?.floats, let y = b[name]?.floats, x.count == y.count else {
                XCTFail("\(name) missing or of another size in one checkpoint"); continue
            }
            var d = 0.0, n = 0.0
            for i in x.indices { d += Double(x[i] - y[i]) * Double(x[i] - y[i]); n += Double(x[i]) * Double(x[i]) }
            out.append(((d / max(n, 1e-30)).squareRoot(), name))
            dAll += d; nAll += n
        }
        return out.sorted { $0.0 > $1.0 } + [((dAll / max(nAll, 1e-30)).squareRoot(), "all")]
    }

    /// Two ranks of 32 images compute what one process of 64 does, for MoCo with saliency masking and a
    /// hard negative per sample and for SimCLR with saliency masking: shards of each batch, shared
    /// batch-norm statistics, summed gradients, gathered keys and embeddings.
    ///
    /// Tolerances: one process and two ranks differ in float rounding only (sums in another order, a
    /// convolution of 32 images tiled otherwise than one of 64), but rounding near a ReLU's zero or a
    /// saliency threshold flips a pixel's mask, which moves a gradient by ~0.3% (L2) on this network:
    /// one process with direct instead of Winograd convolutions moves it as much. So: two steps at a
    /// learning rate of 1e-4 (at 0.06 the first steps are chaotic: one process on 1 vs 2 threads differs
    /// by 20% in its gradients after four steps); the SGD momentum buffers (the summed gradients) within
    /// 2% of one process's, tensor by tensor; all weights together within 1e-6, the key encoder's (with
    /// its running statistics) within 1e-5; the MoCo queue within 1e-4. A missing batch-norm synchronisation,
    /// gradient sum or scale moves gradients by 10% to 100%.
    func testTwoRanksComputeWhatOneProcessComputes() throws {
        let dir = try makeTempDir(self, "mpi")
        let data = try writeIDX(dir: dir, name: "train", n: 128, side: 16, seed: 4)
        let common = [
            "train", "--data", data, "--width", "0.125", "--res", "16", "--batch", "64", "--epochs", "1",
            "--lr", "1e-4", "--masking", "saliency", "--saliency-warmup", "0", "--hard-negatives", "1",
            "--seed", "3"
        ]
        for (name, method) in [
            ("moco", ["--method", "moco", "--fill", "mean", "--queue", "256"]),
            ("simclr", ["--method", "simclr", "--fill", "hp"])
        ] {
            let one = dir + "/\(name)-1", two = dir + "/\(name)-2"
            let a = try runSalient(common + method + ["--out", one, "--threads", "1"], timeout: 300)
            XCTAssertEqual(a.status, 0, a.stderr)
            let b = try runRanks(2, common + method + ["--out", two])
            XCTAssertEqual(b.status, 0, b.stderr)
            XCTAssertTrue(b.stderr.contains("in each of 2 ranks, 32 images of each batch of 64"), b.stderr)
            let fa = try SafeTensorsFile.read(path: one + "/last.safetensors")
            let fb = try SafeTensorsFile.read(path: two + "/last.safetensors")
            let grads = try differences(fa, fb, prefix: "optimizer.momentum.")
            XCTAssertFalse(grads.isEmpty)
            XCTAssertLessThan(grads[0].0, 0.02, "\(name): \(grads[0].1) differs by \(grads[0].0)")
            let weights = try differences(fa, fb, prefix: "encoder_q.")
            XCTAssertLessThan(weights.last!.0, 1e-6, "\(name): the weights differ by \(weights.last!.0)")
            // The key encoder: its running statistics advance by every rank's shuffle-BN groups in order.
            let key = try differences(fa, fb, prefix: "encoder_k.")
            if name == "moco" {
                XCTAssertLessThan(key.last!.0, 1e-5, "moco: the key encoder differs by \(key.last!.0)")
            }
            if name == "moco" {
                let q = try differences(fa, fb, prefix: "queue")
                XCTAssertEqual(q.count, 2)  // the queue, and "all"
                XCTAssertLessThan(q[0].0, 1e-4, "moco: the queues differ by \(q[0].0)")
                XCTAssertEqual(fa["queue_ptr"]?.int64s, fb["queue_ptr"]?.int64s)
            }
        }
    }

    /// Two ranks interrupted (SIGTERM to one of them: the ranks agree at the next step boundary that one
    /// of them was asked to stop, rank 0 checkpoints that step) and resumed (rank 0 reads the checkpoint
    /// and shares the state) end where an uninterrupted two-rank run ends, bit for bit.
    func testTwoRanksResumeExactly() throws {
        let dir = try makeTempDir(self, "mpi-resume")
        let data = try writeIDX(dir: dir, name: "train", n: 1024, side: 16, seed: 7)
        let common = [
            "train", "--data", data, "--width", "0.125", "--res", "16", "--batch", "32", "--method", "moco",
            "--masking", "saliency", "--queue", "128", "--seed", "2", "--epochs", "2"
        ]
        XCTAssertEqual(try runRanks(2, common + ["--out", dir + "/straight"]).status, 0)
        let p = try startRanks(2, common + ["--out", dir + "/resumed"])
        // Interrupt once the run has logged its tenth step.
        let log = dir + "/resumed/log.jsonl"
        XCTAssertTrue(
            waitUntil(timeout: 120) {
                ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("\"type\":\"step\"")
            }, "the run never logged a step")
        // The ranks are mpirun's children on this machine; the last one started gets the signal.
        let children = (try? String(contentsOfFile: "/proc/\(p.pid)/task/\(p.pid)/children", encoding: .utf8)) ?? ""
        let ranks = children.split(separator: " ").compactMap { Int32($0) }
        XCTAssertEqual(ranks.count, 2, "mpirun's children: '\(children)'")
        if let victim = ranks.last { kill(victim, SIGTERM) }
        XCTAssertEqual(p.wait(timeout: 120).status, 143)
        let logged = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        XCTAssertTrue(logged.contains("\"type\":\"interrupted\""), "not stopped at a step boundary: \(logged)")
        let r = try runRanks(2, common + ["--out", dir + "/resumed", "--resume"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("resumed from"), r.stderr)
        let a = try SafeTensorsFile.read(path: dir + "/straight/last.safetensors")
        let b = try SafeTensorsFile.read(path: dir + "/resumed/last.safetensors")
        XCTAssertEqual(a.names, b.names)
        for name in a.names { XCTAssertTrue(a[name]?.data == b[name]?.data, "\(name) differs after resuming") }
        XCTAssertGreaterThan(a.names.count, 100)
    }

    /// Extraction shared over two ranks writes the very file one process writes.
    func testTwoRanksExtractTheSameFeatures() throws {
        let dir = try makeTempDir(self, "mpi-extract")
        let data = try writeIDX(dir: dir, name: "train", n: 77, side: 16, seed: 5)
        let model = salientPackageRoot.appendingPathComponent("fixtures/models/resnet18_cifar_w0125_1ch.safetensors")
            .path
        let a = try runSalient(["extract", "--checkpoint", model, "--data", data, "--out", dir + "/one.npy"])
        XCTAssertEqual(a.status, 0, a.stderr)
        let b = try runRanks(2, ["extract", "--checkpoint", model, "--data", data, "--out", dir + "/two.npy"])
        XCTAssertEqual(b.status, 0, b.stderr)
        for f in ["", ".labels"] {
            let x = try Data(contentsOf: URL(fileURLWithPath: dir + "/one\(f).npy"))
            let y = try Data(contentsOf: URL(fileURLWithPath: dir + "/two\(f).npy"))
            XCTAssertEqual(x, y, "one\(f).npy and two\(f).npy differ")
        }
    }

    /// Ranks started with different options refuse to train, naming the problem.
    func testRanksWithDifferentOptionsRefuse() throws {
        let dir = try makeTempDir(self, "mpi-mismatch")
        let data = try writeIDX(dir: dir, name: "train", n: 64, side: 16, seed: 6)
        let common = [
            "train", "--data", data, "--width", "0.125", "--res", "16", "--batch", "32", "--epochs", "1",
            "--out", dir + "/run"
        ]
        // mpirun's MPMD form: rank 0 and rank 1 run different command lines.
        let r = try runSalient(
            common + ["--lr", "0.1", ":", "-np", "1", salientBinary.path] + common + ["--lr", "0.2"],
            environment: mpiEnvironment, launcher: [try mpirun(), "--oversubscribe", "-np", "1"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("differ between ranks"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run/log.jsonl"), "a mismatched job trained")
    }
}
