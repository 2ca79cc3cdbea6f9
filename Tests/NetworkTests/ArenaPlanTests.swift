import XCTest
import Kernels
import Network
import TestSupport

/// The training pass's arena: the planner never gives two simultaneously live buffers the same
/// memory, and a pass whose buffers share memory by lifetime computes exactly what a pass with one
/// buffer per tensor computes (features, every gradient, running statistics).
final class ArenaPlanTests: XCTestCase {
    func testPlacementRespectsLifetimes() {
        var rng = TestRNG(seed: 5)
        for _ in 0..<50 {
            var plan = ArenaPlan()
            var live: [Int] = []
            for _ in 0..<40 {
                if live.count < 6 || rng.uniform(0, 1) < 0.5 { live.append(plan.add(Int(rng.uniform(1, 5000)))) }
                // Use a random subset of the live buffers, retire some.
                let used = live.filter { _ in rng.uniform(0, 1) < 0.5 }
                for id in used { plan.step(id) }
                plan.step()
                live = live.filter { _ in rng.uniform(0, 1) < 0.8 }
            }
            let total = plan.place()
            XCTAssertFalse(plan.hasConflict)
            let separate = plan.items.reduce(0) { $0 + $1.floats }
            XCTAssertLessThanOrEqual(total, separate)
            XCTAssertGreaterThanOrEqual(total, plan.items.map(\.floats).max()!)
        }
        // Two buffers live together never share; one that starts after another's end does.
        var plan = ArenaPlan()
        let a = plan.add(100), b = plan.add(100)
        plan.step(a, b)
        let c = plan.add(100)
        plan.step(c)
        XCTAssertEqual(plan.place(), 224)  // 100 floats round up to 112; c reuses a's or b's memory
        XCTAssertEqual(plan.items[c].offset, 0)
        XCTAssertNotEqual(plan.items[a].offset, plan.items[b].offset)
        XCTAssertFalse(plan.hasConflict)
    }

