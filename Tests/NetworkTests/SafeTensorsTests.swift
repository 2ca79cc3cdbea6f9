import Foundation
import XCTest
import Network
import TestSupport

final class SafeTensorsTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "salient-st-\(getpid())-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func sample() -> SafeTensorsFile {
        var f = SafeTensorsFile(metadata: ["arch": "resnet18", "quote\"d": "a\\b\nc"])
        f["conv1.weight"] = .init(floats: (0..<54).map { Float($0) * 0.25 - 3 }, shape: [2, 3, 3, 3])
        f["bn1.num_batches_tracked"] = .init(int64s: [5], shape: [])
        f["odd"] = .init(floats: [1, -.infinity, .greatestFiniteMagnitude, -0.0, Float(bitPattern: 1)], shape: [5])
        f["empty"] = .init(floats: [], shape: [0, 4])
        f["ids"] = .init(int64s: [-1, 0, Int64.max, Int64.min], shape: [2, 2])
        return f
    }

    func testRoundTripIsIdentical() throws {
        let f = sample()
        let path = dir + "/a.safetensors"
        try f.write(path: path)
        let g = try SafeTensorsFile.read(path: path)
        XCTAssertEqual(g.metadata, f.metadata)
        XCTAssertEqual(g.names, f.names)
        for n in f.names { XCTAssertEqual(g[n], f[n], n) }
        XCTAssertEqual(g["odd"]!.floats!.map(\.bitPattern), f["odd"]!.floats!.map(\.bitPattern))
        XCTAssertEqual(try g.int64s("ids"), [-1, 0, Int64.max, Int64.min])
        XCTAssertEqual(g["bn1.num_batches_tracked"]!.shape, [])
        // Byte-identical when written again, header padded with spaces to 8-byte alignment.
        let bytes = f.serialized()
        XCTAssertEqual(g.serialized(), bytes)
        let n = bytes[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        XCTAssertEqual(n % 8, 0)
        XCTAssertEqual(bytes[8 + n - 1] == 0x20 || bytes[8 + n - 1] == 0x7D, true)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(path).tmp-\(getpid())"))
        // With SALIENT_INTEROP_OUT=<dir>, leave sample.safetensors there for safetensors.torch.load_file.
        if let out = ProcessInfo.processInfo.environment["SALIENT_INTEROP_OUT"] {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            try f.write(path: out + "/sample.safetensors")
        }
    }

    func testPythonWrittenFileLoads() throws {
        let f = try SafeTensorsFile.read(path: fixturesPath() + "/golden/python_small.safetensors")
        XCTAssertEqual(f.metadata, ["made_by": "make_golden.py"])
        XCTAssertEqual(Set(f.names), ["f32", "i64", "f16", "bf16", "f64", "scalar"])
        XCTAssertEqual(try f.floats("f32", shape: [2, 3]), [-0.5, -0.25, 0, 0.25, 0.5, 0.75])
        XCTAssertEqual(f["i64"]!.dtype, .I64)
        XCTAssertEqual(try f.int64s("i64"), [-3, 0, 7, 1 << 40])
        XCTAssertEqual(f["f16"]!.dtype, .F16)
        XCTAssertEqual(try f.floats("f16"), [1.5, -0.25, 65504])
        XCTAssertEqual(try f.floats("bf16"), [3.0, -0.5])
        XCTAssertEqual(try f.floats("f64"), [0.1, -2.0])
        XCTAssertEqual(try f.floats("scalar", shape: []), [42])
        XCTAssertThrowsError(try f.floats("f32", shape: [3, 2]))
        XCTAssertThrowsError(try f.floats("nope")) { XCTAssertTrue("\($0)".contains("python_small.safetensors")) }
    }

    func testPyTorchModelFileLoads() throws {
        let f = try SafeTensorsFile.read(path: fixturesPath() + "/models/resnet18_cifar_w0125.safetensors")
        XCTAssertEqual(f.metadata, ["arch": "resnet18", "stem": "cifar", "width": "0.125"])
        XCTAssertEqual(f["conv1.weight"]?.shape, [8, 3, 3, 3])
        XCTAssertEqual(f["layer4.1.conv2.weight"]?.shape, [64, 64, 3, 3])
        XCTAssertEqual(f["bn1.num_batches_tracked"]?.dtype, .I64)
        let plain = try SafeTensorsFile.read(path: fixturesPath() + "/models/resnet18_cifar_w0125_1ch.safetensors")
        XCTAssertEqual(plain.metadata, [:])
        XCTAssertEqual(plain["conv1.weight"]?.shape, [8, 1, 3, 3])
    }

    // MARK: Bad files: every error names the file

    func header(_ json: String, pad: Bool = true) -> [UInt8] {
        var h = Array(json.utf8)
        if pad { while h.count % 8 != 0 { h.append(0x20) } }
        let n = UInt64(h.count)
        return (0..<8).map { UInt8(truncatingIfNeeded: n >> (8 * UInt64($0))) } + h
    }

    func expectFailure(_ bytes: [UInt8], _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        let path = dir + "/bad-\(UUID().uuidString.prefix(8)).safetensors"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        XCTAssertThrowsError(try SafeTensorsFile.read(path: path), file: file, line: line) { error in
            let msg = "\(error)"
            XCTAssertTrue(msg.contains(path), "message does not name the file: \(msg)", file: file, line: line)
            XCTAssertTrue(
                msg.lowercased().contains(fragment.lowercased()), "expected '\(fragment)' in: \(msg)", file: file,
                line: line)
        }
    }

    func testBadFilesFailWithClearErrors() {
        let eight = [UInt8](repeating: 0, count: 8)
        expectFailure([], "too short")
        expectFailure([1, 2, 3], "too short")
        expectFailure(Array(header("{}").prefix(6)), "too short")
        expectFailure([255, 0, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 0x20, count: 16), "larger than the file")
        expectFailure([0, 0, 0, 0, 0, 0, 0, 0x80], "larger than the file")
        expectFailure(header("{\"a\": [1, 2"), "not valid JSON")
        expectFailure(header("[1, 2]"), "not a JSON object")
        expectFailure(
            header("{\"a\":{\"dtype\":\"Q7\",\"shape\":[2],\"data_offsets\":[0,8]}}") + eight, "unknown dtype")
        expectFailure(
            header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}}") + eight + [0, 0, 0, 0],
            "needs 8")
        expectFailure(
            header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}") + [0, 0, 0, 0], "truncated")
        expectFailure(
            header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[96,104]}}") + eight, "out of range")
        expectFailure(
            header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}") + eight, "invalid data_offsets")
        expectFailure(
            header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}") + eight, "invalid data_offsets")
        expectFailure(
            header(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    + "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}") + eight + [0, 0, 0, 0],
            "overlapping")
        expectFailure(header("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}") + eight, "shape")
        expectFailure(header("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}") + eight, "shape")
        expectFailure(header("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}") + eight, "no dtype")
        expectFailure(header("{\"__metadata__\":{\"k\":3}}"), "not a string")
        // A missing file also names itself.
        XCTAssertThrowsError(try SafeTensorsFile.read(path: dir + "/missing.safetensors")) {
            XCTAssertTrue("\($0)".contains("missing.safetensors"))
        }
    }

    func testValidHandMadeFileReads() throws {
        let bytes =
            header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}")
            + [0, 0, 0x80, 0x3F, 0, 0, 0, 0xC0]
        let f = try SafeTensorsFile.parse(bytes)
        XCTAssertEqual(f["a"]?.floats, [1, -2])
    }

    // MARK: Atomic writes

    func testFailedWriteLeavesNothing() {
        let f = sample()
        let path = dir + "/no/such/dir/x.safetensors"
        XCTAssertThrowsError(try f.write(path: path)) { XCTAssertTrue("\($0)".contains(path)) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    func testFailedRenameLeavesOldFileAndNoTemporary() throws {
        // The target is a non-empty directory: the temporary is written, the rename fails.
        let path = dir + "/target"
        try FileManager.default.createDirectory(atPath: path + "/inside", withIntermediateDirectories: true)
        XCTAssertThrowsError(try sample().write(path: path)) { XCTAssertTrue("\($0)".contains(path)) }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["target"])
    }

    func testOverwriteReplacesWholeFile() throws {
        let path = dir + "/w.safetensors"
        try sample().write(path: path)
        var small = SafeTensorsFile()
        small["x"] = .init(floats: [7])
        try small.write(path: path)
        let g = try SafeTensorsFile.read(path: path)
        XCTAssertEqual(g.names, ["x"])
        XCTAssertEqual(g.metadata, [:])
    }
}
