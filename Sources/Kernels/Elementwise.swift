// Elementwise kernels: ReLU, residual add, axpy; and the small helpers the other layer files share
// (parallelRange, vloadN / vstoreN).
//
// Letters: `count` is the number of floats; tensors are flat (any layout works, the work is per element).
// Every loop is vectorised with FVec plus a scalar tail and split over threads in chunks of
// `elementwiseGrain` floats (a multiple of the vector width, so every chunk but the last is whole vectors).

/// Floats per parallel chunk of the elementwise kernels (below this a loop stays on one thread).
public let elementwiseGrain = 1 << 14

/// Runs `body(begin, end)` over chunks of [0, count) of at least `grain` elements, in parallel.
@inline(__always)
func parallelRange(_ count: Int, grain: Int = elementwiseGrain, _ body: (Int, Int) -> Void) {
    if count <= 0 { return }
    let g = max(grain, 1)
    let blocks = ceilDiv(count, g)
    if blocks <= 1 { body(0, count); return }
    // Chunks go to whichever thread is free: every element is one call's, so the schedule does not
    // change results.
    parallelForDynamic(blocks, chunksPerThread: 4) { lo, hi, _ in
        body(lo * g, min(hi * g, count))
    }
}

/// Loads `n` lanes (whole vector when n == fvecWidth), zero-filling the rest.
@inline(__always)
func vloadN(_ p: UnsafePointer<Float>, _ n: Int) -> FVec {
    n == fvecWidth ? vload(p) : vloadPartial(p, n)
}

@inline(__always)
func vstoreN(_ v: FVec, _ p: UnsafeMutablePointer<Float>, _ n: Int) {
    if n == fvecWidth { vstore(v, p) } else { vstorePartial(v, p, n) }
}

// MARK: - ReLU

/// y[i] = max(x[i], 0). y may alias x.
public func reluForward(count: Int, input x: UnsafePointer<Float>, output y: UnsafeMutablePointer<Float>) {
    parallelRange(count) { lo, hi in
        var i = lo
        while i + fvecWidth <= hi {
            let v = vload(x + i)
            vstore(v.replacing(with: 0, where: v .< 0), y + i)
            i += fvecWidth
        }
        while i < hi { y[i] = x[i] < 0 ? 0 : x[i]; i += 1 }
    }
}

/// dx[i] (= or +=) dy[i] where y[i] > 0, else 0. `y` is the forward output.
public func reluBackward(
    count: Int, output y: UnsafePointer<Float>, gradOutput dy: UnsafePointer<Float>,
    gradInput dx: UnsafeMutablePointer<Float>, accumulate: Bool
) {
    parallelRange(count) { lo, hi in
        var i = lo
        if accumulate {
            while i + fvecWidth <= hi {
                let g = vload(dy + i).replacing(with: 0, where: vload(y + i) .<= 0)
                vstore(vload(dx + i) + g, dx + i)
                i += fvecWidth
            }
            while i < hi { dx[i] += y[i] > 0 ? dy[i] : 0; i += 1 }
        } else {
            while i + fvecWidth <= hi {
                vstore(vload(dy + i).replacing(with: 0, where: vload(y + i) .<= 0), dx + i)
                i += fvecWidth
            }
            while i < hi { dx[i] = y[i] > 0 ? dy[i] : 0; i += 1 }
        }
    }
}

// MARK: - Residual add

/// y = a + b, then max(., 0) when `relu`. y may alias a or b.
public func addForward(
    count: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, relu: Bool,
    output y: UnsafeMutablePointer<Float>
) {
    parallelRange(count) { lo, hi in
        var i = lo
        if relu {
            while i + fvecWidth <= hi {
                let v = vload(a + i) + vload(b + i)
                vstore(v.replacing(with: 0, where: v .< 0), y + i)
                i += fvecWidth
            }
            while i < hi { let v = a[i] + b[i]; y[i] = v < 0 ? 0 : v; i += 1 }
        } else {
            while i + fvecWidth <= hi { vstore(vload(a + i) + vload(b + i), y + i); i += fvecWidth }
            while i < hi { y[i] = a[i] + b[i]; i += 1 }
        }
    }
}

// MARK: - axpy

/// y += alpha * x.
public func scaleAdd(count: Int, alpha: Float, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
    let av = FVec(repeating: alpha)
    parallelRange(count) { lo, hi in
        var i = lo
        while i + fvecWidth <= hi {
            var v = vload(y + i)
            v.addProduct(av, vload(x + i))
            vstore(v, y + i)
            i += fvecWidth
        }
        while i < hi { y[i] = alpha * x[i] + y[i]; i += 1 }
    }
}

// MARK: - Naive references

public func reluForwardNaive(count: Int, input x: UnsafePointer<Float>, output y: UnsafeMutablePointer<Float>) {
    for i in 0..<count { y[i] = x[i] > 0 ? x[i] : 0 }
}

public func reluBackwardNaive(
    count: Int, output y: UnsafePointer<Float>, gradOutput dy: UnsafePointer<Float>,
    gradInput dx: UnsafeMutablePointer<Float>, accumulate: Bool
) {
    for i in 0..<count {
        let g: Float = y[i] > 0 ? dy[i] : 0
        dx[i] = accumulate ? dx[i] + g : g
    }
}

public func addForwardNaive(
    count: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, relu: Bool,
    output y: UnsafeMutablePointer<Float>
) {
    for i in 0..<count {
        let v = a[i] + b[i]
        y[i] = relu && v < 0 ? 0 : v
    }
}

public func scaleAddNaive(count: Int, alpha: Float, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
    for i in 0..<count { y[i] = Float(Double(y[i]) + Double(alpha) * Double(x[i])) }
}
