// Contrastive objectives over L2-normalised embeddings, forward and backward side by side.
//
// Letters: B batch, D embedding size (128), K queue length, H hard negatives per sample, T temperature.
// Every buffer is planned once per (B, D, K, H) in an objective object; nothing allocates per step.
import Kernels

/// The MoCo queue of normalised keys, a ring buffer [K][D] (one key per row).
public final class KeyQueue {
    public let length: Int, dim: Int
    public let keys: UnsafeMutablePointer<Float>
    public private(set) var pointer = 0

    public init(length: Int, dim: Int, rng: inout SplitMix64) {
        precondition(length > 0 && dim > 0)
        self.length = length; self.dim = dim
        keys = .allocate(capacity: length * dim)
        // MoCo starts from random normalised keys.
        for i in 0..<(length * dim) { keys[i] = rng.normal() }
        for r in 0..<length {
            var s: Float = 0
            for j in 0..<dim { s += keys[r * dim + j] * keys[r * dim + j] }
            let inv = 1 / max(s.squareRoot(), 1e-12)
            for j in 0..<dim { keys[r * dim + j] *= inv }
        }
    }

    deinit { keys.deallocate() }

    /// Writes `count` rows at the pointer, wrapping around, and advances it.
    public func enqueue(_ rows: UnsafePointer<Float>, count: Int) {
        for i in 0..<count {
            (keys + ((pointer + i) % length) * dim).update(from: rows + i * dim, count: dim)
        }
        pointer = (pointer + count) % length
    }

    /// Restores a saved state (rows and pointer).
    public func restore(keys saved: [Float], pointer p: Int) {
        precondition(saved.count == length * dim && p >= 0 && p < length)
        saved.withUnsafeBufferPointer { keys.update(from: $0.baseAddress!, count: length * dim) }
        pointer = p
    }

    /// Sets the next write position (the keys are restored in place).
    public func restore(pointer p: Int) {
        precondition(p >= 0 && p < length)
        pointer = p
    }
}

/// Statistics of one objective evaluation.
public struct ObjectiveResult: Sendable {
    public var loss: Float
    /// Fraction of rows whose positive outscores every ordinary negative (contrastive top-1).
    public var accuracy: Float
}

/// MoCo's InfoNCE with hard negatives: row b's logits are
/// [q.k, q.queue_0 .. q.queue_{K-1}, alpha * q.t_{b,0} .. alpha * q.t_{b,H-1}] / T, label 0.
public final class InfoNCE {
    public let batch: Int, dim: Int, queueLength: Int, hardNegatives: Int
    public var temperature: Float, alpha: Float
    public var columns: Int { 1 + queueLength + hardNegatives }
    let logits: UnsafeMutablePointer<Float>
    let probs: UnsafeMutablePointer<Float>
    let labels: UnsafeMutablePointer<Int32>
    /// d loss / d q [B][D] after backward.
    public let gradQuery: UnsafeMutablePointer<Float>
    let scratch: UnsafeMutablePointer<Float>

    public init(batch: Int, dim: Int, queueLength: Int, hardNegatives: Int, temperature: Float, alpha: Float) {
        self.batch = batch; self.dim = dim; self.queueLength = queueLength; self.hardNegatives = hardNegatives
        self.temperature = temperature; self.alpha = alpha
        let cols = 1 + queueLength + hardNegatives
        logits = .allocate(capacity: batch * cols)
        probs = .allocate(capacity: batch * cols)
        labels = .allocate(capacity: batch)
        labels.initialize(repeating: 0, count: batch)
        gradQuery = .allocate(capacity: batch * dim)
        scratch = .allocate(capacity: batch * max(queueLength, 1))
    }

    deinit {
        logits.deallocate(); probs.deallocate(); labels.deallocate(); gradQuery.deallocate(); scratch.deallocate()
    }

    public var allocatedBytes: Int { 4 * (2 * batch * columns + batch + batch * dim + batch * max(queueLength, 1)) }

