import Foundation
import Yams

/// Everything learnt from one config file: the model (only when there is no error), and every finding.
public struct ConfigurationReport: Sendable {
    public var file: String
    /// nil when the file has errors: lbd never runs half a config.
    public var configuration: Configuration?
    public var diagnostics: [Diagnostic]
    public var sourceMap: SourceMap

    public var isValid: Bool { configuration != nil && diagnostics.errors.isEmpty }
}

/// Reads and validates config files. The only entry point from YAML text to a `Configuration`.
public enum ConfigurationLoader {
    /// Reads the file at `path`.
    /// - Throws: `ConfigurationUnreadable` when the file cannot be read at all.
    public static func check(path: String, files: ConfigurationFileChecker? = nil) throws -> ConfigurationReport {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConfigurationUnreadable(path: path, reason: readFailureReason(path: path, error: error))
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigurationUnreadable(path: path, reason: "the file is not UTF-8 text")
        }
        return check(yaml: text, file: path, files: files)
    }

    /// Validates YAML text; `file` is only used in diagnostics.
    /// `files` also checks the files the config names (certificates, keys, CA files) where they will be read.
    public static func check(yaml: String, file: String, files: ConfigurationFileChecker? = nil) -> ConfigurationReport {
        if let diagnostic = ambiguousLineBreak(in: yaml, file: file) {
            return ConfigurationReport(file: file, configuration: nil, diagnostics: [diagnostic], sourceMap: SourceMap(file: file))
        }
        var reader = DocumentReader(file: file)
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            let diagnostic = syntaxDiagnostic(error, file: file, text: yaml)
            return ConfigurationReport(file: file, configuration: nil, diagnostics: [diagnostic], sourceMap: SourceMap(file: file))
        }
        let parsed = reader.readDocument(root)
        var diagnostics = reader.nodes.diagnostics
        if let parsed {
            diagnostics += Validator.validate(parsed, sourceMap: reader.nodes.sourceMap,
                                              incompleteSections: reader.incompleteSections)
            diagnostics += files?.diagnostics(for: parsed, sourceMap: reader.nodes.sourceMap) ?? []
        }
        // File order, errors before warnings on the same spot: the order an operator fixes them in.
        diagnostics = diagnostics.enumerated().sorted { lhs, rhs in
            let l = lhs.element, r = rhs.element
            if l.location != r.location { return l.location < r.location }
            if l.severity != r.severity { return l.severity == .error }
            return lhs.offset < rhs.offset
        }.map(\.element)
        let valid = parsed != nil && diagnostics.errors.isEmpty
        return ConfigurationReport(file: file, configuration: valid ? parsed : nil, diagnostics: diagnostics,
                                   sourceMap: reader.nodes.sourceMap)
    }

    /// The configuration, or every error found in it.
    /// - Throws: `ConfigurationUnreadable`, or `ConfigurationError` with all diagnostics.
    public static func load(path: String) throws -> (Configuration, warnings: [Diagnostic]) {
        let report = try check(path: path)
        guard let configuration = report.configuration else {
            throw ConfigurationError(diagnostics: report.diagnostics)
        }
        return (configuration, report.diagnostics.warnings)
    }

    /// YAML also ends a line at a lone carriage return, NEL, U+2028 and U+2029; most editors do not, so every line
    /// number after one would point at the wrong line (found by scripts/fuzz config). Refused before parsing, at the
    /// place an editor shows. A Windows line end (CR LF) is one line end everywhere and is accepted.
    private static func ambiguousLineBreak(in text: String, file: String) -> Diagnostic? {
        var line = 1, column = 1
        var scalars = text.unicodeScalars.makeIterator()
        var current = scalars.next()
        while let scalar = current {
            let next = scalars.next()
            let name: String? = switch scalar {
            case "\r" where next != "\n": "a carriage return (CR) that no line feed follows"
            case "\u{85}": "a NEL character (U+0085)"
            case "\u{2028}": "a line separator (U+2028)"
            case "\u{2029}": "a paragraph separator (U+2029)"
            default: nil
            }
            if let name {
                return Diagnostic(.error, at: SourceLocation(file: file, line: line, column: column),
                                  "\(name): YAML ends a line there, most editors do not, so line numbers would disagree",
                                  hint: "save the file with Unix (LF) or Windows (CR LF) line ends and remove the character")
            }
            if scalar == "\n" { line += 1; column = 1 } else if scalar != "\r" { column += 1 }
            current = next
        }
        return nil
    }

    private static func syntaxDiagnostic(_ error: Error, file: String, text: String) -> Diagnostic {
        let hint = "fix the YAML syntax at this position (indentation, a missing ':' or an unclosed quote or bracket)"
        // libyaml places an error found at the end of the input one line past it when the last line has no newline
        // (found by scripts/fuzz config): point at the end of the last line instead.
        let lines = text.sourceLines
        func at(_ mark: Mark) -> SourceLocation {
            guard mark.line > lines.count, let last = lines.last else {
                return SourceLocation(file: file, line: mark.line, column: mark.column)
            }
            return SourceLocation(file: file, line: lines.count, column: last.unicodeScalars.count + 1)
        }
        switch error {
        case let YamlError.scanner(_, problem, mark, _), let YamlError.parser(_, problem, mark, _),
             let YamlError.composer(_, problem, mark, _):
            return Diagnostic(.error, at: at(mark), "YAML syntax: \(problem)", hint: hint)
        case let YamlError.duplicatedKeysInMapping(duplicates, context):
            return Diagnostic(.error, at: at(context.mark),
                              "key \(duplicates.map { "\"\($0)\"" }.joined(separator: ", ")) appears twice in the same mapping",
                              hint: "keep one of them; YAML does not merge repeated keys")
        default:
            return Diagnostic(.error, at: SourceLocation(file: file, line: 1, column: 1), "YAML: \(error)", hint: hint)
        }
    }

    private static func readFailureReason(path: String, error: Error) -> String {
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) { return "no such file" }
        if isDirectory.boolValue { return "it is a directory" }
        if !FileManager.default.isReadableFile(atPath: path) { return "permission denied" }
        return "\(error.localizedDescription)"
    }
}

/// Checks of the files a config names, as lbd will read them (exists, readable, a key matching its certificate).
/// Outside LBConfig because it needs OpenSSL; `lbctl config check`, `lbd --check`, start and reload all pass one.
public protocol ConfigurationFileChecker: Sendable {
    func diagnostics(for configuration: Configuration, sourceMap: SourceMap) -> [Diagnostic]
}
