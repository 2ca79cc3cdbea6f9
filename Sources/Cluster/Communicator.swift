// The processes of a data-parallel job and the collectives salient uses between them: MPI (Open MPI,
// loaded at run time) when the binary was started by mpirun, otherwise this process alone, where every
// collective is the identity and costs nothing.
import CMPI
import Foundation
import Kernels

public final class Communicator: @unchecked Sendable {
    public let rank: Int
    public let size: Int
    public var isRoot: Bool { rank == 0 }
    public var isDistributed: Bool { size > 1 }

    /// This process alone.
    public static let single = Communicator(rank: 0, size: 1)

    init(rank: Int, size: Int) { self.rank = rank; self.size = size }

    /// The job this process joined (`world`), for the collectives called through C function pointers,
    /// which cannot capture a communicator.
    static var joined: Communicator {
        var rank: Int32 = 0, size: Int32 = 1
        sal_mpi_rank_size(&rank, &size)
        return Communicator(rank: Int(rank), size: Int(size))
    }

    /// The processes of this job: every rank when started by Open MPI's mpirun, else this process
    /// alone. `timeout`: seconds a collective may wait for the other ranks before the job is ended
    /// (a peer that died, a network that dropped).
    public static func world(timeout: Double = 60) throws -> Communicator {
        guard sal_mpi_launched() != 0 else { return .single }
        var rank: Int32 = 0, size: Int32 = 1
        var err = [CChar](repeating: 0, count: 512)
        guard sal_mpi_init(&rank, &size, &err, err.count) == 0 else {
            throw ClusterError(String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        sal_mpi_set_timeout(timeout)
        return Communicator(rank: Int(rank), size: Int(size))
    }

    /// Seconds spent in collectives (waiting for the other ranks included) and bytes handed to them.
    public var seconds: Double { isDistributed ? sal_mpi_seconds() : 0 }
    public var bytes: Double { isDistributed ? sal_mpi_bytes() : 0 }

    /// Ends the whole job with a message naming this rank (mpirun stops the other ranks).
    public func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("salient: rank \(rank) of \(size): \(message)\n".utf8))
        if isDistributed { sal_mpi_abort(1) }
        exit(1)
    }

    func check(_ rc: Int32, _ what: @autoclosure () -> String) {
        if rc == 0 { return }
        if rc == Int32(SAL_MPI_TIMEOUT) {
            fail(
                "no answer from the other ranks within the timeout during \(what()): "
                    + "a rank died or the network dropped; ending the job")
        }
        fail("MPI failed during \(what())")
    }

    /// In-place element-wise sums over all ranks.
    public func sum(_ p: UnsafeMutablePointer<Double>, count: Int, _ what: @autoclosure () -> String) {
        if isDistributed && count > 0 { check(sal_mpi_allreduce_f64(p, count), what()) }
    }

    public func sum(_ p: UnsafeMutablePointer<Float>, count: Int, _ what: @autoclosure () -> String) {
        if isDistributed && count > 0 { check(sal_mpi_allreduce_f32(p, count), what()) }
    }

    /// recv[r * count ..< (r + 1) * count] = rank r's `send`; `recv` holds size * count floats and
    /// must not overlap `send`.
    public func allGather(
        _ send: UnsafePointer<Float>, count: Int, into recv: UnsafeMutablePointer<Float>,
        _ what: @autoclosure () -> String
    ) {
        if !isDistributed {
            if UnsafePointer(recv) != send { recv.update(from: send, count: count) }
            return
        }
        check(sal_mpi_allgather_f32(send, count, recv), what())
    }

    /// Every rank's bytes (the same count from each), in rank order.
    public func allGather(_ bytes: [UInt8], _ what: @autoclosure () -> String) -> [[UInt8]] {
        if !isDistributed { return [bytes] }
        var all = [UInt8](repeating: 0, count: bytes.count * size)
        bytes.withUnsafeBytes { s in
            all.withUnsafeMutableBytes { r in
                check(sal_mpi_allgather_bytes(s.baseAddress!, bytes.count, r.baseAddress!), what())
            }
        }
        return (0..<size).map { Array(all[($0 * bytes.count)..<(($0 + 1) * bytes.count)]) }
    }

    /// Rank `root`'s bytes to every rank.
    public func broadcast(_ p: UnsafeMutableRawPointer, bytes: Int, root: Int = 0, _ what: @autoclosure () -> String) {
        if isDistributed && bytes > 0 { check(sal_mpi_bcast(p, bytes, Int32(root)), what()) }
    }

    /// Ends the MPI part of the job (every rank calls it once, at the end).
    public func finish() {
        if isDistributed { sal_mpi_finalize() }
    }

    /// Runs `body`; an error on any rank ends the whole job with that error (the other ranks would
    /// otherwise wait in their next collective until the timeout).
    public func failing<T>(_ body: () throws -> T) rethrows -> T {
        guard isDistributed else { return try body() }
        do { return try body() } catch { fail("\(error)") }
    }

    public func barrier(_ what: @autoclosure () -> String) {
        if isDistributed { check(sal_mpi_barrier(), what()) }
    }

    /// Batch-norm statistics summed over the ranks (training-mode forward and backward of the
    /// encoder being trained), or nil with one process.
    public var statisticsSync: BNStatisticsSync? { sync(.sharedBatch) }

    /// Split batch norm whose groups are spread over the ranks (the key encoder's shuffle-BN): the
    /// running statistics advance by every rank's groups in rank order. Nil with one process.
    public var groupStatisticsSync: BNStatisticsSync? { sync(.splitGroups) }

    func sync(_ mode: BNStatisticsSync.Mode) -> BNStatisticsSync? {
        guard isDistributed else { return nil }
        return BNStatisticsSync(
            mode: mode, processes: size,
            sum: { p, n in
                Communicator.joined.check(sal_mpi_allreduce_f64(p, n), "the batch-norm statistics")
            },
            gather: { send, n, recv in
                Communicator.joined.check(
                    sal_mpi_allgather_bytes(send, 8 * n, recv), "the batch-norm running statistics")
            })
    }

    /// Checks that every rank runs the same binary with the same settings: `fingerprint` (settings,
    /// version, data) must be identical; otherwise every rank ends with the list of differences.
    public func requireSame(_ fingerprint: String, _ what: String) {
        guard isDistributed else { return }
        var digest = [UInt8](repeating: 0, count: 64)
        let text = Array(fingerprint.utf8)
        // FNV-1a over the text in 8 lanes: differences show up in the digest.
        for lane in 0..<8 {
            var h: UInt64 = 0xcbf2_9ce4_8422_2325 &+ UInt64(lane)
            for (i, b) in text.enumerated() where i % 8 == lane { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
            for k in 0..<8 { digest[lane * 8 + k] = UInt8(truncatingIfNeeded: h >> (8 * UInt64(k))) }
        }
        let all = allGather(digest, "the start-up check")
        let differing = all.indices.filter { all[$0] != all[0] }
        if !differing.isEmpty {
            fail(
                "\(what) differ between ranks "
                    + "(rank 0 and rank(s) \(differing.map(String.init).joined(separator: ", "))): "
                    + "start every rank with the same binary, options and data")
        }
    }
}

public struct ClusterError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
