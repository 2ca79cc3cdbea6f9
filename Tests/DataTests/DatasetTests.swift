import XCTest
import Kernels
import Data
import TestSupport

final class DatasetTests: XCTestCase {
    let classes = fixturesPath() + "/png/classes"

    func testClassFolders() throws {
        let ds = try DatasetLoader.open(path: classes)
        XCTAssertEqual(ds.count, 6)
        XCTAssertEqual(ds.channels, 3, "one colour image makes the dataset RGB")
        XCTAssertEqual(ds.classNames, ["circle", "square"])
        XCTAssertEqual(ds.labels, [0, 0, 0, 1, 1, 1])
        XCTAssertTrue(ds.name(at: 5).hasSuffix("square/more/gray.png"), ds.name(at: 5))
        XCTAssertTrue(ds.isInMemory)
        let img0 = try ds.image(at: 0)
        XCTAssertEqual(img0.width, 10)
        XCTAssertEqual(img0.height, 8)
        let ref = try readPNG(path: ds.name(at: 0))
        XCTAssertEqual(img0.pixels, ref.pixels)
        let gray = try ds.image(at: 5)
        XCTAssertEqual(gray.channels, 3)
        XCTAssertEqual(gray.width, 7)
        XCTAssertEqual(gray.pixels[0], gray.pixels[1])
        // Forced gray, limit.
        let g = try DatasetLoader.open(path: classes, limit: 4, channels: 1)
        XCTAssertEqual(g.count, 4)
        XCTAssertEqual(g.channels, 1)
        XCTAssertEqual(g.labels, [0, 0, 0, 1])
        XCTAssertEqual(try g.image(at: 3).pixels.count, 10 * 8)
    }

    func testStreamedMatchesInMemory() throws {
        let mem = try DatasetLoader.open(path: classes)
        let disk = try DatasetLoader.open(path: classes, memoryBudget: 100)
        XCTAssertFalse(disk.isInMemory)
        XCTAssertEqual(disk.count, mem.count)
        for i in 0..<mem.count { XCTAssertEqual(try disk.image(at: i), try mem.image(at: i)) }
        // 16-bit images are quantised to 8 bits in both modes.
        let types = fixturesPath() + "/png/types/gray16.png"
        XCTAssertEqual(
            try DatasetLoader.open(path: types).image(at: 0),
            try DatasetLoader.open(path: types, memoryBudget: 0).image(at: 0))
    }

    func testFlatFolderHasNoLabels() throws {
        let ds = try DatasetLoader.open(path: fixturesPath() + "/png/types")
        XCTAssertEqual(ds.count, 18)
        XCTAssertNil(ds.labels)
        XCTAssertEqual(ds.channels, 3)
    }

    func tempDir() throws -> String {
        let t = NSTemporaryDirectory() + "salient-ds-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: t, withIntermediateDirectories: true)
        return t
    }

    func testEmptyFolderAndMissingPath() throws {
        let t = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: t) }
        try FileManager.default.createDirectory(atPath: t + "/a/b", withIntermediateDirectories: true)
        try "hello".write(toFile: t + "/a/notes.txt", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try DatasetLoader.open(path: t)) { e in
            XCTAssertEqual((e as? DataError)?.kind, .emptyDataset)
            XCTAssertTrue("\(e)".contains(t), "\(e)")
        }
        XCTAssertThrowsError(try DatasetLoader.open(path: t + "/nope")) {
            XCTAssertEqual(($0 as? DataError)?.kind, .notFound)
        }
        XCTAssertThrowsError(try DatasetLoader.open(path: t + "/a/notes.txt")) { e in
            XCTAssertTrue("\(e)".contains("notes.txt"), "\(e)")
        }
    }

    /// Every bad file stops the open with an error naming it; with skipBad they are counted instead.
    func testBadFilesAndSkipBad() throws {
        let t = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: t) }
        let fm = FileManager.default
        try fm.createDirectory(atPath: t + "/cls", withIntermediateDirectories: true)
        try fm.copyItem(atPath: fixturesPath() + "/png/types/rgb8.png", toPath: t + "/cls/a_good.png")
        try fm.copyItem(atPath: fixturesPath() + "/png/types/gray8.png", toPath: t + "/cls/z_good.png")
        let bad = ["not_png.png", "truncated.png", "corrupt_crc.png", "huge_header.png", "corrupt_zlib.png"]
        for b in bad {
            let one = t + "/one_" + b
            try fm.createDirectory(atPath: one + "/cls", withIntermediateDirectories: true)
            try fm.copyItem(atPath: fixturesPath() + "/png/bad/" + b, toPath: one + "/cls/" + b)
            XCTAssertThrowsError(try DatasetLoader.open(path: one)) { e in
                XCTAssertTrue(e is DataError)
                XCTAssertTrue("\(e)".contains(b), "error does not name \(b): \(e)")
            }
            try fm.copyItem(atPath: fixturesPath() + "/png/bad/" + b, toPath: t + "/cls/m_" + b)
            try fm.removeItem(atPath: one)
        }
        // An unreadable file: a dangling symbolic link (chmod 000 does not stop root).
        try fm.createSymbolicLink(atPath: t + "/cls/m_link.png", withDestinationPath: t + "/does-not-exist.png")
        XCTAssertThrowsError(try DatasetLoader.open(path: t)) { e in
            XCTAssertTrue("\(e)".contains("m_"), "\(e)")
        }
        let ds = try DatasetLoader.open(path: t, skipBad: true)
        XCTAssertEqual(ds.count, 2)
        XCTAssertEqual(ds.skipped.count, 6)
        XCTAssertTrue(ds.skipped.contains { $0.path.hasSuffix("m_link.png") && $0.kind == .unreadable })
        XCTAssertEqual(
            Set(ds.skipped.map { ($0.path as NSString).lastPathComponent }),
            Set(bad.map { "m_" + $0 } + ["m_link.png"]))
        XCTAssertThrowsError(try DatasetLoader.open(path: t + "/cls/m_link.png")) { e in
            XCTAssertTrue("\(e)".contains("m_link.png"), "\(e)")
        }
        // Only bad files: an error even with skipBad.
        let onlyBad = t + "/onlybad"
        try fm.createDirectory(atPath: onlyBad, withIntermediateDirectories: true)
        try fm.copyItem(atPath: fixturesPath() + "/png/bad/not_png.png", toPath: onlyBad + "/x.png")
        XCTAssertThrowsError(try DatasetLoader.open(path: onlyBad, skipBad: true)) { e in
            XCTAssertEqual((e as? DataError)?.kind, .emptyDataset)
        }
    }

    func testSyntheticDataset() throws {
        let ds = ImageDataset.synthetic(count: 5, width: 8, height: 6, channels: 3, seed: 1)
        XCTAssertEqual(ds.count, 5)
        XCTAssertEqual(ds.labels?.count, 5)
        let img = try ds.image(at: 4)
        XCTAssertEqual(img.pixels.count, 8 * 6 * 3)
        XCTAssertTrue(img.pixels.allSatisfy { $0 >= 0 && $0 <= 1 })
    }
}
