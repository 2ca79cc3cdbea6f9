import XCTest
import Kernels
import Network
import TestSupport

/// Whole-network backward against finite differences of L = sum(features * g), BN in train mode.
/// Bottleneck networks are checked against PyTorch instead (ModelGoldenTests): in float32, finite
/// differences through three stacked small-batch batch norms are too noisy to hold to 2%.
final class ResNetGradientTests: XCTestCase {
    func check(_ config: ResNetConfig, batch: Int, res: Int, file: StaticString = #filePath, line: UInt = #line) {
        let enc = Encoder(config: config)
        enc.initialize(seed: 3)
        let store = enc.store
        // Non-trivial gamma/beta so that every path matters.
        var rng = TestRNG(seed: 11)
        for s in store.slots where s.kind == .parameter && s.name.contains("bn") {
            let p = store.pointer(s)
            for i in 0..<s.count { p[i] = s.name.hasSuffix("weight") ? rng.uniform(0.5, 1.5) : rng.uniform(-0.3, 0.3) }
        }
        let pass = ResNetPass(layout: enc.backbone, batch: batch, height: res, width: res, keepActivations: true)
        let x = rng.array(batch * res * res * config.inChannels)
        let D = config.featureDim
        let g = rng.array(batch * D)
        func loss(_ pass: ResNetPass) -> Double {
            pass.forward(input: x, store: store, mode: .train(splits: 1))
            var s = 0.0
            for i in 0..<(batch * D) { s += Double(pass.features[i]) * Double(g[i]) }
            return s
        }
        _ = loss(pass)
        pass.backward(gradFeatures: g, store: store)
        let analytic = Array(UnsafeBufferPointer(start: store.grads, count: store.parameterCount))
        // The analytic gradients above ran the Winograd kernels (forward and backward); the finite
        // differences below use the direct convolution, whose float32 rounding (~1e-7 against
        // Winograd's ~1e-5) leaves eps = 1e-4 steps meaningful. So this checks Winograd's gradients
        // against the derivative of the exact network.
        let direct = ResNetPass(
            layout: enc.backbone, batch: batch, height: res, width: res, keepActivations: true,
            config: ExecutionConfig(convolution: .direct))
        // The last block's tensors: their gradients pass through few ReLUs. Deeper ones are checked
        // against PyTorch (ModelGoldenTests); finite differences through a whole tiny network are
        // dominated by ReLU kinks amplified by small-batch batch norm.
        let names = store.slots.filter { $0.kind == .parameter }.map(\.name)
        let lastBlock = names.last!.split(separator: ".").prefix(2).joined(separator: ".")
        let picks = names.filter { $0.hasPrefix(lastBlock + ".") }
        XCTAssertGreaterThanOrEqual(picks.count, 6, file: file, line: line)
        // Directional derivatives along a random direction over each whole tensor: robust to the
        // ReLU kinks and small-batch BN curvature that make single-element differences noisy.
        for name in picks {
            let slot = store.slot(name)!
            let v = rng.array(slot.count)
            var analyticDot = 0.0
            for i in 0..<slot.count { analyticDot += Double(analytic[slot.offset + i]) * Double(v[i]) }
            let p = store.params + slot.offset
            let saved = Array(UnsafeBufferPointer(start: p, count: slot.count))
            let eps: Float = 1e-4
            for i in 0..<slot.count { p[i] = saved[i] + eps * v[i] }
            let lp = loss(direct)
            for i in 0..<slot.count { p[i] = saved[i] - eps * v[i] }
            let lm = loss(direct)
            for i in 0..<slot.count { p[i] = saved[i] }
            let numericDot = (lp - lm) / (2 * Double(eps))
            let rel = abs(analyticDot - numericDot) / max(abs(numericDot), 1e-3)
            XCTAssertLessThan(
                rel, 2e-2, "\(config) \(name): analytic \(analyticDot) numeric \(numericDot)",
                file: file, line: line)
        }
    }

    func testResNet18CifarGradients() {
        check(ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 3, width: 0.0625), batch: 8, res: 32)
    }

    func testResNet18ImagenetStemGradients() {
        check(ResNetConfig(arch: .resnet18, stem: .imagenet, inChannels: 1, width: 0.0625), batch: 8, res: 64)
    }

    func testWidthAndFeatureDims() {
        XCTAssertEqual(ResNetConfig(arch: .resnet18, width: 0.25).stageWidths, [16, 32, 64, 128])
        XCTAssertEqual(ResNetConfig(arch: .resnet50, width: 1).featureDim, 2048)
        XCTAssertEqual(ResNetConfig(arch: .resnet18, stem: .cifar).finalMapSize(32), 4)
        XCTAssertEqual(ResNetConfig(arch: .resnet18, stem: .imagenet).finalMapSize(224), 7)
        let e = Encoder(config: ResNetConfig(arch: .resnet18, stem: .imagenet, width: 1))
        // torchvision resnet18 without fc: 11,176,512 parameters.
        let n = e.store.slots.filter { $0.kind == .parameter }.reduce(0) { $0 + $1.count }
        XCTAssertEqual(n, 11_176_512)
        XCTAssertEqual(e.store.slots.first?.name, "conv1.weight")
        XCTAssertNotNil(e.store.slot("layer4.1.bn2.num_batches_tracked"))
        XCTAssertNotNil(e.store.slot("layer2.0.downsample.0.weight"))
    }
}
