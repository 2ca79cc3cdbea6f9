// The one SIMD width of every kernel. SIMD8<Float> is one AVX2 register on x86-64 and a pair of
// NEON q registers on aarch64; change it here and every kernel follows.
// Known limit: the register tiles of Conv2D.swift and Linear.swift address their second vector as
// `+ 8` (16 columns = two 8-lane vectors); changing the width means changing those offsets too (the
// fast-vs-naive tests and `make test-arm` catch a mismatch).
public typealias FVec = SIMD8<Float>
public let fvecWidth = FVec.scalarCount

@inline(__always) @usableFromInline
func vload(_ p: UnsafePointer<Float>) -> FVec {
    UnsafeRawPointer(p).loadUnaligned(as: FVec.self)
}

@inline(__always) @usableFromInline
func vload(_ p: UnsafeMutablePointer<Float>) -> FVec {
    UnsafeRawPointer(p).loadUnaligned(as: FVec.self)
}

@inline(__always) @usableFromInline
func vstore(_ v: FVec, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: FVec.self)
}

/// Loads `n < fvecWidth` floats, zero-filling the rest.
@inline(__always) @usableFromInline
func vloadPartial(_ p: UnsafePointer<Float>, _ n: Int) -> FVec {
    var v = FVec()
    for i in 0..<n { v[i] = p[i] }
    return v
}

/// Stores the first `n <= fvecWidth` lanes.
@inline(__always) @usableFromInline
func vstorePartial(_ v: FVec, _ p: UnsafeMutablePointer<Float>, _ n: Int) {
    for i in 0..<n { p[i] = v[i] }
}
