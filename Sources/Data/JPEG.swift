import Kernels
import CImage
import Foundation

/// How small a dataset's images may be decoded: a JPEG at least twice as large as needed on both
/// sides is decoded at 1/2, 1/4 or 1/8 of its size by libjpeg's scaled inverse DCT, which costs a
/// fraction of a full decode, and the antialiased resample then starts from that. PNGs are always
/// decoded whole.
public struct DecodeTarget: Equatable, Sendable, CustomStringConvertible {
    /// Each side of the decoded image is at least this many pixels.
    public var minSide: Int
    /// The decoded image has at least this many pixels.
    public var minArea: Int
    /// The largest reduction allowed: 1 (always full size), 2, 4 or 8.
    public var maxReduction: Int

    public init(minSide: Int, minArea: Int, maxReduction: Int = 8) {
        self.minSide = max(0, minSide)
        self.minArea = max(0, minArea)
        self.maxReduction = [1, 2, 4, 8].last { $0 <= max(1, maxReduction) }!
    }

    /// Full size, always.
    public static let full = DecodeTarget(minSide: 0, minArea: 0, maxReduction: 1)

    /// Whole images resized to side x side (evaluation, extraction with --resize N): each side of the
    /// decoded image stays at least `side`, so the resize only ever shrinks.
    public static func resize(_ side: Int) -> DecodeTarget { DecodeTarget(minSide: side, minArea: 0) }

    /// The views `config` makes. Random resized crops (`config.randomCrop`) keep at least
    /// `cropScale.lowerBound` of the area at an aspect ratio within `cropRatio`, so the smallest crop's
    /// shorter side is sqrt(area * minScale * min(minRatio, 1 / maxRatio)); the decoded image is kept
    /// large enough that this side is still at least `size` (and each side of the image too, for the
    /// central fallback crop): no crop is upsampled that the full image would have shrunk.
    /// 224 px views with scale 0.2 and ratio 3/4-4/3 need 224^2 / 0.15 = 334,507 pixels: 1/2 of a
    /// 3-4 MP photo. Without random crops the whole image is resized: `resize(size)`.
    public static func views(_ config: AugmentConfig) -> DecodeTarget {
        guard config.randomCrop else { return resize(config.size) }
        let narrowest = Double(min(config.cropRatio.lowerBound, 1 / config.cropRatio.upperBound))
        let fraction = Double(config.cropScale.lowerBound) * min(1, narrowest)
        guard fraction > 0 else { return full }
        let s = Double(config.size)
        return DecodeTarget(minSide: config.size, minArea: Int((s * s / fraction).rounded(.up)))
    }

    public var description: String {
        maxReduction == 1
            ? "full size" : "sides >= \(minSide) px, area >= \(minArea) px, reduction <= 1/\(maxReduction)"
    }
}

/// The colour space a JPEG's data is in (libjpeg's J_COLOR_SPACE).
public enum JPEGColorSpace: Int, Sendable {
    case unknown = 0, gray = 1, rgb = 2, ycbcr = 3, cmyk = 4, ycck = 5
}

/// What a JPEG's header says.
public struct JPEGInfo: Equatable, Sendable {
    /// Size as the image is shown: the EXIF orientation applied (5-8 swap width and height).
    public var width: Int, height: Int
    /// Channels of the decoded image: 1 for gray JPEGs, 3 for every other colour space.
    public var channels: Int
    public var colorSpace: JPEGColorSpace
    public var progressive: Bool
    public var arithmetic: Bool
    /// EXIF orientation, 1-8 (1 when absent).
    public var orientation: Int
}

/// 8-bit HWC pixels: how datasets hold and stream images.
struct Pixels8 {
    var width: Int, height: Int, channels: Int
    var bytes: [UInt8]
}

/// The JPEG start-of-image marker and the first byte of the next marker.
func hasJPEGSignature(_ b: [UInt8]) -> Bool { b.count >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF }

