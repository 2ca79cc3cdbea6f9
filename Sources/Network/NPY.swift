// NumPy .npy files (https://numpy.org/neps/nep-0001-npy-format.html): how extracted features and
// labels leave the program.
//
// Layout: "\x93NUMPY", major, minor, a little-endian header length (u16 in v1.0, u32 in v2.0/3.0), then a
// Python dict literal such as {'descr': '<f4', 'fortran_order': False, 'shape': (10, 512), }
// padded with spaces and ending in '\n' so that the data starts on a 64-byte boundary, then the
// C-order little-endian data. We write v1.0 with '<f4' (float32) or '<i8' (int64); we read v1/v2/v3 with
// '<f4', '<i8', and, converted, '<f8' and '<i4'. Writing is atomic like SafeTensorsFile.write.
import Foundation

public struct NPYArray: Equatable {
    public enum DType: String, Sendable {
        case float32 = "<f4"
        case int64 = "<i8"
    }
    public enum Storage: Equatable {
        case float32([Float])
        case int64([Int64])
    }

    public var shape: [Int]
    public var storage: Storage
    /// The dtype as the file stored it ('<i4' read as int64, '<f8' as float32, ...); nil when built in
    /// memory. `storedDescription` is what error messages name.
    public var storedDType: String? = nil
    public var storedDescription: String { storedDType ?? dtype.rawValue }

    /// Equal shape and values (the stored dtype is not compared).
    public static func == (a: NPYArray, b: NPYArray) -> Bool { a.shape == b.shape && a.storage == b.storage }

    /// float32 array, C order; `shape` defaults to 1-D.
    public init(floats: [Float], shape: [Int]? = nil) {
        let sh = shape ?? [floats.count]
        precondition(
            sh.allSatisfy { $0 >= 0 } && sh.reduce(1, *) == floats.count,
            "shape \(sh) does not hold \(floats.count) values")
        self.shape = sh; storage = .float32(floats)
    }
    /// int64 array, C order; `shape` defaults to 1-D.
    public init(int64s: [Int64], shape: [Int]? = nil) {
        let sh = shape ?? [int64s.count]
        precondition(
            sh.allSatisfy { $0 >= 0 } && sh.reduce(1, *) == int64s.count,
            "shape \(sh) does not hold \(int64s.count) values")
        self.shape = sh; storage = .int64(int64s)
    }

    public var dtype: DType {
        if case .float32 = storage { return .float32 }
        return .int64
    }
    public var count: Int { shape.reduce(1, *) }
    /// The values of a float32 array (nil for int64).
    public var floats: [Float]? { if case .float32(let v) = storage { return v }; return nil }
    /// The values of an int64 array (nil for float32).
    public var int64s: [Int64]? { if case .int64(let v) = storage { return v }; return nil }

    // MARK: Writing

    /// The header dict literal as numpy writes it, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (3,), }
    static func headerDict(dtype: DType, shape: [Int]) -> String {
        let sh: String
        switch shape.count {
        case 0: sh = "()"
        case 1: sh = "(\(shape[0]),)"
        default: sh = "(" + shape.map(String.init).joined(separator: ", ") + ")"
        }
        return "{'descr': '\(dtype.rawValue)', 'fortran_order': False, 'shape': \(sh), }"
    }

    /// The file's bytes (format version 1.0; header padded so the data starts at a multiple of 64).
    public func encoded() -> [UInt8] {
        var header = Array(Self.headerDict(dtype: dtype, shape: shape).utf8)
        let total = 10 + header.count + 1
        let padded = (total + 63) / 64 * 64
        header += [UInt8](repeating: 0x20, count: padded - total)
        header.append(0x0A)
        precondition(header.count <= 0xFFFF, "npy header too long for format 1.0")
        var out: [UInt8] = [
            0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0,
            UInt8(header.count & 0xFF), UInt8(header.count >> 8)
        ]
        out += header
        switch storage {
        case .float32(let v):
            var d = [UInt8](repeating: 0, count: v.count * 4)
            d.withUnsafeMutableBytes { raw in
                for (i, x) in v.enumerated() {
                    raw.storeBytes(of: x.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self)
                }
            }
            out += d
        case .int64(let v):
            var d = [UInt8](repeating: 0, count: v.count * 8)
            d.withUnsafeMutableBytes { raw in
                for (i, x) in v.enumerated() { raw.storeBytes(of: x.littleEndian, toByteOffset: i * 8, as: Int64.self) }
            }
            out += d
        }
        return out
    }

    /// Writes atomically: `path.tmp-<pid>` then rename; on failure nothing is left at `path`.
    public func write(path: String) throws {
        try writeFileAtomically(encoded(), to: path)
    }

    // MARK: Reading

    public static func read(path: String) throws -> NPYArray {
        try decode(readWholeFile(path), path: path)
    }

