import XCTest
import Kernels
import TestSupport

final class ConvTests: XCTestCase {
    static let shapes = KernelShapes.convolutions

    struct Run { var y: [Float]; var dx: [Float]; var dw: [Float] }

    func fast(
        _ shape: Conv2DShape, _ x: [Float], _ w: [Float], _ dy: [Float], config: ExecutionConfig = .testing()
    ) -> Run {
        fast(ConvPlan(shape, config), x, w, dy)
    }

    func fast(_ sh: ConvPlan, _ x: [Float], _ w: [Float], _ dy: [Float]) -> Run {
        let scratch = scratchBuffer(bytes: sh.scratchBytes(threads: Threads.count))
        defer { scratch.deallocate() }
        var pf = [Float](repeating: .nan, count: sh.packedForwardCount)
        var pb = [Float](repeating: .nan, count: sh.packedBackwardDataCount)
        var y = [Float](repeating: .nan, count: sh.outputCount)
        var dx = [Float](repeating: .nan, count: sh.inputCount)
        var dw = [Float](repeating: .nan, count: sh.weightCount)
        conv2dPackForward(sh, weights: w, packed: &pf)
        conv2dPackBackwardData(sh, weights: w, packed: &pb)
        conv2dForward(sh, input: x, packed: pf, output: &y, scratch: scratch)
        conv2dBackwardData(sh, gradOutput: dy, packed: pb, gradInput: &dx, scratch: scratch)
        conv2dBackwardWeight(sh, input: x, gradOutput: dy, gradWeight: &dw, scratch: scratch)
        return Run(y: y, dx: dx, dw: dw)
    }

    func naive(_ sh: ConvPlan, _ x: [Float], _ w: [Float], _ dy: [Float]) -> Run { naive(sh.shape, x, w, dy) }

    func naive(_ sh: Conv2DShape, _ x: [Float], _ w: [Float], _ dy: [Float]) -> Run {
        var y = [Float](repeating: 0, count: sh.outputCount)
        var dx = [Float](repeating: 0, count: sh.inputCount)
        var dw = [Float](repeating: 0, count: sh.weightCount)
        conv2dForwardNaive(sh, input: x, weights: w, output: &y)
        conv2dBackwardDataNaive(sh, gradOutput: dy, weights: w, gradInput: &dx)
        conv2dBackwardWeightNaive(sh, input: x, gradOutput: dy, gradWeight: &dw)
        return Run(y: y, dx: dx, dw: dw)
    }

