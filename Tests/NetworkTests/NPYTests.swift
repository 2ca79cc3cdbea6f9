import Foundation
import XCTest
import Network
import TestSupport

final class NPYTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "salient-npy-\(getpid())-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testRoundTrip() throws {
        let a = NPYArray(floats: (0..<21).map { Float($0) * 0.5 - 3 }, shape: [7, 3])
        let b = NPYArray(int64s: [3, -1, Int64.max, 0], shape: [4])
        let e = NPYArray(floats: [], shape: [0, 5])
        for (i, x) in [a, b, e].enumerated() {
            let p = dir + "/\(i).npy"
            try x.write(path: p)
            XCTAssertEqual(try NPYArray.read(path: p), x)
        }
    }

    func testHeaderIsNumpyV1AlignedTo64() {
        for shape in [[1], [7, 3], [1000, 2048], [0, 5], [123456789, 1]] {
            let n = shape.reduce(1, *)
            let bytes =
                n > 10_000
                ? Array(NPYArray(floats: [], shape: [0, shape[1]]).encoded())
                : NPYArray(floats: [Float](repeating: 1, count: n), shape: shape).encoded()
            XCTAssertEqual(Array(bytes[0..<8]), [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0])
            let hl = Int(bytes[8]) | Int(bytes[9]) << 8
            XCTAssertEqual((10 + hl) % 64, 0, "\(shape)")
            XCTAssertEqual(bytes[10 + hl - 1], 0x0A)
        }
        let b = NPYArray(int64s: [1, 2]).encoded()
        let hl = Int(b[8]) | Int(b[9]) << 8
        let text = String(decoding: b[10..<(10 + hl)], as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }"), text)
        let f = NPYArray(floats: [1, 2, 3, 4, 5, 6], shape: [2, 3]).encoded()
        XCTAssertTrue(
            String(decoding: f[10..<74], as: UTF8.self).hasPrefix(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"))
        XCTAssertEqual(f.count, 128 + 24)  // a 58-character dict does not fit in the first 64 bytes
    }

    func testNumpyWrittenFilesLoad() throws {
        let f = try NPYArray.read(path: fixturesPath() + "/golden/numpy_f4.npy")
        XCTAssertEqual(f.shape, [3, 4])
        XCTAssertEqual(f.floats, (0..<12).map { Float($0) * 0.5 - 1 })
        let i = try NPYArray.read(path: fixturesPath() + "/golden/numpy_i8.npy")
        XCTAssertEqual(i.shape, [4])
        XCTAssertEqual(i.int64s, [5, -1, 3, 1 << 40])
        // Byte-for-byte what numpy writes.
        let ours = NPYArray(floats: (0..<12).map { Float($0) * 0.5 - 1 }, shape: [3, 4]).encoded()
        XCTAssertEqual(ours, Array(try Data(contentsOf: URL(fileURLWithPath: fixturesPath() + "/golden/numpy_f4.npy"))))
    }

    /// With SALIENT_INTEROP_OUT=<dir> set, leaves f32.npy and i64.npy there for checking with np.load
    /// (see fixtures/golden/make_golden.py).
    func testWriteFilesForNumpy() throws {
        let out = ProcessInfo.processInfo.environment["SALIENT_INTEROP_OUT"] ?? dir!
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try NPYArray(floats: (0..<15).map { Float($0) * 0.25 }, shape: [5, 3]).write(path: out + "/f32.npy")
        try NPYArray(int64s: [0, -7, 1 << 40]).write(path: out + "/i64.npy")
        XCTAssertEqual(try NPYArray.read(path: out + "/f32.npy").shape, [5, 3])
    }

    func expectFailure(_ bytes: [UInt8], _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        let path = dir + "/bad-\(UUID().uuidString.prefix(8)).npy"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        XCTAssertThrowsError(try NPYArray.read(path: path), file: file, line: line) { error in
            let msg = "\(error)"
            XCTAssertTrue(msg.contains(path), "message does not name the file: \(msg)", file: file, line: line)
            XCTAssertTrue(
                msg.lowercased().contains(fragment.lowercased()), "expected '\(fragment)' in: \(msg)", file: file,
                line: line)
        }
    }

    func npy(_ dict: String, major: UInt8 = 1, data: [UInt8]) -> [UInt8] {
        var h = Array(dict.utf8)
        while (10 + h.count + 1) % 64 != 0 { h.append(0x20) }
        h.append(0x0A)
        return [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, major, 0, UInt8(h.count & 0xFF), UInt8(h.count >> 8)] + h + data
    }

    func testBadFilesFailWithClearErrors() {
        let good = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", data: [UInt8](repeating: 0, count: 8))
        XCTAssertNoThrow(try NPYArray.decode(good))
        expectFailure([0x93, 0x4E], "too short")
        expectFailure([0x89, 0x50, 0x4E, 0x47, 0, 0, 0, 0, 0, 0, 0], "magic")
        expectFailure([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 9, 0, 0, 0], "version")
        expectFailure(Array(good.prefix(40)), "larger than the file")
        expectFailure(
            npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", data: [UInt8](repeating: 0, count: 8)),
            "dtype")
        expectFailure(
            npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", data: [UInt8](repeating: 0, count: 8)),
            "fortran")
        expectFailure(npy("{'descr': '<f4', 'fortran_order': False, }", data: []), "shape")
        expectFailure(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,x), }", data: []), "malformed shape")
        expectFailure(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", data: [0, 0, 0]), "truncated")
        expectFailure(
            npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", data: [UInt8](repeating: 0, count: 12)),
            "unexpected bytes")
        XCTAssertThrowsError(try NPYArray.read(path: dir + "/missing.npy")) {
            XCTAssertTrue("\($0)".contains("missing.npy"))
        }
        // A shape whose byte count overflows is an error, not a trap.
        expectFailure(
            npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,), }", data: []), "too large")
    }

    /// A file's own dtype is what messages name, also when its values were converted on reading.
    func testStoredDTypeIsKept() throws {
        let i4 = try NPYArray.decode(
            npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", data: [1, 0, 0, 0, 255, 255, 255, 255]))
        XCTAssertEqual(i4.int64s, [1, -1])
        XCTAssertEqual(i4.storedDescription, "<i4")
        XCTAssertEqual(i4, NPYArray(int64s: [1, -1]))
        XCTAssertEqual(NPYArray(int64s: [1]).storedDescription, "<i8")
    }

    func testFailedWriteLeavesNothing() {
        let path = dir + "/nope/x.npy"
        XCTAssertThrowsError(try NPYArray(int64s: [1]).write(path: path)) { XCTAssertTrue("\($0)".contains(path)) }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }
}
