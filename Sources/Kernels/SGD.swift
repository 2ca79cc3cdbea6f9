// Optimizer and momentum-encoder updates over the flat parameter block.
//
// Letters: `count` floats; params, grads and the momentum buffer are blocks of the same length
// (one loop for the whole network, as llm.c's gpt2_update). Vectorised, split over threads.

/// PyTorch torch.optim.SGD (no dampening, no nesterov): g' = g + wd*p; buf = momentum*buf + g'; p -= lr*buf.
/// With buf starting at zero the first step gives buf = g', as PyTorch's first step does.
public func sgdStep(
    count: Int, params p: UnsafeMutablePointer<Float>, grads g: UnsafePointer<Float>,
    momentumBuffer buf: UnsafeMutablePointer<Float>, lr: Float, momentum: Float, weightDecay: Float
) {
    let wd = FVec(repeating: weightDecay), mo = FVec(repeating: momentum), nlr = FVec(repeating: -lr)
    parallelRange(count) { lo, hi in
        var i = lo
        while i + fvecWidth <= hi {
            let pv = vload(p + i)
            var d = vload(g + i)
            d.addProduct(wd, pv)
            d.addProduct(mo, vload(buf + i))
            vstore(d, buf + i)
            var np = pv
            np.addProduct(nlr, d)
            vstore(np, p + i)
            i += fvecWidth
        }
        while i < hi {  // the vector loop's fused operations, so any split gives the same bits
            let d = g[i].addingProduct(weightDecay, p[i]).addingProduct(momentum, buf[i])
            buf[i] = d
            p[i] = p[i].addingProduct(-lr, d)
            i += 1
        }
    }
}

/// t = m*t + (1-m)*s (MoCo key encoder).
public func momentumUpdate(count: Int, target t: UnsafeMutablePointer<Float>, source s: UnsafePointer<Float>, m: Float)
{
    let mv = FVec(repeating: m), om = FVec(repeating: 1 - m)
    parallelRange(count) { lo, hi in
        var i = lo
        while i + fvecWidth <= hi {
            var v = vload(s + i) * om
            v.addProduct(mv, vload(t + i))
            vstore(v, t + i)
            i += fvecWidth
        }
        while i < hi { t[i] = m * t[i] + (1 - m) * s[i]; i += 1 }
    }
}

// MARK: - Naive references

public func sgdStepNaive(
    count: Int, params p: UnsafeMutablePointer<Float>, grads g: UnsafePointer<Float>,
    momentumBuffer buf: UnsafeMutablePointer<Float>, lr: Float, momentum: Float, weightDecay: Float
) {
    for i in 0..<count {
        let gi = Double(g[i]) + Double(weightDecay) * Double(p[i])
        let b = Double(momentum) * Double(buf[i]) + gi
        buf[i] = Float(b)
        p[i] = Float(Double(p[i]) - Double(lr) * b)
    }
}

public func momentumUpdateNaive(
    count: Int, target t: UnsafeMutablePointer<Float>, source s: UnsafePointer<Float>, m: Float
) {
    for i in 0..<count { t[i] = Float(Double(m) * Double(t[i]) + (1 - Double(m)) * Double(s[i])) }
}