    func testSharedArenaMatchesSeparateBuffers() {
        let configs: [(ResNetConfig, Int, Int)] = [
            (ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 3, width: 0.125), 4, 16),
            (ResNetConfig(arch: .resnet18, stem: .imagenet, inChannels: 1, width: 0.0625), 2, 64),
            (ResNetConfig(arch: .resnet50, stem: .cifar, inChannels: 3, width: 0.0625), 2, 16)
        ]
        for (config, batch, res) in configs {
            var results: [[Float]] = []
            var arenas: [Int] = []
            for shared in [false, true] {
                let enc = Encoder(config: config)
                enc.initialize(seed: 9)
                let pass = ResNetPass(
                    layout: enc.backbone, batch: batch, height: res, width: res, keepActivations: true,
                    sharedArena: shared)
                var rng = TestRNG(seed: 2)
                let x = rng.array(batch * res * res * config.inChannels)
                let g = rng.array(batch * config.featureDim)
                var out: [Float] = []
                for _ in 0..<2 {  // twice: the second step starts from buffers the first one left dirty
                    pass.forward(input: x, store: enc.store, mode: .train(splits: 1))
                    out += Array(UnsafeBufferPointer(start: pass.features, count: batch * config.featureDim))
                    pass.backward(gradFeatures: g, store: enc.store)
                    out += Array(UnsafeBufferPointer(start: enc.store.grads, count: enc.store.parameterCount))
                }
                out += Array(UnsafeBufferPointer(start: enc.store.buffers, count: enc.store.bufferCount))
                results.append(out)
                arenas.append(pass.allocatedBytes)
            }
            XCTAssertEqual(results[0].count, results[1].count)
            let differing = zip(results[0], results[1]).filter { $0 != $1 }.count
            XCTAssertEqual(differing, 0, "\(config): values that differ between the two plans")
            XCTAssertLessThan(arenas[1], arenas[0], "\(config): sharing saves memory")
        }
    }

    /// ResNet-18, CIFAR stem, batch 64 at 32 px (the benchmark's step): backward's gradients, rebuilt
    /// activations and forward's temporaries fit in memory the kept activations leave dead, so the
    /// arena is the kept activations plus less than one largest activation.
    func testArenaOfResNet18IsItsKeptActivations() {
        let config = ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 3, width: 1)
        let enc = Encoder(config: config)
        let pass = ResNetPass(layout: enc.backbone, batch: 64, height: 32, width: 32, keepActivations: true)
        // Kept until backward: the stem's output (its convolution output is recomputed), every block
        // convolution's output (batch norm's backward reads it), downsample convolutions' outputs and
        // block outputs.
        var kept = 64 * 32 * 32 * 64
        var hw = 32
        for (stage, width) in [64, 128, 256, 512].enumerated() {
            for block in 0..<2 {
                if stage > 0 && block == 0 { hw /= 2 }
                let act = 64 * hw * hw * width
                kept += 3 * act  // two convolution outputs, the block output
                if stage > 0 && block == 0 { kept += act }  // the downsample's convolution output
            }
        }
        let largest = 64 * 32 * 32 * 64
        XCTAssertGreaterThanOrEqual(pass.arenaBytes, kept * 4)
        XCTAssertLessThan(
            pass.arenaBytes, (kept + largest) * 4,
            "arena \(pass.arenaBytes / 1_000_000) MB for \(kept * 4 / 1_000_000) MB of kept activations")
    }

    /// The list of steps a pass runs and plans from: every buffer a step reads was written by an
    /// earlier step (the input excepted), each convolution runs forward once and, in training, has one
    /// batch-norm backward and one convolution backward.
    func testProgramReadsOnlyWhatItWrote() {
        let configs: [(ResNetConfig, Int)] = [
            (ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 3, width: 0.125), 16),
            (ResNetConfig(arch: .resnet18, stem: .imagenet, inChannels: 1, width: 0.0625), 64),
            (ResNetConfig(arch: .resnet50, stem: .cifar, inChannels: 3, width: 0.0625), 16)
        ]
        for (config, res) in configs {
            for training in [false, true] {
                for fuse in [false, true] {
                    var execution = ExecutionConfig.testing()
                    execution.fusesBatchNorms = fuse
                    let enc = Encoder(config: config)
                    let pass = ResNetPass(
                        layout: enc.backbone, batch: 2, height: res, width: res, keepActivations: training,
                        config: execution)
                    let program = pass.program
                    var written: Set<BufferID> = [program.input]
                    var convs = 0, bnBackwards = 0, convBackwards = 0
                    for step in program.forward + program.backward {
                        for r in step.reads where !written.contains(r) {
                            XCTFail("\(config) training \(training) fuse \(fuse): \(step) reads buffer \(r) unwritten")
                        }
                        written.formUnion(step.writes)
                        switch step {
                        case .convBN: convs += 1
                        case .batchNormBackward: bnBackwards += 1
                        case .convBackward: convBackwards += 1
                        default: break
                        }
                    }
                    let nodes = enc.backbone.units.count
                    XCTAssertEqual(program.nodes.count, nodes)
                    XCTAssertEqual(convs, nodes)
                    XCTAssertEqual(bnBackwards, training ? nodes : 0)
                    XCTAssertEqual(convBackwards, training ? nodes : 0)
                    XCTAssertEqual(program.backward.isEmpty, !training)
                }
            }
        }
    }

    /// A no-grad pass that borrows a training pass's idle arena allocates none of its own and computes
    /// what a pass with its own memory computes, from the garbage a training step left there.
    func testNoGradPassBorrowsTheTrainingArena() {
        let config = ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 3, width: 0.125)
        let enc = Encoder(config: config)
        enc.initialize(seed: 4)
        let train = ResNetPass(layout: enc.backbone, batch: 8, height: 16, width: 16, keepActivations: true)
        let borrowing = ResNetPass(
            layout: enc.backbone, batch: 4, height: 16, width: 16, keepActivations: false,
            borrowing: train.idleArena, workspace: train.workspace)
        let own = ResNetPass(layout: enc.backbone, batch: 4, height: 16, width: 16, keepActivations: false)
        XCTAssertTrue(borrowing.borrowedArena)
        XCTAssertFalse(own.borrowedArena)
        XCTAssertLessThan(borrowing.allocatedBytes + borrowing.arenaBytes / 2, own.allocatedBytes)
        XCTAssertLessThanOrEqual(own.arenaBytes, train.arenaBytes)
        var rng = TestRNG(seed: 3)
        let x = rng.array(8 * 16 * 16 * 3), g = rng.array(8 * config.featureDim)
        train.forward(input: x, store: enc.store, mode: .train(splits: 1))
        train.backward(gradFeatures: g, store: enc.store)
        var features: [[Float]] = []
        for pass in [borrowing, own] {
            pass.forward(input: x, store: enc.store, mode: .eval)
            features.append(Array(UnsafeBufferPointer(start: pass.features, count: 4 * config.featureDim)))
        }
        XCTAssertEqual(features[0], features[1])
        XCTAssertTrue(features[0].contains { $0 != 0 })
    }
}
