import Kernels
import Foundation
#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A set of images, held in memory as 8-bit samples when they fit in the memory budget, otherwise
/// read from disk and decoded on each access. Either way `image(at:)` returns the same pixels: stored
/// values are always quantised to 8 bits (16-bit PNGs included, as PIL would load them for
/// torchvision), JPEGs decoded at the dataset's `decodeTarget`, and converted to `channels` in 8-bit
/// arithmetic. Immutable and safe to share between threads.
public struct ImageDataset: Sendable {
    /// Number of images.
    public var count: Int { store.count }
    /// Channels of every image returned (1 or 3).
    public let channels: Int
    /// One label per image (class folder index, or the IDX labels file), or nil.
    public let labels: [Int32]?
    /// Label names: class folder names (sorted), or Fashion-MNIST's names, or "0"..."9".
    public let classNames: [String]
    /// What the labels are: class folder names, matched by name between datasets (`relabeled(as:)`),
    /// or numbers (IDX labels, synthetic), matched by value. Nil without labels.
    public let labelSource: LabelSource?
    /// Where the dataset came from.
    public let source: String
    /// Files that were skipped as bad (`skipBad`), each with its error.
    public let skipped: [DataError]
    /// Files that decoded with a libjpeg warning that leaves the pixels as encoded (extra bytes
    /// between markers, an unknown JFIF version, a bad ICC chunk), each with the warning.
    public let warnings: [DataError]
    /// How small JPEGs are decoded (DCT scaling); `.full` for datasets that are not image folders.
    public let decodeTarget: DecodeTarget
    let store: ImageStore

    /// True when pixels are held in memory; false when each access reads the disk.
    public var isInMemory: Bool { store.inMemory }

    /// The file image `i` comes from (for an IDX file: "path#i").
    public func name(at i: Int) -> String { store.name(i) }

    /// Image `i` with `channels` channels, values in [0, 1]. Throws only when a streamed file has
    /// become unreadable or changed since the dataset was opened.
    public func image(at i: Int) throws -> Image {
        precondition(i >= 0 && i < count, "image index \(i) out of range 0..<\(count)")
        return try store.image(i, channels: channels)
    }

    init(
        channels: Int, labels: [Int32]?, classNames: [String], labelSource: LabelSource?, source: String,
        skipped: [DataError], warnings: [DataError] = [], decodeTarget: DecodeTarget = .full, store: ImageStore
    ) {
        self.channels = channels
        self.labels = labels
        self.classNames = classNames
        self.labelSource = labels == nil ? nil : labelSource
        self.source = source
        self.skipped = skipped
        self.warnings = warnings
        self.decodeTarget = decodeTarget
        self.store = store
    }

    /// The same images with labels that index `train.classNames`, so that a class keeps its number
    /// between a train and a test set: class folders are matched by name (a test folder may lack some
    /// of train's classes, or list them in another order); numeric labels (IDX) keep their values.
    /// A class of this dataset that has images but no class of that name in `train` is an error
    /// naming it: its images could never be classified correctly.
    public func relabeled(as train: ImageDataset) throws -> ImageDataset {
        guard let labels, let own = labelSource, let theirs = train.labelSource else {
            throw DataError(.invalidArgument, path: labels == nil ? source : train.source, "has no labels")
        }
        if own == .numbers && theirs == .numbers { return self }
        var index = [String: Int32]()
        for (i, name) in train.classNames.enumerated() where index[name] == nil { index[name] = Int32(i) }
        let used = Set(labels).sorted()
        let missing = used.map { classNames[Int($0)] }.filter { index[$0] == nil }
        if !missing.isEmpty {
            func list(_ names: [String]) -> String {
                names.prefix(10).map(displayPath).joined(separator: ", ")
                    + (names.count > 10 ? ", ... (\(names.count) in all)" : "")
            }
            throw DataError(
                .classMismatch, path: source,
                "class\(missing.count == 1 ? "" : "es") \(list(missing)) not found among the classes of "
                    + "\(displayPath(train.source)) (\(list(train.classNames))): labels are matched by class name")
        }
        let map = classNames.map { index[$0] ?? -1 }
        return ImageDataset(
            channels: channels, labels: labels.map { map[Int($0)] }, classNames: train.classNames,
            labelSource: own, source: source, skipped: skipped, warnings: warnings,
            decodeTarget: decodeTarget, store: store)
    }

