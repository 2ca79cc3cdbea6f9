import XCTest
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
        var rng = TestRNG(seed: 21)
        for sh in [Conv2DShape(n: 4, c: 32, h: 16, w: 16, k: 48, r: 3, s: 3, stride: 1, pad: 1),
                   Conv2DShape(n: 4, c: 24, h: 16, w: 16, k: 40, r: 3, s: 3, stride: 2, pad: 1),
                   Conv2DShape(n: 4, c: 3, h: 16, w: 16, k: 20, r: 3, s: 3, stride: 1, pad: 1)] {
            let x = rng.array(sh.inputCount), w = rng.array(sh.weightCount), dy = rng.array(sh.outputCount)
            let scratch = scratchBuffer(bytes: sh.scratchBytes(threads: 2))
            defer { scratch.deallocate() }
            var first: [Float]? = nil
            for _ in 0..<10 {
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
                let all = y + dx + dw
                if let first { XCTAssertTrue(first == all, "\(sh): results changed between runs") } else { first = all }
            }
        }
    }
}
