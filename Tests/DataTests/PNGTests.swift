import XCTest
import Kernels
import Data
import TestSupport

/// The fixtures' sample formula (fixtures/make_data_fixtures.py).
func fixtureSample(_ x: Int, _ y: Int, _ c: Int, _ depth: Int) -> Int {
    (x * 9973 + y * 7919 + c * 4099 + 1234) % (1 << depth)
}

final class PNGTests: XCTestCase {
    let dir = fixturesPath() + "/png/types/"

    /// Expected native-channel values of a fixture (alpha dropped, palette looked up).
    func expected(kind: String, depth: Int, width: Int, height: Int) -> (Int, [Float]) {
        var out = [Float]()
        let maxv = Float((1 << depth) - 1)
        for y in 0..<height {
            for x in 0..<width {
                switch kind {
                case "gray", "grayalpha":
                    out.append(Float(fixtureSample(x, y, 0, depth)) / maxv)
                case "rgb", "rgba":
                    for c in 0..<3 { out.append(Float(fixtureSample(x, y, c, depth)) / maxv) }
                default:  // palette
                    let i = fixtureSample(x, y, 0, depth)
                    out += [Float(i * 17 % 256) / 255, Float(i * 67 % 256) / 255, Float(i * 131 % 256) / 255]
                }
            }
        }
        return (kind.hasPrefix("gray") ? 1 : 3, out)
    }

    func testEveryColourTypeAndBitDepth() throws {
        let cases: [(String, [Int])] = [
            ("gray", [1, 2, 4, 8, 16]), ("rgb", [8, 16]), ("palette", [1, 2, 4, 8]),
            ("grayalpha", [8, 16]), ("rgba", [8, 16])
        ]
        var checked = 0
        for (kind, depths) in cases {
            for d in depths {
                let img = try readPNG(path: dir + "\(kind)\(d).png")
                let (c, want) = expected(kind: kind, depth: d, width: 5, height: 4)
                XCTAssertEqual(img.width, 5, "\(kind)\(d)")
                XCTAssertEqual(img.height, 4, "\(kind)\(d)")
                XCTAssertEqual(img.channels, c, "\(kind)\(d)")
                XCTAssertLessThanOrEqual(maxAbsDiff(img.pixels, want).diff, 1e-6, "\(kind)\(d)")
                checked += 1
            }
        }
        XCTAssertEqual(checked, 15)
    }

    func testInterlaced() throws {
        let rgb = try readPNG(path: dir + "rgb8_interlaced.png")
        XCTAssertEqual(maxAbsDiff(rgb.pixels, expected(kind: "rgb", depth: 8, width: 9, height: 9).1).diff, 0)
        let g16 = try readPNG(path: dir + "gray16_interlaced.png")
        XCTAssertLessThan(maxAbsDiff(g16.pixels, expected(kind: "gray", depth: 16, width: 9, height: 9).1).diff, 1e-6)
    }

    /// A palette with a tRNS chunk: libpng's palette expansion adds alpha from it, which is dropped
    /// like any other alpha (PIL's convert("RGB") gives the palette colours).
    func testPaletteWithTransparency() throws {
        let img = try readPNG(path: dir + "palette8_trns.png")
        XCTAssertEqual(img.channels, 3)
        XCTAssertEqual(maxAbsDiff(img.pixels, expected(kind: "palette", depth: 8, width: 5, height: 4).1).diff, 0)
        XCTAssertEqual(try readPNG(path: dir + "palette8_trns.png", channels: 1).channels, 1)
    }

    func testChannelConversion() throws {
        let gray = try readPNG(path: dir + "gray8.png", channels: 3)
        XCTAssertEqual(gray.channels, 3)
        let g = expected(kind: "gray", depth: 8, width: 5, height: 4).1
        for i in 0..<20 { for c in 0..<3 { XCTAssertEqual(gray.pixels[3 * i + c], g[i]) } }
        let luma = try readPNG(path: dir + "rgba16.png", channels: 1)
        let rgb = expected(kind: "rgb", depth: 16, width: 5, height: 4).1
        for i in 0..<20 {
            XCTAssertEqual(
                luma.pixels[i], 0.299 * rgb[3 * i] + 0.587 * rgb[3 * i + 1] + 0.114 * rgb[3 * i + 2], accuracy: 1e-6)
        }
        XCTAssertEqual(try readPNG(path: dir + "palette4.png", channels: 1).channels, 1)
    }

    func testWriteReadRoundTrip() throws {
        let tmp = NSTemporaryDirectory() + "salient-png-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        for c in [1, 3, 4] {
            let px = (0..<(6 * 5 * c)).map { UInt8(truncatingIfNeeded: $0 * 7 + c) }
            let path = tmp + "/rt\(c).png"
            try writePNG(path: path, width: 6, height: 5, channels: c, pixels: px)
            let img = try readPNG(path: path)
            XCTAssertEqual(img.width, 6)
            XCTAssertEqual(img.height, 5)
            let keep = c == 4 ? 3 : c
            XCTAssertEqual(img.channels, keep)
            for i in 0..<30 {
                for ch in 0..<keep { XCTAssertEqual(img.pixels[i * keep + ch], Float(px[i * c + ch]) / 255) }
            }
        }
        XCTAssertThrowsError(
            try writePNG(path: tmp + "/no/such/dir/x.png", width: 1, height: 1, channels: 1, pixels: [0])
        ) {
            XCTAssertTrue("\($0)".contains("no/such/dir/x.png"), "\($0)")
        }
        XCTAssertThrowsError(try writePNG(path: tmp + "/bad.png", width: 2, height: 2, channels: 3, pixels: [0]))
    }

    func expectError(_ name: String, _ kind: DataError.Kind, file: StaticString = #filePath, line: UInt = #line) {
        let path = fixturesPath() + "/png/bad/" + name
        XCTAssertThrowsError(try readPNG(path: path), file: file, line: line) { e in
            guard let d = e as? DataError else { return XCTFail("not a DataError: \(e)", file: file, line: line) }
            XCTAssertEqual(d.kind, kind, "\(d)", file: file, line: line)
            XCTAssertTrue(d.description.contains(name), "error does not name the file: \(d)", file: file, line: line)
        }
    }

    func testBadPNGsGiveErrorsNamingTheFile() {
        expectError("not_png.png", .notPNG)
        expectError("truncated.png", .truncated)
        expectError("corrupt_crc.png", .corrupt)
        expectError("corrupt_zlib.png", .corrupt)
        expectError("huge_header.png", .tooLarge)
        expectError("missing.png", .notFound)
        XCTAssertThrowsError(try decodePNG([], name: "empty")) { XCTAssertEqual(($0 as? DataError)?.kind, .notPNG) }
        XCTAssertThrowsError(try decodePNG([137, 80, 78, 71], name: "short")) {
            XCTAssertEqual(($0 as? DataError)?.kind, .truncated)
        }
    }

    func testMaxPixelsCheckedBeforeDecoding() throws {
        let bytes = try readFileBytes(dir + "rgb8.png")
        XCTAssertNoThrow(try decodePNG(bytes, maxPixels: 20))
        XCTAssertThrowsError(try decodePNG(bytes, maxPixels: 19, name: "x.png")) { e in
            XCTAssertEqual((e as? DataError)?.kind, .tooLarge)
            XCTAssertTrue("\(e)".contains("5x4"), "\(e)")
        }
        let info = try pngInfo(try readFileBytes(fixturesPath() + "/png/bad/huge_header.png"))
        XCTAssertEqual(info.width, 200000)
        XCTAssertEqual(info.height, 300000)
    }
}
