import XCTest
import Kernels
import Contrastive
import TestSupport

final class SaliencyTests: XCTestCase {
    func flags(_ map: [Float], fgStd: Float = 0.6) -> (flags: [UInt8], count: Int) {
        var f = [UInt8](repeating: 9, count: map.count)
        let n = map.withUnsafeBufferPointer { m in
            f.withUnsafeMutableBufferPointer {
                foregroundCells(m.baseAddress!, cells: map.count, fgStd: fgStd, flags: $0.baseAddress!)
            }
        }
        return (f, n)
    }

    /// The official code's bug, for contrast: the threshold tested against a row-sorted copy at each position.
    func rowSortedFlags(_ map: [Float], side: Int) -> [UInt8] {
        let mean = map.reduce(0, +) / Float(map.count)
        let std = (map.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(map.count)).squareRoot()
        var sorted = [Float]()
        for i in 0..<side { sorted += map[(i * side)..<((i + 1) * side)].sorted() }
        return sorted.map { $0 >= mean - 0.6 * std ? 1 : 0 }
    }

    func testForegroundLShapePositions() {
        // High values in an L: the left column and the bottom row up to column 2.
        let L: Set<Int> = [0, 4, 8, 12, 13, 14]
        var map = [Float](repeating: 0, count: 16)
        for i in L { map[i] = 10 }
        let (f, n) = flags(map)
        XCTAssertEqual(n, 6)
        XCTAssertEqual(f, (0..<16).map { L.contains($0) ? 1 : 0 })
        XCTAssertNotEqual(rowSortedFlags(map, side: 4), f, "a row-sorted test would misplace the L")
    }

    func testForegroundCornerCellsStayInPlace() {
        // Bottom-left hot, bottom-right cold in an otherwise warm bottom row; row-sorting swaps them.
        var map: [Float] = [
            1, 1, 1, 1,
            1, 1, 1, 1,
            1, 1, 1, 1,
            9, 8, 8, 0
        ]
        var (f, n) = flags(map)
        // mean 37/16 = 2.3125, std sqrt(221/16 - 2.3125^2) = 2.9094; threshold 2.3125 - 1.7457 = 0.5668.
        XCTAssertEqual(n, 15)
        XCTAssertEqual(f[15], 0, "bottom-right cold cell must be background")
        XCTAssertEqual(f[12], 1)
        XCTAssertEqual(rowSortedFlags(map, side: 4)[12], 0, "the row-sorted copy puts the cold cell at (3, 0)")
        // A single hot cell in the bottom-right corner of a 7x7 map whose rows decrease left to right.
        map = (0..<49).map { i in Float(6 - i % 7) * 0.1 }
        map[48] = 2  // mean 0.3408, std 0.3090, threshold 0.1554
        (f, n) = flags(map)
        let v = map.map(Double.init)
        let mean = v.reduce(0, +) / 49
        let std = (v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 49).squareRoot()
        XCTAssertEqual(f, v.map { $0 >= mean - 0.6 * std ? 1 : 0 })
        XCTAssertEqual(n, f.filter { $0 == 1 }.count)
        XCTAssertEqual(f[48], 1)
        XCTAssertEqual(f[42], 1)  // (6, 0) holds 0.6: above the threshold
        XCTAssertEqual(f[6], 0)  // (0, 6) holds 0.0: below
        XCTAssertNotEqual(rowSortedFlags(map, side: 7), f)
    }