    /// A dataset of smooth random images (gradients plus blobs), for benchmarks and tests.
    public static func synthetic(
        count: Int, width: Int, height: Int, channels: Int, classes: Int = 10,
        seed: UInt64 = 0
    ) -> ImageDataset {
        var rng = SplitMix64(seed: seed)
        var bytes = [UInt8](repeating: 0, count: count * width * height * channels)
        var labels = [Int32]()
        for n in 0..<count {
            let label = rng.int(below: classes)
            labels.append(Int32(label))
            var p = [Float]()
            for _ in 0..<(channels * 4) { p.append(rng.uniform()) }
            for y in 0..<height {
                for x in 0..<width {
                    let fx = Float(x) / Float(width), fy = Float(y) / Float(height)
                    for c in 0..<channels {
                        let a = p[4 * c], b = p[4 * c + 1], cx = p[4 * c + 2], cy = p[4 * c + 3]
                        let d = (fx - cx) * (fx - cx) + (fy - cy) * (fy - cy)
                        let v = 0.5 * (a * fx + b * fy) + 0.5 * exp(-d * 8)
                        bytes[((n * height + y) * width + x) * channels + c] = quantize8(v)
                    }
                }
            }
        }
        let store = ImageStore(
            kind: .uniform(bytes: bytes, width: width, height: height, channels: channels),
            count: count, names: [], source: "synthetic")
        return ImageDataset(
            channels: channels, labels: labels, classNames: (0..<classes).map(String.init),
            labelSource: .numbers, source: "synthetic", skipped: [], store: store)
    }
}

/// Where a dataset's labels come from.
public enum LabelSource: Sendable, Equatable {
    /// First-level subfolders of an image folder, one per class: matched by name.
    case classFolders
    /// Numbers (an IDX labels file, synthetic data): matched by value.
    case numbers
}

/// Where the pixels live. Immutable after creation (the streaming file descriptor is only read
/// with pread, which is thread-safe).
final class ImageStore: @unchecked Sendable {
    enum Kind {
        /// Equal-size 8-bit images, NHWC (IDX in memory, synthetic).
        case uniform(bytes: [UInt8], width: Int, height: Int, channels: Int)
        /// Variable-size 8-bit images already converted to the dataset's channels.
        case packed(bytes: [UInt8], offsets: [Int], sizes: [(Int, Int)])
        /// PNG and JPEG files read and decoded on access (JPEGs at `target`).
        case files(paths: [String], maxPixels: Int, target: DecodeTarget)
        /// An uncompressed IDX file read with pread.
        case idxFile(fd: Int32, headerBytes: Int, width: Int, height: Int, channels: Int)
    }
    let kind: Kind
    let count: Int
    let names: [String]
    let source: String

    init(kind: Kind, count: Int, names: [String], source: String) {
        self.kind = kind
        self.count = count
        self.names = names
        self.source = source
    }

    deinit { if case .idxFile(let fd, _, _, _, _) = kind { close(fd) } }

    var inMemory: Bool {
        switch kind {
        case .uniform, .packed: return true;
        default: return false
        }
    }

    func name(_ i: Int) -> String { names.isEmpty ? "\(source)#\(i)" : names[i] }

    func image(_ i: Int, channels: Int) throws -> Image {
        switch kind {
        case .uniform(let bytes, let w, let h, let c):
            let n = w * h * c
            return floatImage(bytes[(i * n)..<(i * n + n)], width: w, height: h, from: c, to: channels)
        case .packed(let bytes, let offsets, let sizes):
            let (w, h) = sizes[i]
            return floatImage(
                bytes[offsets[i]..<(offsets[i] + w * h * channels)], width: w, height: h,
                from: channels, to: channels)
        case .files(let paths, let maxPixels, let target):
            return try decodeFile8(paths[i], target: target, maxPixels: maxPixels).pixels.floatImage(channels: channels)
        case .idxFile(let fd, let header, let w, let h, let c):
            let n = w * h * c
            var buf = [UInt8](repeating: 0, count: n)
            let got = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, n, off_t(header + i * n)) }
            if got != n { throw DataError(.streamFailed, path: source, "read of image \(i) failed") }
            return floatImage(buf[...], width: w, height: h, from: c, to: channels)
        }
    }
}

