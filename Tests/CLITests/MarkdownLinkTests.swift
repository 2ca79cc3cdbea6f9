// Every relative link in the repository's Markdown files points at a file that exists inside the
// repository, and every `#anchor` into a Markdown file names one of its headings (GitHub's slugs).
// Checked: README.md, docs/, Sources/**/README.md, Benchmarks/, fixtures/, Tests/ (every *.md outside
// hidden folders and build outputs). Links inside code blocks and code spans are not links.
import XCTest
import Foundation

final class MarkdownLinkTests: XCTestCase {
    /// Folders that hold build outputs or run outputs, never documentation.
    static let skippedFolders: Set<String> = ["bin", "dist", "runs", "out", "__pycache__", "node_modules"]

    func testRelativeLinksPointAtFilesThatExist() throws {
        let root = salientPackageRoot.standardizedFileURL
        let files = markdownFiles(under: root)
        XCTAssertTrue(
            files.contains { $0.lastPathComponent == "README.md" && $0.deletingLastPathComponent().path == root.path },
            "README.md not found under \(root.path)")
        var checked = 0
        var broken: [String] = []
        var headingCache: [String: Set<String>] = [:]
        func anchors(of file: URL) -> Set<String> {
            if let a = headingCache[file.path] { return a }
            let a = headingAnchors((try? String(contentsOf: file, encoding: .utf8)) ?? "")
            headingCache[file.path] = a
            return a
        }
        for file in files {
            let text = try String(contentsOf: file, encoding: .utf8)
            let name = String(file.path.dropFirst(root.path.count + 1))
            for link in markdownLinks(text) {
                checked += 1
                if let problem = check(link.target, from: file, root: root, anchors: anchors) {
                    broken.append("\(name):\(link.line): (\(link.target)) \(problem)")
                }
            }
        }
        XCTAssertGreaterThan(checked, 10, "found only \(checked) links in \(files.count) Markdown files")
        XCTAssert(broken.isEmpty, "broken links:\n" + broken.joined(separator: "\n"))
    }

    /// What is wrong with `target` as a link from `file` (nil: nothing).
    func check(_ target: String, from file: URL, root: URL, anchors: (URL) -> Set<String>) -> String? {
        // URLs with a scheme (https:, mailto:, ...) are not files of the repository.
        if target.range(of: "^[A-Za-z][A-Za-z0-9+.-]*:", options: .regularExpression) != nil { return nil }
        var path = target, fragment: String? = nil
        if let hash = target.firstIndex(of: "#") {
            path = String(target[..<hash])
            fragment = String(target[target.index(after: hash)...])
        }
        if let q = path.firstIndex(of: "?") { path = String(path[..<q]) }
        path = path.removingPercentEncoding ?? path
        let resolved: URL
        if path.isEmpty {
            resolved = file
        } else if path.hasPrefix("/") {
            resolved = root.appendingPathComponent(String(path.dropFirst())).standardizedFileURL
        } else {
            resolved = file.deletingLastPathComponent().appendingPathComponent(path).standardizedFileURL
        }
        if resolved.path != root.path && !resolved.path.hasPrefix(root.path + "/") {
            return "points outside the repository"
        }
        if !FileManager.default.fileExists(atPath: resolved.path) { return "does not exist" }
        if let fragment, !fragment.isEmpty, resolved.pathExtension.lowercased() == "md" {
            let want = (fragment.removingPercentEncoding ?? fragment).lowercased()
            if !anchors(resolved).contains(want) { return "has no heading for #\(fragment)" }
        }
        return nil
    }

    func testTheCheckFindsBrokenLinks() {
        let root = salientPackageRoot.standardizedFileURL
        let readme = root.appendingPathComponent("README.md")
        let none: (URL) -> Set<String> = { _ in [] }
        XCTAssertNil(check("docs/ARCHITECTURE.md", from: readme, root: root, anchors: none))
        XCTAssertNil(check("https://example.org/x.md", from: readme, root: root, anchors: none))
        XCTAssertNotNil(check("docs/NO_SUCH_FILE.md", from: readme, root: root, anchors: none))
        XCTAssertNotNil(check("../shared/PAPER.md", from: readme, root: root, anchors: none))
        XCTAssertNotNil(check("docs/ARCHITECTURE.md#no-such-heading", from: readme, root: root, anchors: none))
        let links = markdownLinks(
            """
            See [a](a.md) and ![b](img/b.png "title").
            `[not](code.md)` and

            ```
            [not](fenced.md)
            ```
            [d](<d e.md>)
            [c]: c.md
            """)
        XCTAssertEqual(links.map(\.target), ["a.md", "img/b.png", "d e.md", "c.md"])
        XCTAssertEqual(links.map(\.line), [1, 1, 7, 8])
        XCTAssertEqual(
            headingAnchors("# Two words\n## `code` and (parens)\n```\n# not\n```\n## Two words\n"),
            ["two-words", "code-and-parens", "two-words-1"])
    }

    // MARK: - Files, links, headings

