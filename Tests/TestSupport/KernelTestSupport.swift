// Helpers for the layer-kernel tests: thread-count sweeps and the sum(y * g) loss of gradient checks.
import Kernels

/// Runs `body(threads)` with Threads.count set to each value in turn, then restores the previous count.
public func forEachThreadCount(_ counts: [Int] = [1, 2], _ body: (Int) -> Void) {
    let saved = Threads.count
    defer { Threads.count = saved }
    for t in counts {
        Threads.count = t
        body(t)
    }
}

/// sum(a * b) in Double: the scalar loss L = sum(y * g) whose gradient dL/dy = g the checks feed back.
public func weightedSum(_ a: [Float], _ b: [Float]) -> Double {
    precondition(a.count == b.count, "count mismatch \(a.count) vs \(b.count)")
    var s = 0.0
    for i in 0..<a.count { s += Double(a[i]) * Double(b[i]) }
    return s
}

/// Values spaced `gap` apart in a random order: no ties and no kinks within a finite-difference step.
public func distinctValues(_ n: Int, gap: Float = 0.05, seed: UInt64) -> [Float] {
    var v = (0..<n).map { Float($0) * gap - Float(n) * gap / 2 }
    var r = TestRNG(seed: seed)
    if n > 1 { for i in stride(from: n - 1, to: 0, by: -1) { v.swapAt(i, Int(r.next() % UInt64(i + 1))) } }
    return v
}

extension ExecutionConfig {
    /// The default settings with the caches the limits were tuned on, so that every test reaches the
    /// same strategies on any machine; `wideTiles` and `convolution` as given.
    public static func testing(
        wideTiles: Bool = wideTilesDefault, convolution: ConvAlgorithm = .winograd
    ) -> ExecutionConfig {
        ExecutionConfig(convolution: convolution, wideTiles: wideTiles, cache: .tuned)
    }
}

extension ConvPlan {
    /// The plan of `shape` with the testing settings (ExecutionConfig.testing).
    public static func testing(_ shape: Conv2DShape) -> ConvPlan { ConvPlan(shape, .testing()) }
}
