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
        return Int(next() % UInt64(n))   // modulo bias < n / 2^64: negligible here
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

