// Image folders through the real binary: train/test class matching in `eval`, unreadable folders.
import XCTest
import Foundation
#if canImport(Glibc)
    import Glibc
#endif

final class FolderCLITests: XCTestCase {
    let fm = FileManager.default
    let types = salientPackageRoot.appendingPathComponent("fixtures/png/types").path

    func tempDir() throws -> String {
        let d = NSTemporaryDirectory() + "salient-foldercli-\(UUID().uuidString)"
        try fm.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// `classes`: class name -> fixture PNGs (all 5x4, all different pixels).
    func makeFolder(_ root: String, _ classes: [String: [String]]) throws {
        for (c, files) in classes {
            try fm.createDirectory(atPath: root + "/" + c, withIntermediateDirectories: true)
            for f in files { try fm.copyItem(atPath: types + "/" + f, toPath: root + "/" + c + "/" + f) }
        }
    }

    /// The test images are copies of train images, so the nearest neighbour (k = 1) of each is itself:
    /// 100% top-1 exactly when the test labels name the same classes as train's. The test folder lacks
    /// train's middle class, which shifted `cat` onto `bee` when labels were matched by position.
    func testEvalMatchesTestClassesByName() throws {
        let t = try tempDir()
        try makeFolder(
            t + "/train",
            [
                "ant": ["rgb8.png", "palette1.png"], "bee": ["rgb16.png", "palette2.png"],
                "cat": ["palette4.png", "palette8.png"]
            ])
        try makeFolder(t + "/test", ["ant": ["rgb8.png"], "cat": ["palette8.png"]])
        let r = try runSalient([
            "eval", "knn", "--raw-pixels", "--k", "1", "--train", t + "/train", "--test", t + "/test"
        ])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("top-1: 100.00"), r.stdout + r.stderr)

        try makeFolder(t + "/test2", ["ant": ["rgb8.png"], "dog": ["palette8.png"]])
        let bad = try runSalient([
            "eval", "knn", "--raw-pixels", "--k", "1", "--train", t + "/train", "--test", t + "/test2"
        ])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("dog"), bad.stderr)
    }

    /// A class folder the user cannot read stops the open with an error naming it, or is listed as
    /// skipped with --skip-bad. Root reads any mode, so as root the binary runs as `nobody` (setpriv).
    func testUnreadableClassFolder() throws {
        let t = try tempDir()
        try makeFolder(t + "/data", ["ant": ["rgb8.png", "rgb16.png"], "bee": ["palette8.png"]])
        XCTAssertEqual(chmod(t, 0o777), 0)
        XCTAssertEqual(chmod(t + "/data/bee", 0), 0)
        addTeardownBlock { chmod(t + "/data/bee", 0o755) }
        let launcher = geteuid() == 0 ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []
        let out = t + "/preview.png"
        let r = try runSalient(["preview", "--data", t + "/data", "--out", out, "--n", "2"], launcher: launcher)
        XCTAssertNotEqual(r.status, 0, r.stdout)
        XCTAssertTrue(r.stderr.contains(t + "/data/bee"), r.stderr)
        let s = try runSalient(
            ["preview", "--data", t + "/data", "--out", out, "--n", "2", "--skip-bad"], launcher: launcher)
        XCTAssertEqual(s.status, 0, s.stderr)
        XCTAssertTrue(s.stdout.contains("2 of 2 images"), s.stdout)
        XCTAssertTrue(s.stdout.contains("skipped 1") && s.stdout.contains(t + "/data/bee"), s.stdout)
    }
}
