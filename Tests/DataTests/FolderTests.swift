import XCTest
import Foundation
import Kernels
import Data
import TestSupport
#if canImport(Glibc)
    import Glibc
#endif

/// Image folders as users lay them out: symbolic links, unreadable folders, special files, odd names,
/// and class folders that differ between a train and a test folder.
final class FolderTests: XCTestCase {
    let fm = FileManager.default

    func tempDir() throws -> String {
        let t = NSTemporaryDirectory() + "salient-folder-\(UInt32.random(in: 0...UInt32.max))"
        try fm.createDirectory(atPath: t, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: t) }
        return t
    }

    /// A class folder of `n` copies of a fixture PNG (rgb8.png, 5x4).
    func makeClass(_ dir: String, _ n: Int, fixture: String = "rgb8.png") throws {
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for i in 0..<n { try fm.copyItem(atPath: fixturesPath() + "/png/types/" + fixture, toPath: dir + "/\(i).png") }
    }

    // MARK: class names between train and test

    /// A test folder lacking the middle class keeps each image's class: labels index train's classes by name.
    func testTestLabelsFollowTrainClassNames() throws {
        let t = try tempDir()
        for c in ["ant", "bee", "cat"] { try makeClass(t + "/train/" + c, 2) }
        for c in ["ant", "cat"] { try makeClass(t + "/test/" + c, 1) }
        let train = try DatasetLoader.open(path: t + "/train")
        let test = try DatasetLoader.open(path: t + "/test")
        XCTAssertEqual(test.labels, [0, 1], "the test folder's own numbering")
        let matched = try test.relabeled(as: train)
        XCTAssertEqual(matched.classNames, ["ant", "bee", "cat"])
        XCTAssertEqual(matched.labels, [0, 2], "cat is class 2 of train, not 1")
        XCTAssertEqual(matched.count, test.count)
        XCTAssertEqual(try matched.image(at: 1), try test.image(at: 1))
    }

    func testTestClassMissingFromTrainIsAnError() throws {
        let t = try tempDir()
        for c in ["ant", "bee"] { try makeClass(t + "/train/" + c, 1) }
        for c in ["ant", "dog", "eel"] { try makeClass(t + "/test/" + c, 1) }
        let train = try DatasetLoader.open(path: t + "/train")
        let test = try DatasetLoader.open(path: t + "/test")
        XCTAssertThrowsError(try test.relabeled(as: train)) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("dog") && s.contains("eel"), s)
            XCTAssertTrue(s.contains(t + "/train"), s)
        }
    }

    /// Two IDX files: labels are numbers and keep their values, whatever the files' class names.
    func testNumericLabelsMatchByValue() throws {
        let idx = fixturesPath() + "/idx/tiny-images-idx3-ubyte"
        let a = try DatasetLoader.open(path: idx), b = try DatasetLoader.open(path: idx, limit: 3)
        XCTAssertEqual(try b.relabeled(as: a).labels, b.labels)
    }

    // MARK: symbolic links and unreadable folders

    func testSymbolicLinksAreFollowed() throws {
        let t = try tempDir()
        try makeClass(t + "/elsewhere/bee", 2)
        try makeClass(t + "/data/ant", 1)
        try fm.createSymbolicLink(atPath: t + "/data/bee", withDestinationPath: t + "/elsewhere/bee")
        try fm.createSymbolicLink(atPath: t + "/link", withDestinationPath: t + "/data")
        for root in [t + "/data", t + "/link"] {
            let ds = try DatasetLoader.open(path: root)
            XCTAssertEqual(ds.count, 3, root)
            XCTAssertEqual(ds.classNames, ["ant", "bee"], root)
            XCTAssertEqual(ds.labels, [0, 1, 1], root)
        }
        // A link back to an ancestor is walked once, not forever.
        try fm.createSymbolicLink(atPath: t + "/data/ant/loop", withDestinationPath: t + "/data")
        XCTAssertEqual(try DatasetLoader.open(path: t + "/data").count, 3)
    }

    /// A class folder that cannot be read (here a symbolic link loop: root reads any mode) stops the open,
    /// naming it; with skipBad it is listed.
    func testUnreadableClassFolderIsAnError() throws {
        let t = try tempDir()
        try makeClass(t + "/data/ant", 2)
        try fm.createSymbolicLink(atPath: t + "/data/bee", withDestinationPath: t + "/data/bee")
        XCTAssertThrowsError(try DatasetLoader.open(path: t + "/data")) { e in
            XCTAssertTrue("\(e)".contains("/data/bee"), "\(e)")
        }
        let ds = try DatasetLoader.open(path: t + "/data", skipBad: true)
        XCTAssertEqual(ds.count, 2)
        XCTAssertEqual(ds.skipped.map(\.path), [t + "/data/bee"])
    }

    // MARK: special files and names

    /// Runs `body` on a thread and fails when it does not finish within `seconds` (a blocked open).
    func finishes(within seconds: Double, unblock: () -> Void, _ body: @escaping @Sendable () -> Void) -> Bool {
        let done = DispatchSemaphore(value: 0)
        Thread {
            body(); done.signal()
        }.start()
        if done.wait(timeout: .now() + seconds) == .success { return true }
        unblock()
        _ = done.wait(timeout: .now() + 10)
        return false
    }

    func testFIFOIsRefused() throws {
        let t = try tempDir()
        XCTAssertEqual(mkfifo(t + "/pipe", 0o644), 0)
        try makeClass(t + "/data/ant", 1)
        XCTAssertEqual(mkfifo(t + "/data/ant/x.png", 0o644), 0)
        for path in [t + "/pipe", t + "/data"] {
            let box = ErrorBox()
            let ok = finishes(
                within: 5,
                unblock: {
                    let fd = open(path.hasSuffix("data") ? t + "/data/ant/x.png" : path, O_WRONLY | O_NONBLOCK)
                    if fd >= 0 { close(fd) }
                }
            ) {
                do { _ = try DatasetLoader.open(path: path) } catch { box.set("\(error)") }
            }
            XCTAssertTrue(ok, "opening \(path) blocked")
            let s = box.get()
            XCTAssertTrue(s.contains("FIFO"), s)
            XCTAssertTrue(s.contains(path.hasSuffix("data") ? "x.png" : "pipe"), s)
        }
        let count = ErrorBox()
        XCTAssertTrue(
            finishes(
                within: 5,
                unblock: {
                    let fd = open(t + "/data/ant/x.png", O_WRONLY | O_NONBLOCK)
                    if fd >= 0 { close(fd) }
                }
            ) {
                count.set((try? DatasetLoader.open(path: t + "/data", skipBad: true)).map { "\($0.count)" } ?? "error")
            }, "opening with skipBad blocked")
        XCTAssertEqual(count.get(), "1")
    }

    func testNewlinesInNamesAreEscaped() throws {
        let t = try tempDir()
        try makeClass(t + "/ant", 1)
        try fm.copyItem(atPath: fixturesPath() + "/png/bad/truncated.png", toPath: t + "/ant/bad\nname.png")
        XCTAssertThrowsError(try DatasetLoader.open(path: t)) { e in
            let s = "\(e)"
            XCTAssertFalse(s.contains("\n"), s)
            XCTAssertTrue(s.contains("bad\\nname.png"), s)
            XCTAssertEqual((e as? DataError)?.path, t + "/ant/bad\nname.png", "the path itself stays as it is")
        }
    }
}

final class ErrorBox: @unchecked Sendable {
    private let lock = NSLock()
    private var text = ""
    func set(_ s: String) { lock.lock(); text = s; lock.unlock() }
    func get() -> String { lock.lock(); defer { lock.unlock() }; return text }
}