    func testForegroundThresholdNumbers() {
        // 12 zeros and 4 ones: mean 0.25, std 0.4330; mean - k*std crosses 0 at k = 0.5774.
        let map: [Float] = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 0, 1]
        XCTAssertEqual(flags(map, fgStd: 0.6).count, 16)
        XCTAssertEqual(flags(map, fgStd: 0.57).count, 4)
        XCTAssertEqual(flags(map, fgStd: 0.57).flags, map.map { $0 > 0 ? 1 : 0 })
        XCTAssertEqual(flags([Float](repeating: 3, count: 16)).count, 16, "constant map is all foreground")
        var rng = TestRNG(seed: 11)
        for _ in 0..<50 {
            let m = rng.array(49, -2, 5)
            let v = m.map(Double.init)
            let mean = v.reduce(0, +) / 49
            let std = (v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 49).squareRoot()
            let expect: [UInt8] = v.map { $0 >= mean - 0.6 * std ? 1 : 0 }
            let (f, n) = flags(m)
            XCTAssertEqual(f, expect)
            XCTAssertEqual(n, expect.filter { $0 == 1 }.count)
        }
    }

    func saliency(_ map: [Float], b: Int, h: Int, w: Int, d: Int, g: Int) -> [Float] {
        var out = [Float](repeating: .nan, count: b * g * g)
        map.withUnsafeBufferPointer { m in
            out.withUnsafeMutableBufferPointer {
                saliencyFromFeatures(
                    m.baseAddress!, batch: b, height: h, width: w, channels: d, grid: g, output: $0.baseAddress!)
            }
        }
        return out
    }

    func testSaliencyFromFeaturesChannelSums() {
        // map[b][y][x][d] = (b+1) * (4y + x) + 0.5 d, D = 3: sum = 3 (b+1)(4y + x) + 1.5.
        var map = [Float]()
        for b in 0..<2 { for p in 0..<16 { for d in 0..<3 { map.append(Float((b + 1) * p) + 0.5 * Float(d)) } } }
        let s = saliency(map, b: 2, h: 4, w: 4, d: 3, g: 4)
        for b in 0..<2 { for p in 0..<16 { XCTAssertEqual(s[b * 16 + p], Float(3 * (b + 1) * p) + 1.5) } }
    }

    func testSaliencyFromFeaturesPooling() {
        // 8x8 -> 4x4: each cell the mean of a 2x2 block of channel sums. D = 10 (SIMD body + tail).
        var map = [Float](repeating: 0, count: 8 * 8 * 10)
        for y in 0..<8 {
            for x in 0..<8 { for d in 0..<10 { map[(y * 8 + x) * 10 + d] = Float(y * 8 + x) * (d == 9 ? 2 : 0.1) } }
        }
        // channel sum = (8y + x) * (0.9 + 2) = 2.9 (8y + x); the block mean of 8y + x is 8(2i) + 2j + 4.5.
        let s = saliency(map, b: 1, h: 8, w: 8, d: 10, g: 4)
        for i in 0..<4 {
            for j in 0..<4 {
                XCTAssertEqual(s[i * 4 + j], 2.9 * (Float(16 * i + 2 * j) + 4.5), accuracy: 1e-3)
            }
        }
        // 7x7 -> 3x3: bands [0,2), [2,4), [4,7) (floor(i*7/3)); compare with a direct sum.
        var rng = TestRNG(seed: 3)
        let m = rng.array(2 * 7 * 7 * 5)
        let s2 = saliency(m, b: 2, h: 7, w: 7, d: 5, g: 3)
        let bands = [0..<2, 2..<4, 4..<7]
        for b in 0..<2 {
            for i in 0..<3 {
                for j in 0..<3 {
                    var acc: Float = 0
                    for y in bands[i] {
                        for x in bands[j] { for d in 0..<5 { acc += m[((b * 7 + y) * 7 + x) * 5 + d] } }
                    }
                    XCTAssertEqual(s2[b * 9 + i * 3 + j], acc / Float(bands[i].count * bands[j].count), accuracy: 1e-5)
                }
            }
        }
        XCTAssertEqual((0..<4).map { gridBand($0, size: 30, grid: 4) }, [0..<7, 7..<15, 15..<22, 22..<30])
        XCTAssertEqual((0..<4).map { gridBand($0, size: 2, grid: 4) }, [0..<1, 0..<1, 1..<2, 1..<2])
    }

    func testClassicalSaliencyFindsBrightSquare() {
        // Flat background with faint noise. Image 0: a bright 8x8 square exactly on cell (1, 2) of a 4x4 grid.
        // Image 1: a 12x12 square at rows 16..<28, cols 0..<12: all of cell (2, 0), half of (2, 1) and (3, 0),
        // a quarter of (3, 1).
        let h = 32, w = 32, c = 3
        var rng = TestRNG(seed: 5)
        var imgs = [Float](repeating: 0, count: 2 * h * w * c)
        for i in 0..<imgs.count { imgs[i] = -0.5 + rng.uniform(-0.05, 0.05) }
        for y in 8..<16 { for x in 16..<24 { for ch in 0..<c { imgs[(y * w + x) * c + ch] = 1.5 } } }
        for y in 16..<28 {
            for x in 0..<12 { for ch in 0..<c { imgs[((h + y) * w + x) * c + ch] = 1.2 + 0.1 * Float(ch) } }
        }
        var out = [Float](repeating: 0, count: 32)
        imgs.withUnsafeBufferPointer { p in
            out.withUnsafeMutableBufferPointer {
                classicalSaliency(
                    p.baseAddress!, batch: 2, height: h, width: w, channels: c, grid: 4, output: $0.baseAddress!)
            }
        }
        let obj = out[1 * 4 + 2]
        for i in 0..<16 where i != 6 { XCTAssertGreaterThan(obj, 5 * out[i], "cell \(i)") }
        // (One outlier among 16 cells makes every cell foreground under mean - 0.6 std; at the mean, only it is.)
        XCTAssertEqual(flags(Array(out[0..<16]), fgStd: 0.6).flags[6], 1)
        XCTAssertEqual(flags(Array(out[0..<16]), fgStd: 0).flags, (0..<16).map { $0 == 6 ? 1 : 0 })
        let s = Array(out[16..<32])
        let objCells = [8, 9, 12, 13]
        let objMean = objCells.map { s[$0] }.reduce(0, +) / 4
        let rest = (0..<16).filter { !objCells.contains($0) }.map { s[$0] }
        XCTAssertGreaterThan(objMean, 3 * rest.max()!)
        XCTAssertEqual(s.firstIndex(of: s.max()!), 8, "the fully covered cell is the most salient")
        XCTAssertGreaterThan(s[9], s[13])
        XCTAssertGreaterThan(s[12], s[13])
    }
}
