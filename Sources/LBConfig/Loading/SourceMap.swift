/// A path to a value in the config document: `virtual_services[3].real_servers[0].port`.
public struct ConfigPath: Hashable, Sendable, CustomStringConvertible {
    public enum Component: Hashable, Sendable {
        case key(String)
        case index(Int)
    }

    public var components: [Component]

    public init(_ components: [Component] = []) { self.components = components }

    public static let root = ConfigPath()

    public func appending(_ key: String) -> ConfigPath { ConfigPath(components + [.key(key)]) }
    public func appending(_ index: Int) -> ConfigPath { ConfigPath(components + [.index(index)]) }
    public static func / (path: ConfigPath, key: String) -> ConfigPath { path.appending(key) }
    public static func / (path: ConfigPath, index: Int) -> ConfigPath { path.appending(index) }

    public var parent: ConfigPath? {
        components.isEmpty ? nil : ConfigPath(Array(components.dropLast()))
    }

    public var description: String {
        var text = ""
        for component in components {
            switch component {
            case .key(let key): text += text.isEmpty ? key : ".\(key)"
            case .index(let index): text += "[\(index)]"
            }
        }
        return text
    }

    /// Where virtual service number `index` (0-based, file order) lives.
    public static func virtualService(_ index: Int) -> ConfigPath { .root / "virtual_services" / index }
}

/// Where each value of a loaded config was written, so findings point at the line to edit.
public struct SourceMap: Sendable {
    public var file: String
    private var values: [ConfigPath: SourceLocation] = [:]
    private var keys: [ConfigPath: SourceLocation] = [:]

    public init(file: String) { self.file = file }

    mutating func record(value location: SourceLocation, at path: ConfigPath) { values[path] = location }
    mutating func record(key location: SourceLocation, at path: ConfigPath) { keys[path] = location }

    /// The value at `path`, or the nearest enclosing value that was written (a defaulted field points at its owner).
    public func location(of path: ConfigPath) -> SourceLocation {
        var current: ConfigPath? = path
        while let candidate = current {
            if let found = values[candidate] { return found }
            current = candidate.parent
        }
        return SourceLocation(file: file, line: 1, column: 1)
    }

    /// The key that introduces `path` (`mode:` rather than its value), falling back like `location(of:)`.
    public func keyLocation(of path: ConfigPath) -> SourceLocation {
        keys[path] ?? location(of: path)
    }

    public func contains(_ path: ConfigPath) -> Bool { values[path] != nil }
}
