// Register tiles of 12 rows x 16 columns, each row one RVec (SIMD.swift). In an AVX-512 build a row
// is one zmm register, so a tile keeps 12 independent FMA chains in flight, each with its broadcast
// folded into the FMA (`vfmadd231ps mem{1to16}`); the 6-row tiles of two FVecs per row (Conv2D.swift)
// would give a 16-lane machine only 6 chains, too few to cover the FMA latency. Elsewhere the same
// code compiles to two ymm (or four q) registers per row and spills, so wide tiles are off by default
// there (ExecutionConfig.wideTiles); the tests turn them on to check these kernels on every machine.

/// Rows of a wide register tile.
let wideTileRows = 12

@inline(__always) func rload(_ p: UnsafePointer<Float>) -> RVec {
    UnsafeRawPointer(p).loadUnaligned(as: RVec.self)
}

@inline(__always) func rstore(_ v: RVec, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: RVec.self)
}

/// out[n][16] = a[n][0..<depth] x panel[depth][16] for n <= 12 rows of `a`, `stride` floats apart;
/// out's rows are consecutive (convColBlock floats each). Rows past n repeat the last one and are not
/// stored. Out of line so that the 12 accumulators stay in registers.
@inline(never)
func wideRowsTile(
    _ out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, stride s: Int, rows n: Int,
    _ panel: UnsafePointer<Float>, _ depth: Int
) {
    var c0 = RVec(), c1 = RVec(), c2 = RVec(), c3 = RVec(), c4 = RVec(), c5 = RVec()
    var c6 = RVec(), c7 = RVec(), c8 = RVec(), c9 = RVec(), c10 = RVec(), c11 = RVec()
    @inline(__always) func row(_ i: Int) -> UnsafePointer<Float> { a + min(i, n - 1) * s }
    let r0 = a, r1 = row(1), r2 = row(2), r3 = row(3), r4 = row(4), r5 = row(5)
    let r6 = row(6), r7 = row(7), r8 = row(8), r9 = row(9), r10 = row(10), r11 = row(11)
    var b = panel
    for d in 0..<depth {
        let v = rload(b)
        c0.addProduct(RVec(repeating: r0[d]), v); c1.addProduct(RVec(repeating: r1[d]), v)
        c2.addProduct(RVec(repeating: r2[d]), v); c3.addProduct(RVec(repeating: r3[d]), v)
        c4.addProduct(RVec(repeating: r4[d]), v); c5.addProduct(RVec(repeating: r5[d]), v)
        c6.addProduct(RVec(repeating: r6[d]), v); c7.addProduct(RVec(repeating: r7[d]), v)
        c8.addProduct(RVec(repeating: r8[d]), v); c9.addProduct(RVec(repeating: r9[d]), v)
        c10.addProduct(RVec(repeating: r10[d]), v); c11.addProduct(RVec(repeating: r11[d]), v)
        b += convColBlock
    }
    let w = convColBlock
    rstore(c0, out)
    if n > 1 { rstore(c1, out + w) }; if n > 2 { rstore(c2, out + 2 * w) }; if n > 3 { rstore(c3, out + 3 * w) }
    if n > 4 { rstore(c4, out + 4 * w) }; if n > 5 { rstore(c5, out + 5 * w) }; if n > 6 { rstore(c6, out + 6 * w) }
    if n > 7 { rstore(c7, out + 7 * w) }; if n > 8 { rstore(c8, out + 8 * w) }; if n > 9 { rstore(c9, out + 9 * w) }
    if n > 10 { rstore(c10, out + 10 * w) }; if n > 11 { rstore(c11, out + 11 * w) }
}