    /// Parses a whole .npy file held in memory; `path` is only used in error messages.
    public static func decode(_ b: [UInt8], path: String = "<memory>") throws -> NPYArray {
        func fail(_ reason: String) -> TensorFileError { TensorFileError(path: path, reason: reason) }
        guard b.count >= 10 else { throw fail("file too short for an .npy header (\(b.count) bytes)") }
        guard b[0..<6].elementsEqual([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]) else {
            throw fail("not an .npy file (bad magic string)")
        }
        let major = b[6], minor = b[7]
        let headerLen: Int, headerStart: Int
        switch major {
        case 1:
            headerLen = Int(b[8]) | Int(b[9]) << 8; headerStart = 10
        case 2, 3:
            guard b.count >= 12 else { throw fail("file too short for an .npy v\(major) header") }
            headerLen = Int(b[8]) | Int(b[9]) << 8 | Int(b[10]) << 16 | Int(b[11]) << 24; headerStart = 12
        default:
            throw fail("unsupported .npy format version \(major).\(minor)")
        }
        guard minor == 0 else { throw fail("unsupported .npy format version \(major).\(minor)") }
        guard headerStart + headerLen <= b.count else {
            throw fail("header length \(headerLen) is larger than the file (\(b.count) bytes)")
        }
        guard
            let header = String(
                bytes: b[headerStart..<(headerStart + headerLen)], encoding: major == 3 ? .utf8 : .isoLatin1)
        else {
            throw fail("header is not text")
        }
        guard let descr = dictValue(header, "descr") else { throw fail("header has no 'descr': \(header)") }
        guard let fortran = dictValue(header, "fortran_order") else { throw fail("header has no 'fortran_order'") }
        guard let shapeText = dictValue(header, "shape") else { throw fail("header has no 'shape'") }
        guard fortran == "False" else { throw fail("Fortran-order arrays are not supported") }
        guard shapeText.hasPrefix("("), shapeText.hasSuffix(")") else { throw fail("malformed shape \(shapeText)") }
        var shape = [Int]()
        for part in shapeText.dropFirst().dropLast().split(separator: ",") {
            let t = part.trimmingCharacters(in: .whitespaces)
            if t.isEmpty { continue }
            guard let v = Int(t), v >= 0 else { throw fail("malformed shape \(shapeText)") }
            shape.append(v)
        }
        var n = 1
        for d in shape {
            let (m, o) = n.multipliedReportingOverflow(by: d)
            guard !o else { throw fail("shape \(shapeText) is too large") }
            n = m
        }
        let unquoted = descr.trimmingCharacters(in: CharacterSet(charactersIn: "'\""))
        let size: Int
        switch unquoted {
        case "<f4", "<i4": size = 4
        case "<f8", "<i8": size = 8
        default: throw fail("unsupported dtype \(descr) (expected '<f4' or '<i8')")
        }
        let dataStart = headerStart + headerLen
        let (want, overflow) = n.multipliedReportingOverflow(by: size)
        let have = b.count - dataStart
        guard !overflow else { throw fail("shape \(shapeText) is too large") }
        guard have == want else {
            throw fail(
                have < want
                    ? "truncated data: shape \(shape) x \(unquoted) needs \(want) bytes, file has \(have)"
                    : "\(have - want) unexpected bytes after the data of shape \(shape) x \(unquoted)")
        }
        var array: NPYArray = b.withUnsafeBytes { raw in
            let p = UnsafeRawBufferPointer(rebasing: raw[dataStart...])
            switch unquoted {
            case "<f4":
                return NPYArray(
                    floats: (0..<n).map {
                        Float(
                            bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)))
                    }, shape: shape)
            case "<f8":
                return NPYArray(
                    floats: (0..<n).map {
                        Float(
                            Double(
                                bitPattern: UInt64(
                                    littleEndian: p.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self))))
                    }, shape: shape)
            case "<i4":
                return NPYArray(
                    int64s: (0..<n).map {
                        Int64(Int32(littleEndian: p.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)))
                    }, shape: shape)
            default:
                return NPYArray(
                    int64s: (0..<n).map {
                        Int64(littleEndian: p.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self))
                    }, shape: shape)
            }
        }
        array.storedDType = unquoted
        return array
    }

    /// The raw text of `key`'s value in a Python dict literal: a quoted string, a word or a (tuple).
    static func dictValue(_ header: String, _ key: String) -> String? {
        let s = Array(header)
        for q in ["'", "\""] {
            let pat = Array("\(q)\(key)\(q)")
            guard let at = indexOf(pat, in: s) else { continue }
            var i = at + pat.count
            while i < s.count && (s[i] == " ") { i += 1 }
            guard i < s.count, s[i] == ":" else { return nil }
            i += 1
            while i < s.count && s[i] == " " { i += 1 }
            guard i < s.count else { return nil }
            var j = i
            if s[i] == "(" {
                while j < s.count && s[j] != ")" { j += 1 }
                guard j < s.count else { return nil }
                return String(s[i...j])
            }
            if s[i] == "'" || s[i] == "\"" {
                j = i + 1
                while j < s.count && s[j] != s[i] { j += 1 }
                guard j < s.count else { return nil }
                return String(s[i...j])
            }
            while j < s.count && s[j] != "," && s[j] != "}" { j += 1 }
            return String(s[i..<j]).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    private static func indexOf(_ p: [Character], in s: [Character]) -> Int? {
        guard p.count <= s.count else { return nil }
        for i in 0...(s.count - p.count) where s[i] == p[0] && Array(s[i..<(i + p.count)]) == p { return i }
        return nil
    }
}
