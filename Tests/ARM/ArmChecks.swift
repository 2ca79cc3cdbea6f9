// Kernel correctness checks for aarch64, compiled with Embedded Swift against the unmodified
// Sources/Kernels (cross-built by Tests/ARM/run.sh, run under qemu-aarch64 by `make test-arm`).
// Every fast kernel is held against its `...Naive` reference on seeded data over awkward shapes,
// with the OpenMP parallel-for on 2 threads. No Foundation, no XCTest: plain functions over pointers.
import Kernels
import ArmSupport

// MARK: - Support

/// Seeded data comes from the kernels' own SplitMix64 (Sources/Kernels/RNG.swift).
typealias RNG = SplitMix64

/// A float buffer owned by one check (freed with `free()`).
struct Buf {
    let p: UnsafeMutablePointer<Float>
    let count: Int
    init(_ count: Int, _ value: Float = .nan) {
        self.count = count
        p = .allocate(capacity: max(count, 1))
        p.initialize(repeating: value, count: max(count, 1))
    }
    init(random count: Int, _ rng: inout RNG, _ lo: Float = -1, _ hi: Float = 1) {
        self.init(count, 0)
        for i in 0..<count { p[i] = rng.uniform(lo, hi) }
    }
    func copy() -> Buf { let b = Buf(count); b.p.update(from: p, count: count); return b }
    var c: UnsafePointer<Float> { UnsafePointer(p) }
    func free() { p.deallocate() }
}

/// Largest |a - b| / (atol + rtol * |b|); <= 1 passes, NaN counts as infinite; atol = rtol = 0: exact.
func worstRatio(_ a: Buf, _ b: Buf, atol: Float, rtol: Float) -> Float {
    if a.count != b.count { return .infinity }
    var worst: Float = 0
    for i in 0..<a.count {
        let d = a.p[i] - b.p[i]
        if atol == 0 && rtol == 0 {  // exact
            if !(a.p[i] == b.p[i]) { return .infinity }
            continue
        }
        let e = (d < 0 ? -d : d) / (atol + rtol * (b.p[i] < 0 ? -b.p[i] : b.p[i]))
        if !(e <= worst) { worst = e.isNaN ? .infinity : e }
    }
    return worst
}

var failures = 0
var checks = 0

func note(_ s: String) { withC(s) { salient_arm_note($0) } }

func withC<R>(_ s: String, _ body: (UnsafePointer<CChar>) -> R) -> R {
    var t = s
    return t.withUTF8 { u in
        let tmp = UnsafeMutablePointer<CChar>.allocate(capacity: u.count + 1)
        defer { tmp.deallocate() }
        for i in 0..<u.count { tmp[i] = CChar(bitPattern: u[i]) }
        tmp[u.count] = 0
        return body(UnsafePointer(tmp))
    }
}

/// Compares and prints one line; counts a failure when the ratio exceeds 1.
func expect(_ kernel: String, _ shape: String, _ fast: Buf, _ ref: Buf, atol: Float = 1e-4, rtol: Float = 1e-4) {
    expectAll(kernel, shape, [(fast, ref, atol, rtol)])
}

/// One line for several outputs of one kernel call: the worst ratio over all of them.
func expectAll(_ kernel: String, _ shape: String, _ parts: [(Buf, Buf, Float, Float)]) {
    var w: Float = 0
    for (a, b, atol, rtol) in parts {
        let r = worstRatio(a, b, atol: atol, rtol: rtol)
        if !(r <= w) { w = r }
    }
    let ok = w <= 1
    checks += 1
    if !ok { failures += 1 }
    withC(kernel) { k in
        withC(shape) { s in
            salient_arm_report(k, s, Int32(Threads.count), Double(w), ok ? 1 : 0)
        }
    }
}

/// Exact comparison (kernels that only select or add values): err/tol is 0 or infinite.
func expectExact(_ kernel: String, _ shape: String, _ parts: [(Buf, Buf)]) {
    expectAll(kernel, shape, parts.map { ($0.0, $0.1, 0, 0) })
}

/// 0 where two index arrays agree, NaN where not (then compared exactly against zeros).
func exactInt32(_ a: UnsafeMutablePointer<Int32>, _ b: UnsafeMutablePointer<Int32>, _ n: Int) -> Buf {
    let d = Buf(n, 0)
    for i in 0..<n where a[i] != b[i] { d.p[i] = .nan }
    return d
}

func scratch(_ bytes: Int) -> UnsafeMutableRawPointer {
    UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 64), alignment: 64)
}

// MARK: - Convolution (forward, backward-data, backward-weights)

/// The kernel tests' awkward shapes and their Winograd shapes (Tests/TestSupport/KernelShapes.swift),
/// less the largest, whose float64 references take minutes under qemu.
let convShapes = KernelShapes.convolutions + KernelShapes.winograd.filter { $0.flops < 1e8 && $0.c * $0.k < 100_000 }

