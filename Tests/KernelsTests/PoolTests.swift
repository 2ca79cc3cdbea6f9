import XCTest
import Kernels
import TestSupport

final class PoolTests: XCTestCase {
    /// Odd sizes, H/W of 1, 3 and 7, channels not a multiple of 8, batch 1, stride 2 / pad 1 (the stem)
    /// and a few other windows.
    static let shapes: [MaxPoolShape] = [
        MaxPoolShape(n: 1, c: 3, h: 7, w: 7),
        MaxPoolShape(n: 2, c: 13, h: 3, w: 3),
        MaxPoolShape(n: 1, c: 1, h: 1, w: 1),
        MaxPoolShape(n: 2, c: 33, h: 8, w: 6),
        MaxPoolShape(n: 3, c: 16, h: 7, w: 5),
        MaxPoolShape(n: 1, c: 8, h: 6, w: 6, kernel: 2, stride: 2, pad: 0),
        MaxPoolShape(n: 2, c: 9, h: 4, w: 5, kernel: 3, stride: 1, pad: 1),
        MaxPoolShape(n: 1, c: 64, h: 9, w: 9)
    ]

    func testMaxPoolMatchesNaiveWithTies() {
        forEachThreadCount { threads in
            for (i, sh) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(i + 1))
                // Few distinct values: many ties, which must resolve to the first position like PyTorch.
                let x = rng.array(sh.inputCount).map { ($0 * 2).rounded() }
                let dy = rng.array(sh.outputCount)
                var y = [Float](repeating: .nan, count: sh.outputCount), yn = y
                var a = [Int32](repeating: -7, count: sh.outputCount), an = a
                maxPoolForward(sh, input: x, output: &y, argmax: &a)
                maxPoolForwardNaive(sh, input: x, output: &yn, argmax: &an)
                XCTAssertEqual(y, yn, "forward \(sh) threads \(threads)")
                XCTAssertEqual(a, an, "argmax \(sh) threads \(threads)")
                var dx = [Float](repeating: .nan, count: sh.inputCount), dxn = dx
                maxPoolBackward(sh, gradOutput: dy, argmax: a, gradInput: &dx)
                maxPoolBackwardNaive(sh, gradOutput: dy, argmax: an, gradInput: &dxn)
                XCTAssertLessThanOrEqual(
                    toleranceRatio(dx, dxn, atol: 1e-6, rtol: 1e-6), 1, "backward \(sh) threads \(threads)")
            }
        }
    }

    /// PyTorch semantics by hand: one 3x3 image, one channel, k3 s2 p1 -> 2x2 output.
    func testMaxPoolByHand() {
        let sh = MaxPoolShape(n: 1, c: 1, h: 3, w: 3)
        XCTAssertEqual(sh.oh, 2); XCTAssertEqual(sh.ow, 2)
        let x: [Float] = [
            1, 5, 5,
            -2, 0, 4,
            3, 3, -9
        ]
        var y = [Float](repeating: 0, count: 4), a = [Int32](repeating: 0, count: 4)
        maxPoolForward(sh, input: x, output: &y, argmax: &a)
        XCTAssertEqual(y, [5, 5, 3, 4])
        XCTAssertEqual(a, [1, 1, 6, 5])  // ties -> first in window order
        var dx = [Float](repeating: .nan, count: 9)
        maxPoolBackward(sh, gradOutput: [1, 2, 3, 4], argmax: a, gradInput: &dx)
        XCTAssertEqual(dx, [0, 3, 0, 0, 0, 4, 3, 0, 0])
    }

    func testMaxPoolGradientMatchesFiniteDifferences() {
        for sh in [
            MaxPoolShape(n: 2, c: 3, h: 5, w: 5), MaxPoolShape(n: 1, c: 9, h: 4, w: 3, kernel: 3, stride: 1, pad: 1)
        ] {
            var x = distinctValues(sh.inputCount, gap: 0.05, seed: 3)
            var rng = TestRNG(seed: 4)
            let g = rng.array(sh.outputCount)
            var y = [Float](repeating: 0, count: sh.outputCount), a = [Int32](repeating: 0, count: sh.outputCount)
            maxPoolForward(sh, input: x, output: &y, argmax: &a)
            var dx = [Float](repeating: 0, count: sh.inputCount)
            maxPoolBackward(sh, gradOutput: g, argmax: a, gradInput: &dx)
            let idx = sampleIndices(x.count)
            let num = numericGradient(&x, indices: idx) { x in
                var y = [Float](repeating: 0, count: sh.outputCount), a = [Int32](repeating: 0, count: sh.outputCount)
                maxPoolForward(sh, input: x, output: &y, argmax: &a)
                return weightedSum(y, g)
            }
            XCTAssertLessThan(gradientError(analytic: idx.map { Double(dx[$0]) }, numeric: num), 1e-3, "\(sh)")
        }
    }

    static let avgShapes: [(n: Int, hw: Int, c: Int)] = [(1, 1, 1), (2, 9, 3), (1, 49, 13), (3, 16, 33), (5, 7, 64)]

    func testGlobalAvgPoolMatchesNaive() {
        forEachThreadCount { threads in
            for (i, s) in Self.avgShapes.enumerated() {
                var rng = TestRNG(seed: UInt64(20 + i))
                let x = rng.array(s.n * s.hw * s.c, 9, 11), dy = rng.array(s.n * s.c),
                    base = rng.array(s.n * s.hw * s.c)
                var y = [Float](repeating: .nan, count: s.n * s.c), yn = y
                globalAvgPoolForward(n: s.n, pixels: s.hw, channels: s.c, input: x, output: &y)
                globalAvgPoolForwardNaive(n: s.n, pixels: s.hw, channels: s.c, input: x, output: &yn)
                XCTAssertLessThanOrEqual(
                    toleranceRatio(y, yn, atol: 1e-6, rtol: 1e-6), 1, "forward \(s) threads \(threads)")
                for acc in [false, true] {
                    var dx = acc ? base : [Float](repeating: .nan, count: base.count), dxn = dx
                    globalAvgPoolBackward(
                        n: s.n, pixels: s.hw, channels: s.c, gradOutput: dy, gradInput: &dx, accumulate: acc)
                    globalAvgPoolBackwardNaive(
                        n: s.n, pixels: s.hw, channels: s.c, gradOutput: dy, gradInput: &dxn, accumulate: acc)
                    XCTAssertLessThanOrEqual(
                        toleranceRatio(dx, dxn, atol: 1e-6, rtol: 1e-6), 1,
                        "backward \(s) acc \(acc) threads \(threads)")
                }
            }
        }
    }

    func testGlobalAvgPoolGradientMatchesFiniteDifferences() {
        let (n, hw, c) = (2, 9, 5)
        var rng = TestRNG(seed: 8)
        var x = rng.array(n * hw * c)
        let g = rng.array(n * c)
        var dx = [Float](repeating: 0, count: x.count)
        globalAvgPoolBackward(n: n, pixels: hw, channels: c, gradOutput: g, gradInput: &dx, accumulate: false)
        let idx = sampleIndices(x.count)
        let num = numericGradient(&x, indices: idx) { x in
            var y = [Float](repeating: 0, count: n * c)
            globalAvgPoolForward(n: n, pixels: hw, channels: c, input: x, output: &y)
            return weightedSum(y, g)
        }
        XCTAssertLessThan(gradientError(analytic: idx.map { Double(dx[$0]) }, numeric: num), 1e-3)
    }
}
