// Fully connected layer with PyTorch's weight layout: y[B][O] = x[B][I] * W[O][I]^T + b[O].
//
// Letters: B batch rows, I input features, O output features. Used for the MLP head and for the
// contrastive logits q * queue^T (the queue is the "weight", [K][dim]).
//
// Forward: x rows and W rows both run along I, so the forward is a tile of 3 x 4 dot products
// vectorised along I (12 vector accumulators, summed across lanes once at the end), parallel over
// (blocks of rows) x (blocks of outputs).
// Backward-input dx[B][I] = dy[B][O] * W[O][I] and backward-weight dW[O][I] = dy^T[O][B] * x[B][I]
// are both "broadcast" GEMMs (a scalar of dy times a vector along I) sharing one 6 x 16 register tile;
// dx is parallel over row tiles, dW over output-feature tiles (each thread owns whole rows, no reduction),
// both blocked along the reduction so that the vector panel they stream stays in cache.

/// B rows, I input features, O output features.
public struct LinearShape: Equatable, Sendable {
    public var batch: Int, inFeatures: Int, outFeatures: Int
    public init(batch: Int, inFeatures: Int, outFeatures: Int) {
        self.batch = batch; self.inFeatures = inFeatures; self.outFeatures = outFeatures
    }
    public var inputCount: Int { batch * inFeatures }
    public var outputCount: Int { batch * outFeatures }
    public var weightCount: Int { outFeatures * inFeatures }
    /// Multiply-adds x 2 of the forward.
    public var flops: Double { 2.0 * Double(batch) * Double(inFeatures) * Double(outFeatures) }
}

/// Rows of x / rows of W per forward tile.
let linRows = 3, linCols = 4
/// Rows of x / outputs per forward work item (multiples of the tile).
let linRowBlock = 48, linColBlock = 64

// MARK: - Forward

/// One 3 (rows of x) x 4 (rows of W) tile of dot products of length n; stores `nr` x `nc` of it.
@inline(__always)
func linearDotTile(
    _ x0: UnsafePointer<Float>, _ x1: UnsafePointer<Float>, _ x2: UnsafePointer<Float>,
    _ w0: UnsafePointer<Float>, _ w1: UnsafePointer<Float>, _ w2: UnsafePointer<Float>,
    _ w3: UnsafePointer<Float>, n: Int, y: UnsafeMutablePointer<Float>, ldy: Int, nr: Int, nc: Int,
    bias: UnsafePointer<Float>?
) {
    var c00 = FVec(), c01 = FVec(), c02 = FVec(), c03 = FVec()
    var c10 = FVec(), c11 = FVec(), c12 = FVec(), c13 = FVec()
    var c20 = FVec(), c21 = FVec(), c22 = FVec(), c23 = FVec()
    var k = 0
    while k + fvecWidth <= n {
        let a0 = vload(x0 + k), a1 = vload(x1 + k), a2 = vload(x2 + k)
        var b = vload(w0 + k); c00.addProduct(a0, b); c10.addProduct(a1, b); c20.addProduct(a2, b)
        b = vload(w1 + k); c01.addProduct(a0, b); c11.addProduct(a1, b); c21.addProduct(a2, b)
        b = vload(w2 + k); c02.addProduct(a0, b); c12.addProduct(a1, b); c22.addProduct(a2, b)
        b = vload(w3 + k); c03.addProduct(a0, b); c13.addProduct(a1, b); c23.addProduct(a2, b)
        k += fvecWidth
    }
    if k < n {
        let t = n - k
        let a0 = vloadPartial(x0 + k, t), a1 = vloadPartial(x1 + k, t), a2 = vloadPartial(x2 + k, t)
        var b = vloadPartial(w0 + k, t); c00.addProduct(a0, b); c10.addProduct(a1, b); c20.addProduct(a2, b)
        b = vloadPartial(w1 + k, t); c01.addProduct(a0, b); c11.addProduct(a1, b); c21.addProduct(a2, b)
        b = vloadPartial(w2 + k, t); c02.addProduct(a0, b); c12.addProduct(a1, b); c22.addProduct(a2, b)
        b = vloadPartial(w3 + k, t); c03.addProduct(a0, b); c13.addProduct(a1, b); c23.addProduct(a2, b)
    }
    @inline(__always) func put(_ i: Int, _ v0: FVec, _ v1: FVec, _ v2: FVec, _ v3: FVec) {
        if i >= nr { return }
        let o = y + i * ldy
        let s = SIMD4<Float>(v0.sum(), v1.sum(), v2.sum(), v3.sum())
        for j in 0..<nc { o[j] = s[j] + (bias?[j] ?? 0) }
    }
    put(0, c00, c01, c02, c03); put(1, c10, c11, c12, c13); put(2, c20, c21, c22, c23)
}

