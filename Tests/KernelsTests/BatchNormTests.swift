import XCTest
import Kernels
import TestSupport

final class BatchNormTests: XCTestCase {
    /// (pixels, channels): channels 1, 3, 13, 33, 64; pixels of 1x1, 3x3, 7x7 maps, batch 1, and enough
    /// pixels to cross the Float-sum block (256) and split over threads.
    static let shapes = KernelShapes.batchNorm

    struct Params { var gamma: [Float]; var beta: [Float]; var rm: [Float]; var rv: [Float] }

    func params(_ c: Int, _ rng: inout TestRNG) -> Params {
        Params(gamma: rng.array(c, 0.5, 1.5), beta: rng.array(c, -0.5, 0.5), rm: rng.array(c), rv: rng.array(c, 0.5, 2))
    }

    struct Fwd { var y: [Float]; var mean: [Float]; var inv: [Float]; var rm: [Float]; var rv: [Float] }

    func forward(
        _ sh: BatchNormShape, _ x: [Float], _ p: Params, relu: Bool, naive: Bool, momentum: Float = 0.1,
        wide: Bool = wideTilesDefault
    ) -> Fwd {
        let C = sh.channels
        var f = Fwd(
            y: [Float](repeating: .nan, count: sh.count), mean: [Float](repeating: .nan, count: C),
            inv: [Float](repeating: .nan, count: C), rm: p.rm, rv: p.rv)
        if naive {
            batchNormForwardTrainingNaive(
                sh, input: x, gamma: p.gamma, beta: p.beta, runningMean: &f.rm, runningVar: &f.rv,
                momentum: momentum, eps: 1e-5, relu: relu, output: &f.y, saveMean: &f.mean,
                saveInvStd: &f.inv)
        } else {
            let scratch = scratchBuffer(bytes: batchNormScratchBytes(sh, threads: Threads.count))
            defer { scratch.deallocate() }
            batchNormForwardTraining(
                sh, input: x, gamma: p.gamma, beta: p.beta, runningMean: &f.rm, runningVar: &f.rv,
                momentum: momentum, eps: 1e-5, relu: relu, output: &f.y, saveMean: &f.mean,
                saveInvStd: &f.inv, scratch: scratch, wide: wide)
        }
        return f
    }

    struct Bwd { var dx: [Float]; var dg: [Float]; var db: [Float] }

    func backward(
        _ sh: BatchNormShape, _ x: [Float], _ f: Fwd, _ dy: [Float], _ p: Params, relu: Bool,
        accumulateOnto: [Float]? = nil, naive: Bool, wide: Bool = wideTilesDefault
    ) -> Bwd {
        let C = sh.channels
        var b = Bwd(
            dx: accumulateOnto ?? [Float](repeating: .nan, count: sh.count),
            dg: [Float](repeating: .nan, count: C), db: [Float](repeating: .nan, count: C))
        let acc = accumulateOnto != nil
        f.y.withUnsafeBufferPointer { yp in
            let yArg: UnsafePointer<Float>? = relu ? yp.baseAddress! : nil
            if naive {
                batchNormBackwardNaive(
                    sh, input: x, output: yArg, gradOutput: dy, gamma: p.gamma, saveMean: f.mean,
                    saveInvStd: f.inv, relu: relu, gradInput: &b.dx, gradGamma: &b.dg, gradBeta: &b.db,
                    accumulate: acc)
            } else {
                let scratch = scratchBuffer(bytes: batchNormScratchBytes(sh, threads: Threads.count))
                defer { scratch.deallocate() }
                batchNormBackward(
                    sh, input: x, output: yArg, gradOutput: dy, gamma: p.gamma, saveMean: f.mean,
                    saveInvStd: f.inv, relu: relu, gradInput: &b.dx, gradGamma: &b.dg, gradBeta: &b.db,
                    accumulate: acc, scratch: scratch, wide: wide)
            }
        }
        return b
    }