/// out[12][16] = a[12][0..<depth] x panel[depth][16] and out2 likewise with panel2: two output blocks
/// of the same 12 rows, 24 accumulators, so each broadcast feeds two FMAs (measured: docs/PERFORMANCE.md).
/// Rows of `a` at four pointers and one or two strides past them.
@inline(never)
func wideRowsTilePair(
    _ out: UnsafeMutablePointer<Float>, _ out2: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>,
    stride s: Int, _ panel: UnsafePointer<Float>, _ panel2: UnsafePointer<Float>, _ depth: Int
) {
    var c0 = RVec(), c1 = RVec(), c2 = RVec(), c3 = RVec(), c4 = RVec(), c5 = RVec()
    var c6 = RVec(), c7 = RVec(), c8 = RVec(), c9 = RVec(), c10 = RVec(), c11 = RVec()
    var e0 = RVec(), e1 = RVec(), e2 = RVec(), e3 = RVec(), e4 = RVec(), e5 = RVec()
    var e6 = RVec(), e7 = RVec(), e8 = RVec(), e9 = RVec(), e10 = RVec(), e11 = RVec()
    var p0 = a, p3 = a + 3 * s, p6 = a + 6 * s, p9 = a + 9 * s
    let s2 = 2 * s
    var b = panel, b2 = panel2
    for _ in 0..<depth {
        let v = rload(b), w = rload(b2)
        var x = RVec(repeating: p0[0]); c0.addProduct(x, v); e0.addProduct(x, w)
        x = RVec(repeating: p0[s]); c1.addProduct(x, v); e1.addProduct(x, w)
        x = RVec(repeating: p0[s2]); c2.addProduct(x, v); e2.addProduct(x, w)
        x = RVec(repeating: p3[0]); c3.addProduct(x, v); e3.addProduct(x, w)
        x = RVec(repeating: p3[s]); c4.addProduct(x, v); e4.addProduct(x, w)
        x = RVec(repeating: p3[s2]); c5.addProduct(x, v); e5.addProduct(x, w)
        x = RVec(repeating: p6[0]); c6.addProduct(x, v); e6.addProduct(x, w)
        x = RVec(repeating: p6[s]); c7.addProduct(x, v); e7.addProduct(x, w)
        x = RVec(repeating: p6[s2]); c8.addProduct(x, v); e8.addProduct(x, w)
        x = RVec(repeating: p9[0]); c9.addProduct(x, v); e9.addProduct(x, w)
        x = RVec(repeating: p9[s]); c10.addProduct(x, v); e10.addProduct(x, w)
        x = RVec(repeating: p9[s2]); c11.addProduct(x, v); e11.addProduct(x, w)
        b += convColBlock; b2 += convColBlock; p0 += 1; p3 += 1; p6 += 1; p9 += 1
    }
    let n = convColBlock
    rstore(c0, out); rstore(c1, out + n); rstore(c2, out + 2 * n); rstore(c3, out + 3 * n)
    rstore(c4, out + 4 * n); rstore(c5, out + 5 * n); rstore(c6, out + 6 * n); rstore(c7, out + 7 * n)
    rstore(c8, out + 8 * n); rstore(c9, out + 9 * n); rstore(c10, out + 10 * n); rstore(c11, out + 11 * n)
    rstore(e0, out2); rstore(e1, out2 + n); rstore(e2, out2 + 2 * n); rstore(e3, out2 + 3 * n)
    rstore(e4, out2 + 4 * n); rstore(e5, out2 + 5 * n); rstore(e6, out2 + 6 * n); rstore(e7, out2 + 7 * n)
    rstore(e8, out2 + 8 * n); rstore(e9, out2 + 9 * n); rstore(e10, out2 + 10 * n); rstore(e11, out2 + 11 * n)
}

/// wideMultiplyRows of two output blocks (panel into out, panel2 into out2) over the same rows:
/// whole 12-row tiles in pairs, the rest one block at a time.
@inline(__always)
func wideMultiplyRowsPair(
    _ out: UnsafeMutablePointer<Float>, _ out2: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>,
    count: Int, stride: Int, panel: UnsafePointer<Float>, panel2: UnsafePointer<Float>, depth: Int
) {
    let whole = count / wideTileRows * wideTileRows
    var r0 = 0
    while r0 < whole {
        wideRowsTilePair(
            out + r0 * convColBlock, out2 + r0 * convColBlock, a + r0 * stride, stride: stride, panel, panel2,
            depth)
        r0 += wideTileRows
    }
    if whole < count {
        wideMultiplyRows(
            out + whole * convColBlock, a + whole * stride, count: count - whole, stride: stride, panel: panel,
            depth: depth)
        wideMultiplyRows(
            out2 + whole * convColBlock, a + whole * stride, count: count - whole, stride: stride, panel: panel2,
            depth: depth)
    }
}

