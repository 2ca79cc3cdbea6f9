import XCTest
import Foundation
import Kernels
import TestSupport

/// The two parallel loops: every index exactly once, thread indices in range, and kernels scheduled
/// dynamically give the same bits whichever thread runs which chunk.
final class ParallelTests: XCTestCase {
    func testEveryIndexOnce() {
        let saved = Threads.count
        defer { Threads.count = saved }
        for threads in [1, 2, 3] {
            Threads.count = threads
            for n in [1, 2, 7, 64, 1000] {
                for chunk in [1, 3, 64, 5000] {
                    let hits = UnsafeMutablePointer<Int32>.allocate(capacity: n)
                    hits.initialize(repeating: 0, count: n)
                    var badThread = false
                    parallelForDynamic(n, chunk: chunk) { lo, hi, t in
                        if t < 0 || t >= threads { badThread = true }
                        for i in lo..<hi { hits[i] += 1 }
                    }
                    XCTAssertFalse(badThread)
                    XCTAssertTrue((0..<n).allSatisfy { hits[$0] == 1 }, "n \(n) chunk \(chunk) threads \(threads)")
                    hits.initialize(repeating: 0, count: n)
                    parallelFor(n) { lo, hi, _ in for i in lo..<hi { hits[i] += 1 } }
                    XCTAssertTrue((0..<n).allSatisfy { hits[$0] == 1 })
                    hits.deallocate()
                }
            }
        }
    }

    /// Winograd forward, backward-data and backward-weights and a direct stride-2 convolution, run
    /// ten times on 2 threads: the dynamic schedule changes from run to run, the results must not.
    func testDynamicScheduleIsDeterministic() {
        let saved = Threads.count
        Threads.count = 2
        defer { Threads.count = saved }
        forEachShape(
            [
                Conv2DShape(n: 4, c: 32, h: 16, w: 16, k: 48, r: 3, s: 3, stride: 1, pad: 1),
                Conv2DShape(n: 4, c: 24, h: 16, w: 16, k: 40, r: 3, s: 3, stride: 2, pad: 1),
                Conv2DShape(n: 4, c: 3, h: 16, w: 16, k: 20, r: 3, s: 3, stride: 1, pad: 1)
            ], seed: 21
        ) { sh, x, w, dy in
            let scratch = scratchBuffer(bytes: sh.scratchBytes(threads: 2))
            defer { scratch.deallocate() }
            var first: [Float]? = nil
            for _ in 0..<10 {
                let all = allPasses(sh, x: x, w: w, dy: dy, scratch: scratch)
                if let first { XCTAssertTrue(first == all, "\(sh): results changed between runs") } else { first = all }
            }
        }
    }

