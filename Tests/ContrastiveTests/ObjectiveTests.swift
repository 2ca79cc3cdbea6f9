import XCTest
import Kernels
import Network
import Contrastive
import TestSupport

final class ObjectiveTests: XCTestCase {
    /// InfoNCE logits, loss and dq against PyTorch (fixtures/golden/make_golden.py, moco.safetensors).
    func testInfoNCEMatchesPyTorch() throws {
        let g = try SafeTensorsFile.read(path: fixturesPath() + "/golden/moco.safetensors")
        let q = try g.floats("infonce.q"), k = try g.floats("infonce.k"), queue = try g.floats("infonce.queue")
        let hard = try g.floats("infonce.hard"), hyper = try g.floats("infonce.hyper")
        let obj = InfoNCE(batch: 3, dim: 4, queueLength: 8, hardNegatives: 1, temperature: hyper[0], alpha: hyper[1])
        let r = obj.forward(q: q, k: k, queue: queue, hard: hard)
        XCTAssertEqual(r.loss, try g.floats("infonce.loss")[0], accuracy: 1e-5)
        obj.backward(k: k, queue: queue, hard: hard)
        let dq = Array(UnsafeBufferPointer(start: obj.gradQuery, count: 12))
        XCTAssertLessThanOrEqual(toleranceRatio(dq, try g.floats("infonce.dq"), atol: 1e-5, rtol: 1e-4), 1)
        // Contrastive accuracy: rows whose positive beats every queue key, from PyTorch's logits.
        let logits = try g.floats("infonce.logits")
        var correct = 0
        for b in 0..<3 {
            let row = Array(logits[(b * 10)..<(b * 10 + 9)]); if row.firstIndex(of: row.max()!) == 0 { correct += 1 }
        }
        XCTAssertEqual(r.accuracy, Float(correct) / 3, accuracy: 1e-6)
    }

    func testQueueAndMomentumMatchPyTorch() throws {
        let g = try SafeTensorsFile.read(path: fixturesPath() + "/golden/moco.safetensors")
        var rng = SplitMix64(seed: 1)
        let queue = KeyQueue(length: 8, dim: 4, rng: &rng)
        queue.restore(keys: try g.floats("queue.before"), pointer: Int(try g.int64s("queue.ptr_before")[0]))
        queue.enqueue(try g.floats("queue.keys"), count: 3)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: queue.keys, count: 32)), try g.floats("queue.after"))
        XCTAssertEqual(queue.pointer, Int(try g.int64s("queue.ptr_after")[0]))
        var key = try g.floats("momentum.key_before")
        let query = try g.floats("momentum.query"), m = try g.floats("momentum.m")[0]
        momentumUpdate(count: key.count, target: &key, source: query, m: m)
        XCTAssertLessThanOrEqual(toleranceRatio(key, try g.floats("momentum.key_after"), atol: 1e-6, rtol: 1e-6), 1)
    }

    /// NT-Xent (with a hard negative) against finite differences of its own loss.
    func testNTXentGradient() {
        let B = 3, D = 5, H = 1
        var rng = TestRNG(seed: 4)
        func normalized(_ rows: Int) -> [Float] {
            var v = rng.array(rows * D)
            for r in 0..<rows {
                let n = (0..<D).map { v[r * D + $0] * v[r * D + $0] }.reduce(0, +).squareRoot();
                for j in 0..<D { v[r * D + j] /= n }
            }
            return v
        }
        var z = normalized(2 * B)
        let hard = normalized(B * H)
        let obj = NTXent(batch: B, dim: D, hardNegatives: H, temperature: 0.5, alpha: 2)
        _ = obj.forward(z: z, hard: hard)
        obj.backward(z: z, hard: hard)
        let analytic = Array(UnsafeBufferPointer(start: obj.gradZ, count: 2 * B * D)).map(Double.init)
        let idx = Array(0..<(2 * B * D))
        let numeric = numericGradient(&z, indices: idx, eps: 1e-3) { Double(obj.forward(z: $0, hard: hard).loss) }
        XCTAssertLessThan(gradientError(analytic: analytic, numeric: numeric), 1e-2)
    }

    /// InfoNCE gradient by finite differences too, with several hard negatives per sample.
    func testInfoNCEGradientWithSeveralHardNegatives() {
        let B = 4, D = 6, K = 10, H = 2
        var rng = TestRNG(seed: 9)
        var q = rng.array(B * D, -0.5, 0.5)
        let k = rng.array(B * D, -0.5, 0.5), queue = rng.array(K * D, -0.5, 0.5), hard = rng.array(B * H * D, -0.5, 0.5)
        let obj = InfoNCE(batch: B, dim: D, queueLength: K, hardNegatives: H, temperature: 0.2, alpha: 2)
        _ = obj.forward(q: q, k: k, queue: queue, hard: hard)
        obj.backward(k: k, queue: queue, hard: hard)
        let analytic = Array(UnsafeBufferPointer(start: obj.gradQuery, count: B * D)).map(Double.init)
        let numeric = numericGradient(&q, indices: Array(0..<(B * D)), eps: 1e-3) {
            Double(obj.forward(q: $0, k: k, queue: queue, hard: hard).loss)
        }
        XCTAssertLessThan(gradientError(analytic: analytic, numeric: numeric), 1e-2)
    }
}