/// wideRowsTile for n <= 8 rows: 8 chains still cover the FMA latency of two 16-lane FMA pipes,
/// at two thirds of the 12-row tile's time.
@inline(never)
func wideRowsTile8(
    _ out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, stride s: Int, rows n: Int,
    _ panel: UnsafePointer<Float>, _ depth: Int
) {
    var c0 = RVec(), c1 = RVec(), c2 = RVec(), c3 = RVec(), c4 = RVec(), c5 = RVec(), c6 = RVec(), c7 = RVec()
    @inline(__always) func row(_ i: Int) -> UnsafePointer<Float> { a + min(i, n - 1) * s }
    let r0 = a, r1 = row(1), r2 = row(2), r3 = row(3), r4 = row(4), r5 = row(5), r6 = row(6), r7 = row(7)
    var b = panel
    for d in 0..<depth {
        let v = rload(b)
        c0.addProduct(RVec(repeating: r0[d]), v); c1.addProduct(RVec(repeating: r1[d]), v)
        c2.addProduct(RVec(repeating: r2[d]), v); c3.addProduct(RVec(repeating: r3[d]), v)
        c4.addProduct(RVec(repeating: r4[d]), v); c5.addProduct(RVec(repeating: r5[d]), v)
        c6.addProduct(RVec(repeating: r6[d]), v); c7.addProduct(RVec(repeating: r7[d]), v)
        b += convColBlock
    }
    let w = convColBlock
    rstore(c0, out)
    if n > 1 { rstore(c1, out + w) }; if n > 2 { rstore(c2, out + 2 * w) }; if n > 3 { rstore(c3, out + 3 * w) }
    if n > 4 { rstore(c4, out + 4 * w) }; if n > 5 { rstore(c5, out + 5 * w) }; if n > 6 { rstore(c6, out + 6 * w) }
    if n > 7 { rstore(c7, out + 7 * w) }
}

/// out[r][16] = a[r][0..<depth] x panel[depth][16] for all `count` rows (`stride` floats apart), in
/// wide tiles: 12 rows at a time, the rest in one tile of 8 or 12.
@inline(__always)
func wideMultiplyRows(
    _ out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, count: Int, stride: Int,
    panel: UnsafePointer<Float>, depth: Int
) {
    var r0 = 0
    while r0 < count {
        let n = min(wideTileRows, count - r0)
        if n <= 8 {
            wideRowsTile8(out + r0 * convColBlock, a + r0 * stride, stride: stride, rows: n, panel, depth)
        } else {
            wideRowsTile(out + r0 * convColBlock, a + r0 * stride, stride: stride, rows: n, panel, depth)
        }
        r0 += n
    }
}

/// acc rows c0..<c0+12 (`Kp` floats apart, 16 columns each) += sum over np rows j of x[j][c] (outer)
/// dy[j][0..<16]: x rows `xStride` apart, dy rows `dyStride` apart. Channels past C repeat the last
/// one: their accumulators load, sum and store exactly what the last channel's do, so the duplicate
/// stores write the same values and need no test.
@inline(never)
func wideWeightTile(
    x: UnsafePointer<Float>, xStride: Int, np: Int, c0: Int, C: Int,
    dy: UnsafePointer<Float>, dyStride: Int, acc: UnsafeMutablePointer<Float>, Kp: Int
) {
    if c0 + wideTileRows <= C {
        wideWeightTileWhole(x: x + c0, xStride: xStride, np: np, dy: dy, dyStride: dyStride, acc: acc + c0 * Kp, Kp: Kp)
        return
    }
    let last = C - 1
    @inline(__always) func ch(_ i: Int) -> Int { min(c0 + i, last) }
    let i0 = ch(0), i1 = ch(1), i2 = ch(2), i3 = ch(3), i4 = ch(4), i5 = ch(5)
    let i6 = ch(6), i7 = ch(7), i8 = ch(8), i9 = ch(9), i10 = ch(10), i11 = ch(11)
    var c0v = rload(acc + i0 * Kp), c1v = rload(acc + i1 * Kp), c2v = rload(acc + i2 * Kp)
    var c3v = rload(acc + i3 * Kp), c4v = rload(acc + i4 * Kp), c5v = rload(acc + i5 * Kp)
    var c6v = rload(acc + i6 * Kp), c7v = rload(acc + i7 * Kp), c8v = rload(acc + i8 * Kp)
    var c9v = rload(acc + i9 * Kp), c10v = rload(acc + i10 * Kp), c11v = rload(acc + i11 * Kp)
    var d = dy, xp = x
    for _ in 0..<np {
        let v = rload(d)
        c0v.addProduct(RVec(repeating: xp[i0]), v); c1v.addProduct(RVec(repeating: xp[i1]), v)
        c2v.addProduct(RVec(repeating: xp[i2]), v); c3v.addProduct(RVec(repeating: xp[i3]), v)
        c4v.addProduct(RVec(repeating: xp[i4]), v); c5v.addProduct(RVec(repeating: xp[i5]), v)
        c6v.addProduct(RVec(repeating: xp[i6]), v); c7v.addProduct(RVec(repeating: xp[i7]), v)
        c8v.addProduct(RVec(repeating: xp[i8]), v); c9v.addProduct(RVec(repeating: xp[i9]), v)
        c10v.addProduct(RVec(repeating: xp[i10]), v); c11v.addProduct(RVec(repeating: xp[i11]), v)
        d += dyStride; xp += xStride
    }
    rstore(c11v, acc + i11 * Kp); rstore(c10v, acc + i10 * Kp); rstore(c9v, acc + i9 * Kp)
    rstore(c8v, acc + i8 * Kp); rstore(c7v, acc + i7 * Kp); rstore(c6v, acc + i6 * Kp)
    rstore(c5v, acc + i5 * Kp); rstore(c4v, acc + i4 * Kp); rstore(c3v, acc + i3 * Kp)
    rstore(c2v, acc + i2 * Kp); rstore(c1v, acc + i1 * Kp); rstore(c0v, acc + i0 * Kp)
}

