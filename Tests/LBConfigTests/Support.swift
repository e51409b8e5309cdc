import LBConfig
import Testing

/// Runs the loader on YAML text as if it were the file `test.yaml`.
func check(_ yaml: String) -> ConfigurationReport {
    ConfigurationLoader.check(yaml: yaml, file: "test.yaml")
}

/// 1-based line and column of the first occurrence of `needle` in `text` (columns count Unicode scalars, like libyaml).
func position(of needle: String, in text: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) -> (line: Int, column: Int)? {
    guard let range = needle.isEmpty ? text.startIndex..<text.startIndex : text.range(of: needle) else {
        Issue.record("test bug: \"\(needle)\" not in the YAML", sourceLocation: sourceLocation)
        return nil
    }
    let before = text[..<range.lowerBound]
    let lineStart = before.lastIndex(of: "\n").map { text.index(after: $0) } ?? text.startIndex
    return (before.filter { $0 == "\n" }.count + 1, text.unicodeScalars[lineStart..<range.lowerBound].count + 1)
}

/// Asserts that the config is rejected with an error containing `message`, at the position of `anchor`,
/// attributed to `service` when given.
@discardableResult
func expectError(
    _ yaml: String, _ message: String, at anchor: String?, service: String? = nil,
    sourceLocation: Testing.SourceLocation = #_sourceLocation
) -> Diagnostic? {
    expectDiagnostic(.error, yaml, message, at: anchor, service: service, sourceLocation: sourceLocation)
}

@discardableResult
func expectWarning(
    _ yaml: String, _ message: String, at anchor: String?, service: String? = nil,
    sourceLocation: Testing.SourceLocation = #_sourceLocation
) -> Diagnostic? {
    expectDiagnostic(.warning, yaml, message, at: anchor, service: service, sourceLocation: sourceLocation)
}

private func expectDiagnostic(
    _ severity: Diagnostic.Severity, _ yaml: String, _ message: String, at anchor: String?, service: String?,
    sourceLocation: Testing.SourceLocation
) -> Diagnostic? {
    let report = check(yaml)
    if severity == .error {
        #expect(!report.isValid, "config should be rejected", sourceLocation: sourceLocation)
        #expect(report.configuration == nil, "a rejected config must yield no model", sourceLocation: sourceLocation)
    }
    let matching = report.diagnostics.filter { $0.severity == severity && $0.message.contains(message) }
    guard let found = matching.first else {
        Issue.record("no \(severity) containing \"\(message)\"; got:\n\(report.diagnostics.map(\.description).joined(separator: "\n"))",
                     sourceLocation: sourceLocation)
        return nil
    }
    if let anchor, let expected = position(of: anchor, in: yaml, sourceLocation: sourceLocation) {
        #expect(found.location.line == expected.line, "line of: \(found)", sourceLocation: sourceLocation)
        #expect(found.location.column == expected.column, "column of: \(found)", sourceLocation: sourceLocation)
    }
    #expect(found.location.file == "test.yaml", sourceLocation: sourceLocation)
    if let service {
        #expect(found.virtualService == service, sourceLocation: sourceLocation)
        #expect(found.description.contains("virtual service \"\(service)\""), sourceLocation: sourceLocation)
    }
    #expect(found.hint?.isEmpty == false, "every finding tells the operator what to do", sourceLocation: sourceLocation)
    return found
}

/// One valid service, to be varied by each test; `extra` lines go under the service, before real_servers.
func service(
    name: String = "web", vip: String = "10.0.0.10", ports: String = "[80]", mode: String = "l7-http",
    extra: [String] = [],
    servers: [String] = ["{name: rs1, address: 10.0.1.1}", "{name: rs2, address: 10.0.1.2}"]
) -> String {
    var lines = ["  - name: \(name)", "    vip: \(vip)", "    ports: \(ports)", "    mode: \(mode)"]
    lines += extra.map { "    " + $0 }
    lines.append("    real_servers:" + (servers.isEmpty ? " []" : ""))
    lines += servers.map { "      - " + $0 }
    return lines.joined(separator: "\n")
}

func document(_ services: String...) -> String {
    "virtual_services:\n" + services.joined(separator: "\n") + "\n"
}
