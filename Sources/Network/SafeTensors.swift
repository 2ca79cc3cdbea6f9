// safetensors files (https://github.com/huggingface/safetensors): the checkpoint format at the
// PyTorch boundary.
//
// Layout: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON
//   {"name": {"dtype": "F32", "shape": [K, C, R, S], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}
// padded with spaces so that the data starts 8-byte aligned, then the raw little-endian tensor data;
// offsets are relative to the start of the data.
//
// Reading checks everything before trusting it (sizes, offsets, dtype x shape) and every error names
// the file. Writing is atomic: the bytes go to `path.tmp-<pid>`, which is then renamed over `path`.
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// An unreadable, malformed or unwritable tensor file (safetensors or .npy); the message names the file.
public struct TensorFileError: Error, CustomStringConvertible, LocalizedError, Equatable {
    public let path: String
    public let reason: String
    public init(path: String, reason: String) { self.path = path; self.reason = reason }
    public var description: String { "\(path): \(reason)" }
    public var errorDescription: String? { description }
}

public struct SafeTensorsFile {
    /// Element types of the format. F32 and I64 are read and written as such; F64, F16 and BF16 are
    /// read and converted to Float by `Tensor.floats()`; the other integer types are kept as raw bytes.
    public enum DType: String, CaseIterable, Sendable {
        case F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL
        public var size: Int {
            switch self {
            case .F64, .I64: return 8
            case .F32, .I32: return 4
            case .F16, .BF16, .I16: return 2
            case .I8, .U8, .BOOL: return 1
            }
        }
    }

    /// One tensor: dtype, shape and its raw little-endian bytes.
    public struct Tensor: Equatable {
        public var dtype: DType
        public var shape: [Int]
        public var data: [UInt8]

        /// Raw constructor; `data.count` must be product(shape) * dtype.size.
        public init(dtype: DType, shape: [Int], data: [UInt8]) {
            precondition(
                shape.allSatisfy { $0 >= 0 } && data.count == shape.reduce(1, *) * dtype.size,
                "tensor data does not match dtype x shape")
            self.dtype = dtype; self.shape = shape; self.data = data
        }
        /// F32 tensor; `shape` defaults to 1-D.
        public init(floats: [Float], shape: [Int]? = nil) {
            let sh = shape ?? [floats.count]
            precondition(sh.reduce(1, *) == floats.count, "shape \(sh) does not hold \(floats.count) values")
            var d = [UInt8](repeating: 0, count: floats.count * 4)
            d.withUnsafeMutableBytes { raw in
                for (i, v) in floats.enumerated() {
                    raw.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self)
                }
            }
            self.init(dtype: .F32, shape: sh, data: d)
        }
        /// I64 tensor; `shape` defaults to 1-D.
        public init(int64s: [Int64], shape: [Int]? = nil) {
            let sh = shape ?? [int64s.count]
            precondition(sh.reduce(1, *) == int64s.count, "shape \(sh) does not hold \(int64s.count) values")
            var d = [UInt8](repeating: 0, count: int64s.count * 8)
            d.withUnsafeMutableBytes { raw in
                for (i, v) in int64s.enumerated() {
                    raw.storeBytes(of: v.littleEndian, toByteOffset: i * 8, as: Int64.self)
                }
            }
            self.init(dtype: .I64, shape: sh, data: d)
        }

        /// Number of elements.
        public var count: Int { shape.reduce(1, *) }

