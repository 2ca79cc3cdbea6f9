import Kernels
import Foundation
#if canImport(Glibc)
    import Glibc
#endif

/// Every failure the Data module reports: what went wrong and the file it concerns, so that a user
/// sees e.g. `data/cat/003.png: not a PNG file (bad signature)`.
public struct DataError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: String, Sendable {
        case notPNG, notJPEG, corrupt, truncated, tooLarge, unsupported, unreadable, badIDX, emptyDataset, notFound,
            writeFailed, invalidArgument, streamFailed, classMismatch
    }
    public let kind: Kind
    /// The file (or folder) concerned, as it is on disk; empty when there is none.
    public let path: String
    public let message: String

    public init(_ kind: Kind, path: String, _ message: String) {
        self.kind = kind
        self.path = path
        self.message = message
    }

    /// `path: message`, the path with control characters escaped (`displayPath`).
    public var description: String { path.isEmpty ? message : "\(displayPath(path)): \(message)" }
}

/// A path as messages print it: newlines, tabs and other control characters escaped (`\n`, `\t`,
/// `\u{1B}`), so a file name cannot break a message into lines or send terminal escapes.
public func displayPath(_ path: String) -> String {
    var out = ""
    for u in path.unicodeScalars {
        switch u {
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 || (u.value >= 0x7F && u.value < 0xA0) {
                out += "\\u{" + String(u.value, radix: 16, uppercase: true) + "}"
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out
}

/// What kind of thing a stat mode is, for messages ("a FIFO", "a socket", ...).
func fileTypeName(_ mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFDIR: return "a folder"
    case S_IFIFO: return "a FIFO"
    case S_IFSOCK: return "a socket"
    case S_IFCHR: return "a character device"
    case S_IFBLK: return "a block device"
    case S_IFLNK: return "a symbolic link"
    default: return "not a regular file"
    }
}

/// Why a path cannot be opened or stat'ed (errno after the failed call), with dangling and looping
/// symbolic links named as such.
func unreadableReason(_ path: String, errno err: Int32) -> String {
    var st = stat()
    if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK {
        return err == ELOOP
            ? "symbolic link loop (too many levels of symbolic links)"
            : "broken symbolic link (its target does not exist)"
    }
    return String(cString: strerror(err))
}

/// Opens a regular file for reading without ever blocking: a FIFO, socket or device (which could
/// block the open or a read forever) is refused, as are folders.
func openRegularFile(_ path: String) throws -> Int32 {
    let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
    if fd < 0 {
        let err = errno
        var st = stat()
        if err == ENOENT, lstat(path, &st) != 0 { throw DataError(.notFound, path: path, "no such file") }
        throw DataError(.unreadable, path: path, "cannot open file for reading: \(unreadableReason(path, errno: err))")
    }
    var st = stat()
    if fstat(fd, &st) != 0 || (st.st_mode & S_IFMT) != S_IFREG {
        close(fd)
        if (st.st_mode & S_IFMT) == S_IFDIR { throw DataError(.unreadable, path: path, "is a folder, not a file") }
        throw DataError(.unreadable, path: path, "not a regular file (\(fileTypeName(st.st_mode)))")
    }
    return fd
}

/// Reads up to `limit` bytes of a regular file (all of it when nil). Missing files, folders, special
/// files and unreadable files become a `DataError` naming it.
public func readFileBytes(_ path: String, limit: Int? = nil) throws -> [UInt8] {
    let fd = try openRegularFile(path)
    defer { close(fd) }
    var st = stat()
    _ = fstat(fd, &st)
    let cap = limit ?? Int.max
    // One read of the size fstat gives, then more until end of file (a file may grow meanwhile).
    var out = [UInt8](repeating: 0, count: min(cap, max(Int(st.st_size), 0) + 1))
    var got = 0
    while got < cap {
        if got == out.count { out += [UInt8](repeating: 0, count: min(cap - got, max(got, 1 << 16))) }
        let n = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, $0.count - got) }
        if n < 0 {
            if errno == EINTR { continue }
            throw DataError(.unreadable, path: path, "read failed: \(String(cString: strerror(errno)))")
        }
        if n == 0 { break }
        got += n
    }
    out.removeSubrange(got...)
    return out
}
