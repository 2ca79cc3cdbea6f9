// Shared helpers for the test targets: seeded random tensors, comparisons, finite differences.
import Kernels

/// Seeded test data (Kernels' SplitMix64), the same on every machine.
public struct TestRNG {
    var g: SplitMix64
    public init(seed: UInt64) { g = SplitMix64(seed: seed &+ 0x9E3779B97F4A7C15) }
    public mutating func next() -> UInt64 { g.next() }
    /// Uniform in [lo, hi).
    public mutating func uniform(_ lo: Float = -1, _ hi: Float = 1) -> Float { g.uniform(lo, hi) }
    public mutating func array(_ n: Int, _ lo: Float = -1, _ hi: Float = 1) -> [Float] {
        (0..<n).map { _ in uniform(lo, hi) }
    }
}

/// Largest |a - b| / (atol + rtol * |b|); <= 1 means every element is within tolerance.
public func toleranceRatio(_ a: [Float], _ b: [Float], atol: Float, rtol: Float) -> Float {
    precondition(a.count == b.count, "count mismatch \(a.count) vs \(b.count)")
    var worst: Float = 0
    for i in 0..<a.count {
        let e = abs(a[i] - b[i]) / (atol + rtol * abs(b[i]))
        if !(e <= worst) { worst = e.isNaN ? .infinity : e }
    }
    return worst
}

/// Largest absolute difference and its index.
public func maxAbsDiff(_ a: [Float], _ b: [Float]) -> (diff: Float, index: Int) {
    precondition(a.count == b.count)
    var d: Float = 0, at = 0
    for i in 0..<a.count { let e = abs(a[i] - b[i]); if !(e <= d) { d = e.isNaN ? .infinity : e; at = i } }
    return (d, at)
}

/// Central finite-difference gradient of a scalar function of `x`, in Double for accuracy.
/// `f` is evaluated with `x` perturbed in place; `indices` limits the checked elements.
public func numericGradient(
    _ x: inout [Float], indices: [Int], eps: Float = 1e-2,
    _ f: ([Float]) -> Double
) -> [Double] {
    var g = [Double]()
    for i in indices {
        let old = x[i]
        x[i] = old + eps; let fp = f(x)
        x[i] = old - eps; let fm = f(x)
        x[i] = old
        g.append((fp - fm) / (2 * Double(eps)))
    }
    return g
}

/// Relative error used by the gradient checks: |a - n| / max(1e-3 * scale, |a| + |n|).
public func gradientError(analytic: [Double], numeric: [Double]) -> Double {
    var scale = 0.0
    for v in numeric { scale = max(scale, abs(v)) }
    var worst = 0.0
    for i in 0..<analytic.count {
        let e = abs(analytic[i] - numeric[i]) / max(1e-2 * scale, abs(analytic[i]) + abs(numeric[i]), 1e-6)
        worst = max(worst, e)
    }
    return worst
}

/// Indices to check: all when `count` is small, otherwise an even spread plus both ends.
public func sampleIndices(_ count: Int, max m: Int = 48, seed: UInt64 = 1) -> [Int] {
    if count <= m { return Array(0..<count) }
    var r = TestRNG(seed: seed)
    var s = Set<Int>([0, count - 1])
    while s.count < m { s.insert(Int(r.next() % UInt64(count))) }
    return s.sorted()
}

/// Path of the repository's fixtures/ folder (found from this source file's location).
public func fixturesPath(_ file: String = #filePath) -> String {
    var parts = file.split(separator: "/", omittingEmptySubsequences: false)
    while let last = parts.last, last != "Tests" { parts.removeLast() }
    parts.removeLast()
    return parts.joined(separator: "/") + "/fixtures"
}

/// A raw byte buffer aligned for SIMD, freed with `deallocate()`.
public func scratchBuffer(bytes: Int) -> UnsafeMutableRawPointer {
    UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 64), alignment: 64)
}
