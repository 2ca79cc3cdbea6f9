import XCTest
import Kernels
import Network
import TestSupport

/// Batch norms applied by their consumers (ExecutionConfig.fusesBatchNorms: a block's mid batch norm + ReLU
/// inside the next convolution's Winograd input transform, in forward and backward-weights; a
/// downsampling block's main-path batch norm inside the shortcut's) give the same bits as writing
/// their outputs and reading them back: the features, the running statistics, and after backward
/// every gradient, in train mode (one batch-norm group and several, kept and recycled activations)
/// and in eval mode.
final class FusedBatchNormTests: XCTestCase {
    struct Outcome: Equatable { var features: [Float]; var buffers: [Float]; var grads: [Float] }

    func run(
        _ config: ResNetConfig, batch: Int, res: Int, mode: BatchNormMode, train: Bool, fuse: Bool,
        fusedNodes: Int, epilogue: Bool = true, convolution: ConvAlgorithm = .winograd
    ) -> Outcome {
        var execution = ExecutionConfig(convolution: convolution)
        execution.fusesBatchNorms = fuse
        execution.statisticsInEpilogue = epilogue
        let enc = Encoder(config: config)
        enc.initialize(seed: 5)
        let store = enc.store
        var rng = TestRNG(seed: 21)
        // Spread-out gamma/beta (some negative gammas) and running statistics, so every term matters.
        for s in store.slots where s.name.contains("bn") && s.kind != .counter {
            let p = store.pointer(s)
            for i in 0..<s.count {
                if s.name.hasSuffix("weight") {
                    p[i] = rng.uniform(0.5, 1.5) * (i % 5 == 0 ? -1 : 1)
                } else if s.name.hasSuffix("bias") || s.name.hasSuffix("running_mean") {
                    p[i] = rng.uniform(-0.3, 0.3)
                } else if s.name.hasSuffix("running_var") {
                    p[i] = rng.uniform(0.5, 2)
                }
            }
        }
        let pass = ResNetPass(
            layout: enc.backbone, batch: batch, height: res, width: res, keepActivations: train, config: execution)
        let x = rng.array(batch * res * res * config.inChannels)
        pass.forward(input: x, store: store, mode: mode)
        XCTAssertEqual(pass.fusedMidCount, fuse ? fusedNodes : 0, "\(config) \(mode)")
        var grads: [Float] = []
        if train {
            store.zeroGrads()
            let g = rng.array(batch * config.featureDim)
            pass.backward(gradFeatures: g, store: store)
            grads = Array(UnsafeBufferPointer(start: store.grads, count: store.parameterCount))
        }
        return Outcome(
            features: Array(UnsafeBufferPointer(start: pass.features, count: batch * config.featureDim)),
            buffers: Array(UnsafeBufferPointer(start: store.buffers, count: store.bufferCount)),
            grads: grads)
    }

    func testFusedBatchNormsGiveTheSameBits() {
        // ResNet-18 (8 blocks, each mid batch norm feeding a 3x3 stride-1 convolution) and ResNet-50
        // (16 bottlenecks: only the first mid batch norm feeds a Winograd convolution, and only in
        // blocks whose 3x3 has stride 1: 16 - 3).
        let nets: [(ResNetConfig, Int, Int, Int)] = [
            (ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 3, width: 0.125), 4, 16, 8),
            (ResNetConfig(arch: .resnet50, stem: .cifar, inChannels: 3, width: 0.125), 2, 8, 13)
        ]
        let modes: [(BatchNormMode, Bool)] = [(.train(splits: 1), true), (.train(splits: 2), false), (.eval, false)]
        for (config, batch, res, nodes) in nets {
            for (mode, train) in modes {
                forEachThreadCount([1, 2]) { threads in
                    let fused = run(
                        config, batch: batch, res: res, mode: mode, train: train, fuse: true, fusedNodes: nodes)
                    let plain = run(
                        config, batch: batch, res: res, mode: mode, train: train, fuse: false, fusedNodes: nodes)
                    XCTAssertTrue(fused == plain, "\(config.arch) \(mode) threads \(threads)")
                    XCTAssertTrue(fused.features.contains { $0 != 0 })
                    if train { XCTAssertTrue(fused.grads.contains { $0 != 0 }) }
                }
            }
        }
    }

    /// Training-mode batch statistics from the Winograd convolutions' epilogues (per-tile sums around
    /// the running mean) match those of a pass over each output: the features, the running
    /// statistics and (one group) every gradient, up to rounding, with one batch-norm group and two.
    func testEpilogueStatisticsMatchAPassOverTheOutput() {
        let config = ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 3, width: 0.125)
        for splits in [1, 2] {
            forEachThreadCount([1, 2]) { threads in
                // (Backward follows a forward with one split.)
                let a = run(
                    config, batch: 4, res: 16, mode: .train(splits: splits), train: splits == 1, fuse: true,
                    fusedNodes: 8)
                let b = run(
                    config, batch: 4, res: 16, mode: .train(splits: splits), train: splits == 1, fuse: true,
                    fusedNodes: 8, epilogue: false)
                let what = "splits \(splits) threads \(threads)"
                XCTAssertNotEqual(a.buffers, b.buffers, "the epilogue's statistics are rounded differently: \(what)")
                XCTAssertLessThanOrEqual(toleranceRatio(a.features, b.features, atol: 1e-4, rtol: 1e-3), 1, what)
                XCTAssertLessThanOrEqual(toleranceRatio(a.buffers, b.buffers, atol: 1e-5, rtol: 1e-4), 1, what)
                // through 20 batch norms of 4-16 pixels a channel
                XCTAssertLessThanOrEqual(toleranceRatio(a.grads, b.grads, atol: 1e-3, rtol: 1e-2), 1, what)
            }
        }
    }

    /// With the direct kernels (Winograd off) no mid-block batch norm is fused: its consumer has no
    /// input transform to apply it in.
    func testDirectConvolutionsFuseNoMidBlockBatchNorm() {
        let config = ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 3, width: 0.125)
        _ = run(
            config, batch: 2, res: 8, mode: .train(splits: 1), train: false, fuse: true, fusedNodes: 0,
            convolution: .direct)
    }
}