func describe(_ sh: Conv2DShape) -> String {
    "n\(sh.n) c\(sh.c) \(sh.h)x\(sh.w) k\(sh.k) \(sh.r)x\(sh.s) s\(sh.stride) p\(sh.pad)"
}

/// Once with the build's default register tiles, once with the other kind (WideTiles.swift: 12 rows of
/// one SIMD16 each, two NEON q pairs per row here), so both are held against the references.
func checkConv() {
    for wide in [wideTilesDefault, !wideTilesDefault] {
        checkConvShapes(ExecutionConfig(wideTiles: wide), tiles: wide ? " wide" : "")
    }
}

func checkConvShapes(_ config: ExecutionConfig, tiles: String) {
    for (i, shape) in convShapes.enumerated() {
        let sh = ConvPlan(shape, config)
        var rng = RNG(seed: UInt64(i + 1))
        let x = Buf(random: sh.inputCount, &rng), w = Buf(random: sh.weightCount, &rng)
        let dy = Buf(random: sh.outputCount, &rng)
        let sc = scratch(sh.scratchBytes(threads: Threads.count))
        let pf = Buf(sh.packedForwardCount), pb = Buf(sh.packedBackwardDataCount)
        let y = Buf(sh.outputCount), dx = Buf(sh.inputCount), dw = Buf(sh.weightCount)
        let yN = Buf(sh.outputCount, 0), dxN = Buf(sh.inputCount, 0), dwN = Buf(sh.weightCount, 0)
        conv2dPackForward(sh, weights: w.c, packed: pf.p)
        conv2dPackBackwardData(sh, weights: w.c, packed: pb.p)
        conv2dForward(sh, input: x.c, packed: pf.c, output: y.p, scratch: sc)
        conv2dBackwardData(sh, gradOutput: dy.c, packed: pb.c, gradInput: dx.p, scratch: sc)
        conv2dBackwardWeight(sh, input: x.c, gradOutput: dy.c, gradWeight: dw.p, scratch: sc)
        conv2dForwardNaive(shape, input: x.c, weights: w.c, output: yN.p)
        conv2dBackwardDataNaive(shape, gradOutput: dy.c, weights: w.c, gradInput: dxN.p)
        conv2dBackwardWeightNaive(shape, input: x.c, gradOutput: dy.c, gradWeight: dwN.p)
        let d = describe(shape) + (sh.usesWinograd ? " winograd" : "") + tiles
        // Winograd's transforms scale values by up to 8: its error is ~1e-5 of the output's scale.
        func scaled(_ ref: Buf) -> Float {
            if !sh.usesWinograd { return 1e-4 }
            var m: Float = 0
            for j in 0..<ref.count { m = max(m, abs(ref.p[j])) }
            return 1e-5 * m
        }
        expect("conv2d forward", d, y, yN, atol: scaled(yN))
        expect("conv2d backward-data", d, dx, dxN, atol: scaled(dxN))
        expect("conv2d backward-weights", d, dw, dwN, atol: scaled(dwN))
        // accumulate: true adds into what is there.
        if i % 3 == 1 {
            let dxA = Buf(sh.inputCount, 1), dwA = Buf(sh.weightCount, 2)
            conv2dBackwardData(sh, gradOutput: dy.c, packed: pb.c, gradInput: dxA.p, accumulate: true, scratch: sc)
            conv2dBackwardWeight(sh, input: x.c, gradOutput: dy.c, gradWeight: dwA.p, accumulate: true, scratch: sc)
            for j in 0..<dxN.count { dxN.p[j] += 1 }
            for j in 0..<dwN.count { dwN.p[j] += 2 }
            expect("conv2d backward-data +=", d, dxA, dxN, atol: scaled(dxN))
            expect("conv2d backward-weights +=", d, dwA, dwN, atol: scaled(dwN))
            dxA.free(); dwA.free()
        }
        for b in [x, w, dy, pf, pb, y, dx, dw, yN, dxN, dwN] { b.free() }
        sc.deallocate()
    }
}

// MARK: - Batch norm (training forward, inference forward, backward; fused ReLU)

/// Both vector widths, as checkConv (wide: 16 channels per vector while whole).
func checkBatchNorm() {
    for wide in [wideTilesDefault, !wideTilesDefault] { checkBatchNormShapes(wide: wide, tiles: wide ? " wide" : "") }
}

