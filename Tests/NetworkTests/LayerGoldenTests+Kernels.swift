// PENDING: rename to LayerGoldenTests+Pending.swift once the kernels branch (batch norm, max pool,
// global average pool, linear, L2 normalise, softmax cross-entropy, SGD) is merged. Written against the
// agreed signatures; it was compiled and run here against naive stand-ins of those signatures.
// Goldens: fixtures/golden/layers.safetensors (fixtures/golden/make_golden.py). Activations NHWC.
import XCTest
import Kernels
import Network
import TestSupport

final class LayerGoldenPendingTests: XCTestCase {
    override func tearDown() { Threads.count = Threads.processors }

    func testBatchNormMatchesPyTorch() throws {
        let g = try loadLayerGoldens()
        for threads in [1, 2] {
            Threads.count = threads
            for p in ["bn", "bnrelu"] {
                let relu = p == "bnrelu"
                let xs = try g.tensor("\(p).x").shape
                let C = xs[3], P = xs[0] * xs[1] * xs[2]
                let sh = BatchNormShape(pixels: P, channels: C)
                let x = try g.floats("\(p).x"), dy = try g.floats("\(p).g")
                let gamma = try g.floats("\(p).gamma", shape: [C]), beta = try g.floats("\(p).beta", shape: [C])
                let hyper = try g.floats("\(p).hyper")
                let momentum = hyper[0], eps = hyper[1]
                var rm = try g.floats("\(p).running_mean0"), rv = try g.floats("\(p).running_var0")
                let scratch = scratchBuffer(bytes: batchNormScratchBytes(sh, threads: Threads.count))
                defer { scratch.deallocate() }
                var y = [Float](repeating: .nan, count: P * C)
                var mean = [Float](repeating: .nan, count: C), invStd = [Float](repeating: .nan, count: C)
                batchNormForwardTraining(
                    sh, input: x, gamma: gamma, beta: beta, runningMean: &rm, runningVar: &rv,
                    momentum: momentum, eps: eps, relu: relu, output: &y,
                    saveMean: &mean, saveInvStd: &invStd, scratch: scratch, wide: wideTilesDefault)
                let tag = "\(p) threads \(threads)"
                assertClose(y, try g.floats("\(p).y"), "\(tag) forward")
                assertClose(mean, try g.floats("\(p).save_mean"), "\(tag) saved mean")
                assertClose(invStd, try g.floats("\(p).save_invstd"), "\(tag) saved inverse std")
                assertClose(rm, try g.floats("\(p).running_mean"), "\(tag) running mean")
                assertClose(rv, try g.floats("\(p).running_var"), "\(tag) running var (unbiased update)")

                var dx = [Float](repeating: .nan, count: P * C)
                var dgamma = [Float](repeating: .nan, count: C), dbeta = [Float](repeating: .nan, count: C)
                func backward(accumulate: Bool) {
                    y.withUnsafeBufferPointer { yp in
                        batchNormBackward(
                            sh, input: x, output: relu ? yp.baseAddress : nil, gradOutput: dy, gamma: gamma,
                            saveMean: mean, saveInvStd: invStd, relu: relu, gradInput: &dx,
                            gradGamma: &dgamma, gradBeta: &dbeta, accumulate: accumulate, scratch: scratch,
                            wide: wideTilesDefault)
                    }
                }
                backward(accumulate: false)
                let gdx = try g.floats("\(p).dx"), gdg = try g.floats("\(p).dgamma"), gdb = try g.floats("\(p).dbeta")
                assertClose(dx, gdx, "\(tag) grad input")
                assertClose(dgamma, gdg, "\(tag) grad gamma")
                assertClose(dbeta, gdb, "\(tag) grad beta")
                // accumulate: true adds into dx; gamma and beta gradients are always overwritten.
                dx = [Float](repeating: 1, count: P * C)
                dgamma = [Float](repeating: 2, count: C); dbeta = [Float](repeating: -1, count: C)
                backward(accumulate: true)
                assertClose(dx, gdx.map { $0 + 1 }, "\(tag) grad input accumulated")
                assertClose(dgamma, gdg, "\(tag) grad gamma (overwritten when accumulating dx)")
                assertClose(dbeta, gdb, "\(tag) grad beta (overwritten when accumulating dx)")

                let rm0 = try g.floats("\(p).running_mean0"), rv0 = try g.floats("\(p).running_var0")
                var ye = [Float](repeating: .nan, count: P * C)
                batchNormForwardInference(
                    sh, input: x, gamma: gamma, beta: beta, runningMean: rm0, runningVar: rv0,
                    eps: eps, relu: relu, output: &ye)
                assertClose(ye, try g.floats("\(p).y_eval"), "\(tag) eval forward")
            }
        }
    }