/// wideWeightTile of 12 whole channels from x's first: constant offsets, so the loop keeps its
/// pointers in registers (with clamped channel indices it spilled them).
@inline(never)
func wideWeightTileWhole(
    x: UnsafePointer<Float>, xStride: Int, np: Int, dy: UnsafePointer<Float>, dyStride: Int,
    acc a: UnsafeMutablePointer<Float>, Kp: Int
) {
    var c0 = rload(a), c1 = rload(a + Kp), c2 = rload(a + 2 * Kp), c3 = rload(a + 3 * Kp)
    var c4 = rload(a + 4 * Kp), c5 = rload(a + 5 * Kp), c6 = rload(a + 6 * Kp), c7 = rload(a + 7 * Kp)
    var c8 = rload(a + 8 * Kp), c9 = rload(a + 9 * Kp), c10 = rload(a + 10 * Kp), c11 = rload(a + 11 * Kp)
    var d = dy, p = x
    for _ in 0..<np {
        let v = rload(d)
        c0.addProduct(RVec(repeating: p[0]), v); c1.addProduct(RVec(repeating: p[1]), v)
        c2.addProduct(RVec(repeating: p[2]), v); c3.addProduct(RVec(repeating: p[3]), v)
        c4.addProduct(RVec(repeating: p[4]), v); c5.addProduct(RVec(repeating: p[5]), v)
        c6.addProduct(RVec(repeating: p[6]), v); c7.addProduct(RVec(repeating: p[7]), v)
        c8.addProduct(RVec(repeating: p[8]), v); c9.addProduct(RVec(repeating: p[9]), v)
        c10.addProduct(RVec(repeating: p[10]), v); c11.addProduct(RVec(repeating: p[11]), v)
        d += dyStride; p += xStride
    }
    rstore(c0, a); rstore(c1, a + Kp); rstore(c2, a + 2 * Kp); rstore(c3, a + 3 * Kp)
    rstore(c4, a + 4 * Kp); rstore(c5, a + 5 * Kp); rstore(c6, a + 6 * Kp); rstore(c7, a + 7 * Kp)
    rstore(c8, a + 8 * Kp); rstore(c9, a + 9 * Kp); rstore(c10, a + 10 * Kp); rstore(c11, a + 11 * Kp)
}