func checkBatchNormShapes(wide: Bool, tiles: String) {
    for (i, sh) in KernelShapes.batchNorm.enumerated() {
        var rng = RNG(seed: UInt64(10 + i))
        let C = sh.channels
        let x = Buf(random: sh.count, &rng, 99, 101)  // mean far from zero
        let xi = Buf(random: sh.count, &rng, -3, 3)
        let dy = Buf(random: sh.count, &rng), base = Buf(random: sh.count, &rng)
        let gamma = Buf(random: C, &rng, 0.5, 1.5), beta = Buf(random: C, &rng, -0.5, 0.5)
        let rm = Buf(random: C, &rng), rv = Buf(random: C, &rng, 0.5, 2)
        let sc = scratch(batchNormScratchBytes(sh, threads: Threads.count))
        let d = "P\(sh.pixels) C\(C)" + tiles
        for relu in [false, true] {
            let tag = relu ? " +relu" : ""
            let y = Buf(sh.count), mean = Buf(C), inv = Buf(C), frm = rm.copy(), frv = rv.copy()
            let yN = Buf(sh.count), meanN = Buf(C), invN = Buf(C), nrm = rm.copy(), nrv = rv.copy()
            batchNormForwardTraining(
                sh, input: x.c, gamma: gamma.c, beta: beta.c, runningMean: frm.p, runningVar: frv.p,
                momentum: 0.1, eps: 1e-5, relu: relu, output: y.p, saveMean: mean.p,
                saveInvStd: inv.p, scratch: sc, wide: wide)
            batchNormForwardTrainingNaive(
                sh, input: x.c, gamma: gamma.c, beta: beta.c, runningMean: nrm.p,
                runningVar: nrv.p, momentum: 0.1, eps: 1e-5, relu: relu, output: yN.p,
                saveMean: meanN.p, saveInvStd: invN.p)
            expectAll(
                "batchnorm forward-train" + tag, d + " (y mean invstd running)",
                [
                    (y, yN, 2e-4, 1e-4), (mean, meanN, 0, 1e-6), (inv, invN, 0, 2e-4),
                    (frm, nrm, 0, 1e-6), (frv, nrv, 1e-6, 1e-4)
                ])

            let yi = Buf(sh.count), yiN = Buf(sh.count)
            batchNormForwardInference(
                sh, input: xi.c, gamma: gamma.c, beta: beta.c, runningMean: rm.c,
                runningVar: rv.c, eps: 1e-5, relu: relu, output: yi.p)
            batchNormForwardInferenceNaive(
                sh, input: xi.c, gamma: gamma.c, beta: beta.c, runningMean: rm.c,
                runningVar: rv.c, eps: 1e-5, relu: relu, output: yiN.p)
            expectAll("batchnorm forward-eval" + tag, d, [(yi, yiN, 1e-5, 1e-5)])

            for acc in [false, true] {
                let dx = acc ? base.copy() : Buf(sh.count), dxN = acc ? base.copy() : Buf(sh.count)
                let dg = Buf(C), db = Buf(C), dgN = Buf(C), dbN = Buf(C)
                let yArg: UnsafePointer<Float>? = relu ? y.c : nil
                batchNormBackward(
                    sh, input: x.c, output: yArg, gradOutput: dy.c, gamma: gamma.c, saveMean: mean.c,
                    saveInvStd: inv.c, relu: relu, gradInput: dx.p, gradGamma: dg.p, gradBeta: db.p,
                    accumulate: acc, scratch: sc, wide: wide)
                batchNormBackwardNaive(
                    sh, input: x.c, output: yArg, gradOutput: dy.c, gamma: gamma.c, saveMean: mean.c,
                    saveInvStd: inv.c, relu: relu, gradInput: dxN.p, gradGamma: dgN.p,
                    gradBeta: dbN.p, accumulate: acc)
                expectAll(
                    "batchnorm backward" + tag + (acc ? " +=" : ""), d + " (dx dgamma dbeta)",
                    [(dx, dxN, 1e-4, 1e-3), (dg, dgN, 1e-4, 1e-3), (db, dbN, 1e-4, 1e-4)])
                for b in [dx, dxN, dg, db, dgN, dbN] { b.free() }
            }
            for b in [y, mean, inv, frm, frv, yN, meanN, invN, nrm, nrv, yi, yiN] { b.free() }
        }
        for b in [x, xi, dy, base, gamma, beta, rm, rv] { b.free() }
        sc.deallocate()
    }
}

// MARK: - Batch norms applied by their consumers (bit for bit against the written outputs)