    func testFastMatchesNaiveOnAwkwardShapes() {
        for threads in [1, 2] {
            Threads.count = threads
            for (i, sh) in Self.shapes.enumerated() {
                var rng = TestRNG(seed: UInt64(i + 1))
                let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), dy = rng.array(sh.outputCount)
                let f = fast(sh, x, w, dy), n = naive(sh, x, w, dy)
                XCTAssertLessThanOrEqual(
                    toleranceRatio(f.y, n.y, atol: 1e-4, rtol: 1e-4), 1, "forward \(sh) threads \(threads)")
                XCTAssertLessThanOrEqual(
                    toleranceRatio(f.dx, n.dx, atol: 1e-4, rtol: 1e-4), 1, "backward-data \(sh) threads \(threads)")
                XCTAssertLessThanOrEqual(
                    toleranceRatio(f.dw, n.dw, atol: 1e-4, rtol: 1e-4), 1, "backward-weight \(sh) threads \(threads)")
            }
        }
        Threads.count = Threads.processors
    }

    static let winogradShapes = KernelShapes.winograd

    /// Winograd against the float64 reference, relative to the output's scale.
    func testWinogradMatchesNaive() {
        checkScaledAgainstNaive(
            Self.winogradShapes, seed: 100, uses: { ConvPlan.testing($0).usesWinograd },
            skipOn3Threads: { $0.c * $0.k > 10_000 })
    }

    /// Fast forward, backward-data and backward-weights of each shape against the float64 reference on
    /// 1-3 threads, relative to the output's scale: Winograd transforms scale values by up to 8, so a
    /// fixed absolute tolerance would be meaningless on sums of thousands of terms.
    func checkScaledAgainstNaive(
        _ shapes: [Conv2DShape], seed: Int, uses: (Conv2DShape) -> Bool,
        skipOn3Threads: (Conv2DShape) -> Bool = { _ in false }
    ) {
        for threads in [1, 2, 3] {
            Threads.count = threads
            for (i, sh) in shapes.enumerated() {
                XCTAssertTrue(uses(sh), "\(sh)")
                if threads == 3 && skipOn3Threads(sh) { continue }
                var rng = TestRNG(seed: UInt64(seed + i))
                let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), dy = rng.array(sh.outputCount)
                let f = fast(sh, x, w, dy), n = naive(sh, x, w, dy)
                for (a, b, what) in [
                    (f.y, n.y, "forward"), (f.dx, n.dx, "backward-data"), (f.dw, n.dw, "backward-weights")
                ] {
                    let scale = b.map(abs).max() ?? 1
                    XCTAssertLessThanOrEqual(
                        toleranceRatio(a, b, atol: 1e-5 * scale, rtol: 1e-4), 1,
                        "\(what) \(sh) threads \(threads)")
                }
            }
        }
        Threads.count = Threads.processors
    }

    /// Every way backward-weights splits its work, on 1-3 threads, against the float64 reference:
    /// V and Y in channel blocks of 48 past 64 channels (two whole blocks and a partial one here), all
    /// tiles at once (wide layers, the default when V and Y fit winogradAllTiles) or passes of
    /// shared blocks over the point rows (the limit set to 0; one pass when dU is small).
    func testWinogradBackwardWeightPaths() {
        let cases: [(Conv2DShape, [String])] = [
            (Conv2DShape(n: 1, c: 256, h: 4, w: 4, k: 256, r: 3, s: 3, stride: 1, pad: 1), ["all tiles", "2 passes"]),
            (Conv2DShape(n: 1, c: 136, h: 6, w: 5, k: 520, r: 3, s: 3, stride: 1, pad: 1), ["all tiles", "2 passes"]),
            (Conv2DShape(n: 2, c: 72, h: 20, w: 19, k: 96, r: 3, s: 3, stride: 1, pad: 1), ["1 passes"]),
            (Conv2DShape(n: 2, c: 136, h: 9, w: 10, k: 72, r: 3, s: 3, stride: 1, pad: 1), ["1 passes"])
        ]
        for (i, (sh, methods)) in cases.enumerated() {
            var rng = TestRNG(seed: UInt64(300 + i))
            let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), dy = rng.array(sh.outputCount)
            let want = naive(sh, x, w, dy).dw
            let scale = want.map(abs).max() ?? 1
            var seen = Set<String>()
            for limit in [CacheBudget.tuned.winogradAllTiles, 0] {
                var config = ExecutionConfig.testing()
                config.cache.winogradAllTiles = limit
                for threads in [1, 2, 3] {
                    Threads.count = threads
                    let method = ConvPlan(sh, config).wgBackwardWeightMethod
                    seen.insert(method)
                    let got = fast(sh, x, w, dy, config: config).dw
                    XCTAssertLessThanOrEqual(
                        toleranceRatio(got, want, atol: 1e-5 * scale, rtol: 1e-4), 1,
                        "\(sh) \(method) threads \(threads)")
                }
            }
            for m in methods { XCTAssertTrue(seen.contains(m), "\(sh): \(m) not reached (\(seen))") }
        }
        Threads.count = Threads.processors
    }

    /// Large kernels (transformed > 4 MB) with the transform fused into the forward (default at these
    /// sizes), in either order (rows of points first, or output blocks first as at 512 channels), and
    /// packed, output channels split over threads either way. The fused transform runs row by row on
    /// the same expressions and the GEMMs sum in the same order, so all three give the same bits.
    /// The second shape has 81 tiles: two blocks of the fused forward (64 + 17).
    func testWinogradLargeKernelsPackedAndFused() {
        for sh in [
            Conv2DShape(n: 2, c: 256, h: 4, w: 5, k: 264, r: 3, s: 3, stride: 1, pad: 1),
            Conv2DShape(n: 1, c: 128, h: 34, w: 33, k: 264, r: 3, s: 3, stride: 1, pad: 1)
        ] {
            largeKernelsPackedAndFused(sh)
        }
    }

    func largeKernelsPackedAndFused(_ sh: Conv2DShape) {
        XCTAssertTrue(ConvPlan.testing(sh).wgFusedWeights)
        var rng = TestRNG(seed: 77)
        let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), dy = rng.array(sh.outputCount)
        let n = naive(sh, x, w, dy)
        for threads in [1, 2] {
            Threads.count = threads
            var results: [[Float]] = []
            for (fuse, blockOuter) in [(true, false), (true, true), (false, false)] {
                var config = ExecutionConfig.testing()
                config.cache.winogradFuseLimit = fuse ? 8 << 20 : 0
                config.cache.winogradBlockOuter = blockOuter ? 0 : 1 << 40
                let plan = ConvPlan(sh, config)
                XCTAssertEqual(plan.wgFusedWeights, fuse)
                XCTAssertEqual(plan.wgFusedByOutputBlock, blockOuter)
                let transposed = Conv2DShape(
                    n: sh.n, c: sh.k, h: sh.oh, w: sh.ow, k: sh.c, r: 3, s: 3, stride: 1, pad: 1)
                XCTAssertEqual(
                    ConvPlan(transposed, config).wgFusedByOutputBlock, blockOuter, "backward-data's forward")
                let f = fast(plan, x, w, dy)
                for (a, b, what) in [
                    (f.y, n.y, "forward"), (f.dx, n.dx, "backward-data"), (f.dw, n.dw, "backward-weights")
                ] {
                    let scale = b.map(abs).max() ?? 1
                    XCTAssertLessThanOrEqual(
                        toleranceRatio(a, b, atol: 1e-5 * scale, rtol: 1e-4), 1,
                        "\(what) fused \(fuse) block-outer \(blockOuter) threads \(threads)")
                }
                results += [f.y, f.dx]
            }
            for (i, order) in [(2, "fused by output block"), (4, "packed")] {
                XCTAssertEqual(results[0], results[i], "forward: fused by rows and \(order) differ, threads \(threads)")
                XCTAssertEqual(
                    results[1], results[i + 1], "backward-data: fused by rows and \(order) differ, threads \(threads)")
            }
        }
        Threads.count = Threads.processors
    }

    /// The Winograd forward with an input affine (a mid-block batch norm + ReLU applied as the input
    /// is loaded) gives the bits of the plain forward on the normalised input written out, as bnApply
    /// computes it: per group of images its own mean and scale rows, negative and zero scales, the
    /// padding zero (not the affine of zero), partial tiles and channel vectors, the fused weights.
    func testWinogradInputAffineEqualsNormalisedInput() {
        let cases: [(Conv2DShape, Int)] = [
            (Conv2DShape(n: 4, c: 12, h: 7, w: 9, k: 20, r: 3, s: 3, stride: 1, pad: 1), 2),
            (Conv2DShape(n: 3, c: 64, h: 8, w: 8, k: 16, r: 3, s: 3, stride: 1, pad: 1), 1),
            (Conv2DShape(n: 2, c: 256, h: 4, w: 4, k: 264, r: 3, s: 3, stride: 1, pad: 1), 2)
        ]
        for (ci, (shape, groups)) in cases.enumerated() {
            let sh = ConvPlan.testing(shape)
            XCTAssertTrue(sh.usesWinograd)
            var rng = TestRNG(seed: UInt64(500 + ci))
            let C = sh.c, cp = bnPadded(C)
            let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount)
            var mean = [Float](repeating: 0, count: groups * cp), scale = [Float](repeating: 0, count: groups * cp)
            for g in 0..<groups {
                for c in 0..<C {
                    mean[g * cp + c] = rng.uniform(-0.5, 0.5)
                    // Every third channel flips the sign, channel 1 has scale 0: its ReLU'd output is max(shift, 0).
                    scale[g * cp + c] = c == 1 ? 0 : rng.uniform(0.3, 2) * (c % 3 == 0 ? -1 : 1)
                }
            }
            let shift = (0..<C).map { c in c == 1 ? Float(0.25) : rng.uniform(-0.5, 0.5) }
            let perGroup = sh.n / groups, pixels = sh.h * sh.w
            var xn = x
            for b in 0..<sh.n {
                for p in 0..<pixels {
                    for c in 0..<C {
                        let g = b / perGroup, i = (b * pixels + p) * C + c
                        let v = shift[c].addingProduct(x[i] - mean[g * cp + c], scale[g * cp + c])
                        xn[i] = v < 0 ? 0 : v
                    }
                }
            }
            XCTAssertTrue(xn.contains(0) && xn.contains { $0 > 0 })
            forEachThreadCount([1, 2, 3]) { threads in
                let scratch = scratchBuffer(bytes: sh.scratchBytes(threads: threads))
                defer { scratch.deallocate() }
                var pf = [Float](repeating: .nan, count: sh.packedForwardCount)
                conv2dPackForward(sh, weights: w, packed: &pf)
                var plain = [Float](repeating: .nan, count: sh.outputCount), fused = plain
                conv2dForward(sh, input: xn, packed: pf, output: &plain, scratch: scratch)
                mean.withUnsafeBufferPointer { m in
                    scale.withUnsafeBufferPointer { s in
                        shift.withUnsafeBufferPointer { t in
                            let affine = ConvInputAffine(
                                mean: m.baseAddress!, scale: s.baseAddress!, shift: t.baseAddress!,
                                groupStride: cp, imagesPerGroup: perGroup)
                            conv2dForward(
                                sh, input: x, packed: pf, output: &fused, scratch: scratch, inputAffine: affine)
                        }
                    }
                }
                XCTAssertTrue(plain == fused, "\(sh) groups \(groups) threads \(threads)")
            }
        }
    }

    static let winogradStride2Shapes = KernelShapes.winogradStride2

    /// The stride-2 forward against the float64 reference (backward stays on the direct kernels,
    /// checked too); kernels above 6 MB transformed (256 -> 512 channels) are transformed inside it.
    func testWinogradStride2MatchesNaive() {
        checkScaledAgainstNaive(
            Self.winogradStride2Shapes, seed: 300, uses: { ConvPlan.testing($0).usesWinogradStride2 })
        let wide = ConvPlan.testing(Conv2DShape(n: 1, c: 256, h: 8, w: 8, k: 512, r: 3, s: 3, stride: 2, pad: 1))
        XCTAssertTrue(wide.usesWinogradStride2 && wide.ws2FusedWeights)
        XCTAssertFalse(Self.winogradStride2Shapes.contains { ConvPlan.testing($0).ws2FusedWeights })
    }

    /// The stride-2 forward with its kernels transformed per output block (forced on small shapes,
    /// 75 tiles: two blocks of tiles) gives the packed forward's bits on 1-3 threads, and so matches
    /// the float64 reference.
    func testWinogradStride2FusedEqualsPacked() {
        let shapes =
            Self.winogradStride2Shapes + [Conv2DShape(n: 3, c: 24, h: 36, w: 35, k: 40, r: 3, s: 3, stride: 2, pad: 1)]
        for (i, sh) in shapes.enumerated() {
            var rng = TestRNG(seed: UInt64(400 + i))
            let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), dy = rng.array(sh.outputCount)
            let want = naive(sh, x, w, dy).y
            let scale = want.map(abs).max() ?? 1
            for threads in [1, 2, 3] {
                Threads.count = threads
                let packed = fast(sh, x, w, dy).y
                var config = ExecutionConfig.testing()
                config.cache.stride2PackLimit = 0
                XCTAssertTrue(ConvPlan(sh, config).ws2FusedWeights)
                let fused = fast(sh, x, w, dy, config: config).y
                XCTAssertEqual(fused, packed, "\(sh) threads \(threads)")
                XCTAssertLessThanOrEqual(toleranceRatio(fused, want, atol: 1e-5 * scale, rtol: 1e-4), 1, "\(sh)")
            }
        }
        Threads.count = Threads.processors
    }

    /// The 12-row register tiles (the default in AVX-512 builds) and the 6-row ones give the same bits
    /// in every kernel that has both (Winograd GEMMs, stride-2 Winograd, the direct gathered GEMM in
    /// pairs of tiles, both backward-weights): each output is the same chain of FMAs in the same
    /// order. Run on every machine, so both paths are checked against the references wherever the
    /// other tests run with either default.
    func testWideAndNarrowTilesGiveTheSameBits() {
        defer { Threads.count = Threads.processors }
        let shapes =
            Self.shapes + Self.winogradShapes + Self.winogradStride2Shapes
            + [
                Conv2DShape(n: 2, c: 64, h: 8, w: 8, k: 128, r: 3, s: 3, stride: 2, pad: 1),
                Conv2DShape(n: 2, c: 64, h: 8, w: 8, k: 128, r: 1, s: 1, stride: 2, pad: 0)
            ]
        for threads in [1, 2, 3] {
            Threads.count = threads
            for (i, sh) in shapes.enumerated() {
                if threads == 3 && sh.c * sh.k > 10_000 { continue }
                var rng = TestRNG(seed: UInt64(500 + i))
                let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), dy = rng.array(sh.outputCount)
                let narrow = fast(sh, x, w, dy, config: .testing(wideTiles: false))
                let wide = fast(sh, x, w, dy, config: .testing(wideTiles: true))
                XCTAssertEqual(wide.y, narrow.y, "forward \(sh) threads \(threads)")
                XCTAssertEqual(wide.dx, narrow.dx, "backward-data \(sh) threads \(threads)")
                XCTAssertEqual(wide.dw, narrow.dw, "backward-weights \(sh) threads \(threads)")
            }
        }
    }

    /// The direct kernels on a Winograd shape (the switch the benchmarks use) agree with Winograd.
    func testWinogradAndDirectAgree() {
        let sh = Conv2DShape(n: 2, c: 24, h: 6, w: 5, k: 40, r: 3, s: 3, stride: 1, pad: 1)
        var rng = TestRNG(seed: 9)
        let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), dy = rng.array(sh.outputCount)
        let wg = fast(sh, x, w, dy)
        XCTAssertTrue(ConvPlan.testing(sh).usesWinograd)
        XCTAssertFalse(ConvPlan(sh, .testing(convolution: .direct)).usesWinograd)
        let direct = fast(sh, x, w, dy, config: .testing(convolution: .direct))
        XCTAssertLessThanOrEqual(toleranceRatio(wg.y, direct.y, atol: 1e-4, rtol: 1e-4), 1)
        XCTAssertLessThanOrEqual(toleranceRatio(wg.dx, direct.dx, atol: 1e-4, rtol: 1e-4), 1)
        XCTAssertLessThanOrEqual(toleranceRatio(wg.dw, direct.dw, atol: 1e-4, rtol: 1e-4), 1)
    }

    func testAccumulateAddsIntoExistingGradients() {
        for sh in [
            Conv2DShape(n: 2, c: 5, h: 6, w: 6, k: 9, r: 3, s: 3, stride: 2, pad: 1),
            Conv2DShape(n: 2, c: 9, h: 6, w: 5, k: 17, r: 3, s: 3, stride: 1, pad: 1)
        ].map(ConvPlan.testing) {
            var rng = TestRNG(seed: 42)
            let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), dy = rng.array(sh.outputCount)
            let base = fast(sh, x, w, dy)
            let scratch = scratchBuffer(bytes: sh.scratchBytes(threads: Threads.count))
            defer { scratch.deallocate() }
            var pb = [Float](repeating: 0, count: sh.packedBackwardDataCount)
            conv2dPackBackwardData(sh, weights: w, packed: &pb)
            var dx = [Float](repeating: 1, count: sh.inputCount)
            var dw = [Float](repeating: 2, count: sh.weightCount)
            conv2dBackwardData(sh, gradOutput: dy, packed: pb, gradInput: &dx, accumulate: true, scratch: scratch)
            conv2dBackwardWeight(sh, input: x, gradOutput: dy, gradWeight: &dw, accumulate: true, scratch: scratch)
            XCTAssertLessThanOrEqual(toleranceRatio(dx, base.dx.map { $0 + 1 }, atol: 1e-5, rtol: 1e-5), 1)
            XCTAssertLessThanOrEqual(toleranceRatio(dw, base.dw.map { $0 + 2 }, atol: 1e-5, rtol: 1e-5), 1)
        }
    }

    /// Finite differences on L = sum(y * g): dL/dx and dL/dw from the fast backward kernels.
    func testGradientsMatchFiniteDifferences() {
        for sh in [
            Conv2DShape(n: 2, c: 3, h: 5, w: 5, k: 4, r: 3, s: 3, stride: 2, pad: 1),
            Conv2DShape(n: 1, c: 4, h: 4, w: 3, k: 5, r: 3, s: 3, stride: 1, pad: 1),
            Conv2DShape(n: 1, c: 8, h: 5, w: 6, k: 9, r: 3, s: 3, stride: 1, pad: 1)
        ].map(ConvPlan.testing) {
            var rng = TestRNG(seed: 7)
            var x = rng.array(sh.inputCount), w = rng.array(sh.weightCount)
            let g = rng.array(sh.outputCount)
            let scratch = scratchBuffer(bytes: sh.scratchBytes(threads: Threads.count))
            defer { scratch.deallocate() }
            func loss(_ x: [Float], _ w: [Float]) -> Double {
                var pf = [Float](repeating: 0, count: sh.packedForwardCount)
                var y = [Float](repeating: 0, count: sh.outputCount)
                conv2dPackForward(sh, weights: w, packed: &pf)
                conv2dForward(sh, input: x, packed: pf, output: &y, scratch: scratch)
                var s = 0.0
                for i in 0..<y.count { s += Double(y[i]) * Double(g[i]) }
                return s
            }
            let r = fast(sh, x, w, g)
            let xi = sampleIndices(x.count), wi = sampleIndices(w.count)
            let wFixed = w, xFixed = x
            // L is linear in x and in w: a large step has no truncation error and divides the
            // forward's rounding noise (Winograd's is ~1e-5 of the output scale) by more.
            let nx = numericGradient(&x, indices: xi, eps: 0.5) { loss($0, wFixed) }
            let nw = numericGradient(&w, indices: wi, eps: 0.5) { loss(xFixed, $0) }
            XCTAssertLessThan(gradientError(analytic: xi.map { Double(r.dx[$0]) }, numeric: nx), 1e-2, "dx \(sh)")
            XCTAssertLessThan(gradientError(analytic: wi.map { Double(r.dw[$0]) }, numeric: nw), 1e-2, "dw \(sh)")
        }
    }

    /// The Winograd forward's epilogue sums (ConvOutputSums, for the batch norm after it) are each
    /// tile's column sums of y - shift and of its square, over the tile's pixels inside the image
    /// (partial tiles at the edges, channels past a whole block of 16), the same bits with wide tiles
    /// or not and on 1-3 threads, and leave y as without them.
    func testWinogradOutputSumsAreTheTilesColumnSums() {
        defer { Threads.count = Threads.processors }
        for (i, shape) in Self.winogradShapes.enumerated() where shape.c * shape.k <= 300_000 {
            let sh = ConvPlan.testing(shape)
            var rng = TestRNG(seed: UInt64(700 + i))
            let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), shift = rng.array(sh.k, -0.5, 0.5)
            let plain = fast(sh, x, w, rng.array(sh.outputCount)).y
            let stride = ConvOutputSums.stride(sh), th = (sh.oh + 3) / 4, tw = (sh.ow + 3) / 4
            var first: [Float]? = nil
            for threads in [1, 2, 3] {
                Threads.count = threads
                for wide in [false, true] {
                    let sh = ConvPlan(shape, .testing(wideTiles: wide))
                    let scratch = scratchBuffer(bytes: sh.scratchBytes(threads: Threads.count))
                    defer { scratch.deallocate() }
                    var pf = [Float](repeating: .nan, count: sh.packedForwardCount)
                    var y = [Float](repeating: .nan, count: sh.outputCount)
                    var sums = [Float](repeating: 0, count: ConvOutputSums.count(sh))  // (lanes past K stay 0)
                    conv2dPackForward(sh, weights: w, packed: &pf)
                    sums.withUnsafeMutableBufferPointer { sb in
                        shift.withUnsafeBufferPointer { hb in
                            conv2dForward(
                                sh, input: x, packed: pf, output: &y, scratch: scratch,
                                outputSums: ConvOutputSums(sums: sb.baseAddress!, shift: hb.baseAddress!))
                        }
                    }
                    let what = "\(sh) threads \(threads) wide \(wide)"
                    XCTAssertEqual(y, plain, what)
                    if let first { XCTAssertEqual(sums, first, what) } else { first = sums }
                    // Against the sums of y itself, in double.
                    for t in 0..<sh.wgTiles {
                        let b = t / (th * tw), ty = (t / tw) % th, tx = t % tw
                        for k in 0..<sh.k {
                            var s1 = 0.0, s2 = 0.0, mag = 0.0
                            for oh in (ty * 4)..<min(ty * 4 + 4, sh.oh) {
                                for ow in (tx * 4)..<min(tx * 4 + 4, sh.ow) {
                                    let d = Double(y[((b * sh.oh + oh) * sh.ow + ow) * sh.k + k]) - Double(shift[k])
                                    s1 += d; s2 += d * d; mag += abs(d)
                                }
                            }
                            XCTAssertEqual(Double(sums[t * 2 * stride + k]), s1, accuracy: 1e-5 * (mag + 1), what)
                            XCTAssertEqual(
                                Double(sums[t * 2 * stride + stride + k]), s2, accuracy: 1e-5 * (s2 + 1), what)
                        }
                    }
                }
            }
        }
    }

    /// The cache budget of a 1 MB L2 / 32 MB L3 machine is the byte limits the plans were tuned with,
    /// and this machine's budget is read (Linux reports its caches) with the L2 inside the last level.
    func testCacheBudgetLimits() {
        let t = CacheBudget(l2: 1 << 20, lastLevel: 32 << 20)
        XCTAssertEqual(t, CacheBudget.tuned)
        XCTAssertEqual(
            [t.winogradBlock, t.winogradWeightsInL2, t.winogradBlockOuter, t.stride2Block],
            [1 << 20, 1 << 20, 1 << 20, 3 << 18])
        XCTAssertEqual(
            [t.winogradWeightsShared, t.sharedBlock, t.winogradFuseLimit, t.backwardPass],
            [4 << 20, 4 << 20, 8 << 20, 8 << 20])
        XCTAssertEqual([t.stride2PackLimit, t.winogradAllTiles], [6 << 20, 20 << 20])
        let m = CacheBudget.machine
        XCTAssertGreaterThanOrEqual(m.l2, 64 << 10)
        XCTAssertGreaterThanOrEqual(m.lastLevel, m.l2)
        let half = CacheBudget(l2: 512 << 10, lastLevel: 2 << 20)
        XCTAssertEqual(
            [half.winogradBlock, half.winogradFuseLimit, half.winogradAllTiles], [512 << 10, 512 << 10, 1280 << 10])
    }

}
