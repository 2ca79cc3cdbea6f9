import XCTest
import Kernels
import Contrastive
import TestSupport

final class MaskingTests: XCTestCase {
    // MARK: helpers

    enum Rule { case query, negative }

    /// One draw of a cell rule; r is the rule's first draw, read from a copy of the generator.
    func draw(
        _ rule: Rule, flags: [UInt8], mode: MaskMode = .saliency, config: MaskConfig = MaskConfig(),
        rng: inout SplitMix64
    ) -> (mask: [UInt8], r: Float, n: Int) {
        var copy = rng
        let range = rule == .query ? config.posRatio : config.negRatio
        let r = copy.uniform(range.lowerBound, range.upperBound)
        var mask = [UInt8](repeating: 7, count: flags.count)
        let n = flags.withUnsafeBufferPointer { f in
            mask.withUnsafeMutableBufferPointer { m in
                rule == .query
                    ? sampleQueryCells(
                        fgFlags: f.baseAddress!, cells: flags.count, mode: mode, config: config, rng: &rng,
                        mask: m.baseAddress!)
                    : sampleHardNegativeCells(
                        fgFlags: f.baseAddress!, cells: flags.count, mode: mode, config: config, rng: &rng,
                        mask: m.baseAddress!)
            }
        }
        return (mask, r, n)
    }

