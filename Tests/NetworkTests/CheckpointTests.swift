import XCTest
import Foundation
import Kernels
import Network
import TestSupport

final class CheckpointTests: XCTestCase {
    /// The tensors salient writes for an encoder are exactly torchvision's state_dict (names, shapes,
    /// dtypes), checked against the PyTorch-written fixtures (which lack or keep `fc`).
    func testSavedBackboneHasTorchvisionNamesAndShapes() throws {
        for name in [
            "resnet18_cifar_w0125", "resnet18_imagenet_w0125", "resnet50_cifar_w00625", "resnet18_cifar_w0125_1ch"
        ] {
            let path = fixturesPath() + "/models/\(name).safetensors"
            let torch = try SafeTensorsFile.read(path: path)
            let enc = try EncoderCheckpoint.loadEncoder(path: path)
            let out = NSTemporaryDirectory() + "salient-export-\(getpid())-\(name).safetensors"
            defer { try? FileManager.default.removeItem(atPath: out) }
            try EncoderCheckpoint.saveBackbone(enc, path: out)
            let mine = try SafeTensorsFile.read(path: out)
            let theirs = Set(torch.names.filter { !$0.hasPrefix("fc.") })
            XCTAssertEqual(Set(mine.names), theirs, name)
            for n in mine.names {
                XCTAssertEqual(mine[n]!.shape, torch[n]!.shape, "\(name) \(n)")
                XCTAssertEqual(mine[n]!.dtype, torch[n]!.dtype, "\(name) \(n)")
                XCTAssertEqual(mine[n]!.data, torch[n]!.data, "\(name) \(n): values changed in the round trip")
            }
            XCTAssertEqual(mine.metadata["arch"], enc.config.arch.rawValue)
        }
    }

    /// A file whose shapes do not fit the requested architecture is rejected, listing mismatches.
    func testMismatchedCheckpointListsFirstMismatches() throws {
        let path = fixturesPath() + "/models/resnet18_cifar_w0125.safetensors"
        let wrong = ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 3, width: 0.25)
        XCTAssertThrowsError(try EncoderCheckpoint.loadEncoder(path: path, config: wrong)) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains(path) && s.contains("conv1.weight") && s.contains("expected [16, 3, 3, 3]"), s)
        }
        let r50 = ResNetConfig(arch: .resnet50, stem: .cifar, inChannels: 3, width: 0.125)
        XCTAssertThrowsError(try EncoderCheckpoint.loadEncoder(path: path, config: r50)) { e in
            XCTAssertTrue("\(e)".contains("missing layer1.0.conv3.weight"), "\(e)")
        }
    }

    func testArchitectureIsInferredWithoutMetadata() throws {
        let torch = try SafeTensorsFile.read(path: fixturesPath() + "/models/resnet18_cifar_w0125_1ch.safetensors")
        XCTAssertTrue(torch.metadata.isEmpty)
        let c = try EncoderCheckpoint.inferConfig(torch, path: "x")
        XCTAssertEqual(c, ResNetConfig(arch: .resnet18, stem: .cifar, inChannels: 1, width: 0.125))
    }

    /// Weights that are not finite are refused, naming the file and the tensor; the store is unchanged.
    func testNonFiniteWeightsAreRefused() throws {
        let path = fixturesPath() + "/models/resnet18_cifar_w0125.safetensors"
        var file = try SafeTensorsFile.read(path: path)
        let w = file["layer2.0.bn1.running_var"]!
        var v = w.floats!
        v[1] = .infinity
        file["layer2.0.bn1.running_var"] = .init(floats: v, shape: w.shape)
        let enc = Encoder(
            config: try EncoderCheckpoint.inferConfig(file, path: "crafted.safetensors"), trainable: false)
        let before = enc.store.values("conv1.weight")
        XCTAssertThrowsError(try enc.store.load(from: file, path: "crafted.safetensors") { $0.hasPrefix("fc.") }) { e in
            let s = "\(e)"
            XCTAssertTrue(
                s.contains("crafted.safetensors") && s.contains("layer2.0.bn1.running_var") && s.contains("+infinity"),
                s)
        }
        XCTAssertEqual(enc.store.values("conv1.weight"), before)
    }

    /// Metadata that would size an absurd model, or disagrees with the tensors, is refused.
    func testCraftedMetadataIsRefused() throws {
        var file = try SafeTensorsFile.read(path: fixturesPath() + "/models/resnet18_cifar_w0125.safetensors")
        for width in ["1e9", "nan", "-1", "0.5"] {
            file.metadata["width"] = width
            XCTAssertThrowsError(try EncoderCheckpoint.inferConfig(file, path: "m.safetensors")) { e in
                XCTAssertTrue("\(e)".contains("m.safetensors") && "\(e)".contains("width"), "\(e)")
            }
        }
        file.metadata["width"] = "0.125"
        XCTAssertEqual(try EncoderCheckpoint.inferConfig(file, path: "m").width, 0.125)
        let c1 = file["conv1.weight"]!
        file["conv1.weight"] = .init(
            dtype: .F32, shape: [c1.shape[0], 5, 3, 3], data: [UInt8](repeating: 0, count: c1.shape[0] * 5 * 9 * 4))
        XCTAssertThrowsError(try EncoderCheckpoint.inferConfig(file, path: "m.safetensors")) { e in
            XCTAssertTrue("\(e)".contains("5 input channels"), "\(e)")
        }
    }
}