/// wideWeightTileWhole for two output blocks: acc and acc2 (each 12 rows `Kp` apart) from dy and dy2.
@inline(never)
func wideWeightTileWholePair(
    x: UnsafePointer<Float>, xStride: Int, np: Int, dy: UnsafePointer<Float>,
    dy2: UnsafePointer<Float>, dyStride: Int, acc a: UnsafeMutablePointer<Float>,
    acc2 e: UnsafeMutablePointer<Float>, Kp: Int
) {
    var c0 = rload(a), c1 = rload(a + Kp), c2 = rload(a + 2 * Kp), c3 = rload(a + 3 * Kp)
    var c4 = rload(a + 4 * Kp), c5 = rload(a + 5 * Kp), c6 = rload(a + 6 * Kp), c7 = rload(a + 7 * Kp)
    var c8 = rload(a + 8 * Kp), c9 = rload(a + 9 * Kp), c10 = rload(a + 10 * Kp), c11 = rload(a + 11 * Kp)
    var e0 = rload(e), e1 = rload(e + Kp), e2 = rload(e + 2 * Kp), e3 = rload(e + 3 * Kp)
    var e4 = rload(e + 4 * Kp), e5 = rload(e + 5 * Kp), e6 = rload(e + 6 * Kp), e7 = rload(e + 7 * Kp)
    var e8 = rload(e + 8 * Kp), e9 = rload(e + 9 * Kp), e10 = rload(e + 10 * Kp), e11 = rload(e + 11 * Kp)
    var d = dy, d2 = dy2, p = x
    for _ in 0..<np {
        let v = rload(d), w = rload(d2)
        var t = RVec(repeating: p[0]); c0.addProduct(t, v); e0.addProduct(t, w)
        t = RVec(repeating: p[1]); c1.addProduct(t, v); e1.addProduct(t, w)
        t = RVec(repeating: p[2]); c2.addProduct(t, v); e2.addProduct(t, w)
        t = RVec(repeating: p[3]); c3.addProduct(t, v); e3.addProduct(t, w)
        t = RVec(repeating: p[4]); c4.addProduct(t, v); e4.addProduct(t, w)
        t = RVec(repeating: p[5]); c5.addProduct(t, v); e5.addProduct(t, w)
        t = RVec(repeating: p[6]); c6.addProduct(t, v); e6.addProduct(t, w)
        t = RVec(repeating: p[7]); c7.addProduct(t, v); e7.addProduct(t, w)
        t = RVec(repeating: p[8]); c8.addProduct(t, v); e8.addProduct(t, w)
        t = RVec(repeating: p[9]); c9.addProduct(t, v); e9.addProduct(t, w)
        t = RVec(repeating: p[10]); c10.addProduct(t, v); e10.addProduct(t, w)
        t = RVec(repeating: p[11]); c11.addProduct(t, v); e11.addProduct(t, w)
        d += dyStride; d2 += dyStride; p += xStride
    }
    rstore(c0, a); rstore(c1, a + Kp); rstore(c2, a + 2 * Kp); rstore(c3, a + 3 * Kp)
    rstore(c4, a + 4 * Kp); rstore(c5, a + 5 * Kp); rstore(c6, a + 6 * Kp); rstore(c7, a + 7 * Kp)
    rstore(c8, a + 8 * Kp); rstore(c9, a + 9 * Kp); rstore(c10, a + 10 * Kp); rstore(c11, a + 11 * Kp)
    rstore(e0, e); rstore(e1, e + Kp); rstore(e2, e + 2 * Kp); rstore(e3, e + 3 * Kp)
    rstore(e4, e + 4 * Kp); rstore(e5, e + 5 * Kp); rstore(e6, e + 6 * Kp); rstore(e7, e + 7 * Kp)
    rstore(e8, e + 8 * Kp); rstore(e9, e + 9 * Kp); rstore(e10, e + 10 * Kp); rstore(e11, e + 11 * Kp)
}

/// weightTilesStrided of two output blocks (dy into acc, dy2 into acc2) with wide tiles: whole 12-channel
/// tiles in pairs, the rest one block at a time.
@inline(__always)
func weightTilesStridedPair(
    x: UnsafePointer<Float>, xStride: Int, np: Int, C: Int, dy: UnsafePointer<Float>,
    dy2: UnsafePointer<Float>, dyStride: Int, acc: UnsafeMutablePointer<Float>,
    acc2: UnsafeMutablePointer<Float>, Kp: Int
) {
    var c0 = 0
    while c0 + wideTileRows <= C {
        wideWeightTileWholePair(
            x: x + c0, xStride: xStride, np: np, dy: dy, dy2: dy2, dyStride: dyStride,
            acc: acc + c0 * Kp, acc2: acc2 + c0 * Kp, Kp: Kp)
        c0 += wideTileRows
    }
    if c0 < C {
        wideWeightTile(x: x, xStride: xStride, np: np, c0: c0, C: C, dy: dy, dyStride: dyStride, acc: acc, Kp: Kp)
        wideWeightTile(x: x, xStride: xStride, np: np, c0: c0, C: C, dy: dy2, dyStride: dyStride, acc: acc2, Kp: Kp)
    }
}

