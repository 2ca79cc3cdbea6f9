import CParallel

/// Threads every parallel kernel uses (OpenMP through CParallel; serial when built without it).
public enum Threads {
    public static var count: Int {
        get { Int(sal_get_threads()) }
        set { sal_set_threads(Int32(newValue)) }
    }
    public static var processors: Int { Int(sal_num_procs()) }
    /// The most threads a command accepts: per-thread scratch grows with the count.
    public static let maximumCount = 1024
    public static var allowedCounts: ClosedRange<Int> { 1...maximumCount }
    public static var hasOpenMP: Bool { sal_has_openmp() != 0 }
    /// False when the binary was built for AVX-512 (SIMD.swift) and this CPU lacks it.
    public static var cpuSupportsBuild: Bool { sal_cpu_supports_build() != 0 }
}

/// Runs `body(begin, end, thread)` over contiguous chunks of [0, n), one chunk per thread.
/// `body` must only touch memory it owns for its range (or per-`thread` scratch).
@inline(__always)
public func parallelFor(_ n: Int, _ body: (Int, Int, Int) -> Void) {
    if n <= 0 { return }
    if n == 1 || sal_get_threads() == 1 { body(0, n, 0); return }
    withCallable(body) { sal_parallel_for(n, $0, $1) }
}

/// Runs `body(begin, end, thread)` over chunks of `chunk` iterations of [0, n), each handed to the
/// next free thread: a thread slowed by other work (a shared machine, a little core) takes fewer.
/// `body` may run several times on one thread (same `thread`), so it must not assume one range per
/// thread, and each output must be computed by one call alone (results then do not depend on the
/// schedule).
@inline(__always)
public func parallelForDynamic(_ n: Int, chunk: Int = 1, _ body: (Int, Int, Int) -> Void) {
    if n <= 0 { return }
    if n <= chunk || sal_get_threads() == 1 { body(0, n, 0); return }
    withCallable(body) { sal_parallel_for_dynamic(n, max(chunk, 1), $0, $1) }
}

/// parallelForDynamic in about `chunksPerThread` chunks per thread (chunks of n / (chunksPerThread x
/// threads) iterations, at least 1): enough for a slowed thread to hand work to the others, few enough
/// that each chunk's work dwarfs taking it.
@inline(__always)
public func parallelForDynamic(_ n: Int, chunksPerThread: Int, _ body: (Int, Int, Int) -> Void) {
    parallelForDynamic(n, chunk: max(1, n / (chunksPerThread * Threads.count)), body)
}

/// Hands `run` the closure as a C context pointer and the C function that calls it.
@inline(__always)
func withCallable(_ body: (Int, Int, Int) -> Void, _ run: (UnsafeMutableRawPointer, sal_range_fn) -> Void) {
    withoutActuallyEscaping(body) { b in
        var box = b
        withUnsafeMutablePointer(to: &box) { p in
            run(UnsafeMutableRawPointer(p)) { ctx, lo, hi, t in
                ctx!.assumingMemoryBound(to: ((Int, Int, Int) -> Void).self).pointee(lo, hi, Int(t))
            }
        }
    }
}

/// A model of how the parallel loops would split over more threads than this machine has: between
/// `begin(threads:)` and `end()`, loops plan for `threads` threads but run on the calling thread, range
/// by range, and each loop counts as long as its slowest thread's share (static ranges and dynamic
/// chunks handed out as `threads` threads would take them). It leaves out memory bandwidth, clocks
/// and synchronisation, so it bounds what the work split allows, not what a machine gives.
public enum ScheduleModel {
    public static func begin(threads: Int) { sal_schedule_model_begin(Int32(threads)) }
    /// Seconds in parallel loops (run serially), the seconds they would take on the modelled
    /// threads, and how many loops ran.
    /// `printLosses`: also list on stderr the loops that lose most to an uneven split.
    public static func end(printLosses: Bool = false) -> (serial: Double, parallel: Double, loops: Int) {
        var s = 0.0, p = 0.0, n = 0
        sal_schedule_model_end(&s, &p, &n, printLosses ? 1 : 0)
        return (s, p, n)
    }
}