func floatImage(_ b: ArraySlice<UInt8>, width: Int, height: Int, from: Int, to: Int) -> Image {
    Pixels8(width: width, height: height, channels: from, bytes: Array(b)).floatImage(channels: to)
}

/// Reads and decodes a PNG or JPEG file to its native channels in 8 bits.
func decodeFile8(_ path: String, target: DecodeTarget, maxPixels: Int) throws -> (pixels: Pixels8, warning: String?) {
    try decodeImage8(try readFileBytes(path), target: target, maxPixels: maxPixels, name: path)
}

/// Opens datasets from a path.
public enum DatasetLoader {
    /// Default memory budget for holding a dataset: a quarter of physical memory, at most 4 GiB.
    public static var defaultMemoryBudget: Int {
        min(4 << 30, Int(ProcessInfo.processInfo.physicalMemory / 4))
    }

    /// Opens `path`:
    /// - a folder: every `*.png`, `*.jpg` and `*.jpeg` below it (any case; recursively, following
    ///   symbolic links, sorted by relative path; other files are ignored). When every image lies
    ///   inside a first-level subfolder, those folders are the classes (sorted by name) and give the
    ///   labels; otherwise there are no labels.
    /// - an IDX images file (`*-images-idx3-ubyte`, gzipped or not; detected by content): labels come
    ///   from `*-labels-idx1-ubyte[.gz]` beside it when present.
    /// - a single PNG or JPEG file.
    /// `limit` keeps the first N (good) images. `channels` forces 1 or 3; nil gives 3 when any image
    /// is in colour, else 1. Every image is decoded once while opening, so a bad file is reported here,
    /// naming it; with `skipBad` it is left out and listed in `skipped` instead. JPEGs are decoded as
    /// small as `decode` allows (DCT scaling; `.full` by default), in memory and streamed alike.
    /// Images are held in memory when their 8-bit size fits `memoryBudget`, otherwise read and
    /// decoded again on each access. JPEG warnings that leave the pixels as encoded are listed in
    /// `warnings` and, with `reportWarnings`, summarised on stderr.
    public static func open(
        path: String, limit: Int? = nil, skipBad: Bool = false, channels: Int? = nil,
        memoryBudget: Int? = nil, maxPixels: Int = defaultMaxPixels, decode: DecodeTarget = .full,
        reportWarnings: Bool = true
    ) throws -> ImageDataset {
        if let channels, channels != 1 && channels != 3 {
            throw DataError(.invalidArgument, path: path, "channels must be 1 or 3 (got \(channels))")
        }
        if let limit, limit < 1 {
            throw DataError(.invalidArgument, path: path, "limit must be at least 1 (got \(limit))")
        }
        let budget = memoryBudget ?? defaultMemoryBudget
        var st = stat()
        if stat(path, &st) != 0 {
            let err = errno
            var lst = stat()
            if err == ENOENT && lstat(path, &lst) != 0 {
                throw DataError(.notFound, path: path, "no such file or folder")
            }
            throw DataError(.unreadable, path: path, unreadableReason(path, errno: err))
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            let ds = try openFolder(
                path, limit: limit, skipBad: skipBad, channels: channels, budget: budget,
                maxPixels: maxPixels, target: decode)
            if reportWarnings { printWarnings(ds) }
            return ds
        }
        if (st.st_mode & S_IFMT) != S_IFREG {
            throw DataError(
                .unreadable, path: path,
                "not a regular file (\(fileTypeName(st.st_mode))): give a folder, an image file or an IDX file")
        }
        let head = try readHead(path, 8)
        if hasPNGSignature(head) || hasJPEGSignature(head) {
            let ds = try openFiles(
                [path], root: (path as NSString).deletingLastPathComponent, classNames: [],
                limit: limit, skipBad: skipBad, channels: channels, budget: budget, maxPixels: maxPixels,
                target: decode)
            if reportWarnings { printWarnings(ds) }
            return ds
        }
        let isGz = head.count >= 2 && head[0] == 0x1f && head[1] == 0x8b
        let isIDX = head.count >= 3 && head[0] == 0 && head[1] == 0 && head[2] == 0x08
        if isGz || isIDX {
            return try openIDX(path, gz: isGz, limit: limit, channels: channels, budget: budget)
        }
        if path.lowercased().hasSuffix(".png") {
            throw DataError(.notPNG, path: path, "not a PNG file (bad signature)")
        }
        if isImageName(path) { throw DataError(.notJPEG, path: path, "not a JPEG file (no start-of-image marker)") }
        throw DataError(.invalidArgument, path: path, "neither a folder, a PNG or JPEG file nor an IDX file")
    }

