// Row-wise L2 normalisation (the embedding projection of MoCo / SimCLR), as torch.nn.functional.normalize.
//
// Letters: `rows` vectors of `dim` floats, row-major. y = x / max(||x||, eps), eps = 1e-12.
// Backward: where ||x|| > eps, dx = (dy - y * <y, dy>) / ||x||; otherwise the denominator is the constant
// eps and dx = dy / eps. Parallel over rows, vectorised along dim.

/// The eps of torch.nn.functional.normalize.
public let l2NormalizeEps: Float = 1e-12

/// Sum over k < n of a[k] * b[k], vectorised (two accumulators), Float.
@inline(__always)
func dotProduct(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var s0 = FVec(), s1 = FVec()
    var k = 0
    while k + 2 * fvecWidth <= n {
        s0.addProduct(vload(a + k), vload(b + k))
        s1.addProduct(vload(a + k + fvecWidth), vload(b + k + fvecWidth))
        k += 2 * fvecWidth
    }
    while k < n {
        let t = min(fvecWidth, n - k)
        s0.addProduct(vloadN(a + k, t), vloadN(b + k, t))
        k += fvecWidth
    }
    return (s0 + s1).sum()
}

/// Row-wise y = x / max(||x||, eps) (eps 1e-12, as torch.nn.functional.normalize); norms saved for backward.
/// y may alias x.
public func l2NormalizeForward(
    rows: Int, dim: Int, input x: UnsafePointer<Float>, output y: UnsafeMutablePointer<Float>,
    norms: UnsafeMutablePointer<Float>
) {
    parallelRange(rows, grain: max(1, elementwiseGrain / max(dim, 1))) { lo, hi in
        for r in lo..<hi {
            let xr = x + r * dim, yr = y + r * dim
            let n = dotProduct(xr, xr, dim).squareRoot()
            norms[r] = n
            let s = FVec(repeating: 1 / max(n, l2NormalizeEps))
            var k = 0
            while k < dim {
                let t = min(fvecWidth, dim - k)
                vstoreN(vloadN(xr + k, t) * s, yr + k, t)
                k += fvecWidth
            }
        }
    }
}

/// dx (= or +=) the gradient through y = x / max(||x||, eps), from the forward output and norms.
public func l2NormalizeBackward(
    rows: Int, dim: Int, output y: UnsafePointer<Float>, norms: UnsafePointer<Float>,
    gradOutput dy: UnsafePointer<Float>, gradInput dx: UnsafeMutablePointer<Float>,
    accumulate: Bool
) {
    parallelRange(rows, grain: max(1, elementwiseGrain / max(dim, 1))) { lo, hi in
        for r in lo..<hi {
            let yr = y + r * dim, gr = dy + r * dim, xr = dx + r * dim
            let n = norms[r]
            let live = n > l2NormalizeEps
            let proj = FVec(repeating: live ? -dotProduct(yr, gr, dim) : 0)
            let s = FVec(repeating: 1 / max(n, l2NormalizeEps))
            var k = 0
            while k < dim {
                let t = min(fvecWidth, dim - k)
                var v = vloadN(gr + k, t)
                v.addProduct(proj, vloadN(yr + k, t))
                v *= s
                if accumulate { v += vloadN(xr + k, t) }
                vstoreN(v, xr + k, t)
                k += fvecWidth
            }
        }
    }
}

// MARK: - Naive references (Double)

public func l2NormalizeForwardNaive(
    rows: Int, dim: Int, input x: UnsafePointer<Float>, output y: UnsafeMutablePointer<Float>,
    norms: UnsafeMutablePointer<Float>
) {
    for r in 0..<rows {
        var s = 0.0
        for k in 0..<dim { s += Double(x[r * dim + k]) * Double(x[r * dim + k]) }
        let n = s.squareRoot()
        norms[r] = Float(n)
        let d = max(n, Double(l2NormalizeEps))
        for k in 0..<dim { y[r * dim + k] = Float(Double(x[r * dim + k]) / d) }
    }
}

public func l2NormalizeBackwardNaive(
    rows: Int, dim: Int, output y: UnsafePointer<Float>, norms: UnsafePointer<Float>,
    gradOutput dy: UnsafePointer<Float>, gradInput dx: UnsafeMutablePointer<Float>,
    accumulate: Bool
) {
    for r in 0..<rows {
        let n = Double(norms[r])
        var p = 0.0
        for k in 0..<dim { p += Double(y[r * dim + k]) * Double(dy[r * dim + k]) }
        for k in 0..<dim {
            let i = r * dim + k
            let v =
                n > Double(l2NormalizeEps)
                ? (Double(dy[i]) - Double(y[i]) * p) / n : Double(dy[i]) / Double(l2NormalizeEps)
            dx[i] = accumulate ? dx[i] + Float(v) : Float(v)
        }
    }
}
