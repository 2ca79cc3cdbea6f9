import Kernels
import CImage
import Foundation

/// Default bound on the size of a decompressed .gz file (8 GiB).
public let defaultMaxInflated: UInt64 = 8 << 30

/// Inflates gzip (single or concatenated members) or zlib data. A stream cut short is an error
/// (`.truncated`), as are bad data and output beyond `maxOutput` bytes.
public func gunzip(_ bytes: [UInt8], maxOutput: UInt64 = defaultMaxInflated, name: String = "") throws -> [UInt8] {
    var out: UnsafeMutablePointer<UInt8>? = nil
    var size = 0
    var err = [CChar](repeating: 0, count: 256)
    let code = bytes.withUnsafeBufferPointer { b in
        sal_gunzip(b.baseAddress, b.count, maxOutput, &out, &size, &err, err.count)
    }
    if code != 0 {
        let kind: DataError.Kind = code == 3 ? .truncated : code == 4 ? .tooLarge : .corrupt
        throw DataError(kind, path: name, "gzip: " + cMessage(err))
    }
    guard let out else { return [] }
    defer { sal_free(out) }
    return Array(UnsafeBufferPointer(start: out, count: size))
}

/// Compresses bytes as one gzip member (tests and the fuzzer use it to build .gz inputs).
public func gzip(_ bytes: [UInt8]) throws -> [UInt8] {
    var out: UnsafeMutablePointer<UInt8>? = nil
    var size = 0
    var err = [CChar](repeating: 0, count: 256)
    let code = bytes.withUnsafeBufferPointer { b in
        sal_gzip(b.baseAddress, b.count, &out, &size, &err, err.count)
    }
    if code != 0 { throw DataError(.invalidArgument, path: "", "gzip: " + cMessage(err)) }
    guard let out else { return [] }
    defer { sal_free(out) }
    return Array(UnsafeBufferPointer(start: out, count: size))
}

/// Reads a file, inflating it when it starts with the gzip magic bytes (whatever its name).
public func readMaybeGzipped(_ path: String, maxOutput: UInt64 = defaultMaxInflated) throws -> [UInt8] {
    let raw = try readFileBytes(path)
    if raw.count >= 2 && raw[0] == 0x1f && raw[1] == 0x8b { return try gunzip(raw, maxOutput: maxOutput, name: path) }
    return raw
}

/// An IDX file's header: unsigned-byte data (type 0x08) with 1 to 4 dimensions, big-endian sizes.
/// MNIST / Fashion-MNIST images are `[N, rows, cols]`, labels `[N]`. A 4-D `[N, rows, cols, C]`
/// file (C = 1 or 3) is accepted as NHWC colour images.
public struct IDXHeader: Equatable, Sendable {
    public var dims: [Int]
    public var headerBytes: Int { 4 + 4 * dims.count }
    public var elementCount: Int { dims.reduce(1, *) }
}

/// Parses and checks an IDX header against the data length: the file must hold exactly
/// header + product(dims) bytes (a truncated file or a header that disagrees with the length throws).
public func parseIDXHeader(_ bytes: [UInt8], name: String = "") throws -> IDXHeader {
    guard bytes.count >= 4 else {
        throw DataError(.truncated, path: name, "IDX file too short for its header (\(bytes.count) bytes)")
    }
    guard bytes[0] == 0, bytes[1] == 0 else {
        throw DataError(.badIDX, path: name, "not an IDX file (bad magic number)")
    }
    guard bytes[2] == 0x08 else {
        throw DataError(
            .badIDX, path: name,
            "IDX element type 0x\(String(bytes[2], radix: 16)) not supported (only unsigned bytes, 0x08)")
    }
    let nd = Int(bytes[3])
    guard (1...4).contains(nd) else { throw DataError(.badIDX, path: name, "IDX with \(nd) dimensions not supported") }
    guard bytes.count >= 4 + 4 * nd else {
        throw DataError(.truncated, path: name, "IDX file too short for its header")
    }
    var dims = [Int]()
    var total = 1
    for d in 0..<nd {
        let o = 4 + 4 * d
        let v = Int(bytes[o]) << 24 | Int(bytes[o + 1]) << 16 | Int(bytes[o + 2]) << 8 | Int(bytes[o + 3])
        dims.append(v)
        let (p, overflow) = total.multipliedReportingOverflow(by: v)
        guard !overflow, p <= Int(Int32.max) * 16 else {
            throw DataError(.badIDX, path: name, "IDX dimensions \(dims) are absurd")
        }
        total = p
    }
    let h = IDXHeader(dims: dims)
    let expected = h.headerBytes + total
    if bytes.count < expected {
        throw DataError(
            .truncated, path: name,
            "IDX header says \(dims.map(String.init).joined(separator: "x")) = \(expected) bytes "
                + "but the file has \(bytes.count) (truncated)")
    }
    if bytes.count > expected {
        throw DataError(
            .badIDX, path: name,
            "IDX header says \(dims.map(String.init).joined(separator: "x")) = \(expected) bytes "
                + "but the file has \(bytes.count)")
    }
    return h
}

/// IDX images held as bytes (NHWC, values 0...255).
public struct IDXImages: Sendable {
    public var count: Int, height: Int, width: Int, channels: Int
    public var bytes: [UInt8]
}

/// Parses IDX images: `[N, rows, cols]` (gray) or `[N, rows, cols, C]` with C 1 or 3.
public func parseIDXImages(_ bytes: [UInt8], name: String = "") throws -> IDXImages {
    let h = try parseIDXHeader(bytes, name: name)
    let d = h.dims
    guard d.count == 3 || (d.count == 4 && (d[3] == 1 || d[3] == 3)) else {
        throw DataError(.badIDX, path: name, "IDX images must be N x rows x cols (found dimensions \(d))")
    }
    guard d[1] > 0, d[2] > 0 else { throw DataError(.badIDX, path: name, "IDX images of size \(d[1])x\(d[2])") }
    return IDXImages(
        count: d[0], height: d[1], width: d[2], channels: d.count == 4 ? d[3] : 1,
        bytes: Array(bytes[h.headerBytes...]))
}

/// Parses IDX labels: a 1-D unsigned-byte array.
public func parseIDXLabels(_ bytes: [UInt8], name: String = "") throws -> [Int32] {
    let h = try parseIDXHeader(bytes, name: name)
    guard h.dims.count == 1 else {
        throw DataError(.badIDX, path: name, "IDX labels must be 1-D (found dimensions \(h.dims))")
    }
    return bytes[h.headerBytes...].map { Int32($0) }
}

/// Builds IDX bytes (used by tests, fixtures and the fuzzer).
public func makeIDX(dims: [Int], data: [UInt8]) -> [UInt8] {
    precondition(dims.reduce(1, *) == data.count)
    var b: [UInt8] = [0, 0, 0x08, UInt8(dims.count)]
    for d in dims { b += [UInt8(d >> 24 & 255), UInt8(d >> 16 & 255), UInt8(d >> 8 & 255), UInt8(d & 255)] }
    return b + data
}