    static func readHead(_ path: String, _ n: Int) throws -> [UInt8] { try readFileBytes(path, limit: n) }

    // MARK: image folders

    /// File name extensions of the images a folder contributes (compared in lower case).
    static let imageExtensions: Set<String> = ["png", "jpg", "jpeg"]

    static func isImageName(_ name: String) -> Bool {
        guard let dot = name.lastIndex(of: ".") else { return false }
        return imageExtensions.contains(name[name.index(after: dot)...].lowercased())
    }

    /// What walking a folder found: image files (paths relative to the root, sorted) and what could
    /// not be read.
    struct FolderScan {
        var files: [String] = []
        var problems: [DataError] = []
    }

    /// Walks `root` recursively, following symbolic links (to files and to folders; a link back to a
    /// folder on the current path is a loop and is not entered again). Image files are listed; a
    /// folder that cannot be read, a broken or looping symbolic link (it may have been a class folder)
    /// and an image name that is not a regular file (a FIFO would block a read forever) are problems.
    static func scanFolder(_ root: String) -> FolderScan {
        var scan = FolderScan()
        struct FileID: Hashable { var dev: UInt64, ino: UInt64 }
        var onPath = Set<FileID>()
        func walk(_ dir: String, _ rel: String, _ id: FileID) {
            guard let d = opendir(dir) else {
                scan.problems.append(
                    DataError(
                        .unreadable, path: dir,
                        "cannot read folder: \(String(cString: strerror(errno)))"))
                return
            }
            var names = [String]()
            while let e = readdir(d) {
                let name = withUnsafeBytes(of: e.pointee.d_name) {
                    String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
                }
                if name != "." && name != ".." { names.append(name) }
            }
            closedir(d)
            onPath.insert(id)
            for name in names.sorted() {
                let full = dir + "/" + name, r = rel.isEmpty ? name : rel + "/" + name
                var st = stat()
                if stat(full, &st) != 0 {
                    scan.problems.append(DataError(.unreadable, path: full, unreadableReason(full, errno: errno)))
                    continue
                }
                switch st.st_mode & S_IFMT {
                case S_IFDIR:
                    let sub = FileID(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
                    if !onPath.contains(sub) { walk(full, r, sub) }
                case S_IFREG:
                    if isImageName(name) { scan.files.append(r) }
                default:
                    if isImageName(name) {
                        scan.problems.append(
                            DataError(.unreadable, path: full, "not a regular file (\(fileTypeName(st.st_mode)))"))
                    }
                }
            }
            onPath.remove(id)
        }
        var st = stat()
        if stat(root, &st) != 0 {
            scan.problems.append(DataError(.unreadable, path: root, unreadableReason(root, errno: errno)))
            return scan
        }
        walk(root, "", FileID(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino)))
        scan.files.sort()
        return scan
    }

    static func openFolder(
        _ root: String, limit: Int?, skipBad: Bool, channels: Int?, budget: Int,
        maxPixels: Int, target: DecodeTarget
    ) throws -> ImageDataset {
        let scan = scanFolder(root)
        if let first = scan.problems.first, !skipBad { throw first }
        let rel = scan.files
        if rel.isEmpty {
            throw DataError(
                .emptyDataset, path: root,
                "no PNG or JPEG files found in this folder (searched recursively)"
                    + (scan.problems.isEmpty
                        ? ""
                        : "; \(scan.problems.count) unreadable entr\(scan.problems.count == 1 ? "y" : "ies") skipped"))
        }
        // Classes: the first-level folders holding images, all of them, whatever `limit` keeps.
        let labeled = rel.allSatisfy { $0.contains("/") }
        let classNames = labeled ? Array(Set(rel.map { String($0.prefix { $0 != "/" }) })).sorted() : []
        return try openFiles(
            rel.map { root + "/" + $0 }, root: root, classNames: classNames, limit: limit, skipBad: skipBad,
            skipped: scan.problems, channels: channels, budget: budget, maxPixels: maxPixels,
            target: target)
    }