/// A mid-block batch norm + ReLU applied in the Winograd input transforms (forward, backward-weights; two
/// groups of images with their own rows), the backward's ReLU mask rebuilt from the saved statistics,
/// and a downsampling block's two batch norms summed in one pass: each gives the bits of writing the
/// batch-norm output and reading it back.
func checkFusedBatchNorm() {
    let sh = ConvPlan(Conv2DShape(n: 4, c: 12, h: 7, w: 9, k: 20, r: 3, s: 3, stride: 1, pad: 1), ExecutionConfig())
    let bs = BatchNormShape(pixels: sh.inputCount / sh.c, channels: sh.c)
    let C = sh.c, groups = 2
    var rng = RNG(seed: 77)
    let x = Buf(random: sh.inputCount, &rng), w = Buf(random: sh.weightCount, &rng),
        dy = Buf(random: sh.outputCount, &rng)
    let x2 = Buf(random: sh.inputCount, &rng), dyb = Buf(random: sh.inputCount, &rng)
    let gamma = Buf(random: C, &rng, 0.5, 1.5), beta = Buf(random: C, &rng, -0.5, 0.5)
    let gamma2 = Buf(random: C, &rng, 0.5, 1.5), beta2 = Buf(random: C, &rng, -0.5, 0.5)
    let rm = Buf(C, 0), rv = Buf(C, 1), rm2 = Buf(C, 0), rv2 = Buf(C, 1)
    let mean = Buf(C), inv = Buf(C), mean2 = Buf(C), inv2 = Buf(C)
    let cp = bnPadded(C)
    let rowsM = Buf(groups * cp, 0), rowsS = Buf(groups * cp, 0), rowsM2 = Buf(groups * cp, 0),
        rowsS2 = Buf(groups * cp, 0)
    let sc = scratch(max(sh.scratchBytes(threads: Threads.count), batchNormScratchBytes(bs, threads: Threads.count)))
    // Statistics and the written output of the same batch norm (two groups).
    batchNormTrainingStatistics(
        bs, input: x.c, gamma: gamma.c, runningMean: rm.p, runningVar: rv.p, momentum: 0.1, eps: 1e-5,
        saveMean: mean.p, saveInvStd: inv.p, groups: groups, mean: rowsM.p, scale: rowsS.p, scratch: sc,
        wide: wideTilesDefault)
    let xn = Buf(sh.inputCount)
    batchNormForwardTraining(
        bs, input: x.c, gamma: gamma.c, beta: beta.c, runningMean: rm.p, runningVar: rv.p, momentum: 0.1,
        eps: 1e-5, relu: true, output: xn.p, saveMean: mean.p, saveInvStd: inv.p, groups: groups, scratch: sc,
        wide: wideTilesDefault)
    let affine = ConvInputAffine(
        mean: rowsM.c, scale: rowsS.c, shift: beta.c, groupStride: cp, imagesPerGroup: sh.n / groups)
    let pf = Buf(sh.packedForwardCount)
    conv2dPackForward(sh, weights: w.c, packed: pf.p)
    let y = Buf(sh.outputCount), yF = Buf(sh.outputCount), dw = Buf(sh.weightCount), dwF = Buf(sh.weightCount)
    conv2dForward(sh, input: xn.c, packed: pf.c, output: y.p, scratch: sc)
    conv2dForward(sh, input: x.c, packed: pf.c, output: yF.p, scratch: sc, inputAffine: affine)
    conv2dBackwardWeight(sh, input: xn.c, gradOutput: dy.c, gradWeight: dw.p, scratch: sc)
    conv2dBackwardWeight(sh, input: x.c, gradOutput: dy.c, gradWeight: dwF.p, scratch: sc, inputAffine: affine)
    let d = describe(sh.shape) + " 2 groups"
    expectExact("winograd input affine (forward, backward-weights)", d, [(yF, y), (dwF, dw)])
    // Backward with the ReLU mask from x, beta and the saved statistics (one group).
    let y1 = Buf(sh.inputCount)
    batchNormForwardTraining(
        bs, input: x.c, gamma: gamma.c, beta: beta.c, runningMean: rm.p, runningVar: rv.p, momentum: 0.1,
        eps: 1e-5, relu: true, output: y1.p, saveMean: mean.p, saveInvStd: inv.p, scratch: sc, wide: wideTilesDefault)
    var outs: [Buf] = []
    for given in [true, false] {
        let dx = Buf(sh.inputCount), dg = Buf(C), db = Buf(C)
        batchNormBackward(
            bs, input: x.c, output: given ? y1.c : nil, gradOutput: dyb.c, gamma: gamma.c, beta: beta.c,
            saveMean: mean.c, saveInvStd: inv.c, relu: true, gradInput: dx.p, gradGamma: dg.p, gradBeta: db.p,
            accumulate: false, scratch: sc, wide: wideTilesDefault)
        outs += [dx, dg, db]
    }
    expectExact(
        "batchnorm backward, mask from saved statistics", "P\(bs.pixels) C\(C)",
        [(outs[3], outs[0]), (outs[4], outs[1]), (outs[5], outs[2])])
    // relu(BN(x2) + BN(x)) in one pass against BN(x) written, then added as the residual.
    batchNormTrainingStatistics(
        bs, input: x2.c, gamma: gamma2.c, runningMean: rm2.p, runningVar: rv2.p, momentum: 0.1,
        eps: 1e-5, saveMean: mean2.p, saveInvStd: inv2.p, groups: groups, mean: rowsM2.p,
        scale: rowsS2.p, scratch: sc, wide: wideTilesDefault)
    let main = Buf(sh.inputCount), sum = Buf(sh.inputCount), fused = Buf(sh.inputCount)
    batchNormForwardTraining(
        bs, input: x.c, gamma: gamma.c, beta: beta.c, runningMean: rm.p, runningVar: rv.p, momentum: 0.1,
        eps: 1e-5, relu: false, output: main.p, saveMean: mean.p, saveInvStd: inv.p, groups: groups,
        scratch: sc, wide: wideTilesDefault)
    batchNormForwardTraining(
        bs, input: x2.c, gamma: gamma2.c, beta: beta2.c, runningMean: rm2.p, runningVar: rv2.p,
        momentum: 0.1, eps: 1e-5, relu: true, residual: main.c, output: sum.p, saveMean: mean2.p,
        saveInvStd: inv2.p, groups: groups, scratch: sc, wide: wideTilesDefault)
    batchNormApplySum(
        bs, input: x2.c, mean: rowsM2.c, scale: rowsS2.c, beta: beta2.c,
        addend: BNAddend(x: x.c, mean: rowsM.c, scale: rowsS.c, shift: beta.c), output: fused.p, groups: groups,
        groupStride: cp, wide: wideTilesDefault)
    expectExact("batchnorm sum of two (downsampling block end)", "P\(bs.pixels) C\(C) 2 groups", [(fused, sum)])
    for b in [
        x, w, dy, x2, dyb, gamma, beta, gamma2, beta2, rm, rv, rm2, rv2, mean, inv, mean2, inv2, rowsM, rowsS, rowsM2,
        rowsS2, xn, pf, y, yF, dw, dwF, y1, main, sum, fused
    ] + outs { b.free() }
    sc.deallocate()
}

