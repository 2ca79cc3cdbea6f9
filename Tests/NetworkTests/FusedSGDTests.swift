import XCTest
import Kernels
import Network
import TestSupport

/// SGD applied tensor by tensor inside backward (no gradient block) gives the same parameters and
/// momentum, bit for bit, as backward into store.grads followed by one sgdStep over the whole block.
final class FusedSGDTests: XCTestCase {
    func testFusedUpdateEqualsBackwardThenStep() {
        let configs: [(ResNetConfig, Int, Int)] = [
            (ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 3, width: 0.125), 4, 16),
            (ResNetConfig(arch: .resnet18, stem: .imagenet, inChannels: 1, width: 0.0625), 2, 64),
            (ResNetConfig(arch: .resnet50, stem: .cifar, inChannels: 3, width: 0.0625), 2, 16)
        ]
        let lr: Float = 0.05, momentum: Float = 0.9, wd: Float = 1e-4
        for (config, batch, res) in configs {
            let plain = Encoder(config: config, headDim: 16)
            let fused = Encoder(config: config, headDim: 16, gradients: false)
            plain.initialize(seed: 4); fused.initialize(seed: 4)
            XCTAssertTrue(plain.store.hasGradients)
            XCTAssertFalse(fused.store.hasGradients)
            let sgd = FusedSGD(store: fused.store)
            sgd.lr = lr; sgd.momentum = momentum; sgd.weightDecay = wd
            var rng = TestRNG(seed: 8)
            let x = rng.array(batch * res * res * config.inChannels)
            let g = rng.array(batch * 16)
            for enc in [plain, fused] {
                let pass = ResNetPass(
                    layout: enc.backbone, batch: batch, height: res, width: res, keepActivations: true)
                let head = MLPHeadPass(layout: enc.head!, batch: batch)
                for _ in 0..<3 {  // momentum carries over steps
                    pass.forward(input: x, store: enc.store, mode: .train(splits: 1))
                    head.forward(features: pass.features, store: enc.store)
                    if enc === plain {
                        head.backward(gradOutput: g, store: enc.store)
                        pass.backward(gradFeatures: head.gradFeatures, store: enc.store)
                        sgdStep(
                            count: enc.store.parameterCount, params: enc.store.params, grads: enc.store.grads,
                            momentumBuffer: enc.store.momentum, lr: lr, momentum: momentum, weightDecay: wd)
                    } else {
                        head.backward(gradOutput: g, store: enc.store, update: sgd)
                        pass.backward(gradFeatures: head.gradFeatures, store: enc.store, update: sgd)
                    }
                }
            }
            for s in plain.store.slots where s.kind == .parameter {
                let a = UnsafeBufferPointer(start: plain.store.params + s.offset, count: s.count)
                let b = UnsafeBufferPointer(start: fused.store.params + s.offset, count: s.count)
                let ma = UnsafeBufferPointer(start: plain.store.momentum + s.offset, count: s.count)
                let mb = UnsafeBufferPointer(start: fused.store.momentum + s.offset, count: s.count)
                XCTAssertTrue(Array(a) == Array(b), "\(config) \(s.name): parameters differ")
                XCTAssertTrue(Array(ma) == Array(mb), "\(config) \(s.name): momentum differs")
                XCTAssertTrue(mb.contains { $0 != 0 }, "\(config) \(s.name): never updated")
            }
        }
    }
}
