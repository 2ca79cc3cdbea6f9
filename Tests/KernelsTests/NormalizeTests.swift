import XCTest
import Kernels
import TestSupport

final class NormalizeTests: XCTestCase {
    static let shapes: [(rows: Int, dim: Int)] = [(1, 1), (3, 7), (5, 13), (2, 33), (9, 128), (700, 64)]

    func testMatchesNaive() {
        forEachThreadCount { threads in
            for (i, s) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(i + 1))
                var x = rng.array(s.rows * s.dim)
                // One all-zero row: the eps branch (y = 0, dx = dy / eps).
                if s.rows > 1 { for k in 0..<s.dim { x[s.dim + k] = 0 } }
                let dy = rng.array(x.count), base = rng.array(x.count)
                var y = [Float](repeating: .nan, count: x.count), yn = y
                var nrm = [Float](repeating: .nan, count: s.rows), nrmn = nrm
                l2NormalizeForward(rows: s.rows, dim: s.dim, input: x, output: &y, norms: &nrm)
                l2NormalizeForwardNaive(rows: s.rows, dim: s.dim, input: x, output: &yn, norms: &nrmn)
                XCTAssertLessThanOrEqual(toleranceRatio(y, yn, atol: 1e-6, rtol: 1e-5), 1, "y \(s) threads \(threads)")
                XCTAssertLessThanOrEqual(
                    toleranceRatio(nrm, nrmn, atol: 1e-7, rtol: 1e-5), 1, "norms \(s) threads \(threads)")
                for acc in [false, true] {
                    var dx = acc ? base : [Float](repeating: .nan, count: x.count), dxn = dx
                    l2NormalizeBackward(
                        rows: s.rows, dim: s.dim, output: y, norms: nrm, gradOutput: dy, gradInput: &dx, accumulate: acc
                    )
                    l2NormalizeBackwardNaive(
                        rows: s.rows, dim: s.dim, output: y, norms: nrm, gradOutput: dy, gradInput: &dxn,
                        accumulate: acc)
                    XCTAssertLessThanOrEqual(
                        toleranceRatio(dx, dxn, atol: 1e-5, rtol: 1e-4), 1, "dx \(s) acc \(acc) threads \(threads)")
                }
            }
        }
    }

    func testUnitNormsByHand() {
        let x: [Float] = [3, 4, 0, 0, 0, 0, -1, 0]
        var y = [Float](repeating: .nan, count: 8), n = [Float](repeating: .nan, count: 2)
        l2NormalizeForward(rows: 2, dim: 4, input: x, output: &y, norms: &n)
        XCTAssertEqual(n, [5, 1])
        XCTAssertLessThanOrEqual(toleranceRatio(y, [0.6, 0.8, 0, 0, 0, 0, -1, 0], atol: 1e-7, rtol: 1e-6), 1)
    }

    func testGradientMatchesFiniteDifferences() {
        let rows = 4, dim = 11
        var rng = TestRNG(seed: 6)
        var x = rng.array(rows * dim)
        let g = rng.array(rows * dim)
        var y = [Float](repeating: 0, count: x.count), n = [Float](repeating: 0, count: rows), dx = y
        l2NormalizeForward(rows: rows, dim: dim, input: x, output: &y, norms: &n)
        l2NormalizeBackward(rows: rows, dim: dim, output: y, norms: n, gradOutput: g, gradInput: &dx, accumulate: false)
        let idx = Array(0..<x.count)
        let num = numericGradient(&x, indices: idx) { x in
            var y = [Float](repeating: 0, count: x.count), n = [Float](repeating: 0, count: rows)
            l2NormalizeForward(rows: rows, dim: dim, input: x, output: &y, norms: &n)
            return weightedSum(y, g)
        }
        XCTAssertLessThan(gradientError(analytic: dx.map { Double($0) }, numeric: num), 1e-2)
    }
}