    /// With wide tiles (the AVX-512 default) batch norm runs 16 channels per vector while whole and 8
    /// past them: the same bits as 8 at a time, forward and backward, with and without ReLU. Channels
    /// 13-72 cover no whole 16, whole ones only, and whole ones with 8- and 4-lane tails.
    func testWideAndNarrowVectorsGiveTheSameBits() {
        let shapes =
            Self.shapes + [
                BatchNormShape(pixels: 300, channels: 40), BatchNormShape(pixels: 310, channels: 72),
                BatchNormShape(pixels: 90, channels: 20)
            ]
        forEachThreadCount { threads in
            for (i, sh) in shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(700 + i))
                let x = rng.array(sh.count), dy = rng.array(sh.count)
                let p = params(sh.channels, &rng)
                for relu in [false, true] {
                    let fN = forward(sh, x, p, relu: relu, naive: false, wide: false),
                        bN = backward(sh, x, fN, dy, p, relu: relu, naive: false, wide: false)
                    let fW = forward(sh, x, p, relu: relu, naive: false, wide: true),
                        bW = backward(sh, x, fW, dy, p, relu: relu, naive: false, wide: true)
                    let tag = "\(sh) relu \(relu) threads \(threads)"
                    XCTAssertEqual(fW.y, fN.y, "y \(tag)")
                    XCTAssertEqual(fW.mean, fN.mean, "mean \(tag)")
                    XCTAssertEqual(fW.inv, fN.inv, "invstd \(tag)")
                    XCTAssertEqual(bW.dx, bN.dx, "dx \(tag)")
                    XCTAssertEqual(bW.dg, bN.dg, "dgamma \(tag)")
                    XCTAssertEqual(bW.db, bN.db, "dbeta \(tag)")
                }
            }
        }
    }

    /// Mean far from zero (x ~ 100 + U(-1, 1)): the shifted sums must keep the variance accurate.
    func testTrainingForwardMatchesNaiveWithLargeMean() {
        forEachThreadCount { threads in
            for (i, sh) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(10 + i))
                let x = rng.array(sh.count, 99, 101)
                let p = params(sh.channels, &rng)
                for relu in [false, true] {
                    let f = forward(sh, x, p, relu: relu, naive: false), n = forward(sh, x, p, relu: relu, naive: true)
                    let tag = "\(sh) relu \(relu) threads \(threads)"
                    XCTAssertLessThanOrEqual(toleranceRatio(f.y, n.y, atol: 2e-4, rtol: 1e-4), 1, "y \(tag)")
                    XCTAssertLessThanOrEqual(toleranceRatio(f.mean, n.mean, atol: 0, rtol: 1e-6), 1, "mean \(tag)")
                    XCTAssertLessThanOrEqual(toleranceRatio(f.inv, n.inv, atol: 0, rtol: 2e-4), 1, "invstd \(tag)")
                    XCTAssertLessThanOrEqual(toleranceRatio(f.rm, n.rm, atol: 0, rtol: 1e-6), 1, "running mean \(tag)")
                    XCTAssertLessThanOrEqual(
                        toleranceRatio(f.rv, n.rv, atol: 1e-6, rtol: 1e-4), 1, "running var \(tag)")
                    if relu { XCTAssertEqual(f.y.min(), 0, "relu output \(tag)") }
                }
            }
        }
    }

    /// Re-applying a training forward from its saved statistics rebuilds its output exactly (what the
    /// training pass relies on when it drops mid-block activations).
    func testApplySavedRebuildsTrainingOutput() {
        forEachThreadCount { threads in
            for (i, sh) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(40 + i))
                let x = rng.array(sh.count, -2, 3)
                let p = params(sh.channels, &rng)
                for relu in [false, true] {
                    let f = forward(sh, x, p, relu: relu, naive: false)
                    var y = [Float](repeating: .nan, count: sh.count)
                    let scratch = scratchBuffer(bytes: batchNormScratchBytes(sh, threads: Threads.count))
                    defer { scratch.deallocate() }
                    batchNormApplySaved(
                        sh, input: x, gamma: p.gamma, beta: p.beta, saveMean: f.mean, saveInvStd: f.inv,
                        relu: relu, output: &y, scratch: scratch, wide: wideTilesDefault)
                    XCTAssertLessThanOrEqual(
                        toleranceRatio(y, f.y, atol: 1e-6, rtol: 1e-6), 1, "\(sh) relu \(relu) threads \(threads)")
                }
            }
        }
    }

    /// Backward whose ReLU mask is rebuilt from x, beta and the saved statistics (no output given) has
    /// the bits of backward given the output batchNormApplySaved rebuilds (what a training pass that
    /// never writes its mid-block outputs relies on); a wrong beta changes the mask.
    func testBackwardMaskFromSavedStatisticsEqualsRebuiltOutput() {
        forEachThreadCount { threads in
            for (i, sh) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(60 + i))
                let x = rng.array(sh.count, -2, 3), dy = rng.array(sh.count)
                let p = params(sh.channels, &rng)
                let f = forward(sh, x, p, relu: true, naive: false)
                let scratch = scratchBuffer(bytes: batchNormScratchBytes(sh, threads: Threads.count))
                defer { scratch.deallocate() }
                var y = [Float](repeating: .nan, count: sh.count)
                batchNormApplySaved(
                    sh, input: x, gamma: p.gamma, beta: p.beta, saveMean: f.mean, saveInvStd: f.inv,
                    relu: true, output: &y, scratch: scratch, wide: wideTilesDefault)
                func run(output: [Float]?, beta: [Float]) -> Bwd {
                    var b = Bwd(
                        dx: [Float](repeating: .nan, count: sh.count), dg: [Float](repeating: .nan, count: sh.channels),
                        db: [Float](repeating: .nan, count: sh.channels))
                    (output ?? []).withUnsafeBufferPointer { op in
                        batchNormBackward(
                            sh, input: x, output: output == nil ? nil : op.baseAddress!, gradOutput: dy,
                            gamma: p.gamma, beta: beta, saveMean: f.mean, saveInvStd: f.inv, relu: true,
                            gradInput: &b.dx, gradGamma: &b.dg, gradBeta: &b.db, accumulate: false,
                            scratch: scratch, wide: wideTilesDefault)
                    }
                    return b
                }
                let given = run(output: y, beta: p.beta), rebuilt = run(output: nil, beta: p.beta)
                let tag = "\(sh) threads \(threads)"
                XCTAssertEqual(given.dx, rebuilt.dx, "dx \(tag)")
                XCTAssertEqual(given.dg, rebuilt.dg, "dgamma \(tag)")
                XCTAssertEqual(given.db, rebuilt.db, "dbeta \(tag)")
                if sh.count >= 49 {
                    let shifted = run(output: nil, beta: p.beta.map { $0 + 0.5 })
                    XCTAssertNotEqual(shifted.db, given.db, "a shifted beta must change the mask \(tag)")
                }
            }
        }
    }

    /// Running statistics checked by hand: r = (1-m)*r + m*stat, variance unbiased (P/(P-1)).
    func testRunningStatsUpdateByHand() {
        let sh = BatchNormShape(pixels: 4, channels: 2)
        // Channel 0: 1, 2, 3, 6 (mean 3, biased var 3.5, unbiased 14/3);
        // channel 1: 100, 100, 100, 104 (mean 101, unbiased 4).
        let x: [Float] = [1, 100, 2, 100, 3, 100, 6, 104]
        let p = Params(gamma: [1, 2], beta: [0, 1], rm: [0.5, -1], rv: [2, 3])
        let f = forward(sh, x, p, relu: false, naive: false, momentum: 0.25)
        XCTAssertEqual(f.rm[0], 0.75 * 0.5 + 0.25 * 3, accuracy: 1e-6)
        XCTAssertEqual(f.rm[1], 0.75 * -1 + 0.25 * 101, accuracy: 1e-5)
        XCTAssertEqual(f.rv[0], 0.75 * 2 + 0.25 * 14 / 3, accuracy: 1e-5)
        XCTAssertEqual(f.rv[1], 0.75 * 3 + 0.25 * 4, accuracy: 1e-5)
        XCTAssertEqual(f.mean[0], 3, accuracy: 1e-6)
        let inv0: Double = 1 / (3.5 + 1e-5).squareRoot()
        XCTAssertEqual(Double(f.inv[0]), inv0, accuracy: 1e-6)
        XCTAssertEqual(Double(f.inv[1]), 1 / (3.0 + 1e-5).squareRoot(), accuracy: 1e-6)
        // y of channel 1 at pixel 3: gamma * (104 - 101) * invstd + beta.
        let inv1: Double = 1 / (3.0 + 1e-5).squareRoot()
        XCTAssertEqual(Double(f.y[7]), 2 * 3 * inv1 + 1, accuracy: 1e-5)
    }

    /// A block's end: batch norm + shortcut + ReLU in one pass, against the naive forward (which adds
    /// in float64), with the shortcut a separate tensor and aliased to the output (in place).
    func testResidualAddMatchesNaive() {
        forEachThreadCount { threads in
            for (i, sh) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(70 + i))
                let x = rng.array(sh.count, -3, 3), r = rng.array(sh.count, -2, 2)
                let p = params(sh.channels, &rng)
                let C = sh.channels
                for inPlace in [false, true] {
                    // Training forward.
                    var y = inPlace ? r : [Float](repeating: .nan, count: sh.count), yn = y
                    var rm = p.rm, rv = p.rv, mean = [Float](repeating: 0, count: C), inv = mean
                    var rmn = p.rm, rvn = p.rv, meann = mean, invn = mean
                    let scratch = scratchBuffer(bytes: batchNormScratchBytes(sh, threads: Threads.count))
                    defer { scratch.deallocate() }
                    y.withUnsafeMutableBufferPointer { yb in
                        r.withUnsafeBufferPointer { rb in
                            batchNormForwardTraining(
                                sh, input: x, gamma: p.gamma, beta: p.beta, runningMean: &rm,
                                runningVar: &rv, momentum: 0.1, eps: 1e-5, relu: true,
                                residual: inPlace ? UnsafePointer(yb.baseAddress!) : rb.baseAddress!,
                                output: yb.baseAddress!, saveMean: &mean, saveInvStd: &inv,
                                scratch: scratch, wide: wideTilesDefault)
                        }
                    }
                    batchNormForwardTrainingNaive(
                        sh, input: x, gamma: p.gamma, beta: p.beta, runningMean: &rmn,
                        runningVar: &rvn, momentum: 0.1, eps: 1e-5, relu: true, residual: r,
                        output: &yn, saveMean: &meann, saveInvStd: &invn)
                    XCTAssertLessThanOrEqual(
                        toleranceRatio(y, yn, atol: 1e-5, rtol: 1e-5), 1,
                        "train \(sh) in place \(inPlace) threads \(threads)")
                    // Eval forward.
                    var z = inPlace ? r : [Float](repeating: .nan, count: sh.count), zn = z
                    z.withUnsafeMutableBufferPointer { zb in
                        r.withUnsafeBufferPointer { rb in
                            batchNormForwardInference(
                                sh, input: x, gamma: p.gamma, beta: p.beta, runningMean: p.rm,
                                runningVar: p.rv, eps: 1e-5, relu: true,
                                residual: inPlace ? UnsafePointer(zb.baseAddress!) : rb.baseAddress!,
                                output: zb.baseAddress!)
                        }
                    }
                    batchNormForwardInferenceNaive(
                        sh, input: x, gamma: p.gamma, beta: p.beta, runningMean: p.rm,
                        runningVar: p.rv, eps: 1e-5, relu: true, residual: r, output: &zn)
                    XCTAssertLessThanOrEqual(
                        toleranceRatio(z, zn, atol: 1e-5, rtol: 1e-5), 1,
                        "eval \(sh) in place \(inPlace) threads \(threads)")
                }
            }
        }
    }

    /// Split batch norm in one call (`groups`) against one call per group: the same bits for the output,
    /// the running statistics (updated group after group) and the saved statistics (the last group's),
    /// with and without a residual, on 1 and 2 threads.
    func testGroupsMatchOneCallPerGroup() {
        forEachThreadCount { threads in
            for (i, (groups, gp, C)) in [(4, 50, 19), (8, 16, 64), (3, 300, 8), (16, 1, 5)].enumerated() {
                let sh = BatchNormShape(pixels: groups * gp, channels: C)
                var rng = TestRNG(seed: UInt64(300 + i))
                let x = rng.array(sh.count, -2, 4), r = rng.array(sh.count, -1, 1)
                let p = params(C, &rng)
                for withResidual in [false, true] {
                    var y = [Float](repeating: .nan, count: sh.count), yRef = y
                    var rm = p.rm, rv = p.rv, mean = [Float](repeating: 0, count: C), inv = mean
                    var rmRef = p.rm, rvRef = p.rv, meanRef = mean, invRef = mean
                    let scratch = scratchBuffer(bytes: batchNormScratchBytes(sh, threads: Threads.count))
                    defer { scratch.deallocate() }
                    r.withUnsafeBufferPointer { rb in
                        batchNormForwardTraining(
                            sh, input: x, gamma: p.gamma, beta: p.beta, runningMean: &rm,
                            runningVar: &rv, momentum: 0.1, eps: 1e-5, relu: withResidual,
                            residual: withResidual ? rb.baseAddress! : nil, output: &y,
                            saveMean: &mean, saveInvStd: &inv, groups: groups, scratch: scratch, wide: wideTilesDefault)
                        x.withUnsafeBufferPointer { xb in
                            yRef.withUnsafeMutableBufferPointer { yb in
                                for g in 0..<groups {
                                    let o = g * gp * C
                                    batchNormForwardTraining(
                                        BatchNormShape(pixels: gp, channels: C), input: xb.baseAddress! + o,
                                        gamma: p.gamma, beta: p.beta, runningMean: &rmRef,
                                        runningVar: &rvRef, momentum: 0.1, eps: 1e-5, relu: withResidual,
                                        residual: withResidual ? rb.baseAddress! + o : nil,
                                        output: yb.baseAddress! + o, saveMean: &meanRef,
                                        saveInvStd: &invRef, scratch: scratch, wide: wideTilesDefault)
                                }
                            }
                        }
                    }
                    let what = "groups \(groups) x \(gp) px, C \(C), residual \(withResidual), threads \(threads)"
                    XCTAssertEqual(y, yRef, what)
                    XCTAssertEqual(rm, rmRef, what); XCTAssertEqual(rv, rvRef, what)
                    XCTAssertEqual(mean, meanRef, what); XCTAssertEqual(inv, invRef, what)
                    // And the groups are really normalised apart: each group's output has its own mean ~ beta.
                    if !withResidual {
                        for g in [0, groups - 1] where gp > 1 {
                            var s = 0.0
                            for q in 0..<gp { s += Double(y[(g * gp + q) * C]) }
                            XCTAssertEqual(s / Double(gp), Double(p.beta[0]), accuracy: 1e-4, what)
                        }
                    }
                }
            }
        }
    }

    func testInferenceMatchesNaiveAndHand() {
        forEachThreadCount { threads in
            for (i, sh) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(30 + i))
                let x = rng.array(sh.count, -3, 3)
                let p = params(sh.channels, &rng)
                for relu in [false, true] {
                    var y = [Float](repeating: .nan, count: sh.count), yn = y
                    batchNormForwardInference(
                        sh, input: x, gamma: p.gamma, beta: p.beta, runningMean: p.rm,
                        runningVar: p.rv, eps: 1e-5, relu: relu, output: &y)
                    batchNormForwardInferenceNaive(
                        sh, input: x, gamma: p.gamma, beta: p.beta, runningMean: p.rm,
                        runningVar: p.rv, eps: 1e-5, relu: relu, output: &yn)
                    XCTAssertLessThanOrEqual(
                        toleranceRatio(y, yn, atol: 1e-5, rtol: 1e-5), 1, "\(sh) relu \(relu) threads \(threads)")
                    // One element by hand: last pixel, last channel.
                    let c = sh.channels - 1, k = sh.count - 1
                    var e = p.gamma[c] * (x[k] - p.rm[c]) / (p.rv[c] + 1e-5).squareRoot() + p.beta[c]
                    if relu { e = max(e, 0) }
                    XCTAssertEqual(y[k], e, accuracy: 1e-5)
                }
            }
        }
    }

    func testBackwardMatchesNaive() {
        forEachThreadCount { threads in
            for (i, sh) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(50 + i))
                let x = rng.array(sh.count, 99, 101)
                let dy = rng.array(sh.count)
                let p = params(sh.channels, &rng)
                let base = rng.array(sh.count)
                for relu in [false, true] {
                    let f = forward(sh, x, p, relu: relu, naive: false)
                    for acc in [false, true] {
                        let onto: [Float]? = acc ? base : nil
                        let a = backward(sh, x, f, dy, p, relu: relu, accumulateOnto: onto, naive: false)
                        let n = backward(sh, x, f, dy, p, relu: relu, accumulateOnto: onto, naive: true)
                        let tag = "\(sh) relu \(relu) accumulate \(acc) threads \(threads)"
                        XCTAssertLessThanOrEqual(toleranceRatio(a.dx, n.dx, atol: 1e-4, rtol: 1e-3), 1, "dx \(tag)")
                        XCTAssertLessThanOrEqual(toleranceRatio(a.dg, n.dg, atol: 1e-4, rtol: 1e-3), 1, "dgamma \(tag)")
                        XCTAssertLessThanOrEqual(toleranceRatio(a.db, n.db, atol: 1e-4, rtol: 1e-4), 1, "dbeta \(tag)")
                    }
                }
            }
        }
    }

    /// Finite differences of L = sum(y * g) through the training forward (batch statistics included).
    func testGradientsMatchFiniteDifferences() {
        for relu in [false, true] {
            for sh in [BatchNormShape(pixels: 12, channels: 5), BatchNormShape(pixels: 7, channels: 9)] {
                var rng = TestRNG(seed: relu ? 3 : 4)
                var x = rng.array(sh.count, -2, 2)
                var p = params(sh.channels, &rng)
                let g = rng.array(sh.count)
                func loss(_ x: [Float], _ p: Params) -> Double {
                    weightedSum(forward(sh, x, p, relu: relu, naive: false).y, g)
                }
                let f = forward(sh, x, p, relu: relu, naive: false)
                let b = backward(sh, x, f, g, p, relu: relu, naive: false)
                let xi = sampleIndices(x.count), ci = Array(0..<sh.channels)
                let p0 = p, x0 = x
                let nx = numericGradient(&x, indices: xi) { loss($0, p0) }
                let ng = numericGradient(&p.gamma, indices: ci) {
                    var q = p0; q.gamma = $0; return loss(x0, q)
                }
                let nb = numericGradient(&p.beta, indices: ci) {
                    var q = p0; q.beta = $0; return loss(x0, q)
                }
                XCTAssertLessThan(
                    gradientError(analytic: xi.map { Double(b.dx[$0]) }, numeric: nx), 1e-2, "dx \(sh) relu \(relu)")
                XCTAssertLessThan(
                    gradientError(analytic: ci.map { Double(b.dg[$0]) }, numeric: ng), 1e-2, "dgamma \(sh) relu \(relu)"
                )
                XCTAssertLessThan(
                    gradientError(analytic: ci.map { Double(b.db[$0]) }, numeric: nb), 1e-2, "dbeta \(sh) relu \(relu)")
            }
        }
    }

    /// Statistics from a convolution's per-tile sums (BNTileSums, 16 pixels a tile here) match those
    /// of the pass over x: the training forward's output, saved and running statistics, and the
    /// statistics-only rows, with groups, on data whose mean is far from the sums' shift.
    func testStatisticsFromTileSumsMatchThePassOverTheOutput() {
        forEachThreadCount { threads in
            for (i, (groups, tilesPerGroup, C)) in [(1, 40, 19), (4, 3, 64), (8, 17, 5)].enumerated() {
                let sh = BatchNormShape(pixels: groups * tilesPerGroup * 16, channels: C)
                var rng = TestRNG(seed: UInt64(900 + i))
                let x = rng.array(sh.count, 2, 5), shift = rng.array(C, -0.5, 0.5)
                let p = params(C, &rng)
                let stride = (C + 15) / 16 * 16, tiles = groups * tilesPerGroup
                var sums = [Float](repeating: .nan, count: tiles * 2 * stride)
                for t in 0..<tiles {
                    for c in 0..<C {
                        var s1: Float = 0, s2: Float = 0
                        for q in 0..<16 { let d = x[(t * 16 + q) * C + c] - shift[c]; s1 += d; s2 += d * d }
                        sums[t * 2 * stride + c] = s1; sums[t * 2 * stride + stride + c] = s2
                    }
                }
                let scratch = scratchBuffer(bytes: batchNormScratchBytes(sh, threads: Threads.count))
                defer { scratch.deallocate() }
                struct Out {
                    var y: [Float]; var rm: [Float]; var rv: [Float]; var mean: [Float]; var inv: [Float]
                    var rows: [Float]
                }
                func run(_ fromSums: Bool) -> Out {
                    var o = Out(
                        y: [Float](repeating: .nan, count: sh.count), rm: p.rm, rv: p.rv,
                        mean: [Float](repeating: .nan, count: C), inv: [Float](repeating: .nan, count: C),
                        rows: [Float](repeating: .nan, count: 2 * groups * bnPadded(C)))
                    sums.withUnsafeBufferPointer { sb in
                        shift.withUnsafeBufferPointer { hb in
                            let ts =
                                fromSums
                                ? BNTileSums(
                                    sums: sb.baseAddress!, tiles: tiles, stride: stride,
                                    shift: hb.baseAddress!) : nil
                            batchNormForwardTraining(
                                sh, input: x, gamma: p.gamma, beta: p.beta, runningMean: &o.rm,
                                runningVar: &o.rv, momentum: 0.1, eps: 1e-5, relu: true, output: &o.y,
                                saveMean: &o.mean, saveInvStd: &o.inv, groups: groups, scratch: scratch,
                                tileSums: ts, wide: wideTilesDefault)
                            var rm = p.rm, rv = p.rv, m = o.mean, v = o.inv
                            o.rows.withUnsafeMutableBufferPointer { rb in
                                let n = groups * bnPadded(C)
                                batchNormTrainingStatistics(
                                    sh, input: x, gamma: p.gamma, runningMean: &rm, runningVar: &rv,
                                    momentum: 0.1, eps: 1e-5, saveMean: &m, saveInvStd: &v,
                                    groups: groups, mean: rb.baseAddress!, scale: rb.baseAddress! + n,
                                    scratch: scratch, tileSums: ts, wide: wideTilesDefault)
                            }
                        }
                    }
                    return o
                }
                let a = run(true), b = run(false)
                let what = "groups \(groups), \(tilesPerGroup) tiles each, C \(C), threads \(threads)"
                XCTAssertLessThanOrEqual(toleranceRatio(a.y, b.y, atol: 1e-4, rtol: 1e-4), 1, what)
                XCTAssertLessThanOrEqual(toleranceRatio(a.mean, b.mean, atol: 1e-5, rtol: 1e-5), 1, what)
                XCTAssertLessThanOrEqual(toleranceRatio(a.inv, b.inv, atol: 1e-5, rtol: 1e-4), 1, what)
                XCTAssertLessThanOrEqual(toleranceRatio(a.rm, b.rm, atol: 1e-5, rtol: 1e-5), 1, what)
                XCTAssertLessThanOrEqual(toleranceRatio(a.rv, b.rv, atol: 1e-5, rtol: 1e-4), 1, what)
                XCTAssertLessThanOrEqual(toleranceRatio(a.rows, b.rows, atol: 1e-5, rtol: 1e-4), 1, what)
                XCTAssertFalse(a.y.contains { $0.isNaN }, what)
            }
        }
    }
}