// MARK: - Pooling (max pool forward/backward with ties, global average pool forward/backward)

let poolShapes: [MaxPoolShape] = [
    MaxPoolShape(n: 1, c: 3, h: 7, w: 7),
    MaxPoolShape(n: 2, c: 13, h: 3, w: 3),
    MaxPoolShape(n: 1, c: 1, h: 1, w: 1),
    MaxPoolShape(n: 2, c: 33, h: 8, w: 6),
    MaxPoolShape(n: 3, c: 16, h: 7, w: 5),
    MaxPoolShape(n: 1, c: 8, h: 6, w: 6, kernel: 2, stride: 2, pad: 0),
    MaxPoolShape(n: 2, c: 9, h: 4, w: 5, kernel: 3, stride: 1, pad: 1),
    MaxPoolShape(n: 1, c: 64, h: 9, w: 9)
]

let avgShapes: [(n: Int, hw: Int, c: Int)] = [(1, 1, 1), (2, 9, 3), (1, 49, 13), (3, 16, 33), (5, 7, 64)]

func checkPooling() {
    for (i, sh) in poolShapes.enumerated() {
        var rng = RNG(seed: UInt64(i + 1))
        // Few distinct values: many ties, which must resolve to the first position in window order.
        let x = Buf(random: sh.inputCount, &rng)
        for j in 0..<x.count { x.p[j] = (x.p[j] * 2).rounded() }
        let dy = Buf(random: sh.outputCount, &rng)
        let y = Buf(sh.outputCount), yN = Buf(sh.outputCount)
        let a = UnsafeMutablePointer<Int32>.allocate(capacity: max(sh.outputCount, 1))
        let aN = UnsafeMutablePointer<Int32>.allocate(capacity: max(sh.outputCount, 1))
        a.initialize(repeating: -7, count: sh.outputCount); aN.initialize(repeating: -7, count: sh.outputCount)
        maxPoolForward(sh, input: x.c, output: y.p, argmax: a)
        maxPoolForwardNaive(sh, input: x.c, output: yN.p, argmax: aN)
        let d = "n\(sh.n) c\(sh.c) \(sh.h)x\(sh.w) k\(sh.kernel) s\(sh.stride) p\(sh.pad)"
        let am = exactInt32(a, aN, sh.outputCount), zero = Buf(sh.outputCount, 0)
        expectExact("maxpool forward (exact)", d + " (y argmax)", [(y, yN), (am, zero)])
        let dx = Buf(sh.inputCount), dxN = Buf(sh.inputCount)
        maxPoolBackward(sh, gradOutput: dy.c, argmax: UnsafePointer(a), gradInput: dx.p)
        maxPoolBackwardNaive(sh, gradOutput: dy.c, argmax: UnsafePointer(aN), gradInput: dxN.p)
        expectAll("maxpool backward", d, [(dx, dxN, 1e-6, 1e-6)])
        for b in [x, dy, y, yN, am, zero, dx, dxN] { b.free() }
        a.deallocate(); aN.deallocate()
    }
    for (i, s) in avgShapes.enumerated() {
        var rng = RNG(seed: UInt64(20 + i))
        let count = s.n * s.hw * s.c
        let x = Buf(random: count, &rng, 9, 11), dy = Buf(random: s.n * s.c, &rng), base = Buf(random: count, &rng)
        let y = Buf(s.n * s.c), yN = Buf(s.n * s.c)
        globalAvgPoolForward(n: s.n, pixels: s.hw, channels: s.c, input: x.c, output: y.p)
        globalAvgPoolForwardNaive(n: s.n, pixels: s.hw, channels: s.c, input: x.c, output: yN.p)
        let d = "n\(s.n) pixels\(s.hw) c\(s.c)"
        expectAll("global avgpool forward", d, [(y, yN, 1e-6, 1e-6)])
        for acc in [false, true] {
            let dx = acc ? base.copy() : Buf(count), dxN = acc ? base.copy() : Buf(count)
            globalAvgPoolBackward(
                n: s.n, pixels: s.hw, channels: s.c, gradOutput: dy.c, gradInput: dx.p, accumulate: acc)
            globalAvgPoolBackwardNaive(
                n: s.n, pixels: s.hw, channels: s.c, gradOutput: dy.c, gradInput: dxN.p,
                accumulate: acc)
            expectAll("global avgpool backward" + (acc ? " +=" : ""), d, [(dx, dxN, 1e-6, 1e-6)])
            dx.free(); dxN.free()
        }
        for b in [x, dy, base, y, yN] { b.free() }
    }
}