        /// Values as Float: F32 exactly, F64/F16/BF16 converted; nil for integer dtypes.
        public var floats: [Float]? {
            let n = count
            return data.withUnsafeBytes { raw -> [Float]? in
                switch dtype {
                case .F32:
                    return (0..<n).map {
                        Float(
                            bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))
                        )
                    }
                case .F64:
                    return (0..<n).map {
                        Float(
                            Double(
                                bitPattern: UInt64(
                                    littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self))))
                    }
                case .F16:
                    return (0..<n).map {
                        halfToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self)))
                    }
                case .BF16:
                    return (0..<n).map {
                        Float(
                            bitPattern: UInt32(
                                UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self))) << 16)
                    }
                default: return nil
                }
            }
        }
        /// Values as Int64 for integer and bool dtypes; nil for floating-point dtypes.
        public var int64s: [Int64]? {
            let n = count
            return data.withUnsafeBytes { raw -> [Int64]? in
                switch dtype {
                case .I64:
                    return (0..<n).map {
                        Int64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self))
                    }
                case .I32:
                    return (0..<n).map {
                        Int64(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)))
                    }
                case .I16:
                    return (0..<n).map {
                        Int64(Int16(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 2, as: Int16.self)))
                    }
                case .I8: return (0..<n).map { Int64(Int8(bitPattern: raw[$0])) }
                case .U8, .BOOL: return (0..<n).map { Int64(raw[$0]) }
                default: return nil
                }
            }
        }
    }

    /// Free-form string pairs stored under "__metadata__" (omitted from the file when empty).
    public var metadata: [String: String]
    /// Tensor names in file order (order of data offsets when read, insertion order when built).
    public private(set) var names: [String]
    public private(set) var tensors: [String: Tensor]
    /// Where the file was read from (used in error messages), nil for one built in memory.
    public var path: String?

    public init(metadata: [String: String] = [:]) {
        self.metadata = metadata; names = []; tensors = [:]; path = nil
    }

    /// Get, add (appended to `names`), replace or (with nil) remove a tensor.
    public subscript(name: String) -> Tensor? {
        get { tensors[name] }
        set {
            if let t = newValue {
                if tensors[name] == nil { names.append(name) }
                tensors[name] = t
            } else if tensors.removeValue(forKey: name) != nil {
                names.removeAll { $0 == name }
            }
        }
    }

    /// The tensor called `name`, or an error naming the file.
    public func tensor(_ name: String) throws -> Tensor {
        guard let t = tensors[name] else {
            throw TensorFileError(path: path ?? "<memory>", reason: "no tensor named '\(name)'")
        }
        return t
    }
    /// Float values of `name` (F32/F64/F16/BF16), optionally checking the shape; errors name the file.
    public func floats(_ name: String, shape: [Int]? = nil) throws -> [Float] {
        let t = try tensor(name)
        if let shape, shape != t.shape {
            throw TensorFileError(
                path: path ?? "<memory>", reason: "tensor '\(name)' has shape \(t.shape), expected \(shape)")
        }
        guard let f = t.floats else {
            throw TensorFileError(
                path: path ?? "<memory>",
                reason: "tensor '\(name)' has dtype \(t.dtype.rawValue), expected a float type")
        }
        return f
    }
    /// Integer values of `name`; errors name the file.
    public func int64s(_ name: String) throws -> [Int64] {
        let t = try tensor(name)
        guard let v = t.int64s else {
            throw TensorFileError(
                path: path ?? "<memory>",
                reason: "tensor '\(name)' has dtype \(t.dtype.rawValue), expected an integer type")
        }
        return v
    }

    // MARK: Reading

    public static func read(path: String) throws -> SafeTensorsFile {
        let bytes = try readWholeFile(path)
        return try parse(bytes, path: path)
    }

    /// Parses a whole file held in memory; `path` is only used in error messages.
    public static func parse(_ bytes: [UInt8], path: String = "<memory>") throws -> SafeTensorsFile {
        func fail(_ reason: String) -> TensorFileError { TensorFileError(path: path, reason: reason) }
        guard bytes.count >= 8 else {
            throw fail("file too short for a safetensors header (\(bytes.count) bytes, need at least 8)")
        }
        var n64: UInt64 = 0
        for i in 0..<8 { n64 |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard n64 <= UInt64(bytes.count - 8) else {
            throw fail("header length \(n64) is larger than the file (\(bytes.count) bytes)")
        }
        let n = Int(n64)
        let headerBytes = bytes[8..<(8 + n)]
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: Data(headerBytes), options: [])
        } catch {
            throw fail("header is not valid JSON")
        }
        guard let header = json as? [String: Any] else { throw fail("header is not a JSON object") }
        let dataStart = 8 + n
        let dataCount = bytes.count - dataStart

        var file = SafeTensorsFile()
        file.path = path
        var entries: [(name: String, begin: Int, end: Int, dtype: DType, shape: [Int])] = []
        for (name, value) in header {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw fail("__metadata__ is not an object") }
                for (k, v) in m {
                    guard let s = v as? String else { throw fail("__metadata__ value for '\(k)' is not a string") }
                    file.metadata[k] = s
                }
                continue
            }
            guard let e = value as? [String: Any] else { throw fail("entry '\(name)' is not an object") }
            guard let ds = e["dtype"] as? String else { throw fail("tensor '\(name)' has no dtype") }
            guard let dtype = DType(rawValue: ds) else { throw fail("tensor '\(name)' has unknown dtype '\(ds)'") }
            guard let shapeAny = e["shape"] as? [Any], let shape = intArray(shapeAny), shape.allSatisfy({ $0 >= 0 })
            else {
                throw fail("tensor '\(name)' has no valid shape")
            }
            guard let offAny = e["data_offsets"] as? [Any], let off = intArray(offAny), off.count == 2,
                off[0] >= 0, off[1] >= off[0]
            else {
                throw fail("tensor '\(name)' has invalid data_offsets")
            }
            var elements = 1
            for d in shape {
                let (m, o) = elements.multipliedReportingOverflow(by: d)
                guard !o else { throw fail("tensor '\(name)' shape \(shape) is too large") }
                elements = m
            }
            let (want, o) = elements.multipliedReportingOverflow(by: dtype.size)
            guard !o, off[1] - off[0] == want else {
                throw fail(
                    "tensor '\(name)' data_offsets \(off) span \(off[1] - off[0]) bytes, "
                        + "but \(ds) x \(shape) needs \(want)")
            }
            guard off[1] <= dataCount else {
                throw fail(
                    "tensor '\(name)' data_offsets \(off) run past the end of the data (\(dataCount) bytes): "
                        + "truncated file or offsets out of range")
            }
            entries.append((name, off[0], off[1], dtype, shape))
        }
        entries.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var lastEnd = 0
        var lastName = ""
        for e in entries {
            if e.begin < lastEnd && e.end > e.begin {
                throw fail("tensors '\(lastName)' and '\(e.name)' have overlapping data_offsets")
            }
            if e.end > e.begin { lastEnd = e.end; lastName = e.name }
        }
        for e in entries {
            let d = Array(bytes[(dataStart + e.begin)..<(dataStart + e.end)])
            file[e.name] = Tensor(dtype: e.dtype, shape: e.shape, data: d)
        }
        return file
    }

    // MARK: Writing

    /// The file's bytes: header (metadata first, then tensors in `names` order, data packed in that
    /// order), padded with spaces to a multiple of 8 bytes.
    public func serialized() -> [UInt8] {
        var json = "{"
        var first = true
        if !metadata.isEmpty {
            json += "\"__metadata__\":{"
            json += metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }.joined(
                separator: ",")
            json += "}"
            first = false
        }
        var offset = 0
        for name in names {
            let t = tensors[name]!
            if !first { json += "," }
            first = false
            let shape = t.shape.map(String.init).joined(separator: ",")
            json +=
                "\(jsonString(name)):{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(shape)],"
                + "\"data_offsets\":[\(offset),\(offset + t.data.count)]}"
            offset += t.data.count
        }
        json += "}"
        var header = Array(json.utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        var out = [UInt8]()
        out.reserveCapacity(8 + header.count + offset)
        let n = UInt64(header.count)
        for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: n >> (8 * UInt64(i)))) }
        out += header
        for name in names { out += tensors[name]!.data }
        return out
    }

    /// Writes atomically: `path.tmp-<pid>` then rename; on failure nothing is left at `path`
    /// (a previous file there stays as it was).
    public func write(path: String) throws {
        try writeFileAtomically(serialized(), to: path)
    }
}

