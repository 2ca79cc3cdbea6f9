import XCTest
import Kernels
import TestSupport

final class LinearTests: XCTestCase {
    /// Batch 1, features not multiples of 8, tiles and blocks with remainders, and shapes that cross the
    /// reduction blocks of both backward GEMMs (I = 8: 4096 outputs per block; I = 256: 128 rows per block).
    static let shapes: [LinearShape] = [
        LinearShape(batch: 1, inFeatures: 1, outFeatures: 1),
        LinearShape(batch: 1, inFeatures: 3, outFeatures: 5),
        LinearShape(batch: 3, inFeatures: 13, outFeatures: 7),
        LinearShape(batch: 5, inFeatures: 33, outFeatures: 17),
        LinearShape(batch: 7, inFeatures: 8, outFeatures: 4),
        LinearShape(batch: 13, inFeatures: 64, outFeatures: 33),
        LinearShape(batch: 50, inFeatures: 100, outFeatures: 70),
        LinearShape(batch: 6, inFeatures: 200, outFeatures: 3),
        LinearShape(batch: 9, inFeatures: 8, outFeatures: 4200),
        LinearShape(batch: 300, inFeatures: 256, outFeatures: 10)
    ]

    func testForwardMatchesNaive() {
        forEachThreadCount { threads in
            for (i, sh) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(i + 1))
                let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), b = rng.array(sh.outFeatures)
                for withBias in [false, true] {
                    var y = [Float](repeating: .nan, count: sh.outputCount), yn = y
                    linearForward(sh, input: x, weight: w, bias: withBias ? b : nil, output: &y)
                    linearForwardNaive(sh, input: x, weight: w, bias: withBias ? b : nil, output: &yn)
                    XCTAssertLessThanOrEqual(
                        toleranceRatio(y, yn, atol: 1e-4, rtol: 1e-4), 1, "\(sh) bias \(withBias) threads \(threads)")
                }
            }
        }
    }

    func testBackwardMatchesNaive() {
        forEachThreadCount { threads in
            for (i, sh) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(40 + i))
                let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), dy = rng.array(sh.outputCount)
                let bx = rng.array(sh.inputCount), bw = rng.array(sh.weightCount), bb = rng.array(sh.outFeatures)
                for acc in [false, true] {
                    var dx = acc ? bx : [Float](repeating: .nan, count: bx.count), dxn = dx
                    var dw = acc ? bw : [Float](repeating: .nan, count: bw.count), dwn = dw
                    var db = acc ? bb : [Float](repeating: .nan, count: bb.count), dbn = db
                    linearBackward(
                        sh, input: x, weight: w, gradOutput: dy, gradInput: &dx, gradWeight: &dw, gradBias: &db,
                        accumulate: acc)
                    linearBackwardNaive(
                        sh, input: x, weight: w, gradOutput: dy, gradInput: &dxn, gradWeight: &dwn,
                        gradBias: &dbn, accumulate: acc)
                    let tag = "\(sh) accumulate \(acc) threads \(threads)"
                    XCTAssertLessThanOrEqual(toleranceRatio(dx, dxn, atol: 1e-4, rtol: 1e-4), 1, "dx \(tag)")
                    XCTAssertLessThanOrEqual(toleranceRatio(dw, dwn, atol: 1e-4, rtol: 1e-4), 1, "dw \(tag)")
                    XCTAssertLessThanOrEqual(toleranceRatio(db, dbn, atol: 1e-4, rtol: 1e-4), 1, "db \(tag)")
                }
            }
        }
    }

    /// nil outputs are skipped; the others are still computed.
    func testBackwardWithSomeGradientsNil() {
        let sh = LinearShape(batch: 4, inFeatures: 11, outFeatures: 6)
        var rng = TestRNG(seed: 77)
        let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), dy = rng.array(sh.outputCount)
        var dxn = [Float](repeating: 0, count: sh.inputCount), dwn = [Float](repeating: 0, count: sh.weightCount)
        var dbn = [Float](repeating: 0, count: sh.outFeatures)
        linearBackwardNaive(
            sh, input: x, weight: w, gradOutput: dy, gradInput: &dxn, gradWeight: &dwn, gradBias: &dbn,
            accumulate: false)
        var dx = [Float](repeating: .nan, count: sh.inputCount)
        linearBackward(
            sh, input: x, weight: w, gradOutput: dy, gradInput: &dx, gradWeight: nil, gradBias: nil, accumulate: false)
        XCTAssertLessThanOrEqual(toleranceRatio(dx, dxn, atol: 1e-5, rtol: 1e-5), 1)
        var dw = [Float](repeating: .nan, count: sh.weightCount), db = [Float](repeating: .nan, count: sh.outFeatures)
        linearBackward(
            sh, input: x, weight: w, gradOutput: dy, gradInput: nil, gradWeight: &dw, gradBias: &db, accumulate: false)
        XCTAssertLessThanOrEqual(toleranceRatio(dw, dwn, atol: 1e-5, rtol: 1e-5), 1)
        XCTAssertLessThanOrEqual(toleranceRatio(db, dbn, atol: 1e-5, rtol: 1e-5), 1)
    }

    func testGradientsMatchFiniteDifferences() {
        for sh in [
            LinearShape(batch: 3, inFeatures: 10, outFeatures: 7),
            LinearShape(batch: 7, inFeatures: 19, outFeatures: 17)
        ] {
            var rng = TestRNG(seed: 5)
            var x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), b = rng.array(sh.outFeatures)
            let g = rng.array(sh.outputCount)
            func loss(_ x: [Float], _ w: [Float], _ b: [Float]) -> Double {
                var y = [Float](repeating: 0, count: sh.outputCount)
                linearForward(sh, input: x, weight: w, bias: b, output: &y)
                return weightedSum(y, g)
            }
            var dx = [Float](repeating: 0, count: x.count), dw = [Float](repeating: 0, count: w.count)
            var db = [Float](repeating: 0, count: b.count)
            linearBackward(
                sh, input: x, weight: w, gradOutput: g, gradInput: &dx, gradWeight: &dw, gradBias: &db,
                accumulate: false)
            let x0 = x, w0 = w, b0 = b
            let xi = sampleIndices(x.count), wi = sampleIndices(w.count), bi = Array(0..<b.count)
            let nx = numericGradient(&x, indices: xi) { loss($0, w0, b0) }
            let nw = numericGradient(&w, indices: wi) { loss(x0, $0, b0) }
            let nb = numericGradient(&b, indices: bi) { loss(x0, w0, $0) }
            XCTAssertLessThan(gradientError(analytic: xi.map { Double(dx[$0]) }, numeric: nx), 1e-2, "dx \(sh)")
            XCTAssertLessThan(gradientError(analytic: wi.map { Double(dw[$0]) }, numeric: nw), 1e-2, "dw \(sh)")
            XCTAssertLessThan(gradientError(analytic: bi.map { Double(db[$0]) }, numeric: nb), 1e-2, "db \(sh)")
        }
    }
}
