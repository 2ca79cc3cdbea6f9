import ArgumentParser
import Foundation
import Kernels

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Micro-benchmarks: what this machine can do.",
        subcommands: [BenchKernels.self, BenchTrain.self, BenchExtract.self, BenchLoader.self])
}

/// Median wall time of `body` over at least `minRuns` runs and `minSeconds`, after one warm-up run.
func medianSeconds(minRuns: Int = 5, minSeconds: Double = 0.5, _ body: () -> Void) -> Double {
    body()
    var times: [Double] = []
    let start = DispatchTime.now().uptimeNanoseconds
    while times.count < minRuns || Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9 < minSeconds {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9)
        if times.count >= 200 { break }
    }
    times.sort()
    return times[times.count / 2]
}

/// Measures the FP32 FMA peak of `Threads.count` threads in GFLOP/s: the best of several runs (a peak
/// is what the machine can reach; a disturbed run can only make it look lower).
func measurePeak() -> Double {
    let iters = 2_000_000
    _ = fmaPeakLoop(iterations: iters / 4)
    var best = 0.0
    for _ in 0..<9 {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let flops = fmaPeakLoop(iterations: iters).flops
        let t = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        best = max(best, flops / t * 1e-9)
    }
    return best
}

struct BenchRecord {
    var fields: [(String, String)]
    mutating func add(_ k: String, _ v: Int) { fields.append((k, String(v))) }
    mutating func add(_ k: String, _ v: Double) {
        fields.append((k, String(format: v.magnitude >= 1 ? "%.2f" : "%.6g", v)))
    }
    mutating func add(_ k: String, _ v: String) { fields.append((k, "\"\(v)\"")) }
    var json: String { "{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}" }
}

struct BenchKernels: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: """
            FMA peak, then 3x3 convolutions on ResNet-18's CIFAR shapes (GFLOP/s, % of peak), \
            batch norm and pooling (GB/s).
            """)

    @OptionGroup var threadOptions: ThreadOptions
    @Flag(help: "One JSON object per line.") var json = false
    @Option(help: "Batch size.") var batch = 64
    @Option(
        help: """
            Comma-separated (C, H=W) shapes, e.g. 64x32,128x16; a suffix s2 (64x32s2) times the stride-2 \
            convolution C -> 2C of a stage's first block.
            """)
    var shapes = "64x32,128x16,256x8,512x4"

    func validate() throws {
        if batch < 1 || batch > 4096 { throw ValidationError("--batch must be between 1 and 4096, got \(batch)") }
        _ = try parseShapes()
    }

    func parseShapes() throws -> [(c: Int, hw: Int, stride: Int)] {
        try shapes.split(separator: ",").map { part in
            let stride = part.hasSuffix("s2") ? 2 : 1
            let f = part.dropLast(stride == 2 ? 2 : 0).split(separator: "x", omittingEmptySubsequences: false).map {
                Int($0)
            }
            guard f.count == 2, let c = f[0], let hw = f[1], c > 0, hw >= stride, c <= 4096, hw <= 1024 else {
                throw ValidationError("--shapes: expected CxHW like 64x32 (or 64x32s2 for stride 2), got '\(part)'")
            }
            return (c, hw, stride)
        }
    }

    func run() throws {
        threadOptions.apply()
        let threads = Threads.count, execution = threadOptions.execution
        let peak = measurePeak()
        var rows: [BenchRecord] = []
        var r = BenchRecord(fields: [])
        r.add("op", "peak_fma"); r.add("threads", threads); r.add("gflops", peak); r.add("pct_peak", 100.0)
        r.add("simd", simdBuildName); r.add("lanes", PeakVec.scalarCount)
        r.add("conv", execution.convolution.name)
        emit(r, peak: peak)
        rows.append(r)
        let shapes = try parseShapes()
        for (c, hw, stride) in shapes {
            let sh = ConvPlan(
                Conv2DShape(n: batch, c: c, h: hw, w: hw, k: c * stride, r: 3, s: 3, stride: stride, pad: 1), execution)
            for (op, t) in try benchConv(sh) {
                var rec = BenchRecord(fields: [])
                rec.add("op", stride == 1 ? op : op + "_s2"); rec.add("C", c); rec.add("HW", hw);
                rec.add("batch", batch)
                rec.add("threads", threads); rec.add("gflops", sh.flops / t * 1e-9)
                rec.add("pct_peak", sh.flops / t * 1e-9 / peak * 100)
                rec.add(
                    "conv", sh.usesWinograd || (op == "conv3x3_fwd" && sh.usesWinogradStride2) ? "winograd" : "direct")
                emit(rec, peak: peak)
                rows.append(rec)
            }
        }
        // Memory-bound layers on the first shape: batch norm (train forward + backward) and pooling.
        if let (c, hw, _) = shapes.first {
            for (op, bytes, t) in try benchMemoryBound(batch: batch, c: c, hw: hw, wide: execution.wideTiles) {
                var rec = BenchRecord(fields: [])
                rec.add("op", op); rec.add("C", c); rec.add("HW", hw); rec.add("batch", batch)
                rec.add("threads", threads); rec.add("gbps", bytes / t * 1e-9)
                emit(rec, peak: peak)
            }
        }
    }

    func emit(_ r: BenchRecord, peak: Double) {
        if json { print(r.json); fflush(nil); return }
        let d = Dictionary(r.fields, uniquingKeysWith: { a, _ in a })
        let op = d["op"]!.replacingOccurrences(of: "\"", with: "")
        if op == "peak_fma" {
            print(
                "FMA peak: \(d["gflops"]!) GFLOP/s on \(d["threads"]!) thread(s) (12 independent FMA chains of "
                    + "\(d["lanes"]!) lanes per thread, \(simdBuildName) build)")
            print(
                "3x3 convolutions: \(threadOptions.algorithm.name)"
                    + (threadOptions.algorithm == .winograd
                        ? " (GFLOP/s count the direct convolution's 2*N*H*W*K*C*9 FLOPs; "
                            + "Winograd F(4x4,3x3) does 1/4 of the multiplies)"
                        : "") + "; each time includes packing/transforming the weights")
            print(row(["op", "C", "HW", "batch", "GFLOP/s", "GB/s", "% peak"]))
        } else {
            print(
                row([
                    op, d["C"] ?? "", d["HW"] ?? "", d["batch"] ?? "", d["gflops"] ?? "-", d["gbps"] ?? "-",
                    d["pct_peak"] ?? "-"
                ]))
        }
        fflush(nil)
    }

    func row(_ cols: [String]) -> String {
        let widths = [20, 5, 4, 6, 9, 8, 7]
        return zip(cols, widths).enumerated().map { i, cw in
            let (c, w) = cw
            let pad = String(repeating: " ", count: max(0, w - c.count))
            return i == 0 ? c + pad : pad + c
        }.joined(separator: " ")
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
}