    /// q, k [B][D]; queue [K][D]; hard [B][H][D] (may be nil when H = 0). All rows normalised.
    public func forward(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, queue: UnsafePointer<Float>,
        hard: UnsafePointer<Float>?
    ) -> ObjectiveResult {
        let B = batch, D = dim, K = queueLength, H = hardNegatives, C = columns
        let invT = 1 / temperature
        // q . queue^T for all rows at once, then assemble.
        linearForward(
            LinearShape(batch: B, inFeatures: D, outFeatures: K), input: q, weight: queue, bias: nil, output: scratch)
        parallelFor(B) { lo, hi, _ in
            for b in lo..<hi {
                let row = self.logits + b * C, qb = q + b * D
                row[0] = dot(qb, k + b * D, D) * invT
                for j in 0..<K { row[1 + j] = self.scratch[b * K + j] * invT }
                for h in 0..<H { row[1 + K + h] = self.alpha * dot(qb, hard! + (b * H + h) * D, D) * invT }
            }
        }
        let loss = softmaxCrossEntropyForward(rows: B, classes: C, logits: logits, labels: labels, probs: probs)
        // Contrastive accuracy: the positive beats every queue key (hard negatives, weighted by alpha,
        // are left out: with alpha > 1 they outscore the positive by design early in training).
        var correct = 0
        for b in 0..<B {
            let row = logits + b * C
            var wins = true
            for j in 1...max(K, 1) where j < C - H && row[j] >= row[0] { wins = false; break }
            if wins { correct += 1 }
        }
        return ObjectiveResult(loss: loss, accuracy: Float(correct) / Float(B))
    }

    /// d(mean loss)/dq into gradQuery (k, queue and hard negatives get no gradient).
    public func backward(k: UnsafePointer<Float>, queue: UnsafePointer<Float>, hard: UnsafePointer<Float>?) {
        let B = batch, D = dim, K = queueLength, H = hardNegatives, C = columns
        let scale = 1 / (Float(B) * temperature)
        // dlogits * T: (p - onehot) / B; then dq = sum_j dlogit_j * v_j / T.
        softmaxCrossEntropyBackward(rows: B, classes: C, probs: probs, labels: labels, scale: scale, gradLogits: logits)
        // Queue columns: dq = dL[:, 1...K] @ queue.
        for b in 0..<B { (scratch + b * K).update(from: logits + b * C + 1, count: K) }
        linearBackward(
            LinearShape(batch: B, inFeatures: D, outFeatures: K), input: gradQuery, weight: queue,
            gradOutput: scratch, gradInput: gradQuery, gradWeight: nil, gradBias: nil, accumulate: false)
        parallelFor(B) { lo, hi, _ in
            for b in lo..<hi {
                let g = self.gradQuery + b * D, row = self.logits + b * C
                axpy(row[0], k + b * D, g, D)
                for h in 0..<H { axpy(row[1 + K + h] * self.alpha, hard! + (b * H + h) * D, g, D) }
            }
        }
    }
}

/// SimCLR's NT-Xent over 2B embeddings z (rows b and b+B are the two views of sample b), plus
/// optional hard negatives: row i's logits are [z_i . z_j for j != i] / T with the positive at its
/// partner, then alpha * z_i . t_{i,h} / T for row i < B (hard negatives belong to the first view).
public final class NTXent {
    public let batch: Int, dim: Int, hardNegatives: Int
    public var temperature: Float, alpha: Float
    let sim: UnsafeMutablePointer<Float>  // [2B][2B + H] logits (self column set to -inf)
    let probs: UnsafeMutablePointer<Float>
    let labels: UnsafeMutablePointer<Int32>
    /// d loss / d z [2B][D] after backward.
    public let gradZ: UnsafeMutablePointer<Float>
    let gsim: UnsafeMutablePointer<Float>  // [2B][2B]
    let zt: UnsafeMutablePointer<Float>  // [D][2B]

    public var columns: Int { 2 * batch + hardNegatives }

