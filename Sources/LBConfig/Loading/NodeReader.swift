import Yams

/// Reads Yams nodes into typed values, recording every problem (with its position) instead of stopping at the first.
///
/// Shared by the document reader; knows YAML shapes and scalar syntax, nothing about load balancing.
struct NodeReader {
    let file: String
    private(set) var diagnostics: [Diagnostic] = []
    private(set) var sourceMap: SourceMap
    /// Name of the virtual service being read, attached to diagnostics.
    var currentService: String?

    init(file: String) {
        self.file = file
        self.sourceMap = SourceMap(file: file)
    }

    // MARK: Diagnostics

    func location(_ node: Node) -> SourceLocation {
        location(node.mark)
    }

    func location(_ mark: Mark?) -> SourceLocation {
        SourceLocation(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1)
    }

    mutating func error(_ message: String, at location: SourceLocation, hint: String? = nil) {
        diagnostics.append(Diagnostic(.error, at: location, service: currentService, message, hint: hint))
    }

    mutating func error(_ message: String, at node: Node, hint: String? = nil) {
        error(message, at: location(node), hint: hint)
    }

    mutating func record(_ node: Node, at path: ConfigPath) {
        sourceMap.record(value: location(node), at: path)
    }

    // MARK: Mappings

    /// The keys of one YAML mapping, with unknown keys reported (and a suggestion when one is close).
    struct Fields {
        let path: ConfigPath
        let node: Node
        private(set) var entries: [String: (key: Node, value: Node)] = [:]

        init(path: ConfigPath, node: Node, entries: [String: (key: Node, value: Node)]) {
            self.path = path
            self.node = node
            self.entries = entries
        }

        subscript(key: String) -> Node? { entries[key]?.value }
        func keyNode(_ key: String) -> Node? { entries[key]?.key }
    }

    /// `what` names the mapping in messages ("virtual service", "health_check").
    mutating func fields(of node: Node, at path: ConfigPath, what: String, allowed: [String]) -> Fields? {
        guard case .mapping(let mapping) = node else {
            error("\(what) must be a mapping of key: value pairs, found \(describe(node))", at: node,
                  hint: "write it as `key: value` lines indented under its parent, or as {key: value, ...}")
            return nil
        }
        record(node, at: path)
        var entries: [String: (key: Node, value: Node)] = [:]
        for (keyNode, valueNode) in mapping {
            guard case .scalar(let scalar) = keyNode else {
                error("keys in \(what) must be plain words, found \(describe(keyNode))", at: keyNode)
                continue
            }
            let key = scalar.string
            guard allowed.contains(key) else {
                var message = "unknown key \"\(key)\" in \(what)"
                if let suggestion = closestMatch(to: key, in: allowed) {
                    message += "; did you mean \"\(suggestion)\"?"
                }
                error(message, at: keyNode, hint: "keys allowed here: \(allowed.joined(separator: ", "))")
                continue
            }
            entries[key] = (keyNode, valueNode)
            record(valueNode, at: path / key)
            sourceMap.record(key: location(keyNode), at: path / key)
        }
        return Fields(path: path, node: node, entries: entries)
    }

    mutating func require(_ key: String, in fields: Fields, what: String, hint: String) -> Node? {
        if let node = fields[key] { return node }
        error("\(what) is missing the required key \"\(key)\"", at: fields.node, hint: hint)
        return nil
    }

    // MARK: Scalars

    /// Text of a scalar; nil (with an error) for a mapping, a sequence or an empty value.
    mutating func scalarText(_ node: Node, key: String) -> String? {
        guard case .scalar(let scalar) = node else {
            error("\"\(key)\" must be a single value, found \(describe(node))", at: node)
            return nil
        }
        if isNull(scalar) {
            error("\"\(key)\" has no value", at: node, hint: "write a value after \"\(key):\" or remove the line")
            return nil
        }
        return scalar.string
    }

    /// A file path; a relative one is taken relative to the config file's folder (so a config and the certificates
    /// beside it move together), not to wherever lbd or lbctl happens to be started.
    mutating func filePath(_ node: Node, key: String) -> String? {
        guard let text = string(node, key: key) else { return nil }
        guard !text.hasPrefix("/") else { return text }
        let folder = file.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return folder.isEmpty ? text : folder + "/" + text
    }

    mutating func string(_ node: Node, key: String) -> String? {
        guard let text = scalarText(node, key: key) else { return nil }
        if text.trimmingWhitespace().isEmpty {
            error("\"\(key)\" is empty", at: node)
            return nil
        }
        return text
    }