    /// Thread-safe result slots for the parallel decode.
    final class Results: @unchecked Sendable {
        var items: [Result<(pixels: Pixels8, warning: String?), DataError>?]
        init(_ n: Int) { items = .init(repeating: nil, count: n) }
    }

    /// Decodes `paths` (every one once, in parallel chunks) until `limit` good images are found.
    /// `classNames` non-empty: each path's first component below `root` is its class.
    static func openFiles(
        _ paths: [String], root: String, classNames: [String], limit: Int?, skipBad: Bool,
        skipped: [DataError] = [], channels: Int?, budget: Int, maxPixels: Int,
        target: DecodeTarget
    ) throws -> ImageDataset {
        var good: [(path: String, w: Int, h: Int, c: Int, bytes: [UInt8]?)] = []
        var skipped = skipped
        var warnings = [DataError]()
        var stored = 0
        var keep = budget > 0
        let want = limit ?? Int.max
        // Decode in chunks (in parallel within a chunk) until `limit` good images are found. Small
        // chunks bound what is held before the budget is known to be exceeded; once it is, only
        // each image's size is kept.
        let chunk = 32
        var start = 0
        while start < paths.count && good.count < want {
            let end = min(paths.count, start + chunk)
            let res = Results(end - start)
            let base = start, holding = keep
            DispatchQueue.concurrentPerform(iterations: end - start) { k in
                do {
                    var d = try decodeFile8(paths[base + k], target: target, maxPixels: maxPixels)
                    if !holding { d.pixels.bytes = [] }
                    res.items[k] = .success(d)
                } catch let e as DataError { res.items[k] = .failure(e) } catch {
                    res.items[k] = .failure(DataError(.corrupt, path: paths[base + k], "\(error)"))
                }
            }
            for k in 0..<(end - start) where good.count < want {
                switch res.items[k]! {
                case .failure(let e):
                    if !skipBad { throw e }
                    skipped.append(e)
                case .success(let (p, warning)):
                    let (w, h, c, b) = (p.width, p.height, p.channels, p.bytes)
                    if let warning { warnings.append(DataError(.corrupt, path: paths[base + k], warning)) }
                    stored += w * h * max(c, channels ?? c)
                    if keep && stored > budget {
                        keep = false
                        for i in good.indices { good[i].bytes = nil }
                    }
                    good.append((paths[base + k], w, h, c, keep ? b : nil))
                }
            }
            start = end
        }
        if good.isEmpty {
            throw DataError(
                .emptyDataset, path: root, "no readable PNG or JPEG files (\(skipped.count) skipped as bad)")
        }
        let outC = channels ?? (good.contains { $0.c == 3 } ? 3 : 1)
        var labels: [Int32]? = nil
        if !classNames.isEmpty {
            let index = Dictionary(uniqueKeysWithValues: classNames.enumerated().map { ($1, Int32($0)) })
            labels = good.map { index[String($0.path.dropFirst(root.count + 1).prefix { $0 != "/" })]! }
        }
        let store: ImageStore
        if keep {
            var bytes = [UInt8]()
            bytes.reserveCapacity(good.reduce(0) { $0 + $1.w * $1.h * outC })
            var offsets = [Int](), sizes = [(Int, Int)]()
            for g in good {
                offsets.append(bytes.count)
                sizes.append((g.w, g.h))
                bytes += convertChannels8(g.bytes!, pixels: g.w * g.h, from: g.c, to: outC)
            }
            store = ImageStore(
                kind: .packed(bytes: bytes, offsets: offsets, sizes: sizes), count: good.count,
                names: good.map(\.path), source: root)
        } else {
            store = ImageStore(
                kind: .files(paths: good.map(\.path), maxPixels: maxPixels, target: target), count: good.count,
                names: good.map(\.path), source: root)
        }
        return ImageDataset(
            channels: outC, labels: labels, classNames: classNames, labelSource: .classFolders,
            source: root, skipped: skipped, warnings: warnings, decodeTarget: target, store: store)
    }

