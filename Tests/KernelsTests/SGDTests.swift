import XCTest
import Kernels
import TestSupport

final class SGDTests: XCTestCase {
    /// Several steps against PyTorch's update written out as a scalar loop (buf starts at zero).
    func testSeveralStepsMatchHandComputedLoop() {
        forEachThreadCount { threads in
            for n in [1, 13, 37, 100_003] {
                var rng = TestRNG(seed: UInt64(n))
                var p = rng.array(n), buf = [Float](repeating: 0, count: n)
                var hp = p.map { Double($0) }, hb = [Double](repeating: 0, count: n)
                let lr: Float = 0.05, mom: Float = 0.9, wd: Float = 1e-3
                for step in 0..<4 {
                    let g = rng.array(n)
                    sgdStep(
                        count: n, params: &p, grads: g, momentumBuffer: &buf, lr: lr, momentum: mom, weightDecay: wd)
                    for i in 0..<n {
                        let gi = Double(g[i]) + Double(wd) * hp[i]
                        hb[i] = step == 0 ? gi : Double(mom) * hb[i] + gi
                        hp[i] -= Double(lr) * hb[i]
                    }
                }
                XCTAssertLessThanOrEqual(
                    toleranceRatio(p, hp.map { Float($0) }, atol: 1e-6, rtol: 1e-5), 1, "params \(n) threads \(threads)"
                )
                XCTAssertLessThanOrEqual(
                    toleranceRatio(buf, hb.map { Float($0) }, atol: 1e-6, rtol: 1e-5), 1,
                    "buffer \(n) threads \(threads)")
            }
        }
    }

    func testMatchesNaive() {
        var rng = TestRNG(seed: 3)
        let n = 1027
        var p = rng.array(n), buf = rng.array(n)
        var pn = p, bn = buf
        let g = rng.array(n)
        sgdStep(count: n, params: &p, grads: g, momentumBuffer: &buf, lr: 0.1, momentum: 0.5, weightDecay: 0.01)
        sgdStepNaive(count: n, params: &pn, grads: g, momentumBuffer: &bn, lr: 0.1, momentum: 0.5, weightDecay: 0.01)
        XCTAssertLessThanOrEqual(toleranceRatio(p, pn, atol: 1e-6, rtol: 1e-6), 1)
        XCTAssertLessThanOrEqual(toleranceRatio(buf, bn, atol: 1e-6, rtol: 1e-6), 1)
    }

    func testMomentumUpdate() {
        forEachThreadCount { threads in
            for n in [1, 13, 100_003] {
                var rng = TestRNG(seed: UInt64(n + 9))
                let s = rng.array(n), t0 = rng.array(n)
                var t = t0, tn = t0
                momentumUpdate(count: n, target: &t, source: s, m: 0.999)
                momentumUpdateNaive(count: n, target: &tn, source: s, m: 0.999)
                XCTAssertLessThanOrEqual(toleranceRatio(t, tn, atol: 1e-6, rtol: 1e-6), 1, "\(n) threads \(threads)")
                let i = n / 2
                XCTAssertEqual(t[i], 0.999 * t0[i] + 0.001 * s[i], accuracy: 1e-6)
            }
        }
    }
}
