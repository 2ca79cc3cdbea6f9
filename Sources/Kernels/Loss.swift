// Softmax cross-entropy over rows of logits (the InfoNCE loss of MoCo / SimCLR: the positive is a label).
//
// Letters: `rows` rows of `classes` logits, row-major; labels[r] is the class index of row r.
// Forward per row: m = max, p = exp(l - m) / sum, loss = m + log(sum) - l[label] (log-sum-exp: no
// overflow for any finite logits). The exponential is a portable vector one (expVec, Cephes' expf
// polynomial, ~1 ulp) and the logarithm a Double series (logDouble): no libm, nothing Foundation, so the
// module still compiles as Embedded Swift; swap these two functions to use a platform's libm instead.

// MARK: - exp / log without libm

/// e^x per lane, relative error ~1e-7 (Cephes expf); 0 below -87.3, clamped at 88.37 above.
@inline(__always)
public func expVec(_ x: FVec) -> FVec {
    let magic = FVec(repeating: 12582912)  // 1.5 * 2^23: adds round to an integer
    let lo = FVec(repeating: -87.33), hi = FVec(repeating: 88.37)
    let xc = x.replacing(with: lo, where: x .< lo).replacing(with: hi, where: x .> hi)
    let k = xc * FVec(repeating: 1.44269504088896341) + magic
    let n = k - magic  // round(x / ln 2)
    var r = xc
    r.addProduct(n, FVec(repeating: -0.693359375))
    r.addProduct(n, FVec(repeating: 2.12194440e-4))
    var p = FVec(repeating: 1.9875691500e-4)
    p = p * r + FVec(repeating: 1.3981999507e-3)
    p = p * r + FVec(repeating: 8.3334519073e-3)
    p = p * r + FVec(repeating: 4.1665795894e-2)
    p = p * r + FVec(repeating: 1.6666665459e-1)
    p = p * r + FVec(repeating: 5.0000001201e-1)
    var e = r + FVec(repeating: 1)
    e.addProduct(p, r * r)
    let ni = unsafeBitCast(k, to: SIMD8<Int32>.self) &- 0x4B40_0000  // the integer n
    let pow2 = unsafeBitCast((ni &+ 127) &<< 23, to: FVec.self)
    return (e * pow2).replacing(with: 0, where: x .< lo)
}

/// e^x for one Float (through expVec).
@inline(__always)
public func expFloat(_ x: Float) -> Float { expVec(FVec(repeating: x))[0] }

/// Natural logarithm of a positive finite Double, ~1e-15 relative (series in (m-1)/(m+1)).
public func logDouble(_ v: Double) -> Double {
    if !(v > 0) { return v == 0 ? -.infinity : .nan }
    if v == .infinity { return v }
    var m = v.significand  // [1, 2)
    var e = Double(v.exponent)
    if m > 1.4142135623730951 { m *= 0.5; e += 1 }
    let s = (m - 1) / (m + 1), s2 = s * s
    var t = 1.0 / 19
    for k in stride(from: 17, through: 1, by: -2) { t = t * s2 + 1 / Double(k) }
    return e * 0.6931471805599453 + 2 * s * t
}

/// e^x in Double, ~1e-15 relative (range reduction by ln 2 and a Taylor series); for references.
public func expDouble(_ x: Double) -> Double {
    if x > 709.7 { return .infinity }
    if x < -745 { return 0 }
    let k = (x / 0.6931471805599453).rounded()
    let r = x - k * 0.6931471805599453
    var t = 1.0
    for i in stride(from: 16, through: 1, by: -1) { t = 1 + t * r / Double(i) }
    let ki = Int(k)
    // Two steps keep the scale factors normal down to the subnormal range.
    let h = ki / 2
    return t * Double(sign: .plus, exponent: h, significand: 1) * Double(sign: .plus, exponent: ki - h, significand: 1)
}

// MARK: - Forward

