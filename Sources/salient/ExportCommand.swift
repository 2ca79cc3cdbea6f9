import ArgumentParser
import Foundation
import Network

/// `salient export`: a trainer checkpoint's query backbone as an encoder-only file with bare
/// torchvision names, loadable by `torchvision.models.resnet18().load_state_dict(..., strict=False)`
/// (strict=True once `fc` is dropped or added) and by `salient extract`.
struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write the backbone of a checkpoint as an encoder-only safetensors file with torchvision names.")

    @Option(help: "A salient trainer checkpoint or any encoder file salient reads.") var checkpoint: String
    @Option(help: "Output .safetensors file.") var out: String

    func validate() throws {
        guard out.hasSuffix(".safetensors") else {
            throw ValidationError("--out must end in .safetensors, got '\(out)'")
        }
    }

    func run() throws {
        if sameFile(checkpoint, out) {
            throw ValidationError("--out \(out) is the --checkpoint itself: write the encoder to another file")
        }
        if FileManager.default.fileExists(atPath: out),
            let existing = try? SafeTensorsFile.read(path: out), existing.metadata["format"] == "salient-trainer-1"
        {
            throw ValidationError(
                "--out \(out) is a trainer checkpoint (it resumes a run); "
                    + "an encoder-only file would replace it: write it elsewhere")
        }
        let file = try SafeTensorsFile.read(path: checkpoint)
        let config = try EncoderCheckpoint.inferConfig(file, path: checkpoint)
        let enc = try EncoderCheckpoint.loadEncoder(path: checkpoint, config: config, trainable: false)
        var extra: [String: String] = [:]
        for k in ["epoch", "input", "resolution", "method"] { if let v = file.metadata[k] { extra[k] = v } }
        try EncoderCheckpoint.saveBackbone(enc, path: out, extraMetadata: extra)
        print("wrote \(out): \(config), \(enc.store.slots.count) tensors with torchvision names")
    }
}

/// Whether two paths name one file (the same device and inode; symbolic and hard links included).
func sameFile(_ a: String, _ b: String) -> Bool {
    var x = stat(), y = stat()
    guard stat(a, &x) == 0, stat(b, &y) == 0 else { return false }
    return x.st_dev == y.st_dev && x.st_ino == y.st_ino
}
