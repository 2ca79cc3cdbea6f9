import Kernels
import CImage
import Foundation

/// What a fuzz run saw. `invalid` counts inputs a parser accepted but returned inconsistent data
/// for (wrong pixel count, values outside [0, 1] or not finite); it must be 0.
public struct FuzzReport: Sendable, CustomStringConvertible {
    public var iterations = 0
    public var accepted = 0
    public var rejected = 0
    public var invalid = 0
    public var seconds = 0.0
    public var rejectedByKind: [String: Int] = [:]
    /// Inputs and accepted inputs per parser ("png", "jpeg", "idx").
    public var inputsByParser: [String: Int] = [:]
    public var acceptedByParser: [String: Int] = [:]
    public var description: String {
        let kinds = rejectedByKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        let parsers = inputsByParser.sorted { $0.key < $1.key }
            .map { "\($0.key) \(acceptedByParser[$0.key, default: 0])/\($0.value)" }.joined(separator: ", ")
        return "fuzz: \(iterations) inputs in \(String(format: "%.2f", seconds)) s: \(accepted) accepted, "
            + "\(rejected) rejected (\(kinds)), \(invalid) invalid; accepted/inputs by parser: \(parsers)"
    }
}

/// Recomputes the CRC of every chunk of a (mutated) PNG so that mutations reach libpng's chunk and
/// zlib parsers instead of stopping at the CRC check.
func fixPNGCRCs(_ b: inout [UInt8]) {
    var p = 8
    while p + 12 <= b.count {
        let len = Int(b[p]) << 24 | Int(b[p + 1]) << 16 | Int(b[p + 2]) << 8 | Int(b[p + 3])
        guard len >= 0, p + 12 + len <= b.count else { return }
        let crc = b.withUnsafeBufferPointer { sal_crc32($0.baseAddress! + p + 4, 4 + len) }
        let o = p + 8 + len
        b[o] = UInt8(crc >> 24 & 255); b[o + 1] = UInt8(crc >> 16 & 255)
        b[o + 2] = UInt8(crc >> 8 & 255); b[o + 3] = UInt8(crc & 255)
        p += 12 + len
    }
}

