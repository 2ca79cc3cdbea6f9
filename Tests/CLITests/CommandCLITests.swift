// The real binary against bad arguments and bad files: a clear message naming the problem, a
// non-zero exit, never a crash, and nothing left at --out.
import XCTest
import Foundation

final class CommandCLITests: XCTestCase {
    let fixtures = salientPackageRoot.appendingPathComponent("fixtures").path

    func tempDir() throws -> String { try makeTempDir(self, "cli") }

    /// Exit status 1..127 (a thrown error or a validation failure), never a signal.
    func assertFails(_ args: [String], mentioning texts: [String], file: StaticString = #filePath, line: UInt = #line)
        throws
    {
        let r = try runSalient(args, timeout: 60)
        assertFailsCleanly(r, mentioning: texts, "\(args)", file: file, line: line)
    }

    func testBadArgumentsAreRejected() throws {
        try assertFails(["bench", "kernels", "--threads", "0"], mentioning: ["--threads must be between 1 and 1024"])
        try assertFails(["bench", "kernels", "--shapes", "64x"], mentioning: ["--shapes"])
        try assertFails(
            ["bench", "train", "--arch", "resnet19"],
            mentioning: ["'resnet19' is invalid for '--arch", "'resnet18', 'resnet34' or 'resnet50'"])
        try assertFails(
            ["train", "--data", fixtures, "--out", "/tmp/x", "--masking", "sometimes"],
            mentioning: ["'sometimes' is invalid for '--masking", "'saliency', 'random' or 'none'"])
        try assertFails(
            ["train", "--data", fixtures, "--out", "/tmp/x", "--preset", "huge"],
            mentioning: ["'huge' is invalid for '--preset", "'small' and 'imagenet100'"])
        try assertFails(
            ["train", "--data", fixtures, "--out", "/tmp/x", "--batch", "1"], mentioning: ["--batch must be"])
        try assertFails(["train", "--data", fixtures, "--out", "/tmp/x", "--width=0"], mentioning: ["--width must be"])
        try assertFails(
            ["extract", "--checkpoint", "a", "--data", "b", "--out", "c.txt"], mentioning: ["--out must end in .npy"])
        try assertFails(
            ["extract", "--checkpoint", "a", "--data", "b", "--out", "/no/such/folder/f.npy"],
            mentioning: ["does not exist"])
        try assertFails(["train", "--out", "/tmp/x"], mentioning: ["--data"])
        try assertFails(
            ["bench", "train", "--schedule-losses"], mentioning: ["--schedule-losses needs --schedule-model"])
        try assertFails(
            ["bench", "kernels", "--conv", "fft"],
            mentioning: ["'fft' is invalid for '--conv", "'winograd' and 'direct'"])
        let r = try runSalient(["bench", "kernels"], timeout: 60, environment: ["SALIENT_CONV": "fft"])
        assertFailsCleanly(r, mentioning: ["SALIENT_CONV must be winograd or direct, got 'fft'"], "SALIENT_CONV=fft")
    }

    /// bench kernels holds every shape to the naive references before timing it, with either algorithm.
    func testBenchKernelsChecksAndTimesBothAlgorithms() throws {
        for conv in ["winograd", "direct"] {
            let r = try runSalient(
                ["bench", "kernels", "--batch", "2", "--shapes", "16x8,16x8s2", "--conv", conv, "--json"], timeout: 120)
            XCTAssertEqual(r.status, 0, r.stderr)
            let ops = r.stdout.split(separator: "\n").filter { $0.contains("\"op\": \"conv3x3") }
            XCTAssertEqual(ops.count, 6, r.stdout)
            XCTAssertTrue(r.stdout.contains("\"conv\": \"\(conv)\""), r.stdout)
        }
    }

    func testBadFilesNameTheFileAndLeaveNothing() throws {
        let dir = try tempDir()
        let out = dir + "/f.npy"
        let model = fixtures + "/models/resnet18_cifar_w0125.safetensors"
        // A truncated checkpoint.
        let bytes = try Data(contentsOf: URL(fileURLWithPath: model))
        let truncated = dir + "/truncated.safetensors"
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: truncated))
        try assertFails(
            ["extract", "--checkpoint", truncated, "--data", fixtures + "/png/classes", "--out", out],
            mentioning: [truncated])
        // A checkpoint of another architecture.
        try assertFails(
            ["extract", "--checkpoint", model, "--arch", "resnet50", "--data", fixtures + "/png/classes", "--out", out],
            mentioning: [model, "missing"])
        // A folder without images, a missing path, a corrupt PNG.
        let empty = dir + "/empty"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        try assertFails(["extract", "--checkpoint", model, "--data", empty, "--out", out], mentioning: [empty])
        try assertFails(
            ["extract", "--checkpoint", model, "--data", dir + "/nothing", "--out", out], mentioning: [dir + "/nothing"]
        )
        let bad = dir + "/bad"
        try FileManager.default.createDirectory(atPath: bad, withIntermediateDirectories: true)
        try Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 1, 2, 3]).write(
            to: URL(fileURLWithPath: bad + "/broken.png"))
        try assertFails(
            ["extract", "--checkpoint", model, "--data", bad, "--out", out], mentioning: [bad + "/broken.png"])
        // Training into a path under a regular file: reported before any step.
        let file = dir + "/plain-file"
        _ = FileManager.default.createFile(atPath: file, contents: Data([1]))
        try assertFails(
            [
                "train", "--data", fixtures + "/png/classes", "--out", file + "/run", "--batch", "2", "--bn-splits",
                "1", "--width", "0.0625",
                "--res", "16", "--epochs", "1"
            ], mentioning: [file])
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "a failed extract left \(out)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/f.labels.npy"))
    }

    /// extract on a committed PyTorch model and PNG fixtures: features and labels in NumPy format.
    func testExtractWritesFeaturesAndLabels() throws {
        let dir = try tempDir()
        let out = dir + "/feat.npy"
        let r = try runSalient(
            [
                "extract", "--checkpoint", fixtures + "/models/resnet18_cifar_w0125.safetensors",
                "--data", fixtures + "/png/classes", "--resize", "16", "--out", out
            ], timeout: 60)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("wrote \(out)"), r.stdout)
        let header = try Data(contentsOf: URL(fileURLWithPath: out)).prefix(128)
        XCTAssertTrue(String(decoding: header, as: UTF8.self).contains("'descr': '<f4'"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/feat.labels.npy"))
    }
}
