import Kernels
import Foundation

/// Every failure the Data module reports: what went wrong and the file it concerns, so that a user
/// sees e.g. `data/cat/003.png: not a PNG file (bad signature)`.
public struct DataError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: String, Sendable {
        case notPNG, corrupt, truncated, tooLarge, unreadable, badIDX, emptyDataset, notFound,
             writeFailed, invalidArgument, streamFailed
    }
    public let kind: Kind
    /// The file (or folder) concerned; empty when there is none.
    public let path: String
    public let message: String

    public init(_ kind: Kind, path: String, _ message: String) {
        self.kind = kind
        self.path = path
        self.message = message
    }

    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// Reads a whole file. Missing files, folders and unreadable files become a `DataError` naming it.
public func readFileBytes(_ path: String) throws -> [UInt8] {
    var isDir: ObjCBool = false
    if !FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
        // A dangling symbolic link "exists" for the enumerator but not here.
        if (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) != nil {
            throw DataError(.unreadable, path: path, "cannot read file (broken symbolic link)")
        }
        throw DataError(.notFound, path: path, "no such file")
    }
    if isDir.boolValue { throw DataError(.unreadable, path: path, "is a folder, not a file") }
    guard let fh = FileHandle(forReadingAtPath: path) else {
        throw DataError(.unreadable, path: path, "cannot open file for reading (permission denied?)")
    }
    defer { try? fh.close() }
    do {
        let d = try fh.readToEnd() ?? Foundation.Data()
        return [UInt8](d)
    } catch {
        throw DataError(.unreadable, path: path, "read failed: \(error.localizedDescription)")
    }
}
