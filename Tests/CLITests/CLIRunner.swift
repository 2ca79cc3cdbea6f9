// Runs the real `salient` binary (.build/release/salient). A test that needs it fails when it is not
// built (`swift build -c release` builds it; `make test` does).
import XCTest
import Foundation
#if canImport(Glibc)
    import Glibc
#endif

let salientPackageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()
let salientBinary = salientPackageRoot.appendingPathComponent(".build/release/salient")

/// How a run ended: its exit status (or, when `signalled`, the signal that ended it) and its output.
struct SalientRun {
    var status: Int32
    var stdout: String
    var stderr: String
    var signalled = false
    /// Exited by itself with a status of 1...127: an error was reported, nothing crashed.
    var failedCleanly: Bool { !signalled && status > 0 && status < 128 }
}

struct MissingBinary: Error, CustomStringConvertible {
    var description: String { "\(salientBinary.path) is not built (swift build -c release)" }
}

/// A started `salient` process whose output is collected as it runs.
final class SalientProcess {
    let process = Process()
    let box = OutputBox()
    let group = DispatchGroup()

    /// Starts the binary with `args`; `environment` entries are added to (or, with nil, removed from)
    /// this process's environment, which gets SALIENT_THREADS=2 unless it says otherwise. `launcher`
    /// runs it through another program (e.g. setpriv to drop privileges): launcher[0] is its path.
    init(_ args: [String], environment: [String: String?] = [:], launcher: [String] = []) throws {
        guard FileManager.default.isExecutableFile(atPath: salientBinary.path) else { throw MissingBinary() }
        process.executableURL = launcher.isEmpty ? salientBinary : URL(fileURLWithPath: launcher[0])
        process.arguments = launcher.isEmpty ? args : Array(launcher.dropFirst()) + [salientBinary.path] + args
        var env = ProcessInfo.processInfo.environment
        env["SALIENT_THREADS"] = "2"
        for (k, v) in environment { env[k] = v }
        process.environment = env
        let outPipe = Pipe(), errPipe = Pipe()
        process.standardOutput = outPipe
        process.standardError = errPipe
        // Read both pipes while the process runs, so a full pipe cannot block it.
        for (pipe, isOut) in [(outPipe, true), (errPipe, false)] {
            group.enter()
            let box = self.box, group = self.group
            DispatchQueue.global().async {
                let d = pipe.fileHandleForReading.readDataToEndOfFile()
                box.set(isOut, d)
                group.leave()
            }
        }
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// Waits up to `timeout` seconds; a process still running then is killed and the test fails.
    func wait(timeout: TimeInterval, file: StaticString = #filePath, line: UInt = #line) -> SalientRun {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            group.wait()
            XCTFail(
                "salient \(process.arguments!.joined(separator: " ")) did not finish within \(timeout) s", file: file,
                line: line)
            return SalientRun(status: -1, stdout: box.text(true), stderr: box.text(false), signalled: true)
        }
        process.waitUntilExit()
        group.wait()
        return SalientRun(
            status: process.terminationStatus, stdout: box.text(true), stderr: box.text(false),
            signalled: process.terminationReason == .uncaughtSignal)
    }
}

/// Runs the binary with `args`, killing it after `timeout` seconds (a failure).
func runSalient(
    _ args: [String], timeout: TimeInterval = 120, environment: [String: String?] = [:],
    launcher: [String] = [], file: StaticString = #filePath, line: UInt = #line
) throws -> SalientRun {
    try SalientProcess(args, environment: environment, launcher: launcher).wait(
        timeout: timeout, file: file, line: line)
}

/// Polls `condition` every 20 ms for up to `timeout` seconds; true once it holds.
func waitUntil(timeout: TimeInterval, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}

final class OutputBox: @unchecked Sendable {
    private let lock = NSLock()
    private var out = Data(), err = Data()
    func set(_ isOut: Bool, _ d: Data) { lock.lock(); if isOut { out = d } else { err = d }; lock.unlock() }
    func text(_ isOut: Bool) -> String {
        lock.lock(); defer { lock.unlock() }
        return String(decoding: isOut ? out : err, as: UTF8.self)
    }
}

/// A new empty folder under the temporary directory, removed when the test ends.
func makeTempDir(_ test: XCTestCase, _ name: String) throws -> String {
    let d = NSTemporaryDirectory() + "salient-\(name)-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
    return d
}

/// Writes an IDX image file `dir/NAME-images-idx3-ubyte` of `n` gray side x side images of two classes
/// (bright left half or bright top half, with noise from `seed`) and its labels file beside it
/// (unless `labels` is false); returns the images file's path.
@discardableResult
func writeIDX(dir: String, name: String, n: Int, side: Int = 8, seed: UInt64, labels: Bool = true) throws -> String {
    var pixels = [UInt8](), labelBytes = [UInt8]()
    var s = seed
    for i in 0..<n {
        let c = i % 2
        labelBytes.append(UInt8(c))
        for y in 0..<side {
            for x in 0..<side {
                s = s &* 6364136223846793005 &+ 1442695040888963407
                let base = c == 0 ? (x < side / 2 ? 200 : 40) : (y < side / 2 ? 200 : 40)
                pixels.append(UInt8(clamping: base + Int(s >> 58)))
            }
        }
    }
    func be(_ v: Int) -> [UInt8] { [UInt8(v >> 24 & 255), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }
    let images = dir + "/\(name)-images-idx3-ubyte"
    try Data([0, 0, 8, 3] + be(n) + be(side) + be(side) + pixels).write(to: URL(fileURLWithPath: images))
    if labels {
        try Data([0, 0, 8, 1] + be(n) + labelBytes).write(to: URL(fileURLWithPath: dir + "/\(name)-labels-idx1-ubyte"))
    }
    return images
}

/// Exit status 1..127 (a thrown error or a validation failure), never a signal, with every text in stderr.
func assertFailsCleanly(
    _ r: SalientRun, mentioning texts: [String], _ what: String = "",
    file: StaticString = #filePath, line: UInt = #line
) {
    XCTAssertTrue(
        r.failedCleanly, "\(what): status \(r.status)\(r.signalled ? " (signal)" : "")\n\(r.stderr)",
        file: file, line: line)
    for t in texts {
        XCTAssertTrue(r.stderr.contains(t), "\(what): stderr lacks '\(t)':\n\(r.stderr)", file: file, line: line)
    }
}
