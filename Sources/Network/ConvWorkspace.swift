// The buffers convolutions and batch norms work in, shared by passes that never run at once.

/// Weight panels and scratch of the convolutions (and batch norms), shared by passes that never run
/// at the same time (a training step's no-grad and training passes). Sized at construction of the
/// passes that use it; it only grows.
public final class ConvWorkspace {
    public private(set) var pack: UnsafeMutablePointer<Float>
    public private(set) var packCount = 16
    public private(set) var scratch: UnsafeMutableRawPointer
    public private(set) var scratchBytes = 64
    /// A Winograd forward's per-tile output sums (ConvOutputSums) and their shift, for the batch norm
    /// after it (training mode).
    public private(set) var sums: UnsafeMutablePointer<Float>
    public private(set) var sumsCount = 16

    public init() {
        pack = UnsafeMutableRawPointer.allocate(byteCount: 16 * 4, alignment: 64).bindMemory(
            to: Float.self, capacity: 16)
        scratch = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        sums = UnsafeMutableRawPointer.allocate(byteCount: 16 * 4, alignment: 64).bindMemory(
            to: Float.self, capacity: 16)
    }

    /// Grows to at least `packFloats`, `scratchBytes` and `sumsFloats`; returns the bytes added.
    func reserve(packFloats: Int, scratchBytes bytes: Int, sumsFloats: Int = 0) -> Int {
        var added = Self.grow(&pack, &packCount, to: packFloats) + Self.grow(&sums, &sumsCount, to: sumsFloats)
        if bytes > scratchBytes {
            scratch.deallocate()
            scratch = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            added += bytes - scratchBytes
            scratchBytes = bytes
        }
        return added
    }

    /// Replaces `p` (`count` floats) by `floats` new ones when that is more; returns the bytes added.
    private static func grow(_ p: inout UnsafeMutablePointer<Float>, _ count: inout Int, to floats: Int) -> Int {
        if floats <= count { return 0 }
        p.deallocate()
        p = UnsafeMutableRawPointer.allocate(byteCount: floats * 4, alignment: 64).bindMemory(
            to: Float.self, capacity: floats)
        defer { count = floats }
        return (floats - count) * 4
    }

    deinit { pack.deallocate(); scratch.deallocate(); sums.deallocate() }
}