    func testMaxPoolMatchesPyTorch() throws {
        let g = try loadLayerGoldens()
        let xs = try g.tensor("maxpool.x").shape
        let sh = MaxPoolShape(n: xs[0], c: xs[3], h: xs[1], w: xs[2], kernel: 3, stride: 2, pad: 1)
        XCTAssertEqual([xs[0], sh.oh, sh.ow, xs[3]], try g.tensor("maxpool.y").shape)
        let x = try g.floats("maxpool.x"), dy = try g.floats("maxpool.g")
        for threads in [1, 2] {
            Threads.count = threads
            var y = [Float](repeating: .nan, count: sh.outputCount)
            var argmax = [Int32](repeating: -1, count: sh.outputCount)
            var dx = [Float](repeating: .nan, count: sh.inputCount)
            maxPoolForward(sh, input: x, output: &y, argmax: &argmax)
            maxPoolBackward(sh, gradOutput: dy, argmax: argmax, gradInput: &dx)
            XCTAssertEqual(y, try g.floats("maxpool.y"), "max pool forward is exact (threads \(threads))")
            assertClose(
                dx, try g.floats("maxpool.dx"), atol: 1e-6, rtol: 1e-6, "max pool grad input (threads \(threads))")
        }
    }

    func testGlobalAvgPoolMatchesPyTorch() throws {
        let g = try loadLayerGoldens()
        let xs = try g.tensor("gap.x").shape
        let n = xs[0], hw = xs[1] * xs[2], c = xs[3]
        let x = try g.floats("gap.x"), dy = try g.floats("gap.g", shape: [n, c])
        var y = [Float](repeating: .nan, count: n * c)
        var dx = [Float](repeating: .nan, count: n * hw * c)
        globalAvgPoolForward(n: n, pixels: hw, channels: c, input: x, output: &y)
        globalAvgPoolBackward(n: n, pixels: hw, channels: c, gradOutput: dy, gradInput: &dx, accumulate: false)
        assertClose(y, try g.floats("gap.y"), "global avg pool forward")
        let gdx = try g.floats("gap.dx")
        assertClose(dx, gdx, "global avg pool grad input")
        dx = [Float](repeating: 0.5, count: n * hw * c)
        globalAvgPoolBackward(n: n, pixels: hw, channels: c, gradOutput: dy, gradInput: &dx, accumulate: true)
        assertClose(dx, gdx.map { $0 + 0.5 }, "global avg pool grad input accumulated")
    }

    func testLinearMatchesPyTorch() throws {
        let g = try loadLayerGoldens()
        let ws = try g.tensor("linear.w").shape
        let x = try g.floats("linear.x"), w = try g.floats("linear.w"), b = try g.floats("linear.b")
        let batch = x.count / ws[1]
        let sh = LinearShape(batch: batch, inFeatures: ws[1], outFeatures: ws[0])
        let dy = try g.floats("linear.g", shape: [batch, ws[0]])
        for threads in [1, 2] {
            Threads.count = threads
            var y = [Float](repeating: .nan, count: batch * ws[0])
            linearForward(sh, input: x, weight: w, bias: b, output: &y)
            assertClose(y, try g.floats("linear.y"), "linear forward (threads \(threads))")
            var dx = [Float](repeating: .nan, count: x.count)
            var dw = [Float](repeating: .nan, count: w.count)
            var db = [Float](repeating: .nan, count: b.count)
            linearBackward(
                sh, input: x, weight: w, gradOutput: dy, gradInput: &dx, gradWeight: &dw, gradBias: &db,
                accumulate: false)
            let gdx = try g.floats("linear.dx"), gdw = try g.floats("linear.dw"), gdb = try g.floats("linear.db")
            assertClose(dx, gdx, "linear grad input (threads \(threads))")
            assertClose(dw, gdw, "linear grad weight (threads \(threads))")
            assertClose(db, gdb, "linear grad bias (threads \(threads))")
            dw = [Float](repeating: 1, count: w.count)
            db = [Float](repeating: 1, count: b.count)
            linearBackward(
                sh, input: x, weight: w, gradOutput: dy, gradInput: nil, gradWeight: &dw, gradBias: &db,
                accumulate: true)
            assertClose(dw, gdw.map { $0 + 1 }, "linear grad weight accumulated (threads \(threads))")
            assertClose(db, gdb.map { $0 + 1 }, "linear grad bias accumulated (threads \(threads))")
        }
        // No bias.
        var y0 = [Float](repeating: .nan, count: batch * ws[0])
        linearForward(sh, input: x, weight: w, bias: nil, output: &y0)
        let yb = try g.floats("linear.y")
        assertClose(y0, (0..<yb.count).map { yb[$0] - b[$0 % ws[0]] }, "linear forward without bias")
    }

