import XCTest
import Kernels
import TestSupport

final class ElementwiseTests: XCTestCase {
    /// Counts with vector tails, and one large enough to be split over threads.
    static let counts = [1, 3, 7, 8, 13, 33, 100_003]

    func testReluMatchesNaive() {
        forEachThreadCount { threads in
            for n in Self.counts {
                var rng = TestRNG(seed: UInt64(n))
                let x = rng.array(n), dy = rng.array(n), base = rng.array(n)
                var y = [Float](repeating: .nan, count: n), yn = y
                reluForward(count: n, input: x, output: &y)
                reluForwardNaive(count: n, input: x, output: &yn)
                XCTAssertEqual(y, yn, "forward \(n) threads \(threads)")
                XCTAssertEqual(y.filter { $0 > 0 }.count, x.filter { $0 > 0 }.count)
                for acc in [false, true] {
                    var dx = acc ? base : [Float](repeating: .nan, count: n), dxn = dx
                    reluBackward(count: n, output: y, gradOutput: dy, gradInput: &dx, accumulate: acc)
                    reluBackwardNaive(count: n, output: y, gradOutput: dy, gradInput: &dxn, accumulate: acc)
                    XCTAssertEqual(dx, dxn, "backward \(n) accumulate \(acc) threads \(threads)")
                }
            }
        }
    }

    func testReluInPlace() {
        var rng = TestRNG(seed: 5)
        let x = rng.array(21)
        var y = x
        y.withUnsafeMutableBufferPointer { reluForward(count: 21, input: $0.baseAddress!, output: $0.baseAddress!) }
        XCTAssertEqual(y, x.map { max($0, 0) })
    }

    func testReluGradientMatchesFiniteDifferences() {
        // Inputs kept away from the kink at 0 by more than the finite-difference step.
        var x = distinctValues(37, gap: 0.05, seed: 9).map { $0 >= 0 ? $0 + 0.02 : $0 - 0.02 }
        var rng = TestRNG(seed: 11)
        let g = rng.array(37)
        var y = [Float](repeating: 0, count: 37), dx = y
        reluForward(count: 37, input: x, output: &y)
        reluBackward(count: 37, output: y, gradOutput: g, gradInput: &dx, accumulate: false)
        let idx = Array(0..<37)
        let num = numericGradient(&x, indices: idx) { x in
            var y = [Float](repeating: 0, count: 37)
            reluForward(count: 37, input: x, output: &y)
            return weightedSum(y, g)
        }
        XCTAssertLessThan(gradientError(analytic: dx.map { Double($0) }, numeric: num), 1e-3)
    }

    func testAddMatchesNaiveAndAliases() {
        forEachThreadCount { threads in
            for n in Self.counts {
                var rng = TestRNG(seed: UInt64(100 + n))
                let a = rng.array(n), b = rng.array(n)
                for relu in [false, true] {
                    var y = [Float](repeating: .nan, count: n), yn = y
                    addForward(count: n, a, b, relu: relu, output: &y)
                    addForwardNaive(count: n, a, b, relu: relu, output: &yn)
                    XCTAssertEqual(y, yn, "add \(n) relu \(relu) threads \(threads)")
                    // y aliasing a (the residual add writes into the block's output).
                    var inPlace = a
                    inPlace.withUnsafeMutableBufferPointer { p in
                        addForward(count: n, p.baseAddress!, b, relu: relu, output: p.baseAddress!)
                    }
                    XCTAssertEqual(inPlace, yn, "in place \(n) relu \(relu)")
                }
            }
        }
    }

    func testScaleAddMatchesNaive() {
        forEachThreadCount { threads in
            for n in Self.counts {
                var rng = TestRNG(seed: UInt64(200 + n))
                let x = rng.array(n), y0 = rng.array(n)
                var y = y0, yn = y0
                scaleAdd(count: n, alpha: -0.37, x: x, y: &y)
                scaleAddNaive(count: n, alpha: -0.37, x: x, y: &yn)
                XCTAssertLessThanOrEqual(
                    toleranceRatio(y, yn, atol: 1e-6, rtol: 1e-6), 1, "axpy \(n) threads \(threads)")
                XCTAssertEqual(y[n - 1], y0[n - 1] - 0.37 * x[n - 1], accuracy: 1e-6)
            }
        }
    }
}