    /// The schedule model: loops plan for the modelled threads but run on the calling thread, every
    /// index once, thread indices in the modelled range; a loop of equal items counts as its share
    /// (n / threads items, or the static split's largest range).
    func testScheduleModelSplitsAsThreadsWould() {
        let saved = Threads.count
        defer { Threads.count = saved }
        func spin(_ seconds: Double) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            while Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9 < seconds {}
        }
        let item = 0.002
        // (n, chunk: 0 static) -> items in the slowest thread's share, on 4 modelled threads.
        for (n, chunk, most) in [(8, 0, 2), (5, 0, 2), (8, 1, 2), (9, 1, 3), (3, 0, 1)] {
            ScheduleModel.begin(threads: 4)
            XCTAssertEqual(Threads.count, 4)
            var hits = [Int](repeating: 0, count: n)
            var badThread = false, caller = true
            let me = pthread_self()
            var ranges: [[Int]] = []
            let body: (Int, Int, Int) -> Void = { lo, hi, t in
                ranges.append([lo, hi, t])
                if t < 0 || t >= 4 { badThread = true }
                if pthread_equal(pthread_self(), me) == 0 { caller = false }
                for i in lo..<hi { hits[i] += 1; spin(item) }
            }
            if chunk == 0 { parallelFor(n, body) } else { parallelForDynamic(n, chunk: chunk, body) }
            let r = ScheduleModel.end()
            XCTAssertEqual(hits, [Int](repeating: 1, count: n), "n \(n) chunk \(chunk)")
            XCTAssertFalse(badThread)
            if chunk == 0 {
                // Thread t's static range, as OpenMP's threads take them.
                let nt = min(4, n)
                XCTAssertEqual(ranges, (0..<nt).map { t in [n * t / nt, n * (t + 1) / nt, t] }, "n \(n)")
            } else {
                XCTAssertEqual(
                    Set(ranges.prefix(4).map { $0[2] }).count, min(4, ranges.count),
                    "the first chunks go to idle threads")
            }
            XCTAssertTrue(caller, "the model runs every range on the calling thread")
            XCTAssertEqual(r.loops, 1)
            XCTAssertGreaterThanOrEqual(r.serial, Double(n) * item)
            // Spinning only overshoots, so whatever a busy machine adds: some thread has `most` items
            // (at least that long), and the other threads' items (all but one more, when chunks go
            // to whichever thread is free) lie outside the slowest thread's time.
            XCTAssertGreaterThanOrEqual(r.parallel, Double(most) * item, "n \(n) chunk \(chunk)")
            XCTAssertLessThanOrEqual(
                r.parallel, r.serial - 0.99 * item * Double(n - most - (chunk == 0 ? 0 : 1)),
                "n \(n) chunk \(chunk)")
        }
    }

    /// Convolutions planned for 16 threads (output-channel groups, 16 sums of their own) run through
    /// the schedule model on any machine and agree with the 1-thread results.
    func testSixteenThreadPlansAgreeWithOneThread() {
        let saved = Threads.count
        defer { Threads.count = saved }
        forEachShape(
            [
                Conv2DShape(n: 2, c: 64, h: 16, w: 16, k: 64, r: 3, s: 3, stride: 1, pad: 1),
                Conv2DShape(n: 4, c: 256, h: 4, w: 4, k: 256, r: 3, s: 3, stride: 1, pad: 1),
                Conv2DShape(n: 2, c: 32, h: 16, w: 16, k: 48, r: 3, s: 3, stride: 2, pad: 1)
            ], seed: 33
        ) { sh, x, w, dy in
            func run(threads: Int, model: Bool) -> [Float] {
                if model { ScheduleModel.begin(threads: threads) } else { Threads.count = threads }
                let scratch = scratchBuffer(bytes: sh.scratchBytes(threads: threads))
                defer { scratch.deallocate() }
                let all = allPasses(sh, x: x, w: w, dy: dy, scratch: scratch)
                if model { XCTAssertGreaterThan(ScheduleModel.end().loops, 0) }
                return all
            }
            let one = run(threads: 1, model: false), sixteen = run(threads: 16, model: true)
            XCTAssertLessThanOrEqual(toleranceRatio(sixteen, one, atol: 1e-3, rtol: 1e-4), 1, "\(sh)")
        }
    }

    /// Runs `body` on each shape with random input, weights and output gradient.
    private func forEachShape(
        _ shapes: [Conv2DShape], seed: UInt64,
        _ body: (ConvPlan, [Float], [Float], [Float]) -> Void
    ) {
        var rng = TestRNG(seed: seed)
        for sh in shapes.map(ConvPlan.testing) {
            body(sh, rng.array(sh.inputCount), rng.array(sh.weightCount), rng.array(sh.outputCount))
        }
    }

    /// Forward, backward-data and backward-weights of `sh` (weights packed first), concatenated.
    private func allPasses(_ sh: ConvPlan, x: [Float], w: [Float], dy: [Float], scratch: UnsafeMutableRawPointer)
        -> [Float]
    {
        var pf = [Float](repeating: 0, count: sh.packedForwardCount)
        var pb = [Float](repeating: 0, count: sh.packedBackwardDataCount)
        var y = [Float](repeating: 0, count: sh.outputCount)
        var dx = [Float](repeating: 0, count: sh.inputCount)
        var dw = [Float](repeating: 0, count: sh.weightCount)
        conv2dPackForward(sh, weights: w, packed: &pf)
        conv2dPackBackwardData(sh, weights: w, packed: &pb)
        conv2dForward(sh, input: x, packed: pf, output: &y, scratch: scratch)
        conv2dBackwardData(sh, gradOutput: dy, packed: pb, gradInput: &dx, scratch: scratch)
        conv2dBackwardWeight(sh, input: x, gradOutput: dy, gradWeight: &dw, scratch: scratch)
        return y + dx + dw
    }
}