    func randomFlags(_ cells: Int, fg: Int, rng: inout TestRNG) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: cells)
        var idx = Array(0..<cells)
        for i in stride(from: cells - 1, to: 0, by: -1) { idx.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        for i in idx.prefix(fg) { f[i] = 1 }
        return f
    }

    struct Run { var views: [Float]; var cellMasks: [UInt8]; var records: [MaskRecord] }

    func run(
        _ views: [Float], blurred: [Float]? = nil, saliency: [Float]?, batch: Int, height: Int, width: Int,
        channels: Int, grid: Int, role: MaskRole, mode: MaskMode = .saliency, fill: MaskFill,
        config: MaskConfig = MaskConfig(), seed: UInt64 = 42, step: Int = 0
    ) -> Run {
        var v = views
        var cm = [UInt8](repeating: 9, count: batch * grid * grid)
        var rec = [MaskRecord](repeating: MaskRecord(maskedCells: -1), count: batch)
        func withOpt<T, R>(_ a: [T]?, _ body: (UnsafePointer<T>?) -> R) -> R {
            guard let a else { return body(nil) }
            return a.withUnsafeBufferPointer { body($0.baseAddress!) }
        }
        withOpt(blurred) { bp in
            withOpt(saliency) { sp in
                v.withUnsafeMutableBufferPointer { vp in
                    cm.withUnsafeMutableBufferPointer { cp in
                        rec.withUnsafeMutableBufferPointer { rp in
                            applyMasks(
                                views: vp.baseAddress!, blurred: bp, saliency: sp, batch: batch, height: height,
                                width: width, channels: channels, grid: grid, role: role, mode: mode, fill: fill,
                                config: config, seed: seed, step: step, cellMasks: cp.baseAddress!,
                                records: rp.baseAddress!)
                        }
                    }
                }
            }
        }
        return Run(views: v, cellMasks: cm, records: rec)
    }

    /// Cell index of each pixel row / column (gridBand).
    func bandOf(_ size: Int, _ grid: Int) -> [Int] {
        var out = [Int](repeating: -1, count: size)
        for i in 0..<grid { for y in gridBand(i, size: size, grid: grid) { out[y] = i } }
        return out
    }

    func fgFlags(_ map: ArraySlice<Float>, fgStd: Float = 0.6) -> [UInt8] {
        let m = Array(map)
        var f = [UInt8](repeating: 0, count: m.count)
        m.withUnsafeBufferPointer { mp in
            f.withUnsafeMutableBufferPointer {
                _ = foregroundCells(mp.baseAddress!, cells: m.count, fgStd: fgStd, flags: $0.baseAddress!)
            }
        }
        return f
    }

    var spatialOnly: MaskConfig { var c = MaskConfig(); c.focalProb = 0; c.spatialProb = 1; return c }

    // MARK: cell rules

    func testQueryCountsFollowRuleExactly() {
        var trng = TestRNG(seed: 1)
        var rng = SplitMix64(seed: 7)
        for _ in 0..<5000 {
            let fg = 1 + Int(trng.next() % 48)
            let flags = randomFlags(49, fg: fg, rng: &trng)
            let (mask, r, n) = draw(.query, flags: flags, rng: &rng)
            let total = Int(r * 49)
            var eFG = min(total, Int((min(r * Float(fg) / 49, 0.55) * 49).rounded()))
            var eBG = total - eFG
            if eBG > 49 - fg { eFG += eBG - (49 - fg); eBG = 49 - fg }
            let mFG = (0..<49).filter { mask[$0] == 1 && flags[$0] == 1 }.count
            let mBG = (0..<49).filter { mask[$0] == 1 && flags[$0] == 0 }.count
            XCTAssertTrue(mask.allSatisfy { $0 <= 1 })
            XCTAssertEqual(n, total)
            XCTAssertEqual(mFG, eFG, "r \(r) fg \(fg)")
            XCTAssertEqual(mBG, eBG, "r \(r) fg \(fg)")
        }
    }

    func testQueryRatioDistribution() {
        // A fine grid (400 cells) so int(r*cells)/cells follows r closely; 30% foreground.
        var trng = TestRNG(seed: 2)
        var rng = SplitMix64(seed: 8)
        let flags = randomFlags(400, fg: 120, rng: &trng)
        var fr = [Double](), fgMasked = 0, allMasked = 0
        for _ in 0..<20_000 {
            let (mask, _, n) = draw(.query, flags: flags, rng: &rng)
            fr.append(Double(n) / 400)
            allMasked += n
            fgMasked += (0..<400).filter { mask[$0] == 1 && flags[$0] == 1 }.count
        }
        let mean = fr.reduce(0, +) / Double(fr.count)
        let sd = (fr.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(fr.count)).squareRoot()
        XCTAssertEqual(mean, 0.15 - 0.5 / 400, accuracy: 0.002)  // E[floor(400 r)] / 400
        XCTAssertEqual(sd, 0.2 / 12.0.squareRoot(), accuracy: 0.002)  // U(0.05, 0.25)
        XCTAssertGreaterThanOrEqual(fr.min()!, 0.05)
        XCTAssertLessThanOrEqual(fr.max()!, 0.25)
        XCTAssertLessThan(fr.min()!, 0.052)
        XCTAssertGreaterThan(fr.max()!, 0.247)
        XCTAssertEqual(Double(fr.filter { $0 < 0.10 }.count) / 20_000, 0.25, accuracy: 0.015)
        XCTAssertEqual(Double(fgMasked) / Double(allMasked), 0.30, accuracy: 0.005, "foreground share = FG_ratio")

        // The 4x4 grid with 6 foreground cells: the masked fraction is floor(16 r) / 16 and the foreground count
        // min(total, round(6 r)); their means from the rule by quadrature (rounding dominates at this size).
        var q = 0.0, qFG = 0.0
        for i in 0..<100_000 {
            let r = 0.05 + 0.2 * (Double(i) + 0.5) / 100_000
            q += floor(16 * r); qFG += min(floor(16 * r), (6 * r).rounded())
        }
        let expect = q / 100_000 / 16
        let f16 = randomFlags(16, fg: 6, rng: &trng)
        var s = 0.0, fgS = 0, all = 0
        for _ in 0..<20_000 {
            let (mask, _, n) = draw(.query, flags: f16, rng: &rng)
            s += Double(n) / 16
            all += n
            fgS += (0..<16).filter { mask[$0] == 1 && f16[$0] == 1 }.count
        }
        XCTAssertEqual(s / 20_000, expect, accuracy: 0.003)
        XCTAssertEqual(Double(fgS) / Double(all), qFG / q, accuracy: 0.01)
    }

    func testQueryCapAndShortPools() {
        var trng = TestRNG(seed: 3)
        var rng = SplitMix64(seed: 9)
        // Cap: 70% foreground, r in [0.8, 0.84]: r*FG_ratio in [0.56, 0.588] > 0.55, so exactly 55 fg cells.
        var cfg = MaskConfig()
        cfg.posRatio = 0.8...0.84
        let flags = randomFlags(100, fg: 70, rng: &trng)
        for _ in 0..<500 {
            let (mask, r, n) = draw(.query, flags: flags, config: cfg, rng: &rng)
            XCTAssertEqual(n, Int(r * 100))
            XCTAssertEqual((0..<100).filter { mask[$0] == 1 && flags[$0] == 1 }.count, 55)
            XCTAssertEqual((0..<100).filter { mask[$0] == 1 && flags[$0] == 0 }.count, Int(r * 100) - 55)
        }
        // Short background pool: 14 of 16 foreground, r in [0.8, 0.9]: 9 fg wanted, 3-5 bg wanted, 2 exist.
        let f2: [UInt8] = [1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1]
        cfg.posRatio = 0.8...0.9
        for _ in 0..<500 {
            let (mask, r, n) = draw(.query, flags: f2, config: cfg, rng: &rng)
            XCTAssertEqual(n, Int(r * 16))
            XCTAssertEqual(mask[5], 1); XCTAssertEqual(mask[14], 1)
            XCTAssertEqual(mask.filter { $0 == 1 }.count, Int(r * 16))
        }
    }

    func testHardNegativeMasksForegroundOnly() {
        var trng = TestRNG(seed: 4)
        var rng = SplitMix64(seed: 10)
        var rs = [Double](), shares = [Double]()
        for _ in 0..<20_000 {
            let fg = 5 + Int(trng.next() % 40)
            let flags = randomFlags(49, fg: fg, rng: &trng)
            let (mask, r, n) = draw(.negative, flags: flags, rng: &rng)
            XCTAssertTrue((0..<49).allSatisfy { mask[$0] == 0 || flags[$0] == 1 }, "background cell masked")
            XCTAssertEqual(n, Int((r * Float(fg) / 49 * 49).rounded()))
            XCTAssertEqual(mask.filter { $0 == 1 }.count, n)
            rs.append(Double(r)); shares.append(Double(n) / Double(fg))
        }
        XCTAssertEqual(rs.reduce(0, +) / 20_000, 0.55, accuracy: 0.003)
        XCTAssertGreaterThanOrEqual(rs.min()!, 0.4); XCTAssertLessThanOrEqual(rs.max()!, 0.7)
        XCTAssertEqual(shares.reduce(0, +) / 20_000, 0.55, accuracy: 0.005)
    }

    func testRandomModeIgnoresSaliency() {
        let top: [UInt8] = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
        let bottom: [UInt8] = top.reversed()
        let sparse: [UInt8] = [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        var freqTop = [Int](repeating: 0, count: 16)
        var total = 0
        for s in 0..<20_000 {
            var a = SplitMix64(seed: UInt64(s)), b = a, c = a
            let qa = draw(.query, flags: top, mode: .random, rng: &a)
            let qb = draw(.query, flags: sparse, mode: .random, rng: &b)
            XCTAssertEqual(qa.mask, qb.mask, "query cells must not depend on the flags in .random mode")
            XCTAssertEqual(qa.n, Int(qa.r * 16))
            a = SplitMix64(seed: UInt64(s) &+ 1_000_000); b = a; c = a
            let na = draw(.negative, flags: top, mode: .random, rng: &a)
            let nb = draw(.negative, flags: bottom, mode: .random, rng: &b)
            XCTAssertEqual(na.mask, nb.mask)
            XCTAssertEqual(na.n, Int((na.r * 8).rounded()))
            for i in 0..<16 where na.mask[i] == 1 { freqTop[i] += 1 }
            total += na.n
            let ns = draw(.negative, flags: top, mode: .saliency, rng: &c)
            XCTAssertTrue((8..<16).allSatisfy { ns.mask[$0] == 0 })
        }
        // .random: background cells are hit as often as foreground ones.
        let fgHits = Double(freqTop[0..<8].reduce(0, +)), bgHits = Double(freqTop[8..<16].reduce(0, +))
        XCTAssertEqual(fgHits / Double(total), 0.5, accuracy: 0.01)
        XCTAssertEqual(bgHits / Double(total), 0.5, accuracy: 0.01)
    }

    // MARK: applyMasks

    func testEachSampleGetsItsOwnHardNegative() {
        let B = 16, H = 32, W = 32, C = 3, G = 4
        let map: [Float] = [0, 0, 5, 5, 0, 5, 5, 5, 0, 5, 5, 5, 0, 0, 5, 0]  // 9 fg cells
        let sal = (0..<B).flatMap { _ in map }
        let out = run(
            [Float](repeating: 0, count: B * H * W * C), saliency: sal, batch: B, height: H, width: W,
            channels: C, grid: G, role: .hardNegative, fill: .hp, config: spatialOnly)
        let plane = H * W * C
        var distinctMasks = Set<[UInt8]>()
        for b in 0..<B {
            let cm = Array(out.cellMasks[(b * 16)..<((b + 1) * 16)])
            distinctMasks.insert(cm)
            XCTAssertTrue((0..<16).allSatisfy { cm[$0] == 0 || map[$0] == 5 })
            XCTAssertEqual(out.records[b].fgCells, 9)
            XCTAssertEqual(out.records[b].maskedCells, Int((out.records[b].ratio * 9 / 16 * 16).rounded()))
            for b2 in 0..<b {
                XCTAssertNotEqual(
                    Array(out.views[(b * plane)..<((b + 1) * plane)]),
                    Array(out.views[(b2 * plane)..<((b2 + 1) * plane)]), "samples \(b2) and \(b) share a hard negative")
            }
        }
        XCTAssertGreaterThan(distinctMasks.count, 5)
    }

    func testFreshNoiseInEveryCell() {
        let B = 8, H = 32, W = 32, C = 3, G = 4
        var cfg = spatialOnly
        cfg.posRatio = 0.25...0.25
        var trng = TestRNG(seed: 6)
        let out = run(
            [Float](repeating: 0, count: B * H * W * C), saliency: trng.array(B * 16), batch: B, height: H,
            width: W, channels: C, grid: G, role: .query, fill: .hp, config: cfg)
        var blocks = Set<[Float]>(), channelBlocks = Set<[Float]>(), n = 0
        for b in 0..<B {
            XCTAssertEqual(out.records[b].maskedCells, 4)
            for cell in 0..<16 where out.cellMasks[b * 16 + cell] == 1 {
                let (i, j) = (cell / 4, cell % 4)
                var block = [Float]()
                var perChannel = [[Float]](repeating: [], count: C)
                for y in (8 * i)..<(8 * i + 8) {
                    for x in (8 * j)..<(8 * j + 8) {
                        for c in 0..<C {
                            let v = out.views[((b * H + y) * W + x) * C + c]
                            block.append(v); perChannel[c].append(v)
                        }
                    }
                }
                XCTAssertFalse(block.contains(0), "masked cell left a value untouched")
                blocks.insert(block); n += 1
                for p in perChannel { channelBlocks.insert(p) }
            }
        }
        XCTAssertEqual(n, 32)
        XCTAssertEqual(blocks.count, n, "two masked cells share their noise")
        XCTAssertEqual(channelBlocks.count, n * C)
    }

    func testDeterministicAcrossThreadCounts() {
        let B = 64, H = 16, W = 16, C = 3, G = 4
        var trng = TestRNG(seed: 7)
        let views = trng.array(B * H * W * C), sal = trng.array(B * 16)
        let saved = Threads.count
        defer { Threads.count = saved }
        for role in [MaskRole.query, .hardNegative] {
            for fill in MaskFill.allCases {
                let blurred = trng.array(views.count)
                Threads.count = 1
                let a = run(
                    views, blurred: blurred, saliency: sal, batch: B, height: H, width: W, channels: C, grid: G,
                    role: role, fill: fill, step: 3)
                Threads.count = 2
                let b = run(
                    views, blurred: blurred, saliency: sal, batch: B, height: H, width: W, channels: C, grid: G,
                    role: role, fill: fill, step: 3)
                XCTAssertEqual(a.views, b.views)
                XCTAssertEqual(a.cellMasks, b.cellMasks)
                XCTAssertEqual(a.records, b.records)
                XCTAssertNotEqual(a.views, views)
                let c = run(
                    views, blurred: blurred, saliency: sal, batch: B, height: H, width: W, channels: C, grid: G,
                    role: role, fill: fill, step: 4)
                XCTAssertNotEqual(a.views, c.views)
                XCTAssertNotEqual(a.cellMasks, c.cellMasks)
                let d = run(
                    views, blurred: blurred, saliency: sal, batch: B, height: H, width: W, channels: C, grid: G,
                    role: role, fill: fill, seed: 43, step: 3)
                XCTAssertNotEqual(a.views, d.views)
            }
        }
        // Query and hard negative draw from different streams.
        let q = run(
            views, saliency: sal, batch: B, height: H, width: W, channels: C, grid: G, role: .query, fill: .mean)
        let n = run(
            views, saliency: sal, batch: B, height: H, width: W, channels: C, grid: G, role: .hardNegative, fill: .mean)
        XCTAssertNotEqual(q.records.map(\.ratio), n.records.map(\.ratio))
    }

    func testBlurFillCopiesBlurredCellsExactly() {
        // 30 x 30 with G = 4: uneven bands [0,7) [7,15) [15,22) [22,30).
        let B = 32, H = 30, W = 30, C = 3, G = 4
        var trng = TestRNG(seed: 8)
        let views = trng.array(B * H * W * C), blurred = trng.array(B * H * W * C, 5, 6), sal = trng.array(B * 16)
        let band = bandOf(H, G)
        for role in [MaskRole.query, .hardNegative] {
            let out = run(
                views, blurred: blurred, saliency: sal, batch: B, height: H, width: W, channels: C, grid: G,
                role: role, fill: .blur)
            var anyMasked = false
            for b in 0..<B {
                let cm = Array(out.cellMasks[(b * 16)..<((b + 1) * 16)])
                let rec = out.records[b]
                var replaced = 0
                for y in 0..<H {
                    for x in 0..<W {
                        for c in 0..<C {
                            let i = ((b * H + y) * W + x) * C + c
                            if cm[band[y] * 4 + band[x]] == 1 {
                                XCTAssertEqual(out.views[i], blurred[i]); replaced += 1
                            } else {
                                XCTAssertEqual(out.views[i], views[i])
                            }
                        }
                    }
                }
                anyMasked = anyMasked || replaced > 0
                XCTAssertEqual(rec.kind, .spatial)
                XCTAssertEqual(rec.maskedCells, cm.filter { $0 == 1 }.count)
                XCTAssertEqual(rec.cellBits, (0..<16).reduce(UInt64(0)) { $0 | (cm[$1] == 1 ? 1 << UInt64($1) : 0) })
                XCTAssertEqual(rec.maskedFraction, Float(replaced) / Float(H * W * C), accuracy: 1e-6)
                let flags = fgFlags(sal[(b * 16)..<((b + 1) * 16)])
                XCTAssertEqual(rec.fgCells, flags.filter { $0 == 1 }.count)
                if role == .hardNegative {
                    XCTAssertTrue((0..<16).allSatisfy { cm[$0] == 0 || flags[$0] == 1 })
                    XCTAssertEqual(rec.maskedCells, Int((rec.ratio * Float(rec.fgCells) / 16 * 16).rounded()))
                } else {
                    XCTAssertEqual(rec.maskedCells, Int(rec.ratio * 16))
                }
            }
            XCTAssertTrue(anyMasked)
        }
    }

    func testMeanFillUsesPerImageChannelMean() {
        let B = 16, H = 32, W = 32, C = 3, G = 4
        var trng = TestRNG(seed: 9)
        var views = trng.array(B * H * W * C)
        for i in 0..<views.count { views[i] += Float(i % C) + Float(i / (H * W * C)) * 0.1 }  // distinct means
        let out = run(
            views, saliency: trng.array(B * 16), batch: B, height: H, width: W, channels: C, grid: G,
            role: .hardNegative, fill: .mean)
        let plane = H * W * C
        var masked = 0
        for b in 0..<B {
            var mean = [Double](repeating: 0, count: C)
            for p in 0..<(H * W) { for c in 0..<C { mean[c] += Double(views[b * plane + p * C + c]) } }
            for y in 0..<H {
                for x in 0..<W {
                    let m = out.cellMasks[b * 16 + (y / 8) * 4 + x / 8] == 1
                    for c in 0..<C {
                        let i = b * plane + (y * W + x) * C + c
                        if m {
                            XCTAssertEqual(Double(out.views[i]), mean[c] / Double(H * W), accuracy: 1e-5); masked += 1
                        } else {
                            XCTAssertEqual(out.views[i], views[i])
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThan(masked, 0)
    }

    func testHighPassNoiseLevel() {
        let B = 256, H = 32, W = 32, C = 3, G = 4
        let plane = H * W * C
        var trng = TestRNG(seed: 10)
        let sal = trng.array(B * 16)
        for (role, sigma) in [(MaskRole.query, 0.18), (.hardNegative, 0.14)] {
            let out = run(
                [Float](repeating: 100, count: B * plane), saliency: sal, batch: B, height: H, width: W,
                channels: C, grid: G, role: role, fill: .hp, config: spatialOnly)
            var s = 0.0, ss = 0.0, n = 0
            for b in 0..<B {
                var replaced = 0
                for y in 0..<H {
                    for x in 0..<W {
                        let m = out.cellMasks[b * 16 + (y / 8) * 4 + x / 8] == 1
                        for c in 0..<C {
                            let v = out.views[b * plane + (y * W + x) * C + c]
                            if m {
                                XCTAssertNotEqual(v, 100); s += Double(v); ss += Double(v * v); n += 1; replaced += 1
                            } else {
                                XCTAssertEqual(v, 100)
                            }
                        }
                    }
                }
                XCTAssertEqual(out.records[b].maskedFraction, Float(replaced) / Float(plane), accuracy: 1e-6)
            }
            let mean = s / Double(n), sd = (ss / Double(n) - mean * mean).squareRoot()
            XCTAssertGreaterThan(n, 50_000)
            XCTAssertEqual(mean, 0, accuracy: 0.01 * sigma)
            XCTAssertEqual(sd, sigma, accuracy: 0.01 * sigma)
        }
    }

    func testHighPassKindsAndFocalWindows() {
        // 8 x 8 views, 2 x 2 px cells; focal windows: query keeps round(8 * 200/224) = 7 px, hard negative
        // masks round(8 * 130/224) = 5 px.
        let B = 6000, H = 8, W = 8, C = 3, G = 4
        let plane = H * W * C
        var trng = TestRNG(seed: 12)
        let sal = trng.array(B * 16)
        for role in [MaskRole.query, .hardNegative] {
            let out = run(
                [Float](repeating: 100, count: B * plane), saliency: sal, batch: B, height: H, width: W,
                channels: C, grid: G, role: role, fill: .hp)
            var counts = [0, 0, 0], differingChannels = 0
            for b in 0..<B {
                let rec = out.records[b]
                counts[Int(rec.kind.rawValue)] += 1
                let v = out.views[(b * plane)..<((b + 1) * plane)]
                let touched = v.filter { $0 != 100 }.count
                // Masked cells per channel.
                var perChannel = [Set<Int>](repeating: [], count: C)
                for p in 0..<(H * W) {
                    for c in 0..<C where v[b * plane + p * C + c] != 100 {
                        perChannel[c].insert((p / W / 2) * 4 + (p % W) / 2)
                    }
                }
                switch rec.kind {
                case .focal:
                    XCTAssertEqual(touched, role == .query ? (64 - 49) * C : 25 * C)
                    // The touched pixels form (the complement of) one square window, the same in every channel.
                    var rows = Set<Int>(), cols = Set<Int>()
                    for p in 0..<(H * W) where (v[b * plane + p * C] != 100) != (role == .query) {
                        rows.insert(p / W); cols.insert(p % W)
                    }
                    XCTAssertEqual(rows.count, role == .query ? 7 : 5)
                    XCTAssertEqual(cols.count, role == .query ? 7 : 5)
                    XCTAssertEqual(perChannel[0], perChannel[1])
                case .spatial:
                    XCTAssertEqual(perChannel[0], perChannel[1]); XCTAssertEqual(perChannel[0], perChannel[2])
                    XCTAssertEqual(touched, perChannel[0].count * 4 * C)
                    XCTAssertEqual(perChannel[0].count, rec.maskedCells)
                case .channel:
                    let expect =
                        role == .query
                        ? Int(rec.ratio * 16)
                        : Int((rec.ratio * Float(rec.fgCells) / 16 * 16).rounded())
                    for c in 0..<C { XCTAssertEqual(perChannel[c].count, expect) }
                    XCTAssertEqual(touched, expect * 4 * C)
                    XCTAssertEqual(rec.maskedCells, perChannel[0].union(perChannel[1]).union(perChannel[2]).count)
                    if perChannel[0] != perChannel[1] || perChannel[1] != perChannel[2] { differingChannels += 1 }
                }
            }
            let f = counts.map { Double($0) / Double(B) }
            XCTAssertEqual(f[0], 0.2, accuracy: 0.02)
            XCTAssertEqual(f[1], 0.24, accuracy: 0.02)
            XCTAssertEqual(f[2], 0.56, accuracy: 0.02)
            XCTAssertGreaterThan(differingChannels, counts[2] / 2, "channel grids should usually differ per channel")
        }
    }

    func testModeNoneAndRandomWithoutSaliency() {
        let B = 8, H = 16, W = 16, C = 3, G = 4
        var trng = TestRNG(seed: 13)
        let views = trng.array(B * H * W * C)
        let none = run(
            views, saliency: nil, batch: B, height: H, width: W, channels: C, grid: G, role: .query,
            mode: .none, fill: .hp)
        XCTAssertEqual(none.views, views)
        XCTAssertTrue(none.cellMasks.allSatisfy { $0 == 0 })
        XCTAssertTrue(none.records.allSatisfy { $0 == MaskRecord() })
        let blurred = trng.array(views.count, 3, 4)
        let r = run(
            views, blurred: blurred, saliency: nil, batch: B, height: H, width: W, channels: C, grid: G,
            role: .hardNegative, mode: .random, fill: .blur)
        for b in 0..<B {
            XCTAssertEqual(r.records[b].fgCells, 12)  // round(0.7257 * 16)
            XCTAssertEqual(r.records[b].maskedCells, Int((r.records[b].ratio * 12 / 16 * 16).rounded()))
        }
    }

    func testMaskPreviewLayout() {
        let B = 3, H = 16, W = 16, C = 3, G = 4
        var trng = TestRNG(seed: 14)
        let views = trng.array(B * H * W * C), sal = trng.array(B * 16)
        let q = run(views, saliency: sal, batch: B, height: H, width: W, channels: C, grid: G, role: .query, fill: .hp)
            .views
        let n = run(
            views, saliency: sal, batch: B, height: H, width: W, channels: C, grid: G, role: .hardNegative, fill: .hp
        ).views
        let img = views.withUnsafeBufferPointer { v in
            sal.withUnsafeBufferPointer { s in
                q.withUnsafeBufferPointer { qp in
                    n.withUnsafeBufferPointer { np in
                        maskPreview(
                            views: v.baseAddress!, saliency: s.baseAddress!, query: qp.baseAddress!,
                            hardNegative: np.baseAddress!, batch: B, height: H, width: W, channels: C, grid: G,
                            count: 2, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25], highPass: true, scale: 2)
                    }
                }
            }
        }
        XCTAssertEqual(img.channels, 3)
        XCTAssertEqual(img.width, 4 * 32 + 5 * 2)
        XCTAssertEqual(img.height, 2 * 32 + 3 * 2)
        XCTAssertTrue(img.pixels.allSatisfy { $0 >= 0 && $0 <= 1 })
        // Foreground outline: the top-left pixel of a foreground cell in the heat tile is pure green.
        let flags = fgFlags(sal[0..<16])
        let cell = flags.firstIndex(of: 1)!
        let (y, x) = (2 + (cell / 4) * 4 * 2, 2 + 32 + 2 + (cell % 4) * 4 * 2)
        let p = (y * img.width + x) * 3
        XCTAssertEqual(Array(img.pixels[p..<(p + 3)]), [0, 1, 0])
    }

    /// Without masking the preview is the two views of each image, side by side, as displayed pixels.
    func testViewPairPreviewShowsBothViews() {
        let B = 3, H = 8, W = 8, C = 1
        var trng = TestRNG(seed: 15)
        let a = trng.array(B * H * W * C), b = trng.array(B * H * W * C)
        let img = a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                viewPairPreview(
                    first: ap.baseAddress!, second: bp.baseAddress!, batch: B, height: H, width: W,
                    channels: C, count: 2, mean: [0.5], std: [0.25], scale: 1)
            }
        }
        XCTAssertEqual(img.width, 2 * W + 3 * 2)
        XCTAssertEqual(img.height, 2 * H + 3 * 2)
        // Row 2 (sample 1), second tile, pixel (3, 5): the key view's value, shown as x * std + mean, gray.
        let (y, x) = (2 + H + 2 + 3, 2 + W + 2 + 5)
        let want = min(1, max(0, b[1 * H * W + 3 * W + 5] * 0.25 + 0.5))
        let p = (y * img.width + x) * 3
        XCTAssertEqual(Array(img.pixels[p..<(p + 3)]), [want, want, want])
    }
}