/// y[B][O] = x[B][I] * W[O][I]^T (+ b[O]).
public func linearForward(
    _ sh: LinearShape, input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>,
    bias b: UnsafePointer<Float>?, output y: UnsafeMutablePointer<Float>
) {
    let B = sh.batch, I = sh.inFeatures, O = sh.outFeatures
    if B <= 0 || O <= 0 { return }
    let rb = ceilDiv(B, linRowBlock), cb = ceilDiv(O, linColBlock)
    parallelFor(rb * cb) { lo, hi, _ in
        for item in lo..<hi {
            let r0 = (item / cb) * linRowBlock, r1 = min(B, r0 + linRowBlock)
            let o0 = (item % cb) * linColBlock, o1 = min(O, o0 + linColBlock)
            var r = r0
            while r < r1 {
                let nr = min(linRows, r1 - r)
                let x0 = x + r * I, x1 = x + min(r + 1, r1 - 1) * I, x2 = x + min(r + 2, r1 - 1) * I
                var o = o0
                while o < o1 {
                    let nc = min(linCols, o1 - o)
                    linearDotTile(
                        x0, x1, x2, w + o * I, w + min(o + 1, o1 - 1) * I, w + min(o + 2, o1 - 1) * I,
                        w + min(o + 3, o1 - 1) * I, n: I, y: y + r * O + o, ldy: O, nr: nr, nc: nc,
                        bias: b.map { $0 + o })
                    o += linCols
                }
                r += linRows
            }
        }
    }
}

// MARK: - Backward

/// Rows per broadcast tile; columns per broadcast tile (two vectors).
let gemmTileRows = 6, gemmTileCols = 16

