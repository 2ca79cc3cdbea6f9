import Kernels
import CImage
import Foundation

/// Default bound on width*height for decoded images (64 Mpixel); checked against the PNG header
/// before any pixel buffer is allocated, so a header claiming an absurd size is rejected cheaply.
public let defaultMaxPixels = 1 << 26

func cMessage(_ buf: [CChar]) -> String {
    let bytes = buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

func dataErrorKind(_ code: Int32) -> DataError.Kind {
    switch code {
    case 1: return .notPNG
    case 3: return .truncated
    case 4: return .tooLarge
    case 7: return .invalidArgument
    case 8: return .notJPEG
    case 9: return .unsupported
    default: return .corrupt
    }
}

/// Width, height and native channel count (1 gray / gray+alpha, 3 otherwise) from the PNG header.
public func pngInfo(_ bytes: [UInt8], name: String = "") throws -> (width: Int, height: Int, channels: Int) {
    var w: UInt32 = 0, h: UInt32 = 0
    var c: Int32 = 0
    var err = [CChar](repeating: 0, count: 256)
    let code = bytes.withUnsafeBufferPointer { b in
        sal_png_info(b.baseAddress, b.count, &w, &h, &c, &err, err.count)
    }
    if code != 0 { throw DataError(dataErrorKind(code), path: name, cMessage(err)) }
    return (Int(w), Int(h), Int(c))
}

/// Decodes a PNG held in memory through libpng (every colour type and bit depth, interlaced or not).
/// - `channels`: nil keeps the native count (1 for gray and gray+alpha, 3 for RGB, RGBA, palette);
///   1 converts to luma (0.299 R + 0.587 G + 0.114 B, as PIL's `convert("L")`); 3 replicates gray.
/// - Alpha and tRNS transparency are dropped, not composited (as PIL's `convert("RGB")`).
/// - Values are sample / (2^depth - 1), so 16-bit images keep their precision.
/// Errors (bad signature, truncation, CRC or zlib errors, a size above `maxPixels`) are thrown as
/// `DataError` with `name` as the path; libpng's longjmp never leaves the C target.
public func decodePNG(
    _ bytes: [UInt8], channels: Int? = nil, maxPixels: Int = defaultMaxPixels,
    name: String = ""
) throws -> Image {
    var w: UInt32 = 0, h: UInt32 = 0
    var c: Int32 = 0
    var out: UnsafeMutablePointer<Float>? = nil
    var err = [CChar](repeating: 0, count: 256)
    let want = Int32(channels ?? 0)
    let code = bytes.withUnsafeBufferPointer { b in
        sal_png_decode(b.baseAddress, b.count, want, UInt64(max(1, maxPixels)), &out, &w, &h, &c, &err, err.count)
    }
    if code != 0 { throw DataError(dataErrorKind(code), path: name, cMessage(err)) }
    guard let out else { throw DataError(.corrupt, path: name, "decoder returned no pixels") }
    defer { sal_free(out) }
    let n = Int(w) * Int(h) * Int(c)
    return Image(
        width: Int(w), height: Int(h), channels: Int(c),
        pixels: Array(UnsafeBufferPointer(start: out, count: n)))
}

/// Reads and decodes a PNG file; errors name `path`.
public func readPNG(path: String, channels: Int? = nil, maxPixels: Int = defaultMaxPixels) throws -> Image {
    try decodePNG(try readFileBytes(path), channels: channels, maxPixels: maxPixels, name: path)
}

/// Encodes 8-bit HWC pixels (channels 1, 3 or 4) as PNG bytes.
public func encodePNG(width: Int, height: Int, channels: Int, pixels: [UInt8]) throws -> [UInt8] {
    try encodeImage("encodePNG", width: width, height: height, channels: channels, pixels: pixels) {
        p, out, size, err in
        sal_png_encode(p, UInt32(width), UInt32(height), Int32(channels), &out, &size, err, 256)
    }
}

/// Checks that `pixels` holds width x height x channels (1, 3 or 4) bytes, then runs a CImage encoder
/// (`encode(pixels, &out, &size, err)`, err 256 bytes) and returns the bytes it made.
func encodeImage(
    _ name: String, width: Int, height: Int, channels: Int, pixels: [UInt8],
    _ encode: (UnsafePointer<UInt8>?, inout UnsafeMutablePointer<UInt8>?, inout Int, UnsafeMutablePointer<CChar>) ->
        Int32
)
    throws -> [UInt8]
{
    guard width > 0, height > 0, [1, 3, 4].contains(channels), pixels.count == width * height * channels else {
        throw DataError(
            .invalidArgument, path: "",
            "\(name): \(width)x\(height)x\(channels) does not match \(pixels.count) bytes")
    }
    var out: UnsafeMutablePointer<UInt8>? = nil
    var size = 0
    var err = [CChar](repeating: 0, count: 256)
    let code = pixels.withUnsafeBufferPointer { p in
        err.withUnsafeMutableBufferPointer { e in encode(p.baseAddress, &out, &size, e.baseAddress!) }
    }
    if code != 0 { throw DataError(.writeFailed, path: "", cMessage(err)) }
    guard let out else { throw DataError(.writeFailed, path: "", "encoder returned no data") }
    defer { sal_free(out) }
    return Array(UnsafeBufferPointer(start: out, count: size))
}

/// Writes 8-bit HWC pixels as a PNG file. The bytes go to a temporary file beside `path` that is
/// then renamed over it, so a reader never sees a half-written PNG.
public func writePNG(path: String, width: Int, height: Int, channels: Int, pixels: [UInt8]) throws {
    let bytes = try encodePNG(width: width, height: height, channels: channels, pixels: pixels)
    do {
        try Foundation.Data(bytes).write(to: URL(fileURLWithPath: path), options: .atomic)
    } catch {
        throw DataError(.writeFailed, path: path, "cannot write file: \(error.localizedDescription)")
    }
}

/// Writes a float image (values clamped to [0, 1]) as an 8-bit PNG.
public func writePNG(path: String, image: Image) throws {
    try writePNG(
        path: path, width: image.width, height: image.height, channels: image.channels,
        pixels: image.pixels.map { quantize8($0) })
}

@inline(__always) func quantize8(_ v: Float) -> UInt8 {
    UInt8(max(0, min(255, (v * 255).rounded())))
}
