// Gradient sums over the ranks, overlapped with backward (GradientExchange): gradients are copied,
// in the order backward finishes them, into buckets of about `bucketBytes` (256 KB); a full bucket's sum is
// started at once (MPI_Iallreduce), and each bucket's SGD steps run as soon as its sum has arrived.
import CMPI
import Foundation
import Network

public final class GradientBuckets: GradientExchange {
    let comm: Communicator
    let staging: UnsafeMutablePointer<Float>
    let capacity: Int
    public let bucketFloats: Int
    public static let defaultBucketBytes = 256 << 10
    struct Entry { var offset: Int, count: Int, at: Int }
    struct Bucket { var start: Int, end: Int, entries: [Entry], request: Int32 }
    var open: [Entry] = []
    var openStart = 0, filled = 0
    var pending: [Bucket] = []
    var sgd: FusedSGD?
    var store: ParameterStore?
    /// Seconds `finish` waited for sums that had not arrived, summed over steps (the part of the
    /// communication that backward did not hide).
    public private(set) var exposedSeconds = 0.0

    /// `parameters`: floats of the store (each is submitted at most once per step). `bucketBytes`: a
    /// width-0.25 ResNet-18 (2.8 MB of gradients) on two ranks over a 1 Gbit/s link hides 92% of its
    /// gradient sum behind backward with 256 KB buckets, 70% with 1 MB and 72% with 64 KB (bench train).
    public init(comm: Communicator, parameters: Int, bucketBytes: Int = defaultBucketBytes) {
        self.comm = comm
        capacity = max(parameters, 1)
        bucketFloats = max(bucketBytes / 4, 1024)
        staging = .allocate(capacity: capacity)
    }

    deinit { staging.deallocate() }

    public var allocatedBytes: Int { 4 * capacity }

    public func submit(offset: Int, count: Int, grad: UnsafePointer<Float>, sgd: FusedSGD, store: ParameterStore) {
        self.sgd = sgd; self.store = store
        precondition(filled + count <= capacity, "more gradients submitted in one step than the store holds")
        (staging + filled).update(from: grad, count: count)
        open.append(Entry(offset: offset, count: count, at: filled))
        filled += count
        if filled - openStart >= bucketFloats { start() }
        progress()
    }

    /// Starts the open bucket's sum.
    func start() {
        guard filled > openStart else { return }
        var request: Int32 = -1
        comm.check(sal_mpi_iallreduce_f32(staging + openStart, filled - openStart, &request), "the gradient sums")
        pending.append(Bucket(start: openStart, end: filled, entries: open, request: request))
        open = []
        openStart = filled
    }

    /// Applies every bucket whose sum has arrived, oldest first (MPI progresses while we test).
    func progress() {
        while let b = pending.first {
            let done = sal_mpi_test(b.request)
            if done < 0 { comm.fail("MPI failed during the gradient sums") }
            if done == 0 { return }
            apply(b)
            pending.removeFirst()
        }
    }

    func apply(_ b: Bucket) {
        guard let sgd, let store else { return }
        for e in b.entries { sgd.step(store, offset: e.offset, count: e.count, grad: staging + e.at) }
    }

    public func finish() {
        start()
        let t0 = Date()
        for b in pending {
            comm.check(sal_mpi_wait(b.request), "the gradient sums")
            apply(b)
        }
        exposedSeconds += Date().timeIntervalSince(t0)
        pending = []
        filled = 0; openStart = 0
    }
}
