import XCTest
import Kernels
import Data
import TestSupport

final class FuzzTests: XCTestCase {
    /// A short seeded mutation loop over PNG, JPEG, gzip and IDX parsing: every input gives a DataError or
    /// a consistent result, and the loop finishes quickly (no hang). `make fuzz` runs a longer one.
    func testFuzzParsersShort() throws {
        var extra = [[UInt8]]()
        for f in ["palette2.png", "gray16_interlaced.png", "rgba16.png", "grayalpha8.png", "gray1.png"] {
            extra.append(try readFileBytes(fixturesPath() + "/png/types/" + f))
        }
        extra.append(try readFileBytes(fixturesPath() + "/idx/gz/tiny-images-idx3-ubyte.gz"))
        for f in ["types/ycbcr422.jpg", "types/ycck.jpg", "types/arithmetic.jpg", "orient/o7.jpg"] {
            extra.append(try readFileBytes(fixturesPath() + "/jpeg/" + f))
        }
        let start = Date()
        let r = fuzzParsers(iterations: 300_000, seed: 1, extraSeeds: extra)
        print(r)
        XCTAssertEqual(r.invalid, 0, "\(r)")
        XCTAssertEqual(r.iterations, 300_000)
        XCTAssertGreaterThan(r.accepted, 100, "mutants should sometimes stay valid")
        XCTAssertGreaterThan(r.rejected, 1000)
        // Each parser gets its share (seeds of its format plus 1 in 24 of the others') and some of
        // its mutants decode.
        for p in ["png", "jpeg", "idx"] {
            XCTAssertGreaterThan(r.inputsByParser[p, default: 0], 20_000, "\(p): \(r)")
            XCTAssertGreaterThan(r.acceptedByParser[p, default: 0], 100, "\(p): \(r)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
    }
}
