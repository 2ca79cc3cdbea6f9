// The one SIMD width of the element-wise kernels and transforms. SIMD8<Float> is one AVX2 register on
// x86-64 and a pair of NEON q registers on aarch64; change it here and they follow.
// Known limit: the 6-row register tiles of Conv2D.swift and Linear.swift address their second vector
// as `+ 8` (16 columns = two 8-lane vectors); changing the width means changing those offsets too (the
// fast-vs-naive tests and `make test-arm` catch a mismatch). The GEMMs' wide tiles (WideTiles.swift)
// hold a 16-column row in one RVec instead, which the build maps to one zmm (AVX-512) or two ymm.
public typealias FVec = SIMD8<Float>
public let fvecWidth = FVec.scalarCount

/// One 16-float row of a GEMM register tile (convColBlock columns) as one value: one zmm register
/// in an AVX-512 build, two ymm with AVX2, four q registers on NEON. The wide register tiles
/// (WideTiles.swift) are written in it, so the target decides how many registers a row takes.
public typealias RVec = SIMD16<Float>

#if SALIENT_AVX512
    /// The widest FMA register of the build (the FMA-peak loop uses it).
    public typealias PeakVec = SIMD16<Float>
    /// What the binary's kernels were built for (Package.swift chooses from the building machine).
    public let simdBuildName = "AVX-512"
    public let wideTilesDefault = true
#elseif arch(x86_64)
    public typealias PeakVec = FVec
    public let simdBuildName = "AVX2+FMA"
    public let wideTilesDefault = false
#else
    public typealias PeakVec = FVec
    public let simdBuildName = "NEON"
    public let wideTilesDefault = false
#endif

/// The float vectors the generic kernels run on (FVec, RVec). Comparisons go through these
/// requirements, which use the concrete types' vector compares: in a generic body the SIMD
/// protocol's comparison operators compile to a loop over lanes (docs/PERFORMANCE.md).
protocol FloatVector: SIMD where Scalar == Float {
    /// max(self, 0) with the bits of replacing(with: 0, where: self .< 0) (-0 and NaN kept).
    func relu() -> Self
    /// self with 0 in the lanes where m <= 0.
    func zeroed(whereNotPositive m: Self) -> Self
}

extension SIMD8: FloatVector where Scalar == Float {
    @inline(__always) func relu() -> Self { replacing(with: 0, where: self .< 0) }
    @inline(__always) func zeroed(whereNotPositive m: Self) -> Self { replacing(with: 0, where: m .<= 0) }
}

extension SIMD16: FloatVector where Scalar == Float {
    @inline(__always) func relu() -> Self { replacing(with: 0, where: self .< 0) }
    @inline(__always) func zeroed(whereNotPositive m: Self) -> Self { replacing(with: 0, where: m .<= 0) }
}

/// Float vector loads and stores of any width (the transforms are generic over FVec and RVec).
@inline(__always) func gload<V: SIMD>(_ p: UnsafePointer<Float>) -> V where V.Scalar == Float {
    UnsafeRawPointer(p).loadUnaligned(as: V.self)
}

@inline(__always) func gstore<V: SIMD>(_ v: V, _ p: UnsafeMutablePointer<Float>) where V.Scalar == Float {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
}

/// Loads `n <= V.scalarCount` lanes, zero-filling the rest.
@inline(__always) func gloadN<V: SIMD>(_ p: UnsafePointer<Float>, _ n: Int) -> V where V.Scalar == Float {
    if n == V.scalarCount { return gload(p) }
    var v = V()
    for i in 0..<n { v[i] = p[i] }
    return v
}

/// Stores the first `n <= V.scalarCount` lanes.
@inline(__always) func gstoreN<V: SIMD>(_ v: V, _ p: UnsafeMutablePointer<Float>, _ n: Int) where V.Scalar == Float {
    if n == V.scalarCount { gstore(v, p); return }
    for i in 0..<n { p[i] = v[i] }
}

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
