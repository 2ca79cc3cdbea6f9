import ArgumentParser
import Foundation
import Kernels
import Network
import Data
import Contrastive
import Cluster

struct ExtractCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract",
        abstract: "Pooled backbone features of a dataset as a float32 .npy (N x D), labels beside it.",
        discussion: """
            Reads a salient or PyTorch (torchvision-named) safetensors checkpoint. Writes FEATURES.npy and, \
            when the data has labels, FEATURES.labels.npy (int64). Nothing is written on failure. Under \
            mpirun the ranks share the images and rank 0 writes the one file, the same as one process writes.
            """)

    @Option(help: "Encoder checkpoint (.safetensors): encoder-only or a trainer checkpoint.") var checkpoint: String
    @Option(help: "A folder of PNGs (class subfolders give labels) or an IDX images file.") var data: String
    @Option(help: "Output features file (.npy).") var out: String
    @OptionGroup var model: ModelOptions
    @OptionGroup var prep: PreprocessOptions
    @Option(help: "Images per forward pass.") var batch = 256
    @Option(help: "Use only the first N images.") var limit: Int?
    @Flag(help: "Skip unreadable images instead of stopping (their count is reported).") var skipBad = false
    @OptionGroup var threadOptions: ThreadOptions

    func validate() throws {
        if batch < 1 || batch > 65536 { throw ValidationError("--batch must be between 1 and 65536, got \(batch)") }
        if let l = limit, l < 1 { throw ValidationError("--limit must be >= 1, got \(l)") }
        guard out.hasSuffix(".npy") else { throw ValidationError("--out must end in .npy, got '\(out)'") }
        let dir = (out as NSString).deletingLastPathComponent
        var isDir: ObjCBool = false
        if !dir.isEmpty, !(FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) && isDir.boolValue) {
            throw ValidationError("--out: folder '\(dir)' does not exist")
        }
    }

    func run() throws {
        let comm = try Communicator.world()
        try comm.failing { try extract(comm) }
        comm.finish()
    }

    func extract(_ comm: Communicator) throws {
        threadOptions.apply()
        applyRankThreads(comm, explicit: threadOptions.threads)
        let file = try SafeTensorsFile.read(path: checkpoint)
        let config = model.apply(to: try EncoderCheckpoint.inferConfig(file, path: checkpoint))
        let encoder = try EncoderCheckpoint.loadEncoder(path: checkpoint, config: config, trainable: false)
        let dataset = try DatasetLoader.open(
            path: data, limit: limit, skipBad: skipBad, channels: config.inChannels,
            decode: prep.resize.map { DecodeTarget.resize($0) } ?? .full)
        let pre = try prep.preprocess(channels: config.inChannels, checkpointInput: file.metadata["input"])
        comm.requireSame(
            "\(Salient.configuration.version)\n\(config)\n\(pre)\n\(dataset.count) \(dataset.source)",
            "the binary, checkpoint, options or data")
        if comm.isRoot {
            note(
                "extract: \(dataset.count) images from \(data), \(config), "
                    + "\(pre.highPass ? "high-pass" : "plain") input, "
                    + "\(Threads.count) thread(s)" + (comm.isDistributed ? " in each of \(comm.size) ranks" : ""))
        }
        let t0 = Date()
        let features = try extractFeatures(
            encoder: encoder, dataset: dataset, batch: batch, preprocess: pre,
            comm: comm, execution: threadOptions.execution
        ) { done, total in
            guard comm.isRoot else { return }
            let dt = Date().timeIntervalSince(t0)
            progressNote(
                String(format: "  %d/%d images  %.0f img/s", done, total, Double(done) / max(dt, 1e-9)),
                done: done == total)
        }
        guard comm.isRoot else { return }
        let D = config.featureDim
        let labelsOut = labelsPath(forFeatures: out)
        if let labels = dataset.labels {
            try NPYArray(int64s: labels.map { Int64($0) }, shape: [labels.count]).write(path: labelsOut)
        }
        do {
            try NPYArray(floats: features, shape: [dataset.count, D]).write(path: out)
        } catch {
            try? FileManager.default.removeItem(atPath: labelsOut)
            throw error
        }
        let dt = Date().timeIntervalSince(t0)
        print(
            "wrote \(out): \(dataset.count) x \(D) float32" + (dataset.labels != nil ? "; labels in \(labelsOut)" : ""))
        print(
            String(format: "%.1f images/s on %d thread(s)", Double(dataset.count) / dt, Threads.count)
                + (comm.isDistributed ? " in each of \(comm.size) ranks" : ""))
        if !dataset.skipped.isEmpty { print("skipped \(dataset.skipped.count) unreadable file(s)") }
    }
}
