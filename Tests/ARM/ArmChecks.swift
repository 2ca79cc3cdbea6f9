// Kernel correctness checks for aarch64, compiled with Embedded Swift against the unmodified
// Sources/Kernels (cross-built by Tests/ARM/run.sh, run under qemu-aarch64 by `make test-arm`).
// Every fast kernel is held against its `...Naive` reference on seeded data over awkward shapes,
// with the OpenMP parallel-for on 2 threads. No Foundation, no XCTest: plain functions over pointers.
import Kernels
import ArmSupport

// MARK: - Support

/// SplitMix64, the same generator as Tests/TestSupport, so data is reproducible.
struct RNG {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E3779B97F4A7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
    mutating func uniform(_ lo: Float = -1, _ hi: Float = 1) -> Float {
        lo + (hi - lo) * Float(next() >> 40) / Float(1 << 24)
    }
}

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

/// Largest |a - b| / (atol + rtol * |b|); <= 1 passes, NaN counts as infinite.
func worstRatio(_ a: Buf, _ b: Buf, atol: Float, rtol: Float) -> Float {
    if a.count != b.count { return .infinity }
    var worst: Float = 0
    for i in 0..<a.count {
        let d = a.p[i] - b.p[i]
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
    let w = worstRatio(fast, ref, atol: atol, rtol: rtol)
    let ok = w <= 1
    checks += 1
    if !ok { failures += 1 }
    withC(kernel) { k in withC(shape) { s in
        salient_arm_report(k, s, Int32(Threads.count), Double(w), ok ? 1 : 0)
    } }
}

func scratch(_ bytes: Int) -> UnsafeMutableRawPointer {
    UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 64), alignment: 64)
}

// MARK: - Convolution (forward, backward-data, backward-weights)

/// Awkward shapes: channels not a multiple of 8 or 16, H/W of 1, 3 and 7, stride 2, padding 0/1/3,
/// batch 1, K just past a register tile (17, 33), a 7x7 stem.
let convShapes: [Conv2DShape] = [
    Conv2DShape(n: 1, c: 3, h: 7, w: 7, k: 5, r: 3, s: 3, stride: 1, pad: 1),
    Conv2DShape(n: 2, c: 5, h: 3, w: 3, k: 17, r: 3, s: 3, stride: 2, pad: 1),
    Conv2DShape(n: 1, c: 9, h: 1, w: 1, k: 8, r: 1, s: 1, stride: 1, pad: 0),
    Conv2DShape(n: 1, c: 1, h: 1, w: 1, k: 3, r: 3, s: 3, stride: 1, pad: 1),
    Conv2DShape(n: 2, c: 3, h: 7, w: 7, k: 6, r: 7, s: 7, stride: 2, pad: 3),
    Conv2DShape(n: 3, c: 16, h: 7, w: 7, k: 32, r: 1, s: 1, stride: 2, pad: 0),
    Conv2DShape(n: 2, c: 13, h: 8, w: 6, k: 19, r: 3, s: 3, stride: 1, pad: 0),
    Conv2DShape(n: 1, c: 7, h: 3, w: 7, k: 33, r: 3, s: 3, stride: 2, pad: 1),
    Conv2DShape(n: 4, c: 24, h: 5, w: 5, k: 16, r: 3, s: 3, stride: 1, pad: 1),
    // More than one 128-pixel block per thread in backward-weights, several tile groups.
    Conv2DShape(n: 2, c: 19, h: 12, w: 12, k: 40, r: 3, s: 3, stride: 1, pad: 1),
]

func describe(_ sh: Conv2DShape) -> String {
    "n\(sh.n) c\(sh.c) \(sh.h)x\(sh.w) k\(sh.k) \(sh.r)x\(sh.s) s\(sh.stride) p\(sh.pad)"
}

func checkConv() {
    for (i, sh) in convShapes.enumerated() {
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
        conv2dForwardNaive(sh, input: x.c, weights: w.c, output: yN.p)
        conv2dBackwardDataNaive(sh, gradOutput: dy.c, weights: w.c, gradInput: dxN.p)
        conv2dBackwardWeightNaive(sh, input: x.c, gradOutput: dy.c, gradWeight: dwN.p)
        let d = describe(sh)
        expect("conv2d forward", d, y, yN)
        expect("conv2d backward-data", d, dx, dxN)
        expect("conv2d backward-weights", d, dw, dwN)
        // accumulate: true adds into what is there.
        if i % 3 == 1 {
            let dxA = Buf(sh.inputCount, 1), dwA = Buf(sh.weightCount, 2)
            conv2dBackwardData(sh, gradOutput: dy.c, packed: pb.c, gradInput: dxA.p, accumulate: true, scratch: sc)
            conv2dBackwardWeight(sh, input: x.c, gradOutput: dy.c, gradWeight: dwA.p, accumulate: true, scratch: sc)
            for j in 0..<dxN.count { dxN.p[j] += 1 }
            for j in 0..<dwN.count { dwN.p[j] += 2 }
            expect("conv2d backward-data +=", d, dxA, dxN)
            expect("conv2d backward-weights +=", d, dwA, dwN)
            dxA.free(); dwA.free()
        }
        for b in [x, w, dy, pf, pb, y, dx, dw, yN, dxN, dwN] { b.free() }
        sc.deallocate()
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
    note("salient kernels on aarch64 (Embedded Swift, qemu-user): OpenMP \(Threads.hasOpenMP ? "on" : "OFF"), threads \(Threads.count), \(ran) threads ran a 2-way parallelFor")
    if !Threads.hasOpenMP || ran != 2 {
        note("FAIL the parallel-for did not run on 2 OpenMP threads")
        failures += 1
    }
    checkConv()
    note("\(checks) checks, \(failures) failed")
    return failures
}
