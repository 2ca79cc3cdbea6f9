import XCTest
final class ContrastivePlaceholderTests: XCTestCase { func testBuilds() { XCTAssertTrue(true) } }
