// Identities of what features are computed from, and a folder of features kept for reuse.
//
// Three identities, for three questions:
// - `encoderDigest`: which weights (a hash of every parameter, buffer and counter of the encoder);
// - `datasetFileStamp`: which files, as they are now (device, inode, size, modification and change
//   times of every file the dataset reads): any write to a file changes its change time, which no
//   program can set back, so a replaced image is never served from the cache;
// - `datasetFingerprint`: which images, wherever they lie (count, channels, labels, names relative to
//   the dataset's folder, and the pixels of up to 256 images spread through it): a copied or moved
//   dataset keeps it, other data does not. A resumed training run checks it.
import Foundation
import Network
import Data

/// FNV-1a, 64 bits: a fast, stable (not cryptographic) hash of bytes.
public struct ContentHash {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    public init() {}

    public mutating func add(_ bytes: UnsafeRawBufferPointer) {
        var h = value
        for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        value = h
    }
    public mutating func add(_ s: String) { var s = s; s.withUTF8 { add(UnsafeRawBufferPointer($0)) }; add(Int(0)) }
    public mutating func add<T>(_ v: T) { withUnsafeBytes(of: v) { add($0) } }
    public mutating func add<T>(_ p: UnsafePointer<T>, count: Int) {
        add(UnsafeRawBufferPointer(start: p, count: count * MemoryLayout<T>.stride))
    }
    /// 16 hex digits.
    public var hex: String { String(format: "%016llx", value) }
}

/// A hash of every value an encoder holds (parameters, buffers, counters): equal for equal weights.
public func encoderDigest(_ encoder: Encoder) -> String {
    let s = encoder.store
    var h = ContentHash()
    h.add(s.params, count: s.parameterCount)
    h.add(s.buffers, count: s.bufferCount)
    h.add(s.counters, count: s.counterCount)
    return h.hex
}

/// The files a dataset reads: its PNG files, or its IDX file(s) (images and the labels beside them).
func datasetFiles(_ ds: ImageDataset) -> [String] {
    var files: [String] = []
    var seen = Set<String>()
    for i in 0..<ds.count {
        let name = ds.name(at: i)
        // An IDX dataset names image i "FILE#i".
        let file = name == "\(ds.source)#\(i)" ? ds.source : name
        if seen.insert(file).inserted { files.append(file) }
    }
    if files == [ds.source], let labels = DatasetLoader.labelsPath(forImages: ds.source) { files.append(labels) }
    return files
}

/// A hash of the state of every file `ds` reads (device, inode, size, modification and change times,
/// to the nanosecond): any write to any of them changes it.
public func datasetFileStamp(_ ds: ImageDataset) -> String {
    var h = ContentHash()
    for file in datasetFiles(ds) {
        h.add(file)
        var st = stat()
        if stat(file, &st) == 0 {
            h.add(UInt64(st.st_dev)); h.add(UInt64(st.st_ino)); h.add(Int64(st.st_size))
            h.add(Int64(st.st_mtim.tv_sec)); h.add(Int64(st.st_mtim.tv_nsec))
            h.add(Int64(st.st_ctim.tv_sec)); h.add(Int64(st.st_ctim.tv_nsec))
        } else {
            h.add(Int64(-1))
        }
    }
    return h.hex
}

/// A hash of what `ds` holds, independent of where it lies: its count, channels, labels, names
/// relative to its folder, and the pixels of `sample` images spread evenly through it.
public func datasetFingerprint(_ ds: ImageDataset, sample: Int = 256) throws -> String {
    var h = ContentHash()
    h.add(Int64(ds.count)); h.add(Int64(ds.channels))
    if let labels = ds.labels { labels.withUnsafeBufferPointer { h.add($0.baseAddress!, count: $0.count) } }
    let prefix = ds.source.hasSuffix("/") ? ds.source : ds.source + "/"
    for i in 0..<ds.count {
        let name = ds.name(at: i)
        h.add(
            name.hasPrefix(prefix)
                ? String(name.dropFirst(prefix.count))
                : name.hasPrefix(ds.source)
                    ? String(name.dropFirst(ds.source.count)) : (name as NSString).lastPathComponent)
    }
    let n = min(sample, ds.count)
    for j in 0..<n {
        let img = try ds.image(at: j * ds.count / n)
        h.add(Int64(img.width)); h.add(Int64(img.height))
        img.pixels.withUnsafeBufferPointer { h.add($0.baseAddress!, count: $0.count) }
    }
    return h.hex
}

/// A folder of extracted features, each kept under a key that names everything they depend on:
/// `FOLDER/<hash of the key>.npy` (N x D float32), `.labels.npy` beside it, and `.key` (the key's
/// text, compared in full before the features are used).
public struct FeatureCache {
    public let folder: String
    public init(folder: String) { self.folder = folder }

    /// The key of the features of `dataset` (opened with `limit`) under `encoder` and `preprocess`:
    /// `encoderIdentity` (where the encoder came from), the encoder's weights, the dataset's files
    /// as they are now, and the preprocessing.
    public static func key(
        encoderIdentity: String, encoder: Encoder, dataset: ImageDataset, limit: Int?,
        preprocess p: Preprocess, split: String
    ) -> String {
        """
        salient features v2
        encoder \(encoderIdentity) weights \(encoderDigest(encoder))
        data \(URL(fileURLWithPath: dataset.source).standardizedFileURL.path) images \(dataset.count) \
        limit \(limit.map(String.init) ?? "all") files \(datasetFileStamp(dataset))
        resize \(p.resize.map(String.init) ?? "none") crop \(p.centerCrop.map(String.init) ?? "none") \
        mean \(p.mean) std \(p.std) highpass \(p.highPass)
        split \(split)
        """
    }

    func stem(_ key: String) -> String {
        var h = ContentHash()
        h.add(key)
        return (folder as NSString).appendingPathComponent(h.hex)
    }

    /// The features kept for `key` (rows x dim), or nil when there are none or they belong to another key.
    public func features(for key: String, rows: Int, dim: Int) -> [Float]? {
        let s = stem(key)
        guard let saved = try? String(contentsOfFile: s + ".key", encoding: .utf8), saved == key,
            let x = try? NPYArray.read(path: s + ".npy"), x.shape == [rows, dim], let v = x.floats
        else { return nil }
        return v
    }

    /// Keeps `features` (rows x dim) and their labels under `key`. The key file is written last, so
    /// a write cut short leaves features that no key names.
    public func store(_ features: [Float], labels: [Int32]?, dim: Int, for key: String) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let s = stem(key)
        try? FileManager.default.removeItem(atPath: s + ".key")
        try NPYArray(floats: features, shape: [features.count / dim, dim]).write(path: s + ".npy")
        if let labels {
            try NPYArray(int64s: labels.map { Int64($0) }, shape: [labels.count]).write(path: s + ".labels.npy")
        }
        try key.write(toFile: s + ".key", atomically: true, encoding: .utf8)
    }
}
