// The commands on a folder of JPEGs (mixed with a PNG) through the real binary.
import XCTest
import Foundation

final class JPEGCLITests: XCTestCase {
    let fixtures = salientPackageRoot.appendingPathComponent("fixtures").path

    /// ant: one picture as 4:2:0, CMYK (.JPG), progressive and gray (.jpeg); bee: two other pictures
    /// (one EXIF-rotated) and a PNG. Different classes never share a picture.
    func makeFolder() throws -> String {
        let d = NSTemporaryDirectory() + "salient-jpegcli-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        let fm = FileManager.default
        let files = [
            ("ant/a.jpg", "jpeg/types/ycbcr420.jpg"), ("ant/b.JPG", "jpeg/types/cmyk.jpg"),
            ("ant/e.jpg", "jpeg/types/progressive.jpg"), ("ant/f.jpeg", "jpeg/types/gray.jpg"),
            ("bee/c.png", "png/types/rgb8.png"), ("bee/d.jpg", "jpeg/orient/o6.jpg"), ("bee/g.jpg", "jpeg/scaled.jpg")
        ]
        for (to, from) in files {
            try fm.createDirectory(
                atPath: d + "/data/" + (to as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try fm.copyItem(atPath: fixtures + "/" + from, toPath: d + "/data/" + to)
        }
        return d
    }

    func testCommandsReadJPEGFolders() throws {
        let d = try makeFolder(), data = d + "/data"
        let model = fixtures + "/models/resnet18_cifar_w0125.safetensors"

        let p = try runSalient(["preview", "--data", data, "--out", d + "/preview.png", "--n", "7", "--size", "16"])
        XCTAssertEqual(p.status, 0, p.stderr)
        XCTAssertTrue(p.stdout.contains("7 of 7 images"), p.stdout)
        XCTAssertTrue(FileManager.default.fileExists(atPath: d + "/preview.png"))

        let x = try runSalient([
            "extract", "--checkpoint", model, "--data", data, "--resize", "16", "--out", d + "/f.npy"
        ])
        XCTAssertEqual(x.status, 0, x.stderr)
        XCTAssertTrue(x.stdout.contains("7 x 64"), x.stdout)

        // Test = train: each image's nearest neighbour is itself.
        let e = try runSalient([
            "eval", "knn", "--checkpoint", model, "--train", data, "--test", data, "--resize", "16", "--k", "1"
        ])
        XCTAssertEqual(e.status, 0, e.stderr)
        XCTAssertTrue(e.stdout.contains("top-1: 100.00"), e.stdout)

        let t = try runSalient(
            [
                "train", "--data", data, "--out", d + "/run", "--batch", "2", "--bn-splits", "1", "--width", "0.0625",
                "--res", "16",
                "--epochs", "1"
            ], timeout: 300)
        XCTAssertEqual(t.status, 0, t.stderr)
        XCTAssertTrue(t.stdout.contains("done: 1 epoch"), t.stdout)

        let b = try runSalient([
            "bench", "loader", "--data", data, "--res", "16", "--batch", "3", "--batches", "2", "--stream"
        ])
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertTrue(b.stdout.contains("7 images decoded on each access"), b.stdout)
        let c = try runSalient(["bench", "loader", "--data", data, "--res", "8", "--decode-compare"])
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertTrue(c.stdout.contains("7 images"), c.stdout)
    }

    func testBadJPEGIsNamed() throws {
        let d = try makeFolder()
        try FileManager.default.copyItem(
            atPath: fixtures + "/jpeg/bad/corrupt_huffman.jpg", toPath: d + "/data/bee/h.jpg")
        let r = try runSalient(["preview", "--data", d + "/data", "--out", d + "/p.png"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains(d + "/data/bee/h.jpg") && r.stderr.contains("Huffman"), r.stderr)
        let s = try runSalient(["preview", "--data", d + "/data", "--out", d + "/p.png", "--skip-bad"])
        XCTAssertEqual(s.status, 0, s.stderr)
        XCTAssertTrue(s.stdout.contains("skipped 1"), s.stdout)
    }
}
