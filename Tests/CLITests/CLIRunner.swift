// Runs the real `salient` binary (.build/release/salient; tests skip when it is not built).
import XCTest
import Foundation

let salientPackageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()
let salientBinary = salientPackageRoot.appendingPathComponent(".build/release/salient")

struct SalientRun { var status: Int32; var stdout: String; var stderr: String }

/// Runs the binary with `args`, killing it after `timeout` seconds (a failure). `launcher` runs it
/// through another program (e.g. setpriv to drop privileges): launcher[0] is that program's path.
func runSalient(_ args: [String], timeout: TimeInterval = 120, launcher: [String] = []) throws -> SalientRun {
    let path = salientBinary.path
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw XCTSkip("\(path) is not built (swift build -c release)")
    }
    let p = Process()
    p.executableURL = launcher.isEmpty ? salientBinary : URL(fileURLWithPath: launcher[0])
    p.arguments = launcher.isEmpty ? args : Array(launcher.dropFirst()) + [path] + args
    var env = ProcessInfo.processInfo.environment
    env["SALIENT_THREADS"] = "2"
    p.environment = env
    let outPipe = Pipe(), errPipe = Pipe()
    p.standardOutput = outPipe
    p.standardError = errPipe
    // Read both pipes while the process runs, so a full pipe cannot block it.
    let box = OutputBox()
    let group = DispatchGroup()
    for (pipe, isOut) in [(outPipe, true), (errPipe, false)] {
        group.enter()
        DispatchQueue.global().async {
            let d = pipe.fileHandleForReading.readDataToEndOfFile()
            box.set(isOut, d)
            group.leave()
        }
    }
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(20_000) }
    if p.isRunning {
        p.terminate()
        p.waitUntilExit()
        group.wait()
        XCTFail("salient \(args.joined(separator: " ")) did not finish within \(timeout) s")
        return SalientRun(status: -1, stdout: box.text(true), stderr: box.text(false))
    }
    p.waitUntilExit()
    group.wait()
    return SalientRun(status: p.terminationStatus, stdout: box.text(true), stderr: box.text(false))
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