func hasPNGSignature(_ b: [UInt8]) -> Bool { b.count >= 8 && Array(b[0..<8]) == [137, 80, 78, 71, 13, 10, 26, 10] }

/// Reads a JPEG's header (size, colour space, progressive, EXIF orientation) without decoding it.
public func jpegInfo(_ bytes: [UInt8], name: String = "") throws -> JPEGInfo {
    var info = sal_jpeg_info_t()
    var err = [CChar](repeating: 0, count: 256)
    let code = bytes.withUnsafeBufferPointer { b in sal_jpeg_info(b.baseAddress, b.count, &info, &err, err.count) }
    if code != 0 { throw DataError(dataErrorKind(code), path: name, cMessage(err)) }
    let swap = info.orientation >= 5
    return JPEGInfo(
        width: Int(swap ? info.height : info.width), height: Int(swap ? info.width : info.height),
        channels: info.components == 1 ? 1 : 3, colorSpace: JPEGColorSpace(rawValue: Int(info.color_space)) ?? .unknown,
        progressive: info.progressive != 0, arithmetic: info.arithmetic != 0, orientation: Int(info.orientation))
}

/// Decodes a JPEG to 8 bits: the pixels, the DCT reduction used (1, 2, 4, 8) and libjpeg's first
/// warning that left the pixels as encoded (nil when none).
func decodeJPEG8(_ bytes: [UInt8], target: DecodeTarget, maxPixels: Int, name: String) throws
    -> (pixels: Pixels8, reduction: Int, warning: String?)
{
    var w: UInt32 = 0, h: UInt32 = 0
    var c: Int32 = 0, denom: Int32 = 1
    var out: UnsafeMutablePointer<UInt8>? = nil
    var err = [CChar](repeating: 0, count: 256), warn = [CChar](repeating: 0, count: 256)
    let code = bytes.withUnsafeBufferPointer { b in
        sal_jpeg_decode(
            b.baseAddress, b.count, UInt32(clamping: target.minSide), UInt64(target.minArea),
            Int32(target.maxReduction), UInt64(max(1, maxPixels)), &out, &w, &h, &c, &denom,
            &warn, warn.count, &err, err.count)
    }
    if code != 0 { throw DataError(dataErrorKind(code), path: name, cMessage(err)) }
    guard let out else { throw DataError(.corrupt, path: name, "decoder returned no pixels") }
    defer { sal_free(out) }
    let n = Int(w) * Int(h) * Int(c)
    let warning = cMessage(warn)
    return (
        Pixels8(
            width: Int(w), height: Int(h), channels: Int(c), bytes: Array(UnsafeBufferPointer(start: out, count: n))),
        Int(denom), warning.isEmpty ? nil : warning
    )
}

/// Decodes a JPEG held in memory through libjpeg-turbo: baseline, progressive and arithmetic-coded,
/// gray (1 channel), YCbCr and RGB (3), CMYK and YCCK (converted to RGB as PIL's convert("RGB") does),
/// 8-bit samples only. The EXIF orientation is applied (as PIL's `ImageOps.exif_transpose`). Values are
/// sample / 255. With a `target` smaller than the image, libjpeg's DCT scaling decodes it at 1/2, 1/4
/// or 1/8 size (`DecodeTarget`). A truncated or corrupt file, or a header above `maxPixels` (checked
/// before allocating), throws a `DataError` with `name` as the path; so do the libjpeg warnings that
/// mean pixels were made up. Warnings that leave the pixels as encoded (extra bytes between markers)
/// are ignored here; datasets report them (`ImageDataset.warnings`).
public func decodeJPEG(
    _ bytes: [UInt8], target: DecodeTarget = .full, maxPixels: Int = defaultMaxPixels,
    name: String = ""
) throws -> Image {
    let d = try decodeJPEG8(bytes, target: target, maxPixels: maxPixels, name: name)
    return d.pixels.floatImage(channels: d.pixels.channels)
}

/// Reads and decodes a JPEG file; errors name `path`.
public func readJPEG(path: String, target: DecodeTarget = .full, maxPixels: Int = defaultMaxPixels) throws -> Image {
    try decodeJPEG(try readFileBytes(path), target: target, maxPixels: maxPixels, name: path)
}