/// All `C` channel rows of one weight-gradient panel: acc[c][0..<16] += sum over np rows of
/// x[j][c] dy[j][0..<16], in wide tiles of 12 channels or the 6-row tiles of bwdWeightTileStrided.
@inline(__always)
func weightTilesStrided(
    x: UnsafePointer<Float>, xStride: Int, np: Int, C: Int,
    dy: UnsafePointer<Float>, dyStride: Int, acc: UnsafeMutablePointer<Float>, Kp: Int, wide: Bool
) {
    if wide {
        var c0 = 0
        while c0 < C {
            wideWeightTile(x: x, xStride: xStride, np: np, c0: c0, C: C, dy: dy, dyStride: dyStride, acc: acc, Kp: Kp)
            c0 += wideTileRows
        }
        return
    }
    for ct in 0..<ceilDiv(C, convTileRows) {
        bwdWeightTileStrided(
            x: x, xStride: xStride, np: np, c0: ct * convTileRows, C: C, dy: dy,
            dyStride: dyStride, acc: acc, Kp: Kp)
    }
}

/// Two 6-channel tiles of the direct backward-weights at once: acc rows 0..<12 (`Kp` floats apart)
/// += sum over np pixels of (xA[j][0..<6], xB[j][0..<6]) (outer) dy[j][0..<16], x packed [j][6].
@inline(never)
func wideWeightTilePacked(
    xA: UnsafePointer<Float>, xB: UnsafePointer<Float>, np: Int, dy: UnsafePointer<Float>,
    acc a: UnsafeMutablePointer<Float>, Kp: Int
) {
    var c0 = rload(a), c1 = rload(a + Kp), c2 = rload(a + 2 * Kp), c3 = rload(a + 3 * Kp)
    var c4 = rload(a + 4 * Kp), c5 = rload(a + 5 * Kp), c6 = rload(a + 6 * Kp), c7 = rload(a + 7 * Kp)
    var c8 = rload(a + 8 * Kp), c9 = rload(a + 9 * Kp), c10 = rload(a + 10 * Kp), c11 = rload(a + 11 * Kp)
    var d = dy, p = xA, q = xB
    for _ in 0..<np {
        let v = rload(d)
        c0.addProduct(RVec(repeating: p[0]), v); c1.addProduct(RVec(repeating: p[1]), v)
        c2.addProduct(RVec(repeating: p[2]), v); c3.addProduct(RVec(repeating: p[3]), v)
        c4.addProduct(RVec(repeating: p[4]), v); c5.addProduct(RVec(repeating: p[5]), v)
        c6.addProduct(RVec(repeating: q[0]), v); c7.addProduct(RVec(repeating: q[1]), v)
        c8.addProduct(RVec(repeating: q[2]), v); c9.addProduct(RVec(repeating: q[3]), v)
        c10.addProduct(RVec(repeating: q[4]), v); c11.addProduct(RVec(repeating: q[5]), v)
        d += convColBlock; p += convTileRows; q += convTileRows
    }
    rstore(c0, a); rstore(c1, a + Kp); rstore(c2, a + 2 * Kp); rstore(c3, a + 3 * Kp)
    rstore(c4, a + 4 * Kp); rstore(c5, a + 5 * Kp); rstore(c6, a + 6 * Kp); rstore(c7, a + 7 * Kp)
    rstore(c8, a + 8 * Kp); rstore(c9, a + 9 * Kp); rstore(c10, a + 10 * Kp); rstore(c11, a + 11 * Kp)
}