    public init(batch: Int, dim: Int, hardNegatives: Int, temperature: Float, alpha: Float) {
        self.batch = batch; self.dim = dim; self.hardNegatives = hardNegatives
        self.temperature = temperature; self.alpha = alpha
        let n = 2 * batch, c = 2 * batch + hardNegatives
        sim = .allocate(capacity: n * c); probs = .allocate(capacity: n * c)
        labels = .allocate(capacity: n)
        for i in 0..<n { labels[i] = Int32(i < batch ? i + batch : i - batch) }
        gradZ = .allocate(capacity: n * dim)
        gsim = .allocate(capacity: n * n)
        zt = .allocate(capacity: n * dim)
    }

    deinit {
        sim.deallocate(); probs.deallocate(); labels.deallocate(); gradZ.deallocate(); gsim.deallocate();
        zt.deallocate()
    }

    public var allocatedBytes: Int { 4 * (2 * 2 * batch * columns + 2 * batch + 4 * batch * dim + 4 * batch * batch) }

    /// z [2B][D] normalised; hard [B][H][D] or nil.
    public func forward(z: UnsafePointer<Float>, hard: UnsafePointer<Float>?) -> ObjectiveResult {
        let n = 2 * batch, D = dim, H = hardNegatives, C = columns
        let invT = 1 / temperature
        linearForward(
            LinearShape(batch: n, inFeatures: D, outFeatures: n), input: z, weight: z, bias: nil, output: gsim)
        parallelFor(n) { lo, hi, _ in
            for i in lo..<hi {
                let row = self.sim + i * C
                for j in 0..<n { row[j] = j == i ? -1e30 : self.gsim[i * n + j] * invT }
                for h in 0..<H {
                    row[n + h] = i < self.batch ? self.alpha * dot(z + i * D, hard! + (i * H + h) * D, D) * invT : -1e30
                }
            }
        }
        let loss = softmaxCrossEntropyForward(rows: n, classes: C, logits: sim, labels: labels, probs: probs)
        // Contrastive accuracy: the partner view beats every other view (hard negatives left out).
        var correct = 0
        for i in 0..<n {
            let row = sim + i * C, pos = Int(labels[i])
            var best = 0
            for j in 1..<n where row[j] > row[best] { best = j }
            if best == pos { correct += 1 }
        }
        return ObjectiveResult(loss: loss, accuracy: Float(correct) / Float(n))
    }

    /// d(mean loss)/dz into gradZ.
    public func backward(z: UnsafePointer<Float>, hard: UnsafePointer<Float>?) {
        let n = 2 * batch, D = dim, H = hardNegatives, C = columns
        let scale = 1 / (Float(n) * temperature)
        softmaxCrossEntropyBackward(rows: n, classes: C, probs: probs, labels: labels, scale: scale, gradLogits: sim)
        // S = z z^T: dz = (G + G^T) z, with G the [n][n] part of dlogits (self column has p = 0).
        for i in 0..<n { for j in 0..<n { gsim[i * n + j] = sim[i * C + j] + sim[j * C + i] } }
        for i in 0..<n { gsim[i * n + i] = 0 }
        linearForward(
            LinearShape(batch: n, inFeatures: n, outFeatures: D), input: gsim, weight: transposeView(z, n, D),
            bias: nil, output: gradZ)
        if H > 0 {
            parallelFor(batch) { lo, hi, _ in
                for i in lo..<hi {
                    for h in 0..<H {
                        axpy(self.sim[i * C + n + h] * self.alpha, hard! + (i * H + h) * D, self.gradZ + i * D, D)
                    }
                }
            }
        }
    }

    /// z^T as a [D][n] matrix for linearForward (whose weight rows are output features).
    private func transposeView(_ z: UnsafePointer<Float>, _ n: Int, _ d: Int) -> UnsafePointer<Float> {
        for i in 0..<n { for j in 0..<d { zt[j * n + i] = z[i * d + j] } }
        return UnsafePointer(zt)
    }
}

@inline(__always) func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var s: Float = 0
    for i in 0..<n { s += a[i] * b[i] }
    return s
}

@inline(__always) func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    for i in 0..<n { y[i] += alpha * x[i] }
}
