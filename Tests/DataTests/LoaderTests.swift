import XCTest
import Data
import Kernels
import TestSupport

final class LoaderTests: XCTestCase {
    func batches(_ ds: ImageDataset, threads: Int, count: Int, state: LoaderState? = nil, seed: UInt64 = 3) throws
        -> [Batch]
    {
        let l = try BatchLoader(
            dataset: ds, config: .mocoV2(size: 16), batchSize: 7, views: 2, threads: threads,
            seed: seed, state: state)
        return try (0..<count).map { _ in try l.next() }
    }

    func testSameBatchesOnOneAndTwoThreads() throws {
        let ds = ImageDataset.synthetic(count: 30, width: 20, height: 18, channels: 3, seed: 1)
        let a = try batches(ds, threads: 1, count: 9)  // 4 steps per epoch: crosses two epoch ends
        let b = try batches(ds, threads: 2, count: 9)
        let c = try batches(ds, threads: 3, count: 9)
        for i in 0..<9 {
            XCTAssertEqual(a[i].views, b[i].views, "batch \(i)")
            XCTAssertEqual(a[i].views, c[i].views, "batch \(i)")
            XCTAssertEqual(a[i].indices, b[i].indices)
            XCTAssertEqual(a[i].labels, b[i].labels)
            XCTAssertEqual(a[i].views.count, 2)
            XCTAssertEqual(a[i].views[0].count, 7 * 16 * 16 * 3)
            XCTAssertNotEqual(a[i].views[0], a[i].views[1], "two different views")
        }
        XCTAssertEqual(a[4].epoch, 1)
        XCTAssertEqual(a[4].step, 0)
        // An epoch visits distinct images; the next epoch is shuffled differently.
        let e0 = a[0..<4].flatMap(\.indices)
        XCTAssertEqual(Set(e0).count, 28)
        XCTAssertNotEqual(e0, a[4..<8].flatMap(\.indices))
        XCTAssertEqual(a[0].labels!, a[0].indices.map { ds.labels![$0] })
        let other = try batches(ds, threads: 2, count: 1, seed: 4)
        XCTAssertNotEqual(other[0].views, a[0].views)
    }

    func testResumeFromState() throws {
        let ds = ImageDataset.synthetic(count: 30, width: 12, height: 12, channels: 1, seed: 2)
        let all = try batches(ds, threads: 2, count: 7)
        let l = try BatchLoader(dataset: ds, config: .mocoV2(size: 16), batchSize: 7, threads: 2, seed: 3)
        for _ in 0..<5 { _ = try l.next() }
        let st = l.state
        XCTAssertEqual(st, LoaderState(epoch: 1, position: 1, seed: 3))
        let data = try JSONEncoder().encode(st)
        let resumed = try batches(
            ds, threads: 1, count: 2, state: try JSONDecoder().decode(LoaderState.self, from: data))
        XCTAssertEqual(resumed[0].views, all[5].views)
        XCTAssertEqual(resumed[1].indices, all[6].indices)
    }

    func testPartialLastBatchAndErrors() throws {
        let ds = ImageDataset.synthetic(count: 10, width: 8, height: 8, channels: 3)
        let l = try BatchLoader(
            dataset: ds, config: .evaluation(size: 8), batchSize: 4, threads: 2, shuffle: false,
            dropLast: false)
        XCTAssertEqual(l.stepsPerEpoch, 3)
        XCTAssertEqual(try l.next().indices, [0, 1, 2, 3])
        _ = try l.next()
        let last = try l.next()
        XCTAssertEqual(last.indices, [8, 9])
        XCTAssertEqual(last.views[0].count, 2 * 8 * 8 * 3)
        XCTAssertThrowsError(try BatchLoader(dataset: ds, config: .mocoV2(size: 8), batchSize: 11))
    }

    /// A streamed file that disappears after opening surfaces as an error from next(), not a crash.
    func testStreamingErrorIsThrown() throws {
        let t = NSTemporaryDirectory() + "salient-ld-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: t, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: t) }
        for i in 0..<4 {
            try FileManager.default.copyItem(atPath: fixturesPath() + "/png/types/rgb8.png", toPath: t + "/\(i).png")
        }
        let ds = try DatasetLoader.open(path: t, memoryBudget: 0)
        XCTAssertFalse(ds.isInMemory)
        try FileManager.default.removeItem(atPath: t + "/2.png")
        let l = try BatchLoader(dataset: ds, config: .mocoV2(size: 8), batchSize: 4, threads: 2)
        XCTAssertThrowsError(try l.next()) { XCTAssertTrue("\($0)".contains("2.png"), "\($0)") }
    }

    /// Two augmented 32x32 views per image on 2 threads; printed for the report. The floor is far
    /// below the measured rate and far above a training step's (~15-100 images/s at 32 px).
    func testLoaderThroughput() throws {
        let ds = ImageDataset.synthetic(count: 2048, width: 32, height: 32, channels: 3, seed: 1)
        let ips = try benchmarkLoader(
            dataset: ds, config: .mocoV2(size: 32), batchSize: 256, views: 2, threads: 2,
            batches: 6)
        print("loader throughput: \(Int(ips)) images/s (two augmented 32x32 views each, 2 threads)")
        XCTAssertGreaterThan(ips, 300)
    }
}