/// out[i][0..<16] (= or +=) sum over k < depth of a_i[k * aStep] * bp[k * bStep + 0..<16], i < 6;
/// stores `nRows` rows of `nCols` columns (out rows `ldo` apart). Rows past nRows may repeat a valid row.
@inline(__always)
func gemmTile6x16(
    _ a0: UnsafePointer<Float>, _ a1: UnsafePointer<Float>, _ a2: UnsafePointer<Float>,
    _ a3: UnsafePointer<Float>, _ a4: UnsafePointer<Float>, _ a5: UnsafePointer<Float>, aStep: Int,
    b bp: UnsafePointer<Float>, bStep: Int, depth: Int,
    out: UnsafeMutablePointer<Float>, ldo: Int, nRows: Int, nCols: Int, add: Bool
) {
    var c00 = FVec(), c01 = FVec(), c10 = FVec(), c11 = FVec(), c20 = FVec(), c21 = FVec()
    var c30 = FVec(), c31 = FVec(), c40 = FVec(), c41 = FVec(), c50 = FVec(), c51 = FVec()
    var b = bp
    var ka = 0
    if nCols == gemmTileCols {
        for _ in 0..<depth {
            let b0 = vload(b), b1 = vload(b + 8)
            var v = FVec(repeating: a0[ka]); c00.addProduct(v, b0); c01.addProduct(v, b1)
            v = FVec(repeating: a1[ka]); c10.addProduct(v, b0); c11.addProduct(v, b1)
            v = FVec(repeating: a2[ka]); c20.addProduct(v, b0); c21.addProduct(v, b1)
            v = FVec(repeating: a3[ka]); c30.addProduct(v, b0); c31.addProduct(v, b1)
            v = FVec(repeating: a4[ka]); c40.addProduct(v, b0); c41.addProduct(v, b1)
            v = FVec(repeating: a5[ka]); c50.addProduct(v, b0); c51.addProduct(v, b1)
            b += bStep; ka += aStep
        }
    } else {
        let n0 = min(nCols, 8), n1 = nCols - n0
        for _ in 0..<depth {
            let b0 = vloadN(b, n0), b1 = n1 > 0 ? vloadN(b + 8, n1) : FVec()
            var v = FVec(repeating: a0[ka]); c00.addProduct(v, b0); c01.addProduct(v, b1)
            v = FVec(repeating: a1[ka]); c10.addProduct(v, b0); c11.addProduct(v, b1)
            v = FVec(repeating: a2[ka]); c20.addProduct(v, b0); c21.addProduct(v, b1)
            v = FVec(repeating: a3[ka]); c30.addProduct(v, b0); c31.addProduct(v, b1)
            v = FVec(repeating: a4[ka]); c40.addProduct(v, b0); c41.addProduct(v, b1)
            v = FVec(repeating: a5[ka]); c50.addProduct(v, b0); c51.addProduct(v, b1)
            b += bStep; ka += aStep
        }
    }
    @inline(__always) func put(_ i: Int, _ v0: FVec, _ v1: FVec) {
        if i >= nRows { return }
        let o = out + i * ldo
        if nCols == gemmTileCols {
            if add {
                vstore(vload(o) + v0, o); vstore(vload(o + 8) + v1, o + 8)
            } else {
                vstore(v0, o); vstore(v1, o + 8)
            }
        } else {
            let n0 = min(nCols, 8), n1 = nCols - n0
            vstoreN(add ? vloadN(o, n0) + v0 : v0, o, n0)
            if n1 > 0 { vstoreN(add ? vloadN(o + 8, n1) + v1 : v1, o + 8, n1) }
        }
    }
    put(0, c00, c01); put(1, c10, c11); put(2, c20, c21)
    put(3, c30, c31); put(4, c40, c41); put(5, c50, c51)
}

/// Reduction steps per block, so that a block of the streamed panel (depth x I floats) stays in L2.
@inline(__always) func linearDepthBlock(_ i: Int) -> Int { max(16, (32768 / max(i, 1)) & ~7) }

