// A loop of independent fused multiply-adds that runs at the FMA units' peak: the yardstick
// `salient bench kernels` reports every kernel against.

/// Runs `iterations` x 12 vector FMAs on each of `Threads.count` threads; returns the flops done
/// (2 per lane per FMA) and a checksum that keeps the work alive.
public func fmaPeakLoop(iterations: Int) -> (flops: Double, checksum: Float) {
    let threads = Threads.count
    var sums = [Float](repeating: 0, count: threads * 16)
    sums.withUnsafeMutableBufferPointer { out in
        let o = out.baseAddress!
        parallelFor(threads) { lo, hi, _ in
            for t in lo..<hi {
                let m = PeakVec(repeating: 0.999999)
                var c0 = PeakVec(repeating: Float(t)), c1 = c0 + 1, c2 = c0 + 2, c3 = c0 + 3
                var c4 = c0 + 4, c5 = c0 + 5, c6 = c0 + 6, c7 = c0 + 7, c8 = c0 + 8, c9 = c0 + 9
                var c10 = c0 + 10, c11 = c0 + 11
                for _ in 0..<iterations {
                    c0 = c0.addingProduct(c0, m); c1 = c1.addingProduct(c1, m); c2 = c2.addingProduct(c2, m)
                    c3 = c3.addingProduct(c3, m); c4 = c4.addingProduct(c4, m); c5 = c5.addingProduct(c5, m)
                    c6 = c6.addingProduct(c6, m); c7 = c7.addingProduct(c7, m); c8 = c8.addingProduct(c8, m)
                    c9 = c9.addingProduct(c9, m); c10 = c10.addingProduct(c10, m); c11 = c11.addingProduct(c11, m)
                }
                let s = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11
                o[t * 16] = s.sum()
            }
        }
    }
    let flops = Double(threads) * Double(iterations) * 12 * Double(PeakVec.scalarCount) * 2
    return (flops, sums.reduce(0, +))
}