func mutate(_ input: [UInt8], rng: inout SplitMix64) -> [UInt8] {
    var b = input
    let rounds = 1 + rng.int(below: 4)
    for _ in 0..<rounds {
        if b.isEmpty { b = [UInt8(truncatingIfNeeded: rng.next())]; continue }
        switch rng.int(below: 8) {
        case 0: let i = rng.int(below: b.count); b[i] ^= UInt8(1 << rng.int(below: 8))  // bit flip
        case 1: let i = rng.int(below: b.count); b[i] = UInt8(truncatingIfNeeded: rng.next())  // random byte
        case 2: b = Array(b.prefix(rng.int(below: b.count)))  // truncate
        case 3:
            let i = rng.int(below: b.count)  // insert
            b.insert(
                contentsOf: (0..<(1 + rng.int(below: 8))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: i)
        case 4:
            let i = rng.int(below: b.count), n = min(b.count - i, 1 + rng.int(below: 16))  // delete
            b.removeSubrange(i..<(i + n))
        case 5:
            let i = rng.int(below: b.count), n = min(b.count - i, 1 + rng.int(below: 32))  // duplicate
            b.insert(contentsOf: Array(b[i..<(i + n)]), at: rng.int(below: b.count))
        case 6:
            let i = rng.int(below: b.count)  // interesting values
            let v: [UInt8] = [
                [0, 0, 0, 0], [0xFF, 0xFF, 0xFF, 0xFF], [0x7F, 0xFF, 0xFF, 0xFF], [0, 0, 1, 0],
                [0x80, 0, 0, 0]
            ][rng.int(below: 5)]
            for k in 0..<4 where i + k < b.count { b[i + k] = v[k] }
        default: let i = rng.int(below: b.count); b[i] = [0, 1, 0x7F, 0x80, 0xFF][rng.int(below: 5)]
        }
    }
    return b
}

enum FuzzParser: String { case png, jpeg, idx }

/// JPEG seeds: one small image in each coding and colour type the decoder handles, two with an
/// EXIF orientation (so the marker parser is reached).
func jpegFuzzSeeds() -> [[UInt8]] {
    let w = 13, h = 9
    let rgb = (0..<(w * h * 3)).map { UInt8(truncatingIfNeeded: ($0 * 37) ^ ($0 / 3 * 11)) }
    let gray = (0..<(w * h)).map { UInt8(truncatingIfNeeded: $0 * 29) }
    let cmyk = (0..<(w * h * 4)).map { UInt8(truncatingIfNeeded: $0 * 53 + 7) }
    let variants: [(Int, [UInt8], JPEGEncoding, Int)] = [
        (3, rgb, [], 1), (3, rgb, .progressive, 1), (3, rgb, .arithmetic, 1), (3, rgb, [.progressive, .arithmetic], 1),
        (3, rgb, .restartMarkers, 1), (3, rgb, .fullChroma, 6), (1, gray, [], 1), (1, gray, .progressive, 3),
        (4, cmyk, [], 1), (4, cmyk, .ycck, 1)
    ]
    return variants.compactMap { c, px, enc, o in
        try? encodeJPEG(width: w, height: h, channels: c, pixels: px, quality: 75, encoding: enc, orientation: o)
    }
}

/// A seeded mutation loop over the PNG, JPEG, gzip and IDX parsers: each input is a valid seed
/// (generated PNGs and JPEGs of every coding, IDX images and labels, a gzipped IDX, plus
/// `extraSeeds`) with 1-4 mutations (bit flips, random and boundary bytes, truncation, insertion,
/// deletion, duplication); half of the PNG mutants get their chunk CRCs repaired so the deeper
/// parsers are reached, and one input in 8 goes to another format's parser. Each must give a
/// `DataError` or a consistent result; JPEGs are decoded at a random DCT reduction. Sizes are
/// bounded (`maxPixels` 2^20, inflate 2^24 bytes).
public func fuzzParsers(iterations: Int, seed: UInt64, extraSeeds: [[UInt8]] = []) -> FuzzReport {
    var rng = SplitMix64(seed: SplitMix64.derive(seed, RandomStream.fuzz.rawValue))
    var seeds: [(bytes: [UInt8], parser: FuzzParser)] = []
    let rgb = (0..<(7 * 5 * 3)).map { UInt8(truncatingIfNeeded: $0 &* 37) }
    if let p = try? encodePNG(width: 7, height: 5, channels: 3, pixels: rgb) { seeds.append((p, .png)) }
    if let p = try? encodePNG(width: 3, height: 9, channels: 1, pixels: Array(rgb.prefix(27))) {
        seeds.append((p, .png))
    }
    let idx = makeIDX(dims: [3, 4, 5], data: Array(rgb.prefix(60)))
    seeds.append((idx, .idx))
    seeds.append((makeIDX(dims: [6], data: [1, 2, 3, 4, 5, 6]), .idx))
    if let g = try? gzip(idx) { seeds.append((g, .idx)) }
    for j in jpegFuzzSeeds() { seeds.append((j, .jpeg)) }
    for e in extraSeeds {
        seeds.append((e, hasPNGSignature(e) ? .png : hasJPEGSignature(e) ? .jpeg : .idx))
    }

    var r = FuzzReport()
    let t0 = Date()
    for _ in 0..<iterations {
        let s = seeds[rng.int(below: seeds.count)]
        var input = mutate(s.bytes, rng: &rng)
        if s.parser == .png && rng.int(below: 2) == 0 { fixPNGCRCs(&input) }
        let parser = rng.int(below: 8) == 0 ? [FuzzParser.png, .jpeg, .idx][rng.int(below: 3)] : s.parser
        r.iterations += 1
        r.inputsByParser[parser.rawValue, default: 0] += 1
        do {
            switch parser {
            case .png:
                let img = try decodePNG(
                    input, channels: [nil, 1, 3][rng.int(below: 3)], maxPixels: 1 << 20, name: "fuzz")
                let ok =
                    img.pixels.count == img.width * img.height * img.channels
                    && img.pixels.allSatisfy { $0 >= 0 && $0 <= 1 }
                if !ok { r.invalid += 1 }
            case .jpeg:
                let target = DecodeTarget(
                    minSide: rng.int(below: 12), minArea: rng.int(below: 100),
                    maxReduction: [1, 2, 4, 8][rng.int(below: 4)])
                let d = try decodeJPEG8(input, target: target, maxPixels: 1 << 20, name: "fuzz")
                let p = d.pixels
                let ok =
                    p.width > 0 && p.height > 0 && (p.channels == 1 || p.channels == 3)
                    && p.bytes.count == p.width * p.height * p.channels && d.reduction <= target.maxReduction
                if !ok { r.invalid += 1 }
            case .idx:
                var bytes = input
                if bytes.count >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
                    bytes = try gunzip(bytes, maxOutput: 1 << 24, name: "fuzz")
                }
                if bytes.count >= 4 && bytes[3] == 1 {
                    let l = try parseIDXLabels(bytes, name: "fuzz")
                    if l.count != bytes.count - 8 { r.invalid += 1 }
                } else {
                    let im = try parseIDXImages(bytes, name: "fuzz")
                    if im.bytes.count != im.count * im.height * im.width * im.channels { r.invalid += 1 }
                }
            }
            r.accepted += 1
            r.acceptedByParser[parser.rawValue, default: 0] += 1
        } catch let e as DataError {
            r.rejected += 1
            r.rejectedByKind[e.kind.rawValue, default: 0] += 1
        } catch {
            r.invalid += 1
        }
    }
    r.seconds = Date().timeIntervalSince(t0)
    return r
}