    /// Writes a summary of `dataset.warnings` to stderr: up to 5 files, then a count.
    static func printWarnings(_ dataset: ImageDataset) {
        let w = dataset.warnings
        guard !w.isEmpty else { return }
        var text = ""
        for e in w.prefix(5) { text += "warning: \(e) (decoded; the pixels are as encoded)\n" }
        if w.count > 5 {
            text += "warning: \(w.count - 5) more file(s) of \(displayPath(dataset.source)) with JPEG warnings\n"
        }
        FileHandle.standardError.write(Foundation.Data(text.utf8))
    }

    // MARK: IDX

    /// The labels file beside an images file: "images-idx3" -> "labels-idx1", with or without ".gz".
    public static func labelsPath(forImages path: String) -> String? {
        let dir = (path as NSString).deletingLastPathComponent
        var name = (path as NSString).lastPathComponent
        guard name.contains("images-idx3") else { return nil }
        name = name.replacingOccurrences(of: "images-idx3", with: "labels-idx1")
        let plain = name.hasSuffix(".gz") ? String(name.dropLast(3)) : name
        for cand in [name, plain, plain + ".gz"] {
            let p = dir.isEmpty ? cand : dir + "/" + cand
            if FileManager.default.fileExists(atPath: p) { return p }
        }
        return nil
    }

    static let fashionNames = [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
        "Sneaker", "Bag", "Ankle boot"
    ]

    static func openIDX(_ path: String, gz: Bool, limit: Int?, channels: Int?, budget: Int) throws -> ImageDataset {
        var labels: [Int32]? = nil
        if let lp = labelsPath(forImages: path) {
            labels = try parseIDXLabels(try readMaybeGzipped(lp), name: lp)
        }
        let count: Int, total: Int, w: Int, h: Int, c: Int
        let store: ImageStore
        if !gz, let size = try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int, size > budget {
            // Stream: check the header against the file length, then pread each image.
            let head = try readHead(path, 16)
            guard head.count >= 4 else { throw DataError(.truncated, path: path, "IDX file too short for its header") }
            let nd = Int(head[3])
            guard nd == 3 || nd == 4, head.count >= 4 + 4 * nd else {
                throw DataError(.badIDX, path: path, "IDX images must be N x rows x cols")
            }
            var dims = [Int]()
            for d in 0..<nd {
                let o = 4 + 4 * d;
                dims.append(Int(head[o]) << 24 | Int(head[o + 1]) << 16 | Int(head[o + 2]) << 8 | Int(head[o + 3]))
            }
            let expected = 4 + 4 * nd + dims.reduce(1, *)
            if expected != size {
                throw DataError(
                    size < expected ? .truncated : .badIDX, path: path,
                    "IDX header says \(expected) bytes but the file has \(size)")
            }
            (h, w, c) = (dims[1], dims[2], nd == 4 ? dims[3] : 1)
            total = dims[0]
            count = min(dims[0], limit ?? Int.max)
            let fd = Glibc_open(path)
            if fd < 0 { throw DataError(.unreadable, path: path, "cannot open file for reading") }
            store = ImageStore(
                kind: .idxFile(fd: fd, headerBytes: 4 + 4 * nd, width: w, height: h, channels: c),
                count: count, names: [], source: path)
        } else {
            let idx = try parseIDXImages(try readMaybeGzipped(path), name: path)
            (h, w, c) = (idx.height, idx.width, idx.channels)
            total = idx.count
            count = min(idx.count, limit ?? Int.max)
            let n = count * w * h * c
            store = ImageStore(
                kind: .uniform(
                    bytes: n == idx.bytes.count ? idx.bytes : Array(idx.bytes[0..<n]),
                    width: w, height: h, channels: c),
                count: count, names: [], source: path)
        }
        if count == 0 { throw DataError(.emptyDataset, path: path, "IDX file holds no images") }
        var classNames = [String]()
        if let l = labels {
            if l.count != total {
                throw DataError(
                    .badIDX, path: labelsPath(forImages: path) ?? path,
                    "\(l.count) labels for \(total) images in \(path)")
            }
            labels = Array(l[0..<count])
            let k = Int(l.max() ?? 0) + 1
            classNames = path.lowercased().contains("fashion") && k <= 10 ? fashionNames : (0..<k).map(String.init)
        }
        return ImageDataset(
            channels: channels ?? c, labels: labels, classNames: classNames, labelSource: .numbers,
            source: path, skipped: [], store: store)
    }
}

func Glibc_open(_ path: String) -> Int32 { open(path, O_RDONLY) }
