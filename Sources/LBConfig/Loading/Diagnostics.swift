/// A position in a config file, 1-based like compilers print it.
public struct SourceLocation: Hashable, Sendable, CustomStringConvertible, Comparable {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }

    public static func < (lhs: SourceLocation, rhs: SourceLocation) -> Bool {
        (lhs.line, lhs.column) < (rhs.line, rhs.column)
    }
}

/// One finding about a config: where, which virtual service, what is wrong, what to do.
public struct Diagnostic: Hashable, Sendable, CustomStringConvertible {
    public enum Severity: String, Sendable { case error, warning }

    public var severity: Severity
    public var location: SourceLocation
    /// The virtual service concerned, when the finding belongs to one.
    public var virtualService: String?
    public var message: String
    /// What the operator should do about it.
    public var hint: String?

    public init(_ severity: Severity, at location: SourceLocation, service: String? = nil,
                _ message: String, hint: String? = nil) {
        self.severity = severity
        self.location = location
        self.virtualService = service
        self.message = message
        self.hint = hint
    }

    /// `file:line:col: error: virtual service "X": message` then an indented `hint:` line, as compilers print.
    public var description: String {
        var text = "\(location): \(severity.rawValue): "
        if let virtualService { text += "virtual service \"\(virtualService)\": " }
        text += message
        if let hint { text += "\n    hint: \(hint)" }
        return text
    }
}

extension Array where Element == Diagnostic {
    public var errors: [Diagnostic] { filter { $0.severity == .error } }
    public var warnings: [Diagnostic] { filter { $0.severity == .warning } }
}

/// A config that cannot be used; carries every error found, not just the first.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var diagnostics: [Diagnostic]

    public init(diagnostics: [Diagnostic]) {
        self.diagnostics = diagnostics
    }

    public var description: String {
        diagnostics.map(\.description).joined(separator: "\n")
    }
}

/// The file itself could not be read (missing, unreadable, not text): distinct from "read but invalid".
public struct ConfigurationUnreadable: Error, Sendable, CustomStringConvertible {
    public var path: String
    public var reason: String

    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    public var description: String { "\(path): cannot read config file: \(reason)" }
}