/// Times forward, backward-data and backward-weights of one convolution after spot-checking each
/// against a direct sum. Returns (op, median seconds).
func benchConv(_ sh: ConvPlan) throws -> [(String, Double)] {
    // Seeded (SplitMix64): the system generator made a getrandom call per float, seconds per shape.
    var rng = SplitMix64(seed: UInt64(sh.c * 1000 + sh.h))
    let x = (0..<sh.inputCount).map { _ in rng.uniform(-1, 1) }
    let w = (0..<sh.weightCount).map { _ in rng.uniform(-0.1, 0.1) }
    let dy = (0..<sh.outputCount).map { _ in rng.uniform(-1, 1) }
    var pf = [Float](repeating: 0, count: sh.packedForwardCount)
    var pb = [Float](repeating: 0, count: sh.packedBackwardDataCount)
    var y = [Float](repeating: 0, count: sh.outputCount)
    var dx = [Float](repeating: 0, count: sh.inputCount)
    var dw = [Float](repeating: 0, count: sh.weightCount)
    let scratch = UnsafeMutableRawPointer.allocate(byteCount: sh.scratchBytes(threads: Threads.count), alignment: 64)
    defer { scratch.deallocate() }
    try checkConvAgainstNaive(sh)
    var out: [(String, Double)] = []
    // Forward and backward-data include the weight packing (Winograd: the weight transform), as in
    // a training step, where weights change every step.
    out.append(
        (
            "conv3x3_fwd",
            medianSeconds {
                conv2dPackForward(sh, weights: w, packed: &pf)
                conv2dForward(sh, input: x, packed: pf, output: &y, scratch: scratch)
            }
        ))
    out.append(
        (
            "conv3x3_bwd_data",
            medianSeconds {
                conv2dPackBackwardData(sh, weights: w, packed: &pb)
                conv2dBackwardData(sh, gradOutput: dy, packed: pb, gradInput: &dx, scratch: scratch)
            }
        ))
    out.append(
        (
            "conv3x3_bwd_weight",
            medianSeconds {
                conv2dBackwardWeight(sh, input: x, gradOutput: dy, gradWeight: &dw, scratch: scratch)
            }
        ))
    return out
}