/// acc[12][16] (=, `fresh`, or +=) rows pA[0..<6], pB[0..<6] (depth floats each) x panel [depth][16].
@inline(never)
func wideTapLoop(
    _ acc: UnsafeMutablePointer<Float>, _ pA: UnsafePointer<UnsafePointer<Float>>,
    _ pB: UnsafePointer<UnsafePointer<Float>>, _ panel: UnsafePointer<Float>, _ depth: Int, fresh: Bool
) {
    let w = convColBlock
    var c0 = RVec(), c1 = RVec(), c2 = RVec(), c3 = RVec(), c4 = RVec(), c5 = RVec()
    var c6 = RVec(), c7 = RVec(), c8 = RVec(), c9 = RVec(), c10 = RVec(), c11 = RVec()
    if !fresh {
        c0 = rload(acc); c1 = rload(acc + w); c2 = rload(acc + 2 * w); c3 = rload(acc + 3 * w)
        c4 = rload(acc + 4 * w); c5 = rload(acc + 5 * w); c6 = rload(acc + 6 * w); c7 = rload(acc + 7 * w)
        c8 = rload(acc + 8 * w); c9 = rload(acc + 9 * w); c10 = rload(acc + 10 * w); c11 = rload(acc + 11 * w)
    }
    let r0 = pA[0], r1 = pA[1], r2 = pA[2], r3 = pA[3], r4 = pA[4], r5 = pA[5]
    let r6 = pB[0], r7 = pB[1], r8 = pB[2], r9 = pB[3], r10 = pB[4], r11 = pB[5]
    var b = panel
    for d in 0..<depth {
        let v = rload(b)
        c0.addProduct(RVec(repeating: r0[d]), v); c1.addProduct(RVec(repeating: r1[d]), v)
        c2.addProduct(RVec(repeating: r2[d]), v); c3.addProduct(RVec(repeating: r3[d]), v)
        c4.addProduct(RVec(repeating: r4[d]), v); c5.addProduct(RVec(repeating: r5[d]), v)
        c6.addProduct(RVec(repeating: r6[d]), v); c7.addProduct(RVec(repeating: r7[d]), v)
        c8.addProduct(RVec(repeating: r8[d]), v); c9.addProduct(RVec(repeating: r9[d]), v)
        c10.addProduct(RVec(repeating: r10[d]), v); c11.addProduct(RVec(repeating: r11[d]), v)
        b += w
    }
    rstore(c0, acc); rstore(c1, acc + w); rstore(c2, acc + 2 * w); rstore(c3, acc + 3 * w)
    rstore(c4, acc + 4 * w); rstore(c5, acc + 5 * w); rstore(c6, acc + 6 * w); rstore(c7, acc + 7 * w)
    rstore(c8, acc + 8 * w); rstore(c9, acc + 9 * w); rstore(c10, acc + 10 * w); rstore(c11, acc + 11 * w)
}

/// convTile for two tiles of a gathered group at once: the sums over the union of their live taps
/// (sorted lists), then tile A's nA rows and tile B's nB rows stored (or added) at out[idx * cols +
/// col0]. `acc` is 192 floats of scratch.
@inline(__always)
func convTilePair(
    rowsA: UnsafePointer<UnsafePointer<Float>>, rowsB: UnsafePointer<UnsafePointer<Float>>,
    liveA: UnsafePointer<Int32>, nLiveA: Int, liveB: UnsafePointer<Int32>, nLiveB: Int,
    depth: Int, panel: UnsafePointer<Float>, cols: Int, col0: Int, nCols: Int,
    out: UnsafeMutablePointer<Float>, idxA: UnsafePointer<Int>, nA: Int, idxB: UnsafePointer<Int>, nB: Int,
    accumulate: Bool, acc: UnsafeMutablePointer<Float>
) {
    var ia = 0, ib = 0, first = true
    while ia < nLiveA || ib < nLiveB {
        let ta = ia < nLiveA ? Int(liveA[ia]) : Int.max, tb = ib < nLiveB ? Int(liveB[ib]) : Int.max
        let t = min(ta, tb)
        if ta == t { ia += 1 }
        if tb == t { ib += 1 }
        wideTapLoop(
            acc, rowsA + t * convTileRows, rowsB + t * convTileRows, panel + t * depth * convColBlock, depth,
            fresh: first)
        first = false
    }
    for i in 0..<(nA + nB) {
        let o = out + (i < nA ? idxA[i] : idxB[i - nA]) * cols + col0
        let a = acc + (i < nA ? i : convTileRows + i - nA) * convColBlock
        if nCols == convColBlock {
            rstore(accumulate ? rload(o) + rload(a) : rload(a), o)
        } else {
            for j in 0..<nCols { o[j] = accumulate ? o[j] + a[j] : a[j] }
        }
    }
}
