import XCTest
import Foundation
import Kernels
import TestSupport

final class LossTests: XCTestCase {
    static let shapes: [(rows: Int, classes: Int)] = [(1, 1), (3, 7), (5, 33), (4, 1000), (2, 4097), (300, 65)]

    func labels(_ rows: Int, _ classes: Int, _ rng: inout TestRNG) -> [Int32] {
        (0..<rows).map { _ in Int32(rng.next() % UInt64(classes)) }
    }

    /// The portable exponential and logarithm against libm (through Foundation, in the test only).
    func testExpAndLogAccuracy() {
        var worst: Double = 0
        var x: Float = -87
        while x < 88 {
            let e = Double(expFloat(x)), r = Foundation.exp(Double(x))
            worst = max(worst, abs(e - r) / r)
            x += 0.0137
        }
        XCTAssertLessThan(worst, 2e-7)
        XCTAssertEqual(expFloat(-1000), 0)
        XCTAssertEqual(expFloat(0), 1)
        for v in [1e-300, 1e-5, 0.3, 1, 1.5, 2, 10, 12345.678, 1e300] {
            XCTAssertEqual(
                logDouble(v), Foundation.log(v), accuracy: 1e-14 * max(1, abs(Foundation.log(v))), "log \(v)")
            XCTAssertEqual(expDouble(log(v)) / v, 1, accuracy: 1e-12, "exp \(v)")
        }
    }

    func testForwardBackwardMatchNaive() {
        forEachThreadCount { threads in
            for (i, s) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(i + 1))
                let logits = rng.array(s.rows * s.classes, -5, 5)
                let lab = labels(s.rows, s.classes, &rng)
                var p = [Float](repeating: .nan, count: logits.count), pn = p
                let loss = softmaxCrossEntropyForward(
                    rows: s.rows, classes: s.classes, logits: logits, labels: lab, probs: &p)
                let lossN = softmaxCrossEntropyForwardNaive(
                    rows: s.rows, classes: s.classes, logits: logits, labels: lab, probs: &pn)
                XCTAssertEqual(loss, lossN, accuracy: 1e-5 * max(1, abs(lossN)), "loss \(s) threads \(threads)")
                XCTAssertLessThanOrEqual(
                    toleranceRatio(p, pn, atol: 1e-7, rtol: 1e-5), 1, "probs \(s) threads \(threads)")
                // Independent check of the loss with libm.
                var ref = 0.0
                for r in 0..<s.rows {
                    let row = logits[(r * s.classes)..<((r + 1) * s.classes)].map { Double($0) }
                    let m = row.max()!
                    ref += m + Foundation.log(row.map { Foundation.exp($0 - m) }.reduce(0, +)) - row[Int(lab[r])]
                }
                XCTAssertEqual(Double(loss), ref / Double(s.rows), accuracy: 1e-5 * max(1, abs(ref / Double(s.rows))))
                var g = [Float](repeating: .nan, count: p.count), gn = g
                let scale = 1 / Float(s.rows) / 0.2
                softmaxCrossEntropyBackward(
                    rows: s.rows, classes: s.classes, probs: p, labels: lab, scale: scale, gradLogits: &g)
                softmaxCrossEntropyBackwardNaive(
                    rows: s.rows, classes: s.classes, probs: p, labels: lab, scale: scale, gradLogits: &gn)
                XCTAssertLessThanOrEqual(
                    toleranceRatio(g, gn, atol: 1e-7, rtol: 1e-6), 1, "grad \(s) threads \(threads)")
            }
        }
    }

    /// Logits in the thousands: no overflow, probabilities finite and summing to one, the loss exact.
    func testLargeLogitsDoNotOverflow() {
        let rows = 3, classes = 11
        var rng = TestRNG(seed: 12)
        var logits = rng.array(rows * classes, -1000, 1000)
        logits[0] = 30000; logits[1] = 29990  // row 0: two huge logits 10 apart
        let lab: [Int32] = [1, 4, 10]
        var p = [Float](repeating: .nan, count: logits.count)
        let loss = softmaxCrossEntropyForward(rows: rows, classes: classes, logits: logits, labels: lab, probs: &p)
        XCTAssertTrue(loss.isFinite)
        XCTAssertTrue(p.allSatisfy { $0.isFinite && $0 >= 0 && $0 <= 1 })
        for r in 0..<rows { XCTAssertEqual(p[(r * classes)..<((r + 1) * classes)].reduce(0, +), 1, accuracy: 1e-5) }
        // Row 0 alone: loss = log(1 + e^-10 + ...) + 10 (label is the runner-up).
        XCTAssertEqual(p[1], Float(Foundation.exp(-10.0) / (1 + Foundation.exp(-10.0))), accuracy: 1e-8)
        var ref = 0.0
        for r in 0..<rows {
            let row = logits[(r * classes)..<((r + 1) * classes)].map { Double($0) }
            let m = row.max()!
            ref += m + Foundation.log(row.map { Foundation.exp($0 - m) }.reduce(0, +)) - row[Int(lab[r])]
        }
        XCTAssertEqual(Double(loss), ref / 3, accuracy: 1e-3)
        XCTAssertGreaterThan(loss, 100)  // rows 1 and 2 are badly wrong: a loss in the hundreds, not inf
    }

    /// Finite differences of the mean loss: dlogits = (probs - onehot) / rows.
    func testGradientMatchesFiniteDifferences() {
        let rows = 4, classes = 9
        var rng = TestRNG(seed: 21)
        var logits = rng.array(rows * classes, -2, 2)
        let lab = labels(rows, classes, &rng)
        var p = [Float](repeating: 0, count: logits.count), g = p
        _ = softmaxCrossEntropyForward(rows: rows, classes: classes, logits: logits, labels: lab, probs: &p)
        softmaxCrossEntropyBackward(
            rows: rows, classes: classes, probs: p, labels: lab, scale: 1 / Float(rows), gradLogits: &g)
        let idx = Array(0..<logits.count)
        let num = numericGradient(&logits, indices: idx) { l in
            var p = [Float](repeating: 0, count: l.count)
            return Double(softmaxCrossEntropyForward(rows: rows, classes: classes, logits: l, labels: lab, probs: &p))
        }
        XCTAssertLessThan(gradientError(analytic: g.map { Double($0) }, numeric: num), 1e-2)
    }
}
