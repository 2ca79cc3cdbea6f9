/// SplitMix64: the seeded generator behind every random draw (initialisation, augmentation, masks). Each sample of a
/// batch gets its own generator, derived from (seed, epoch, image index), so augmentations are
/// identical for a seed whatever the thread count or batch composition.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits.
    public mutating func uniform() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

    /// Uniform in [lo, hi].
    public mutating func uniform(_ lo: Float, _ hi: Float) -> Float { lo + (hi - lo) * uniform() }

    /// Uniform Double in [0, 1) with 53 random bits.
    public mutating func uniformDouble() -> Double { Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0) }

    /// Uniform integer in [0, n).
    public mutating func int(below n: Int) -> Int {
        precondition(n > 0)
        return Int(next() % UInt64(n))  // modulo bias < n / 2^64: negligible here
    }

    /// A standard normal draw (Marsaglia's polar method: needs only log and sqrt).
    public mutating func normal() -> Float {
        while true {
            let u = 2 * uniformDouble() - 1, v = 2 * uniformDouble() - 1
            let s = u * u + v * v
            if s > 0 && s < 1 { return Float(u * (-2 * logDouble(s) / s).squareRoot()) }
        }
    }

    /// Mixes several integers into one seed (each step a SplitMix64 finaliser).
    public static func derive(_ parts: UInt64...) -> UInt64 {
        var h: UInt64 = 0x5A17_E4D5_EED0_0001
        for p in parts {
            var g = SplitMix64(seed: h ^ p)
            h = g.next()
        }
        return h
    }
}


/// The tag of every random stream, mixed with the seed (and the epoch, step or sample where the stream
/// has one) by `SplitMix64.derive`, so that no two streams share numbers. The values are part of what
/// makes a run reproducible: changing one changes every run that draws from it.
public enum RandomStream: UInt64, CaseIterable, Sendable {
    /// The order of an epoch's images (with the epoch).
    case epochOrder = 0x5EED_0F_0DE5
    /// The MoCo queue's initial keys.
    case queueInit = 0x9_0E0E
    /// The shuffle-BN permutation of the key forward (with the step).
    case keyShuffle = 0x4B45
    /// The permutation of the h-th hard-negative forward is this tag + h (with the step).
    case hardNegativeShuffle = 0x4A4E
    /// Which cells of a query view are masked (with the step and the sample).
    case queryMask = 0x5155_4552_5900_0001
    /// Which cells of a hard negative are masked (with the step and the sample).
    case hardNegativeMask = 0x4E45_4741_5449_0002
    /// The linear probe's held-out split.
    case probeSplit = 0x5EED_0001
    /// The start vector of the linear probe's step-size power iteration.
    case probeEigenvector = 0x5EED_0002
    /// The order of an augmented linear-probe epoch (with the epoch).
    case probeEpochOrder = 0x5EED_0003
    /// The images `salient preview` shows.
    case previewPick = 0x9_12E_71E3
    /// The mutations of `salient fuzz`.
    case fuzz = 0xF022
}