// MARK: - Linear (forward with/without bias, backward dx/dW/db)

/// Batch 1, features not multiples of 8, tiles and blocks with remainders, a wide and a tall one.
let linearShapes: [LinearShape] = [
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

func checkLinear() {
    for (i, sh) in linearShapes.enumerated() {
        var rng = RNG(seed: UInt64(i + 1))
        let x = Buf(random: sh.inputCount, &rng), w = Buf(random: sh.weightCount, &rng)
        let b = Buf(random: sh.outFeatures, &rng), dy = Buf(random: sh.outputCount, &rng)
        let bx = Buf(random: sh.inputCount, &rng), bw = Buf(random: sh.weightCount, &rng)
        let bb = Buf(random: sh.outFeatures, &rng)
        let d = "batch\(sh.batch) in\(sh.inFeatures) out\(sh.outFeatures)"
        for withBias in [false, true] {
            let y = Buf(sh.outputCount), yN = Buf(sh.outputCount)
            linearForward(sh, input: x.c, weight: w.c, bias: withBias ? b.c : nil, output: y.p)
            linearForwardNaive(sh, input: x.c, weight: w.c, bias: withBias ? b.c : nil, output: yN.p)
            expectAll("linear forward" + (withBias ? " +bias" : ""), d, [(y, yN, 1e-4, 1e-4)])
            y.free(); yN.free()
        }
        for acc in [false, true] {
            let dx = acc ? bx.copy() : Buf(sh.inputCount), dxN = acc ? bx.copy() : Buf(sh.inputCount)
            let dw = acc ? bw.copy() : Buf(sh.weightCount), dwN = acc ? bw.copy() : Buf(sh.weightCount)
            let db = acc ? bb.copy() : Buf(sh.outFeatures), dbN = acc ? bb.copy() : Buf(sh.outFeatures)
            linearBackward(
                sh, input: x.c, weight: w.c, gradOutput: dy.c, gradInput: dx.p, gradWeight: dw.p,
                gradBias: db.p, accumulate: acc)
            linearBackwardNaive(
                sh, input: x.c, weight: w.c, gradOutput: dy.c, gradInput: dxN.p, gradWeight: dwN.p,
                gradBias: dbN.p, accumulate: acc)
            expectAll(
                "linear backward" + (acc ? " +=" : ""), d + " (dx dW db)",
                [(dx, dxN, 1e-4, 1e-4), (dw, dwN, 1e-4, 1e-4), (db, dbN, 1e-4, 1e-4)])
            for q in [dx, dxN, dw, dwN, db, dbN] { q.free() }
        }
        for q in [x, w, b, dy, bx, bw, bb] { q.free() }
    }
}

// MARK: - Elementwise (ReLU forward/backward, residual add (+ReLU), scaled add)

/// Counts around the vector width and one past the parallel grain (so both threads work).
let elementCounts = [1, 3, 7, 8, 13, 33, 100_003]

func checkElementwise() {
    for (i, n) in elementCounts.enumerated() {
        var rng = RNG(seed: UInt64(i + 1))
        let x = Buf(random: n, &rng), dy = Buf(random: n, &rng), base = Buf(random: n, &rng)
        let b = Buf(random: n, &rng)
        let d = "count \(n)"
        let y = Buf(n), yN = Buf(n)
        reluForward(count: n, input: x.c, output: y.p)
        reluForwardNaive(count: n, input: x.c, output: yN.p)
        expectExact("relu forward (exact)", d, [(y, yN)])
        for acc in [false, true] {
            let dx = acc ? base.copy() : Buf(n), dxN = acc ? base.copy() : Buf(n)
            reluBackward(count: n, output: y.c, gradOutput: dy.c, gradInput: dx.p, accumulate: acc)
            reluBackwardNaive(count: n, output: yN.c, gradOutput: dy.c, gradInput: dxN.p, accumulate: acc)
            expectExact("relu backward" + (acc ? " +=" : "") + " (exact)", d, [(dx, dxN)])
            dx.free(); dxN.free()
        }
        for relu in [false, true] {
            let s = Buf(n), sN = Buf(n)
            addForward(count: n, x.c, b.c, relu: relu, output: s.p)
            addForwardNaive(count: n, x.c, b.c, relu: relu, output: sN.p)
            expectExact("add forward" + (relu ? " +relu" : "") + " (exact)", d, [(s, sN)])
            s.free(); sN.free()
        }
        let t = base.copy(), tN = base.copy()
        scaleAdd(count: n, alpha: -0.37, x: x.c, y: t.p)
        scaleAddNaive(count: n, alpha: -0.37, x: x.c, y: tN.p)
        expectAll("scale-add (axpy)", d, [(t, tN, 1e-6, 1e-6)])
        for q in [x, dy, base, b, y, yN, t, tN] { q.free() }
    }
}

// MARK: - L2 normalisation (forward, backward)

let normShapes: [(rows: Int, dim: Int)] = [(1, 1), (3, 7), (5, 13), (2, 33), (9, 128), (700, 64)]

func checkNormalize() {
    for (i, s) in normShapes.enumerated() {
        var rng = RNG(seed: UInt64(i + 1))
        let n = s.rows * s.dim
        let x = Buf(random: n, &rng), dy = Buf(random: n, &rng), base = Buf(random: n, &rng)
        if s.rows > 1 { for j in 0..<s.dim { x.p[s.dim + j] = 0 } }  // an all-zero row (eps path)
        let y = Buf(n), yN = Buf(n), nr = Buf(s.rows), nrN = Buf(s.rows)
        l2NormalizeForward(rows: s.rows, dim: s.dim, input: x.c, output: y.p, norms: nr.p)
        l2NormalizeForwardNaive(rows: s.rows, dim: s.dim, input: x.c, output: yN.p, norms: nrN.p)
        let d = "rows\(s.rows) dim\(s.dim)"
        expectAll("l2norm forward", d + " (y norms)", [(y, yN, 1e-6, 1e-5), (nr, nrN, 1e-7, 1e-5)])
        for acc in [false, true] {
            let dx = acc ? base.copy() : Buf(n), dxN = acc ? base.copy() : Buf(n)
            l2NormalizeBackward(
                rows: s.rows, dim: s.dim, output: yN.c, norms: nrN.c, gradOutput: dy.c,
                gradInput: dx.p, accumulate: acc)
            l2NormalizeBackwardNaive(
                rows: s.rows, dim: s.dim, output: yN.c, norms: nrN.c, gradOutput: dy.c,
                gradInput: dxN.p, accumulate: acc)
            expectAll("l2norm backward" + (acc ? " +=" : ""), d, [(dx, dxN, 1e-5, 1e-4)])
            dx.free(); dxN.free()
        }
        for q in [x, dy, base, y, yN, nr, nrN] { q.free() }
    }
}

// MARK: - Softmax cross-entropy (forward loss + probabilities, backward)

let lossShapes: [(rows: Int, classes: Int)] = [(1, 1), (3, 7), (5, 33), (4, 1000), (2, 4097), (300, 65)]

func checkLoss() {
    for (i, s) in lossShapes.enumerated() {
        var rng = RNG(seed: UInt64(i + 1))
        let n = s.rows * s.classes
        let logits = Buf(random: n, &rng, -5, 5)
        let lab = UnsafeMutablePointer<Int32>.allocate(capacity: s.rows)
        for r in 0..<s.rows { lab[r] = Int32(rng.next() % UInt64(s.classes)) }
        let p = Buf(n), pN = Buf(n)
        let loss = Buf(1), lossN = Buf(1)
        loss.p[0] = softmaxCrossEntropyForward(
            rows: s.rows, classes: s.classes, logits: logits.c, labels: lab, probs: p.p)
        lossN.p[0] = softmaxCrossEntropyForwardNaive(
            rows: s.rows, classes: s.classes, logits: logits.c, labels: lab,
            probs: pN.p)
        let d = "rows\(s.rows) classes\(s.classes)"
        let lt = lossN.p[0] < 0 ? -lossN.p[0] : lossN.p[0]
        expectAll(
            "softmax-xent forward", d + " (loss probs)", [(loss, lossN, 1e-5 * max(1, lt), 0), (p, pN, 1e-7, 1e-5)])
        let g = Buf(n), gN = Buf(n)
        softmaxCrossEntropyBackward(
            rows: s.rows, classes: s.classes, probs: pN.c, labels: lab, scale: 1 / Float(s.rows),
            gradLogits: g.p)
        softmaxCrossEntropyBackwardNaive(
            rows: s.rows, classes: s.classes, probs: pN.c, labels: lab,
            scale: 1 / Float(s.rows), gradLogits: gN.p)
        expectAll("softmax-xent backward", d, [(g, gN, 1e-7, 1e-6)])
        for q in [logits, p, pN, loss, lossN, g, gN] { q.free() }
        lab.deallocate()
    }
}

// MARK: - SGD (momentum + weight decay step, EMA momentum update)

func checkSGD() {
    for (i, n) in [1, 13, 37, 1027, 100_003].enumerated() {
        var rng = RNG(seed: UInt64(40 + i))
        let p = Buf(random: n, &rng), buf = Buf(n, 0)
        let pN = p.copy(), bufN = buf.copy()
        for _ in 0..<3 {
            let g = Buf(random: n, &rng)
            sgdStep(
                count: n, params: p.p, grads: g.c, momentumBuffer: buf.p, lr: 0.05, momentum: 0.9, weightDecay: 1e-3)
            sgdStepNaive(
                count: n, params: pN.p, grads: g.c, momentumBuffer: bufN.p, lr: 0.05, momentum: 0.9,
                weightDecay: 1e-3)
            g.free()
        }
        expectAll(
            "sgd step x3 (m 0.9, wd 1e-3)", "count \(n) (params momentum-buffer)",
            [(p, pN, 1e-6, 1e-6), (buf, bufN, 1e-6, 1e-6)])
        let s = Buf(random: n, &rng), t = Buf(random: n, &rng)
        let tN = t.copy()
        momentumUpdate(count: n, target: t.p, source: s.c, m: 0.999)
        momentumUpdateNaive(count: n, target: tN.p, source: s.c, m: 0.999)
        expectAll("momentum (EMA) update", "count \(n) m 0.999", [(t, tN, 1e-6, 1e-6)])
        for q in [p, buf, pN, bufN, s, t, tN] { q.free() }
    }
}

// MARK: - Entry point

/// Runs every check; returns the number of failures (the C harness exits non-zero on any).
@_cdecl("salient_arm_checks")
public func salientArmChecks() -> Int {
    Threads.count = 2
    // Which OpenMP threads actually ran a 2-way parallelFor.
    let seen = UnsafeMutablePointer<Int>.allocate(capacity: 2)
    seen.initialize(repeating: 0, count: 2)
    parallelFor(2) { lo, hi, t in if t < 2 { seen[t] = hi - lo } }
    let ran = (seen[0] > 0 ? 1 : 0) + (seen[1] > 0 ? 1 : 0)
    seen.deallocate()
    note(
        "salient kernels on aarch64 (Embedded Swift, qemu-user): OpenMP \(Threads.hasOpenMP ? "on" : "OFF"), "
            + "threads \(Threads.count), \(ran) threads ran a 2-way parallelFor")
    if !Threads.hasOpenMP || ran != 2 {
        note("FAIL the parallel-for did not run on 2 OpenMP threads")
        failures += 1
    }
    note("-- conv2d: forward, backward-data, backward-weights (+= accumulate) vs naive, \(convShapes.count) shapes")
    checkConv()
    let bnCount = KernelShapes.batchNorm.count
    note("-- batch norm: training forward, eval forward, backward (fused ReLU, +=) vs naive, \(bnCount) shapes")
    checkBatchNorm()
    note("-- batch norms applied by their consumers: Winograd input affine, mask from saved statistics, sum of two")
    checkFusedBatchNorm()
    note("-- pooling: 3x3/2x2 max pool forward (ties) and backward, global average pool vs naive")
    checkPooling()
    note("-- linear: forward (+bias), backward dx/dW/db (+=) vs naive, \(linearShapes.count) shapes")
    checkLinear()
    note("-- elementwise: ReLU, residual add (+ReLU), axpy vs naive")
    checkElementwise()
    note("-- L2 normalise: forward, backward (+=) vs naive (a zero row included)")
    checkNormalize()
    note("-- softmax cross-entropy: forward (loss, probabilities), backward vs naive")
    checkLoss()
    note("-- SGD: momentum + weight-decay step (3 steps), EMA momentum update vs naive")
    checkSGD()
    note("test-arm: \(checks - failures) passed, \(failures) failed")
    return failures
}