    /// Every *.md under `root`, outside hidden folders and build outputs, sorted.
    func markdownFiles(under root: URL) -> [URL] {
        let fm = FileManager.default
        guard
            let walker = fm.enumerator(
                at: root, includingPropertiesForKeys: [.isDirectoryKey],
                options: [.skipsHiddenFiles])
        else { return [] }
        var found: [URL] = []
        for case let url as URL in walker {
            let isDir = (try? url.resourceValues(forKeys: [.isDirectoryKey]).isDirectory) ?? false
            if isDir {
                if Self.skippedFolders.contains(url.lastPathComponent) { walker.skipDescendants() }
                continue
            }
            if url.pathExtension.lowercased() == "md" { found.append(url.standardizedFileURL) }
        }
        return found.sorted { $0.path < $1.path }
    }

    struct Link: Equatable { var target: String; var line: Int }

    /// Inline links and images `[text](target "title")` and reference definitions `[id]: target`,
    /// outside fenced code blocks and code spans, with their line numbers.
    func markdownLinks(_ text: String) -> [Link] {
        var links: [Link] = []
        var fence: String? = nil
        for (i, rawLine) in text.components(separatedBy: "\n").enumerated() {
            let trimmed = rawLine.trimmingCharacters(in: .whitespaces)
            if let f = fence {
                if trimmed.hasPrefix(f) { fence = nil }
                continue
            }
            if trimmed.hasPrefix("```") || trimmed.hasPrefix("~~~") {
                fence = String(trimmed.prefix(3))
                continue
            }
            let line = withoutCodeSpans(rawLine)
            for target in inlineTargets(line) + referenceTargets(line) {
                links.append(Link(target: target, line: i + 1))
            }
        }
        return links
    }

    /// The line with every `code span` blanked out.
    func withoutCodeSpans(_ line: String) -> String {
        var out = "", inCode = false
        for ch in line {
            if ch == "`" { inCode.toggle(); out.append(" "); continue }
            out.append(inCode ? " " : ch)
        }
        return out
    }

    /// Targets of `](target)` and `](target "title")`; `<...>` targets may hold spaces.
    func inlineTargets(_ line: String) -> [String] {
        var targets: [String] = []
        let chars = Array(line)
        var i = 0
        while i + 1 < chars.count {
            guard chars[i] == "]", chars[i + 1] == "(" else { i += 1; continue }
            var j = i + 2
            var target = ""
            if j < chars.count, chars[j] == "<" {
                j += 1
                while j < chars.count, chars[j] != ">" { target.append(chars[j]); j += 1 }
            } else {
                var depth = 0
                while j < chars.count {
                    let c = chars[j]
                    if c == "(" { depth += 1 } else if c == ")" { if depth == 0 { break }; depth -= 1 }
                    if c == " " || c == "\t" { break }
                    target.append(c); j += 1
                }
            }
            if !target.isEmpty { targets.append(target) }
            i = j
        }
        return targets
    }

    /// The target of a reference definition `[id]: target` (at the start of the line).
    func referenceTargets(_ line: String) -> [String] {
        guard let m = line.range(of: #"^ {0,3}\[[^\]]+\]:\s*"#, options: .regularExpression) else { return [] }
        var rest = line[m.upperBound...]
        if rest.hasPrefix("<"), let close = rest.firstIndex(of: ">") {
            return [String(rest[rest.index(after: rest.startIndex)..<close])]
        }
        rest = rest.prefix { $0 != " " && $0 != "\t" }
        return rest.isEmpty ? [] : [String(rest)]
    }

    /// GitHub's anchors for the ATX headings of a Markdown text: lower case, punctuation other than
    /// `-` and `_` dropped, spaces as `-`, repeated headings numbered -1, -2, ...
    func headingAnchors(_ text: String) -> Set<String> {
        var anchors = Set<String>()
        var counts: [String: Int] = [:]
        var fence: String? = nil
        for rawLine in text.components(separatedBy: "\n") {
            let trimmed = rawLine.trimmingCharacters(in: .whitespaces)
            if let f = fence { if trimmed.hasPrefix(f) { fence = nil }; continue }
            if trimmed.hasPrefix("```") || trimmed.hasPrefix("~~~") { fence = String(trimmed.prefix(3)); continue }
            guard let m = rawLine.range(of: #"^ {0,3}#{1,6}\s+"#, options: .regularExpression) else { continue }
            var title = String(rawLine[m.upperBound...]).trimmingCharacters(in: .whitespaces)
            if let closing = title.range(of: #"\s+#+$"#, options: .regularExpression) { title.removeSubrange(closing) }
            var slug = ""
            for ch in title.lowercased() {
                if ch.isLetter || ch.isNumber || ch == "-" || ch == "_" {
                    slug.append(ch)
                } else if ch == " " {
                    slug.append("-")
                }
            }
            let n = counts[slug, default: 0]
            counts[slug] = n + 1
            anchors.insert(n == 0 ? slug : "\(slug)-\(n)")
        }
        return anchors
    }
}