/// Holds the fast kernels to the kernels' float64 references (conv2d...Naive) on one image of `sh`'s
/// shape, under the same settings: forward, backward-data and backward-weights, each within 1e-4 of
/// the reference's largest magnitude (Winograd's rounding is ~1e-5 of it).
func checkConvAgainstNaive(_ sh: ConvPlan) throws {
    let one = ConvPlan(
        Conv2DShape(n: 1, c: sh.c, h: sh.h, w: sh.w, k: sh.k, r: sh.r, s: sh.s, stride: sh.stride, pad: sh.pad),
        sh.config)
    var rng = SplitMix64(seed: 5)
    let x = (0..<one.inputCount).map { _ in rng.uniform(-1, 1) }
    let w = (0..<one.weightCount).map { _ in rng.uniform(-0.1, 0.1) }
    let dy = (0..<one.outputCount).map { _ in rng.uniform(-1, 1) }
    var pf = [Float](repeating: 0, count: one.packedForwardCount)
    var pb = [Float](repeating: 0, count: one.packedBackwardDataCount)
    var y = [Float](repeating: 0, count: one.outputCount), yN = y
    var dx = [Float](repeating: 0, count: one.inputCount), dxN = dx
    var dw = [Float](repeating: 0, count: one.weightCount), dwN = dw
    let scratch = UnsafeMutableRawPointer.allocate(byteCount: one.scratchBytes(threads: Threads.count), alignment: 64)
    defer { scratch.deallocate() }
    conv2dPackForward(one, weights: w, packed: &pf)
    conv2dPackBackwardData(one, weights: w, packed: &pb)
    conv2dForward(one, input: x, packed: pf, output: &y, scratch: scratch)
    conv2dBackwardData(one, gradOutput: dy, packed: pb, gradInput: &dx, scratch: scratch)
    conv2dBackwardWeight(one, input: x, gradOutput: dy, gradWeight: &dw, scratch: scratch)
    conv2dForwardNaive(one.shape, input: x, weights: w, output: &yN)
    conv2dBackwardDataNaive(one.shape, gradOutput: dy, weights: w, gradInput: &dxN)
    conv2dBackwardWeightNaive(one.shape, input: x, gradOutput: dy, gradWeight: &dwN)
    for (what, got, want) in [("forward", y, yN), ("backward-data", dx, dxN), ("backward-weights", dw, dwN)] {
        let tolerance = 1e-4 * Double(want.map(abs).max() ?? 1)
        if let i = got.indices.first(where: { !(abs(Double(got[$0]) - Double(want[$0])) <= tolerance) }) {
            throw BenchError(
                description: "\(what) is wrong at \(i): got \(got[i]), the reference gives \(want[i]) (\(sh.shape))")
        }
    }
}

/// Times batch norm and pooling on a [batch][hw][hw][c] tensor. Bytes counted are the minimum the
/// operation must move: BN train forward reads x twice (statistics, normalise) and writes y; BN
/// backward reads x, dy twice and writes dx; max pool 3x3/2 reads x, writes y and argmax; global
/// average pool reads x.
func benchMemoryBound(batch: Int, c: Int, hw: Int, wide: Bool) throws -> [(String, Double, Double)] {
    let P = batch * hw * hw, n = P * c
    var rng = SplitMix64(seed: 3)
    let x = (0..<n).map { _ in rng.normal() }, dy = (0..<n).map { _ in rng.normal() }
    var y = [Float](repeating: 0, count: n), dx = y
    let gamma = [Float](repeating: 1, count: c), beta = [Float](repeating: 0, count: c)
    var rm = [Float](repeating: 0, count: c), rv = [Float](repeating: 1, count: c)
    var mean = rm, inv = rm, dg = rm, db = rm
    let sh = BatchNormShape(pixels: P, channels: c)
    let scratch = UnsafeMutableRawPointer.allocate(
        byteCount: batchNormScratchBytes(sh, threads: Threads.count), alignment: 64)
    defer { scratch.deallocate() }
    batchNormForwardTraining(
        sh, input: x, gamma: gamma, beta: beta, runningMean: &rm, runningVar: &rv, momentum: 0.1,
        eps: 1e-5, relu: true, output: &y, saveMean: &mean, saveInvStd: &inv, scratch: scratch, wide: wide)
    // Check: per-channel mean of the normalised output (before ReLU) is ~0 -> check a few channels.
    for ch in 0..<min(c, 4) {
        var s = 0.0
        for p in 0..<P { s += Double((x[p * c + ch] - mean[ch]) * inv[ch]) }
        if abs(s / Double(P)) > 1e-3 {
            throw BenchError(description: "batch norm statistics are wrong (channel \(ch))")
        }
    }
    let bytes = Double(n * 4)
    var out: [(String, Double, Double)] = []
    out.append(
        (
            "bn_relu_fwd_train", 3 * bytes,
            medianSeconds {
                batchNormForwardTraining(
                    sh, input: x, gamma: gamma, beta: beta, runningMean: &rm, runningVar: &rv, momentum: 0.1,
                    eps: 1e-5, relu: true, output: &y, saveMean: &mean, saveInvStd: &inv, scratch: scratch, wide: wide)
            }
        ))
    out.append(
        (
            "bn_relu_bwd", 6 * bytes,
            medianSeconds {
                batchNormBackward(
                    sh, input: x, output: y, gradOutput: dy, gamma: gamma, saveMean: mean, saveInvStd: inv, relu: true,
                    gradInput: &dx, gradGamma: &dg, gradBeta: &db, accumulate: false, scratch: scratch, wide: wide)
            }
        ))
    let ps = MaxPoolShape(n: batch, c: c, h: hw, w: hw)
    var py = [Float](repeating: 0, count: ps.outputCount)
    var am = [Int32](repeating: 0, count: ps.outputCount)
    out.append(
        (
            "maxpool3x3s2_fwd", bytes + Double(ps.outputCount * 8),
            medianSeconds {
                maxPoolForward(ps, input: x, output: &py, argmax: &am)
            }
        ))
    var gy = [Float](repeating: 0, count: batch * c)
    out.append(
        (
            "avgpool_fwd", bytes,
            medianSeconds {
                globalAvgPoolForward(n: batch, pixels: hw * hw, channels: c, input: x, output: &gy)
            }
        ))
    return out
}
