import XCTest
import Kernels
import Data
import TestSupport

final class FuzzTests: XCTestCase {
    /// A short seeded mutation loop over PNG, gzip and IDX parsing: every input gives a DataError or
    /// a consistent result, and the loop finishes quickly (no hang). `make fuzz` runs a longer one.
    func testFuzzParsersShort() throws {
        var extra = [[UInt8]]()
        for f in ["palette2.png", "gray16_interlaced.png", "rgba16.png", "grayalpha8.png", "gray1.png"] {
            extra.append(try readFileBytes(fixturesPath() + "/png/types/" + f))
        }
        extra.append(try readFileBytes(fixturesPath() + "/idx/gz/tiny-images-idx3-ubyte.gz"))
        let start = Date()
        let r = fuzzParsers(iterations: 300_000, seed: 1, extraSeeds: extra)
        print(r)
        XCTAssertEqual(r.invalid, 0, "\(r)")
        XCTAssertEqual(r.iterations, 300_000)
        XCTAssertGreaterThan(r.accepted, 100, "mutants should sometimes stay valid")
        XCTAssertGreaterThan(r.rejected, 1000)
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
    }
}