/// Softmax of one row into p; returns its loss m + log(sum) - l[label]. p may alias l.
@inline(__always)
func softmaxRow(_ l: UnsafePointer<Float>, _ p: UnsafeMutablePointer<Float>, classes: Int, label: Int) -> Double {
    precondition(label >= 0 && label < classes, "label out of range")
    let target = l[label]
    // Max.
    var mv = FVec(repeating: -.infinity)
    var k = 0
    while k + fvecWidth <= classes {
        let v = vload(l + k)
        mv = mv.replacing(with: v, where: v .> mv)
        k += fvecWidth
    }
    var m = mv.max()
    while k < classes { if l[k] > m { m = l[k] }; k += 1 }
    // Exponentials and their sum (Float per block of 1024, Double across blocks).
    let mvec = FVec(repeating: m)
    var total = 0.0
    k = 0
    while k < classes {
        let end = min(classes, k + 1024)
        var s = FVec()
        while k + fvecWidth <= end {
            let e = expVec(vload(l + k) - mvec)
            vstore(e, p + k)
            s += e
            k += fvecWidth
        }
        if k < end {
            let t = end - k
            let e = expVec(vloadPartial(l + k, t) - mvec)
            vstorePartial(e, p + k, t)
            for j in 0..<t { s[j] += e[j] }
            k = end
        }
        total += Double(s.sum())
    }
    let inv = FVec(repeating: Float(1 / total))
    k = 0
    while k < classes {
        let t = min(fvecWidth, classes - k)
        vstoreN(vloadN(p + k, t) * inv, p + k, t)
        k += fvecWidth
    }
    return Double(m) + logDouble(total) - Double(target)
}

/// Mean softmax cross-entropy over rows; writes softmax probabilities; returns the mean loss. Numerically stable
/// (max-subtracted, log-sum-exp). Labels are class indices.
/// probs[rows][classes] may alias logits. Rows are split over at most 64 threads, each summing its rows'
/// losses in Double into a slot on the stack (no allocation); the slots are added in order.
public func softmaxCrossEntropyForward(
    rows: Int, classes: Int, logits: UnsafePointer<Float>, labels: UnsafePointer<Int32>,
    probs: UnsafeMutablePointer<Float>
) -> Float {
    if rows <= 0 { return 0 }
    precondition(classes > 0, "softmax over zero classes")
    let parts = max(1, min(Threads.count, 64, rows * classes / 4096 + 1, rows))
    var slots = SIMD64<Double>()
    withUnsafeMutableBytes(of: &slots) { raw in
        let slot = raw.baseAddress!.assumingMemoryBound(to: Double.self)
        parallelFor(parts) { lo, hi, _ in
            for t in lo..<hi {
                var sum = 0.0
                for r in (rows * t / parts)..<(rows * (t + 1) / parts) {
                    sum += softmaxRow(
                        logits + r * classes, probs + r * classes, classes: classes, label: Int(labels[r]))
                }
                slot[t] = sum
            }
        }
    }
    var total = 0.0
    for t in 0..<parts { total += slots[t] }
    return Float(total / Double(rows))
}

// MARK: - Backward

/// dlogits = (probs - onehot) * scale  (scale is usually 1/rows; callers fold a temperature in).
/// gradLogits may alias probs.
public func softmaxCrossEntropyBackward(
    rows: Int, classes: Int, probs: UnsafePointer<Float>, labels: UnsafePointer<Int32>,
    scale: Float, gradLogits: UnsafeMutablePointer<Float>
) {
    let s = FVec(repeating: scale)
    parallelRange(rows, grain: max(1, elementwiseGrain / max(classes, 1))) { lo, hi in
        for r in lo..<hi {
            let p = probs + r * classes, g = gradLogits + r * classes
            let label = Int(labels[r])
            precondition(label >= 0 && label < classes, "label out of range")
            let pl = p[label]
            var k = 0
            while k < classes {
                let t = min(fvecWidth, classes - k)
                vstoreN(vloadN(p + k, t) * s, g + k, t)
                k += fvecWidth
            }
            g[label] = (pl - 1) * scale
        }
    }
}

// MARK: - Naive references (Double)

public func softmaxCrossEntropyForwardNaive(
    rows: Int, classes: Int, logits: UnsafePointer<Float>,
    labels: UnsafePointer<Int32>, probs: UnsafeMutablePointer<Float>
) -> Float {
    var total = 0.0
    for r in 0..<rows {
        let l = logits + r * classes
        var m = -Double.infinity
        for k in 0..<classes { m = max(m, Double(l[k])) }
        var s = 0.0
        for k in 0..<classes { s += expDouble(Double(l[k]) - m) }
        for k in 0..<classes { probs[r * classes + k] = Float(expDouble(Double(l[k]) - m) / s) }
        total += m + logDouble(s) - Double(l[Int(labels[r])])
    }
    return Float(total / Double(rows))
}

public func softmaxCrossEntropyBackwardNaive(
    rows: Int, classes: Int, probs: UnsafePointer<Float>,
    labels: UnsafePointer<Int32>, scale: Float,
    gradLogits: UnsafeMutablePointer<Float>
) {
    for r in 0..<rows {
        for k in 0..<classes {
            let i = r * classes + k
            gradLogits[i] = (probs[i] - (k == Int(labels[r]) ? 1 : 0)) * scale
        }
    }
}