// MARK: - Helpers shared with NPY

/// Reads a whole file, turning any failure into a TensorFileError naming it.
func readWholeFile(_ path: String) throws -> [UInt8] {
    guard let fh = FileHandle(forReadingAtPath: path) else {
        throw TensorFileError(path: path, reason: "cannot open file for reading")
    }
    defer { try? fh.close() }
    do {
        let d = try fh.readToEnd() ?? Data()
        return [UInt8](d)
    } catch {
        throw TensorFileError(path: path, reason: "read failed: \(error)")
    }
}

/// Writes `bytes` to `path.tmp-<pid>`, then renames it to `path`; removes the temporary on failure.
func writeFileAtomically(_ bytes: [UInt8], to path: String) throws {
    let tmp = "\(path).tmp-\(getpid())"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else {
        throw TensorFileError(path: path, reason: "cannot create \(tmp): \(String(cString: strerror(errno)))")
    }
    var ok = true
    var why = ""
    bytes.withUnsafeBytes { raw in
        var done = 0
        while done < raw.count {
            let r = Foundation.write(fd, raw.baseAddress! + done, raw.count - done)
            if r < 0 {
                if errno == EINTR { continue }
                ok = false; why = String(cString: strerror(errno)); return
            }
            done += r
        }
    }
    if ok && fsync(fd) != 0 { ok = false; why = String(cString: strerror(errno)) }
    if close(fd) != 0 && ok { ok = false; why = String(cString: strerror(errno)) }
    if ok && rename(tmp, path) != 0 { ok = false; why = String(cString: strerror(errno)) }
    if !ok {
        unlink(tmp)
        throw TensorFileError(path: path, reason: "write failed: \(why)")
    }
}

private func intArray(_ a: [Any]) -> [Int]? {
    var out = [Int]()
    for v in a {
        if let i = v as? Int { out.append(i); continue }
        let d: Double
        if let x = v as? Double { d = x } else if let num = v as? NSNumber { d = num.doubleValue } else { return nil }
        guard d == d.rounded(), abs(d) < 9.0e15 else { return nil }
        out.append(Int(d))
    }
    return out
}

private func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
        }
    }
    return out + "\""
}

/// IEEE half -> Float, including subnormals, infinities and NaN.
@inline(__always) func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exp = Int((h >> 10) & 0x1F), man = UInt32(h & 0x3FF)
    if exp == 0 {
        let v = Float(man) * Float(sign: .plus, exponent: -24, significand: 1)
        return sign != 0 ? -v : v
    }
    if exp == 31 { return Float(bitPattern: sign | 0x7F80_0000 | (man << 13)) }
    return Float(bitPattern: sign | UInt32(exp - 15 + 127) << 23 | (man << 13))
}