/// Decodes a PNG or a JPEG (told apart by their signatures) to 8 bits, with the JPEG's harmless
/// warning. PNGs are decoded whole and quantised to 8 bits (16-bit samples rounded).
func decodeImage8(_ bytes: [UInt8], target: DecodeTarget, maxPixels: Int, name: String) throws
    -> (pixels: Pixels8, warning: String?)
{
    if hasJPEGSignature(bytes) {
        let d = try decodeJPEG8(bytes, target: target, maxPixels: maxPixels, name: name)
        return (d.pixels, d.warning)
    }
    if !hasPNGSignature(bytes) {
        let lower = name.lowercased()
        if lower.hasSuffix(".jpg") || lower.hasSuffix(".jpeg") {
            throw DataError(.notJPEG, path: name, "not a JPEG file (no start-of-image marker)")
        }
    }
    let img = try decodePNG(bytes, channels: nil, maxPixels: maxPixels, name: name)
    return (
        Pixels8(width: img.width, height: img.height, channels: img.channels, bytes: img.pixels.map(quantize8)), nil
    )
}

/// Reads and decodes a PNG or JPEG file (by content) to Float32 values in [0, 1]: `decodePNG` or
/// `decodeJPEG` with `target`, both quantised to 8 bits as datasets hold them.
public func readImage(path: String, target: DecodeTarget = .full, maxPixels: Int = defaultMaxPixels) throws -> Image {
    let d = try decodeImage8(try readFileBytes(path), target: target, maxPixels: maxPixels, name: path)
    return d.pixels.floatImage(channels: d.pixels.channels)
}

extension Pixels8 {
    /// Float32 values v / 255 with `channels` channels (8-bit conversion first when they differ).
    func floatImage(channels to: Int) -> Image {
        let src = channels == to ? bytes : convertChannels8(bytes, pixels: width * height, from: channels, to: to)
        let pixels = [Float](unsafeUninitializedCapacity: src.count) { buf, n in
            src.withUnsafeBufferPointer { s in
                for i in 0..<s.count { buf[i] = Float(s[i]) / 255 }
            }
            n = src.count
        }
        return Image(width: width, height: height, channels: to, pixels: pixels)
    }
}

/// How `encodeJPEG` codes an image (libjpeg's defaults otherwise: baseline, Huffman, 4:2:0).
public struct JPEGEncoding: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let progressive = JPEGEncoding(rawValue: Int32(SAL_JPEG_PROGRESSIVE))
    public static let arithmetic = JPEGEncoding(rawValue: Int32(SAL_JPEG_ARITHMETIC))
    /// 4-channel input stored as YCCK instead of CMYK.
    public static let ycck = JPEGEncoding(rawValue: Int32(SAL_JPEG_YCCK))
    /// A restart marker after every MCU row.
    public static let restartMarkers = JPEGEncoding(rawValue: Int32(SAL_JPEG_RESTART))
    /// No chroma subsampling (4:4:4).
    public static let fullChroma = JPEGEncoding(rawValue: Int32(SAL_JPEG_444))
}

/// Encodes 8-bit HWC gray (1), RGB (3) or Adobe-inverted CMYK (4) pixels as JPEG bytes at `quality`;
/// an `orientation` 2-8 is written as an EXIF APP1 marker. For tests and the fuzzer's seeds.
public func encodeJPEG(
    width: Int, height: Int, channels: Int, pixels: [UInt8], quality: Int = 90,
    encoding: JPEGEncoding = [], orientation: Int = 1
) throws -> [UInt8] {
    try encodeImage("encodeJPEG", width: width, height: height, channels: channels, pixels: pixels) {
        p, out, size, err in
        sal_jpeg_encode(
            p, UInt32(width), UInt32(height), Int32(channels), Int32(quality), encoding.rawValue,
            Int32(orientation), &out, &size, err, 256)
    }
}
