// Image folders through the real binary: unreadable folders.
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
        let s = try runSalient(["preview", "--data", t + "/data", "--out", out, "--n", "2", "--skip-bad"], launcher: launcher)
        XCTAssertEqual(s.status, 0, s.stderr)
        XCTAssertTrue(s.stdout.contains("2 of 2 images"), s.stdout)
        XCTAssertTrue(s.stdout.contains("skipped 1") && s.stdout.contains(t + "/data/bee"), s.stdout)
    }
}
