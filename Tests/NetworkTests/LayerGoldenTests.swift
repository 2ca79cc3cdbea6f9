// Our kernels against PyTorch goldens (fixtures/golden/layers.safetensors, made by
// fixtures/golden/make_golden.py). Activations are stored NHWC, weights OIHW; backward goldens use
// loss = sum(out * g). The kernels not merged yet are checked in LayerGoldenTests+Pending.swift.txt.
import XCTest
import Kernels
import Network
import TestSupport

func loadLayerGoldens() throws -> SafeTensorsFile {
    try SafeTensorsFile.read(path: fixturesPath() + "/golden/layers.safetensors")
}

func assertClose(
    _ a: [Float], _ b: [Float], atol: Float = 1e-4, rtol: Float = 1e-4, _ what: String,
    file: StaticString = #filePath, line: UInt = #line
) {
    XCTAssertEqual(a.count, b.count, what, file: file, line: line)
    guard a.count == b.count else { return }
    let r = toleranceRatio(a, b, atol: atol, rtol: rtol)
    let (d, i) = maxAbsDiff(a, b)
    XCTAssertLessThanOrEqual(
        r, 1, "\(what): max |diff| \(d) at \(i) (ours \(a[i]), torch \(b[i]))", file: file, line: line)
}

final class LayerGoldenTests: XCTestCase {
    func testConvolutionsMatchPyTorch() throws {
        let g = try loadLayerGoldens()
        for threads in [1, 2] {
            Threads.count = threads
            defer { Threads.count = Threads.processors }
            for p in ["conv_a", "conv_b", "conv_c", "conv_d", "conv_e"] {
                let xs = try g.tensor("\(p).x").shape, ws = try g.tensor("\(p).w").shape
                let params = try g.int64s("\(p).params")
                let sh = ConvPlan(
                    Conv2DShape(
                        n: xs[0], c: xs[3], h: xs[1], w: xs[2], k: ws[0], r: ws[2], s: ws[3],
                        stride: Int(params[0]), pad: Int(params[1])), .standard)
                XCTAssertEqual(ws[1], sh.c)
                let x = try g.floats("\(p).x"), w = try g.floats("\(p).w")
                let dy = try g.floats("\(p).g", shape: [sh.n, sh.oh, sh.ow, sh.k])
                let scratch = scratchBuffer(bytes: sh.scratchBytes(threads: Threads.count))
                defer { scratch.deallocate() }
                var pf = [Float](repeating: 0, count: sh.packedForwardCount)
                var pb = [Float](repeating: 0, count: sh.packedBackwardDataCount)
                var y = [Float](repeating: .nan, count: sh.outputCount)
                var dx = [Float](repeating: .nan, count: sh.inputCount)
                var dw = [Float](repeating: .nan, count: sh.weightCount)
                conv2dPackForward(sh, weights: w, packed: &pf)
                conv2dPackBackwardData(sh, weights: w, packed: &pb)
                conv2dForward(sh, input: x, packed: pf, output: &y, scratch: scratch)
                conv2dBackwardData(sh, gradOutput: dy, packed: pb, gradInput: &dx, scratch: scratch)
                conv2dBackwardWeight(sh, input: x, gradOutput: dy, gradWeight: &dw, scratch: scratch)
                assertClose(y, try g.floats("\(p).y"), "\(p) forward (threads \(threads))")
                assertClose(dx, try g.floats("\(p).dx"), "\(p) grad input (threads \(threads))")
                assertClose(dw, try g.floats("\(p).dw", shape: ws), "\(p) grad weight (threads \(threads))")
                if threads == 1 {
                    var yn = [Float](repeating: 0, count: sh.outputCount)
                    conv2dForwardNaive(sh.shape, input: x, weights: w, output: &yn)
                    assertClose(yn, try g.floats("\(p).y"), "\(p) naive forward")
                }
            }
        }
    }

    /// The golden file holds what the script says it holds (names, shapes), so a regenerated file that
    /// drops a case fails here rather than in a kernel test.
    func testGoldenFileHasEveryCase() throws {
        let g = try loadLayerGoldens()
        var expected: [String] = []
        for p in ["conv_a", "conv_b", "conv_c", "conv_d", "conv_e"] {
            expected += ["x", "w", "params", "y", "g", "dx", "dw"].map { "\(p).\($0)" }
        }
        for p in ["bn", "bnrelu"] {
            expected += [
                "x", "gamma", "beta", "running_mean0", "running_var0", "y", "save_mean", "save_invstd",
                "running_mean", "running_var", "g", "dx", "dgamma", "dbeta", "y_eval", "hyper"
            ].map { "\(p).\($0)" }
        }
        expected += ["x", "y", "g", "dx"].map { "maxpool.\($0)" } + ["x", "y", "g", "dx"].map { "gap.\($0)" }
        expected += ["x", "w", "b", "y", "g", "dx", "dw", "db"].map { "linear.\($0)" }
        expected += ["x", "y", "norms", "g", "dx"].map { "normalize.\($0)" }
        expected += ["logits", "labels", "probs", "loss", "dlogits"].map { "ce.\($0)" }
        expected += ["hyper", "p0", "grads", "p1", "p2", "p3", "buf3"].map { "sgd.\($0)" }
        XCTAssertEqual(Set(g.names), Set(expected))
        XCTAssertEqual(try g.tensor("conv_d.w").shape, [8, 3, 7, 7])
        XCTAssertEqual(try g.tensor("conv_e.x").shape.last, 5)
        XCTAssertEqual(try g.tensor("ce.loss").shape, [])
        let moco = try SafeTensorsFile.read(path: fixturesPath() + "/golden/moco.safetensors")
        XCTAssertEqual(try moco.int64s("queue.ptr_before"), [6])
        XCTAssertEqual(try moco.int64s("queue.ptr_after"), [1])
        XCTAssertEqual(try moco.tensor("infonce.logits").shape, [3, 10])
    }

    /// Model fixtures: companion files are consistent with their models.
    func testModelFixturesAreConsistent() throws {
        for name in [
            "resnet18_cifar_w0125", "resnet18_imagenet_w0125", "resnet50_cifar_w00625", "resnet18_cifar_w0125_1ch"
        ] {
            let m = try SafeTensorsFile.read(path: fixturesPath() + "/models/\(name).safetensors")
            let e = try SafeTensorsFile.read(path: fixturesPath() + "/models/\(name).expected.safetensors")
            let conv1 = try m.tensor("conv1.weight").shape
            let input = try e.tensor("input").shape
            XCTAssertEqual(input[0], 4)
            XCTAssertEqual(input[3], conv1[1], name)
            XCTAssertEqual(try e.tensor("grad.conv1.weight").shape, conv1, name)
            let last = e.metadata["last_conv"] ?? ""
            XCTAssertEqual(try e.tensor("grad.\(last)").shape, try m.tensor(last).shape, name)
            XCTAssertEqual(try e.tensor("features_eval").shape, try e.tensor("features_train").shape)
            XCTAssertEqual(m["fc.weight"] != nil, name == "resnet18_imagenet_w0125", name)
        }
    }
}
