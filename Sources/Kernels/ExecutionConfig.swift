// How the kernels run, as one value: a pass (or a benchmark) is planned with it and keeps it for its
// lifetime, so the plan that sized the scratch and the kernels that use it cannot disagree. There are
// no switches to flip between planning and running, and tests that compare two settings build two
// values side by side.

import CParallel

/// The algorithm of the 3x3 convolutions that have a Winograd form (stride 1 or 2, pad 1, 8+ channels);
/// every other shape runs the direct kernels.
public enum ConvAlgorithm: CaseIterable, Sendable {
    case winograd, direct

    /// The option's spelling (no String raw value: its comparisons would pull Unicode tables into
    /// the Embedded Swift build of the kernels).
    public var name: String {
        switch self {
        case .winograd: return "winograd"
        case .direct: return "direct"
        }
    }
}

/// What the kernels may assume about the machine and which of equivalent code paths they take.
public struct ExecutionConfig: Equatable, Sendable {
    /// 3x3 convolutions: Winograd F(4x4, 3x3) / F(4x4, 3x3) stride 2, or the direct kernels.
    public var convolution: ConvAlgorithm = .winograd
    /// The GEMMs' 12-row register tiles and 16-lane transforms (WideTiles.swift): one register per row
    /// in an AVX-512 build, where it is the default; elsewhere they compile to pairs and spill.
    public var wideTiles: Bool = wideTilesDefault
    /// A ResNet pass applies a block's mid batch norm + ReLU inside the next convolution's input
    /// transform, and a downsampling block's main-path batch norm inside the pass that adds it to the
    /// shortcut's, instead of writing their outputs. Same bits either way; off only to compare the two.
    public var fusesBatchNorms = true
    /// Training-mode Winograd forwards sum their outputs per tile for the batch-norm statistics that
    /// follow, instead of a pass over the outputs (rounded differently, within the tests' tolerances;
    /// off only to compare the two).
    public var statisticsInEpilogue = true
    /// The working-set limits the convolution plans block by.
    public var cache: CacheBudget = .machine
    /// Threads the pass's scratch is sized for; it must not run with more (Threads.count).
    public var threads: Int

    public init(
        convolution: ConvAlgorithm = .winograd, wideTiles: Bool = wideTilesDefault, threads: Int = Threads.count,
        cache: CacheBudget = .machine
    ) {
        self.convolution = convolution; self.wideTiles = wideTiles; self.threads = threads; self.cache = cache
    }

    /// The configuration the kernels are tuned for, on the threads in use now.
    public static var standard: ExecutionConfig { ExecutionConfig() }

    var winograd: Bool { convolution == .winograd }
    /// Rows of the GEMMs' register tiles: blocks of tiles are rounded to it.
    var gemmRowUnit: Int { wideTiles ? wideTileRows : convTileRows }
}

/// Working-set limits of the convolution plans, in bytes, derived from the core's L2 and the last-level
/// cache. Each limit starts as a fixed fraction of one of the two, the fraction measured on an AMD
/// Zen 4/5 (1 MB L2 per core, 32 MB L3) where the limits were tuned (docs/PERFORMANCE.md): on that
/// machine the limits are the tuned byte counts, and a board with smaller caches gets proportionally
/// smaller blocks and switches to the streaming strategies earlier. Tests set single limits to reach
/// every strategy on small shapes.
public struct CacheBudget: Equatable, Sendable {
    /// Per-core L2 (or the last private level) and the largest cache level, in bytes.
    public var l2: Int, lastLevel: Int

    public init(l2: Int, lastLevel: Int) {
        let l2 = max(l2, 64 << 10), last = max(lastLevel, l2)
        self.l2 = l2; self.lastLevel = last
        winogradBlock = l2; winogradWeightsInL2 = l2; winogradBlockOuter = l2
        stride2Block = l2 * 3 / 4
        winogradWeightsShared = last / 8; winogradFuseLimit = last / 4; backwardPass = last / 4
        winogradAllTiles = last * 5 / 8; sharedBlock = last / 8
        stride2PackLimit = last * 3 / 16
    }

    /// The tuning machine's caches: what a board that reports none is assumed to have.
    public static var tuned: CacheBudget { CacheBudget(l2: 1 << 20, lastLevel: 32 << 20) }

    /// This machine's caches (Linux sysfs, cpu0), or `tuned` where it reports no L2.
    public static var machine: CacheBudget {
        var l2 = 0, last = 0
        sal_cache_sizes(&l2, &last)
        return l2 > 0 ? CacheBudget(l2: l2, lastLevel: last) : tuned
    }

    // Limits near the core's L2 (1 MB on the tuning machine).

    /// A Winograd forward block's V and M together.
    public var winogradBlock: Int
    /// Transformed weights this small leave room in L2 for small blocks beside them.
    public var winogradWeightsInL2: Int
    /// A fused forward's working set per row of points past which it goes output block by output block.
    public var winogradBlockOuter: Int
    /// A stride-2 forward block's V and M (768 KB).
    public var stride2Block: Int

    // Limits near the last-level cache (32 MB on the tuning machine).

    /// Transformed weights past which the forward splits output channels over threads or transforms
    /// them inside the forward (4 MB).
    public var winogradWeightsShared: Int
    /// A fused forward block's transformed input (8 MB).
    public var winogradFuseLimit: Int
    /// One pass's dU in backward-weights (8 MB).
    public var backwardPass: Int
    /// V and Y of all tiles with which backward-weights keeps no dU (20 MB).
    public var winogradAllTiles: Int
    /// A shared backward-weights block's V and Y (4 MB).
    public var sharedBlock: Int
    /// Transformed stride-2 kernels past which the forward transforms them itself (6 MB).
    public var stride2PackLimit: Int
}

/// One convolution as the kernels run it: its shape and the settings it was planned with. Algorithm
/// choices, packed-weight sizes and scratch layouts are members of the plan, computed from both.
public struct ConvPlan: Equatable, Sendable {
    public let shape: Conv2DShape
    public let config: ExecutionConfig

    public init(_ shape: Conv2DShape, _ config: ExecutionConfig) {
        self.shape = shape; self.config = config
    }

    public var n: Int { shape.n }
    public var c: Int { shape.c }
    public var h: Int { shape.h }
    public var w: Int { shape.w }
    public var k: Int { shape.k }
    public var r: Int { shape.r }
    public var s: Int { shape.s }
    public var stride: Int { shape.stride }
    public var pad: Int { shape.pad }
    public var oh: Int { shape.oh }
    public var ow: Int { shape.ow }
    public var taps: Int { shape.taps }
    public var inputCount: Int { shape.inputCount }
    public var outputCount: Int { shape.outputCount }
    public var weightCount: Int { shape.weightCount }
    public var flops: Double { shape.flops }
    public var isValid: Bool { shape.isValid }
    public var isWinogradShape: Bool { shape.isWinogradShape }
    public var isWinogradStride2Shape: Bool { shape.isWinogradStride2Shape }
    var wide: Bool { config.wideTiles }
    var gemmRowUnit: Int { config.gemmRowUnit }
    var budget: CacheBudget { config.cache }
}
