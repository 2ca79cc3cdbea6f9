import XCTest
import Kernels
import Data
import TestSupport

final class IDXTests: XCTestCase {
    let dir = fixturesPath() + "/idx/"

    func tinyPixels(_ i: Int) -> [Float] { (0..<20).map { Float((i * 31 + $0 * 7) % 256) / 255 } }

    func testTinyIDX() throws {
        for path in [dir + "tiny-images-idx3-ubyte", dir + "gz/tiny-images-idx3-ubyte.gz"] {
            let ds = try DatasetLoader.open(path: path)
            XCTAssertEqual(ds.count, 6)
            XCTAssertEqual(ds.channels, 1)
            XCTAssertEqual(ds.labels, [3, 1, 4, 1, 5, 9])
            XCTAssertTrue(ds.isInMemory)
            for i in 0..<6 {
                let img = try ds.image(at: i)
                XCTAssertEqual(img.width, 5)
                XCTAssertEqual(img.height, 4)
                XCTAssertEqual(img.pixels, tinyPixels(i))
            }
            let limited = try DatasetLoader.open(path: path, limit: 2, channels: 3)
            XCTAssertEqual(limited.count, 2)
            XCTAssertEqual(limited.labels, [3, 1])
            XCTAssertEqual(try limited.image(at: 1).pixels.count, 60)
        }
    }

    func testIDXStreamedMatchesInMemory() throws {
        let mem = try DatasetLoader.open(path: dir + "tiny-images-idx3-ubyte")
        let disk = try DatasetLoader.open(path: dir + "tiny-images-idx3-ubyte", memoryBudget: 0)
        XCTAssertFalse(disk.isInMemory)
        XCTAssertEqual(disk.labels, mem.labels)
        for i in 0..<6 { XCTAssertEqual(try disk.image(at: i), try mem.image(at: i)) }
    }

    func tempDir() throws -> String {
        let t = NSTemporaryDirectory() + "salient-idx-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: t, withIntermediateDirectories: true)
        return t
    }

    func assertFails(
        _ path: String, _ kind: DataError.Kind, budget: Int? = nil, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(try DatasetLoader.open(path: path, memoryBudget: budget), file: file, line: line) { e in
            XCTAssertEqual((e as? DataError)?.kind, kind, "\(e)", file: file, line: line)
            XCTAssertTrue("\(e)".contains((path as NSString).lastPathComponent), "\(e)", file: file, line: line)
        }
    }

    func testBadIDX() throws {
        let t = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: t) }
        let good = try readFileBytes(dir + "tiny-images-idx3-ubyte")
        // Truncated: fewer bytes than the header promises (in memory, streamed and gzipped).
        try Foundation.Data(good.prefix(good.count - 7)).write(to: URL(fileURLWithPath: t + "/cut-images-idx3-ubyte"))
        assertFails(t + "/cut-images-idx3-ubyte", .truncated)
        assertFails(t + "/cut-images-idx3-ubyte", .truncated, budget: 0)
        try Foundation.Data(good.prefix(10)).write(to: URL(fileURLWithPath: t + "/head-images-idx3-ubyte"))
        assertFails(t + "/head-images-idx3-ubyte", .truncated)
        // Header disagrees with the length: extra bytes.
        try Foundation.Data(good + [1, 2, 3]).write(to: URL(fileURLWithPath: t + "/long-images-idx3-ubyte"))
        assertFails(t + "/long-images-idx3-ubyte", .badIDX)
        assertFails(t + "/long-images-idx3-ubyte", .badIDX, budget: 0)
        // Header claiming a huge count.
        var huge = good; huge[6] = 0x10  // 4102 images claimed
        try Foundation.Data(huge).write(to: URL(fileURLWithPath: t + "/huge-images-idx3-ubyte"))
        assertFails(t + "/huge-images-idx3-ubyte", .truncated)
        // Truncated gzip.
        let gz = try gzip(good)
        try Foundation.Data(gz.prefix(gz.count - 12)).write(to: URL(fileURLWithPath: t + "/tgz-images-idx3-ubyte.gz"))
        assertFails(t + "/tgz-images-idx3-ubyte.gz", .truncated)
        // Labels that do not match the images.
        try Foundation.Data(good).write(to: URL(fileURLWithPath: t + "/lab-images-idx3-ubyte"))
        try Foundation.Data(makeIDX(dims: [4], data: [1, 2, 3, 4])).write(
            to: URL(fileURLWithPath: t + "/lab-labels-idx1-ubyte"))
        assertFails(t + "/lab-images-idx3-ubyte", .badIDX)
        // Parsers directly.
        XCTAssertThrowsError(try parseIDXImages([0, 0, 0x0D, 3], name: "f")) {
            XCTAssertEqual(($0 as? DataError)?.kind, .badIDX)
        }
        XCTAssertThrowsError(try parseIDXLabels(good, name: "f")) { XCTAssertEqual(($0 as? DataError)?.kind, .badIDX) }
        XCTAssertEqual(try parseIDXLabels(makeIDX(dims: [3], data: [7, 8, 9])), [7, 8, 9])
    }

    func testGzipRoundTripAndErrors() throws {
        let data = (0..<5000).map { UInt8(truncatingIfNeeded: $0 * $0) }
        let gz = try gzip(data)
        XCTAssertEqual(try gunzip(gz), data)
        XCTAssertEqual(try gunzip(gz + gz), data + data, "concatenated members")
        XCTAssertThrowsError(try gunzip(Array(gz.prefix(gz.count / 2)), name: "half.gz")) { e in
            XCTAssertEqual((e as? DataError)?.kind, .truncated)
            XCTAssertTrue("\(e)".contains("half.gz"))
        }
        var bad = gz; bad[gz.count / 2] ^= 0xFF; bad[gz.count / 2 + 1] ^= 0xFF
        XCTAssertThrowsError(try gunzip(bad))
        XCTAssertThrowsError(try gunzip(gz, maxOutput: 100)) { XCTAssertEqual(($0 as? DataError)?.kind, .tooLarge) }
    }

    /// Real Fashion-MNIST when the Debian package is installed (skipped otherwise).
    func testFashionMNIST() throws {
        let path = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
        try XCTSkipUnless(FileManager.default.fileExists(atPath: path), "dataset-fashion-mnist not installed")
        let ds = try DatasetLoader.open(path: path)
        XCTAssertEqual(ds.count, 10000)
        XCTAssertEqual(ds.channels, 1)
        XCTAssertEqual(ds.classNames.count, 10)
        XCTAssertEqual(ds.classNames[9], "Ankle boot")
        let labels = try XCTUnwrap(ds.labels)
        XCTAssertEqual(Array(labels.prefix(5)), [9, 2, 1, 1, 6])
        var hist = [Int](repeating: 0, count: 10)
        for l in labels { hist[Int(l)] += 1 }
        XCTAssertEqual(hist, [Int](repeating: 1000, count: 10))
        let img = try ds.image(at: 0)
        XCTAssertEqual(img.width, 28)
        XCTAssertEqual(img.height, 28)
        let mean = img.pixels.reduce(0, +) / Float(img.pixels.count)
        XCTAssertGreaterThan(mean, 0.05)
        XCTAssertLessThan(mean, 0.8)
        XCTAssertEqual(img.pixels[0], 0)  // black background in the corner
        let train = try DatasetLoader.open(
            path: "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", limit: 100)
        XCTAssertEqual(train.count, 100)
        XCTAssertEqual(train.labels?.count, 100)
    }
}
