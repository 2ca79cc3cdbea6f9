import XCTest
final class NetworkPlaceholderTests: XCTestCase { func testBuilds() { XCTAssertTrue(true) } }