    func testL2NormalizeMatchesPyTorch() throws {
        let g = try loadLayerGoldens()
        let xs = try g.tensor("normalize.x").shape
        let rows = xs[0], dim = xs[1]
        let x = try g.floats("normalize.x"), dy = try g.floats("normalize.g")
        var y = [Float](repeating: .nan, count: rows * dim)
        var norms = [Float](repeating: .nan, count: rows)
        var dx = [Float](repeating: .nan, count: rows * dim)
        l2NormalizeForward(rows: rows, dim: dim, input: x, output: &y, norms: &norms)
        l2NormalizeBackward(
            rows: rows, dim: dim, output: y, norms: norms, gradOutput: dy, gradInput: &dx, accumulate: false)
        assertClose(y, try g.floats("normalize.y"), "normalize forward")
        assertClose(norms, try g.floats("normalize.norms"), "normalize norms")
        let gdx = try g.floats("normalize.dx")
        assertClose(dx, gdx, "normalize grad input")
        dx = [Float](repeating: -2, count: rows * dim)
        l2NormalizeBackward(
            rows: rows, dim: dim, output: y, norms: norms, gradOutput: dy, gradInput: &dx, accumulate: true)
        assertClose(dx, gdx.map { $0 - 2 }, "normalize grad input accumulated")
    }

    func testSoftmaxCrossEntropyMatchesPyTorch() throws {
        let g = try loadLayerGoldens()
        let ls = try g.tensor("ce.logits").shape
        let rows = ls[0], classes = ls[1]
        let logits = try g.floats("ce.logits")
        let labels = try g.int64s("ce.labels").map { Int32($0) }
        var probs = [Float](repeating: .nan, count: rows * classes)
        let loss = softmaxCrossEntropyForward(
            rows: rows, classes: classes, logits: logits, labels: labels, probs: &probs)
        XCTAssertEqual(loss, try g.floats("ce.loss", shape: [])[0], accuracy: 1e-5, "cross-entropy loss")
        assertClose(probs, try g.floats("ce.probs"), atol: 1e-6, rtol: 1e-5, "softmax probabilities")
        var dl = [Float](repeating: .nan, count: rows * classes)
        softmaxCrossEntropyBackward(
            rows: rows, classes: classes, probs: probs, labels: labels, scale: 1 / Float(rows),
            gradLogits: &dl)
        assertClose(dl, try g.floats("ce.dlogits"), atol: 1e-6, rtol: 1e-5, "cross-entropy grad logits (mean)")
    }

    func testSGDMatchesPyTorch() throws {
        let g = try loadLayerGoldens()
        let hyper = try g.floats("sgd.hyper")
        var p = try g.floats("sgd.p0")
        let grads = try g.floats("sgd.grads", shape: [3, p.count])
        var buf = [Float](repeating: 0, count: p.count)
        for t in 0..<3 {
            let gt = Array(grads[(t * p.count)..<((t + 1) * p.count)])
            sgdStep(
                count: p.count, params: &p, grads: gt, momentumBuffer: &buf,
                lr: hyper[0], momentum: hyper[1], weightDecay: hyper[2])
            assertClose(p, try g.floats("sgd.p\(t + 1)"), atol: 1e-6, rtol: 1e-5, "SGD params after step \(t + 1)")
        }
        assertClose(buf, try g.floats("sgd.buf3"), atol: 1e-6, rtol: 1e-5, "SGD momentum buffer after 3 steps")
    }
}