    /// An identifier used on the command line, in logs and in metric labels: no spaces or quotes.
    mutating func name(_ node: Node, key: String) -> String? {
        guard let text = string(node, key: key) else { return nil }
        let allowed = text.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar)
                || scalar == "-" || scalar == "_" || scalar == ".")
        }
        guard allowed, text.count <= 64 else {
            error("\"\(text)\" is not a valid \(key)", at: node,
                  hint: "use up to 64 letters, digits, '-', '_' or '.'; lbctl and the logs refer to it by this name")
            return nil
        }
        return text
    }

    mutating func integer(_ node: Node, key: String, range: ClosedRange<Int>, hint: String? = nil) -> Int? {
        guard let text = scalarText(node, key: key) else { return nil }
        guard let value = Int(text) else {
            error("\"\(key)\" must be a whole number, found \"\(text)\"", at: node, hint: hint)
            return nil
        }
        guard range.contains(value) else {
            error("\"\(key)\" is \(value), outside \(range.lowerBound)...\(range.upperBound)", at: node,
                  hint: hint ?? "use a value from \(range.lowerBound) to \(range.upperBound)")
            return nil
        }
        return value
    }

    mutating func port(_ node: Node, key: String) -> UInt16? {
        integer(node, key: key, range: 1...65535, hint: "a TCP/UDP port is a number from 1 to 65535")
            .map { UInt16($0) }
    }

    mutating func bool(_ node: Node, key: String) -> Bool? {
        guard let text = scalarText(node, key: key) else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            error("\"\(key)\" must be true or false, found \"\(text)\"", at: node)
            return nil
        }
    }

    /// `500ms`, `2s`, `5m`: a whole number and a unit, so `300` alone is never misread as ms or s.
    mutating func duration(_ node: Node, key: String) -> Duration? {
        guard let text = scalarText(node, key: key) else { return nil }
        let digits = text.prefix { $0.isASCII && $0.isNumber }
        let unit = text.dropFirst(digits.count)
        let hint = "write a whole number followed by ms, s or m, e.g. 500ms, 2s or 5m"
        guard !digits.isEmpty, let amount = Int64(digits) else {
            error("\"\(key)\" must be a duration, found \"\(text)\"", at: node, hint: hint)
            return nil
        }
        switch unit {
        case "ms": return .milliseconds(amount)
        case "s": return .seconds(amount)
        case "m": return .seconds(amount * 60)
        case "":
            error("\"\(key)\" needs a unit: \"\(text)\" could mean milliseconds or seconds", at: node, hint: hint)
        default:
            error("\"\(key)\" has an unknown unit \"\(unit)\"", at: node, hint: hint)
        }
        return nil
    }

    mutating func address(_ node: Node, key: String) -> IPAddress? {
        guard let text = scalarText(node, key: key) else { return nil }
        guard let address = IPAddress(text) else {
            error("\"\(text)\" is not an IPv4 or IPv6 address", at: node,
                  hint: "write a literal address such as 10.20.0.10 or 2001:db8::10 (host names are not resolved)")
            return nil
        }
        guard !address.isUnspecified, !address.isMulticastOrBroadcast else {
            error("\(key) \(address) is not a unicast host address", at: node,
                  hint: "use the address of one host; wildcard, multicast and broadcast addresses cannot be balanced")
            return nil
        }
        return address
    }

    mutating func choice<Value: RawRepresentable & CaseIterable>(
        _ node: Node, key: String, as type: Value.Type
    ) -> Value? where Value.RawValue == String {
        guard let text = scalarText(node, key: key) else { return nil }
        if let value = Value(rawValue: text) { return value }
        let names = Value.allCases.map(\.rawValue)
        var message = "\"\(text)\" is not a valid \(key)"
        if let suggestion = closestMatch(to: text, in: names) { message += "; did you mean \"\(suggestion)\"?" }
        error(message, at: node, hint: "choose one of: \(names.joined(separator: ", "))")
        return nil
    }

    /// A list; with `singleValueAllowed` a lone scalar is read as a list of one (`ports: 104`).
    mutating func sequence(_ node: Node, key: String, singleValueAllowed: Bool = false) -> [Node]? {
        switch node {
        case .sequence(let sequence): return Array(sequence)
        case .scalar(let scalar) where singleValueAllowed && !isNull(scalar): return [node]
        default:
            error("\"\(key)\" must be a list, found \(describe(node))", at: node, hint: "write it as [a, b] or as '- item' lines")
            return nil
        }
    }

    // MARK: Helpers

    private func isNull(_ scalar: Node.Scalar) -> Bool {
        scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let scalar): return "the value \"\(scalar.string)\""
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }
}

/// The allowed word closest to a typo, if it is close enough to be a plausible slip.
func closestMatch(to word: String, in candidates: [String]) -> String? {
    let scored = candidates.map { ($0, editDistance(word.lowercased(), $0.lowercased())) }
    guard let best = scored.min(by: { $0.1 < $1.1 }) else { return nil }
    return best.1 <= max(2, word.count / 3) ? best.0 : nil
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    for i in 1...a.count {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return previous[b.count]
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