/// Any of gradInput / gradWeight / gradBias may be nil (not computed). Overwrites unless accumulate.
/// dx[B][I] = dy[B][O] * W[O][I]; dW[O][I] = dy^T * x; db[O] = sum over rows of dy.
public func linearBackward(
    _ sh: LinearShape, input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>,
    gradOutput dy: UnsafePointer<Float>, gradInput dx: UnsafeMutablePointer<Float>?,
    gradWeight dw: UnsafeMutablePointer<Float>?, gradBias db: UnsafeMutablePointer<Float>?,
    accumulate: Bool
) {
    let B = sh.batch, I = sh.inFeatures, O = sh.outFeatures
    let colBlocks = ceilDiv(I, gemmTileCols)
    let depthBlock = linearDepthBlock(I)
    if let dx {
        if O == 0 {
            if !accumulate { dx.initialize(repeating: 0, count: B * I) }
        } else {
            let tiles = ceilDiv(B, gemmTileRows)
            parallelFor(tiles) { lo, hi, _ in
                var o0 = 0
                while o0 < O {
                    let depth = min(depthBlock, O - o0)
                    for cbk in 0..<colBlocks {
                        let c0 = cbk * gemmTileCols, nCols = min(gemmTileCols, I - c0)
                        for t in lo..<hi {
                            let r0 = t * gemmTileRows, nRows = min(gemmTileRows, B - r0)
                            @inline(__always) func row(_ i: Int) -> UnsafePointer<Float> {
                                dy + (r0 + min(i, nRows - 1)) * O + o0
                            }
                            gemmTile6x16(
                                row(0), row(1), row(2), row(3), row(4), row(5), aStep: 1,
                                b: w + o0 * I + c0, bStep: I, depth: depth,
                                out: dx + r0 * I + c0, ldo: I, nRows: nRows, nCols: nCols,
                                add: accumulate || o0 > 0)
                        }
                    }
                    o0 += depth
                }
            }
        }
    }
    if let dw {
        if B == 0 {
            if !accumulate { dw.initialize(repeating: 0, count: O * I) }
        } else {
            let tiles = ceilDiv(O, gemmTileRows)
            parallelFor(tiles) { lo, hi, _ in
                var b0 = 0
                while b0 < B {
                    let depth = min(depthBlock, B - b0)
                    // Tile outer: its dy columns (depth rows O apart, a cache line each) are reused across
                    // the column blocks; the x block stays in L2.
                    for t in lo..<hi {
                        let k0 = t * gemmTileRows, nRows = min(gemmTileRows, O - k0)
                        @inline(__always) func col(_ i: Int) -> UnsafePointer<Float> {
                            dy + b0 * O + k0 + min(i, nRows - 1)
                        }
                        for cbk in 0..<colBlocks {
                            let c0 = cbk * gemmTileCols, nCols = min(gemmTileCols, I - c0)
                            gemmTile6x16(
                                col(0), col(1), col(2), col(3), col(4), col(5), aStep: O,
                                b: x + b0 * I + c0, bStep: I, depth: depth,
                                out: dw + k0 * I + c0, ldo: I, nRows: nRows, nCols: nCols,
                                add: accumulate || b0 > 0)
                        }
                    }
                    b0 += depth
                }
            }
        }
    }
    if let db {
        parallelRange(O, grain: 1024) { lo, hi in
            var o = lo
            while o < hi {
                let n = min(fvecWidth, hi - o)
                var s = accumulate ? vloadN(db + o, n) : FVec()
                for r in 0..<B { s += vloadN(dy + r * O + o, n) }
                vstoreN(s, db + o, n)
                o += fvecWidth
            }
        }
    }
}

// MARK: - Naive references (Double accumulation)

public func linearForwardNaive(
    _ sh: LinearShape, input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>,
    bias b: UnsafePointer<Float>?, output y: UnsafeMutablePointer<Float>
) {
    let I = sh.inFeatures, O = sh.outFeatures
    for r in 0..<sh.batch {
        for o in 0..<O {
            var s = Double(b?[o] ?? 0)
            for i in 0..<I { s += Double(x[r * I + i]) * Double(w[o * I + i]) }
            y[r * O + o] = Float(s)
        }
    }
}

public func linearBackwardNaive(
    _ sh: LinearShape, input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>,
    gradOutput dy: UnsafePointer<Float>, gradInput dx: UnsafeMutablePointer<Float>?,
    gradWeight dw: UnsafeMutablePointer<Float>?, gradBias db: UnsafeMutablePointer<Float>?,
    accumulate: Bool
) {
    let B = sh.batch, I = sh.inFeatures, O = sh.outFeatures
    if let dx {
        for r in 0..<B {
            for i in 0..<I {
                var s = accumulate ? Double(dx[r * I + i]) : 0
                for o in 0..<O { s += Double(dy[r * O + o]) * Double(w[o * I + i]) }
                dx[r * I + i] = Float(s)
            }
        }
    }
    if let dw {
        for o in 0..<O {
            for i in 0..<I {
                var s = accumulate ? Double(dw[o * I + i]) : 0
                for r in 0..<B { s += Double(dy[r * O + o]) * Double(x[r * I + i]) }
                dw[o * I + i] = Float(s)
            }
        }
    }
    if let db {
        for o in 0..<O {
            var s = accumulate ? Double(db[o]) : 0
            for r in 0..<B { s += Double(dy[r * O + o]) }
            db[o] = Float(s)
        }
    }
}
