import LBConfig

/// One host firewall rule — a line of an `iptables-save` listing or a native nftables rule — reduced to what the
/// clash scan needs: the matches that decide whether it can see a VIP's traffic, its target, and the firewall
/// marks it sets or tests. Anything it does not understand makes it match *more* (an interface restriction, an
/// unknown match), so the scan errs towards reporting. nftables rules are expressed in iptables' terms: the table
/// is the base chain's type (`nat`, `filter`, `mangle` for `route`), the chain its hook (`PREROUTING`, `INPUT`…).
public struct HostRule: Sendable, Equatable {
    public var table: String
    public var chain: String
    /// The rule as iptables-save or `nft list ruleset` printed it (for messages).
    public var text: String
    /// 1-based line in the listing (iptables-save), or the rule's handle (nftables).
    public var line: Int
    public var target: String?
    /// Where the rule lives when it is not an iptables rule: "nftables table inet fw, chain input".
    public var origin: String?
    /// The address families the rule can see; nil for an iptables-save listing (its own family).
    public var families: Set<IPAddress.Family>?
    /// Firewall mark values the rule sets or matches (`MARK --set-xmark`, `-m mark --mark`, `meta mark`).
    public var marks: [UInt32] = []
    /// Limited to some sources (`-s`, nftables `ip saddr`): a ban of some clients, not a block of the VIP.
    public var sourceRestricted = false
    public var transport: Match<String>?
    public var destination: Match<AddressPrefix>?
    public var destinationPorts: Match<[ClosedRange<UInt16>]>?

    /// A match and whether it was negated with `!`.
    public struct Match<Value: Sendable & Equatable>: Sendable, Equatable {
        public var value: Value
        public var negated: Bool
    }

    /// Whether a packet to `address`:`port` over `transport` may be matched by this rule.
    public func canMatch(address: IPAddress, port: UInt16?, transport: TransportProtocol) -> Bool {
        if let match = self.transport, match.value != "all" {
            let same = match.value == transport.rawValue || match.value == (transport == .tcp ? "6" : "17")
            if same == match.negated { return false }
        }
        if let match = destination, match.value.contains(address) == match.negated { return false }
        if let match = destinationPorts, let port {
            let inside = match.value.contains { $0.contains(port) }
            if inside == match.negated { return false }
        }
        return true
    }

    /// Whether the rule names `address` (or `port`) itself, rather than matching it by leaving it open.
    public func names(address: IPAddress) -> Bool {
        guard let match = destination, !match.negated else { return false }
        return match.value.contains(address) && match.value.prefixLength > 0
    }

    /// "0x4c42", "0x4c42/0xffffffff", "19522": the value before the mask.
    public static func markValue(_ text: String) -> UInt32? {
        let value = text.split(separator: "/").first.map(String.init) ?? text
        return value.hasPrefix("0x") ? UInt32(value.dropFirst(2), radix: 16) : UInt32(value)
    }

    public func names(port: UInt16) -> Bool {
        guard let match = destinationPorts, !match.negated else { return false }
        return match.value.contains { $0.contains(port) }
    }
}

/// An address with a prefix length, as iptables prints `-d 10.0.0.0/24`.
public struct AddressPrefix: Sendable, Equatable, CustomStringConvertible {
    public var address: IPAddress
    public var prefixLength: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        guard let address = IPAddress(parts[0]) else { return nil }
        let maximum = address.family == .ipv4 ? 32 : 128
        if parts.count == 2 {
            // iptables may print a dotted netmask for non-contiguous masks; a contiguous one becomes a length.
            if let length = Int(parts[1]), (0...maximum).contains(length) {
                prefixLength = length
            } else if case .v4(let mask)? = IPAddress(parts[1]), (~mask &+ 1) & ~mask == 0 {
                prefixLength = mask.nonzeroBitCount
            } else {
                return nil
            }
        } else {
            prefixLength = maximum
        }
        self.address = address
    }

    public func contains(_ other: IPAddress) -> Bool {
        switch (address, other) {
        case (.v4(let network), .v4(let host)):
            let mask: UInt32 = prefixLength == 0 ? 0 : ~0 << (32 - prefixLength)
            return network & mask == host & mask
        case (.v6(let network), .v6(let host)):
            var bits = prefixLength
            for index in 0..<16 where bits > 0 {
                let take = min(bits, 8)
                let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - take))
                if network[index] & mask != host[index] & mask { return false }
                bits -= take
            }
            return true
        default:
            return false
        }
    }

    public var description: String { "\(address)/\(prefixLength)" }
}

/// Reads `iptables-save` / `ip6tables-save` output.
public enum IptablesListing {
    public static func parse(_ text: String) -> [HostRule] {
        var rules: [HostRule] = []
        var table = ""
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: [" ", "\t", "\r"])
            if line.hasPrefix("*") { table = String(line.dropFirst()); continue }
            guard line.hasPrefix("-A ") else { continue }
            let words = tokens(line)
            guard words.count >= 2 else { continue }
            var rule = HostRule(table: table, chain: words[1], text: line, line: index + 1)
            var negate = false
            var position = 2
            while position < words.count {
                let word = words[position]
                let value = position + 1 < words.count ? words[position + 1] : nil
                switch word {
                case "!": negate = true; position += 1; continue
                case "-p", "--protocol":
                    if let value { rule.transport = .init(value: value.lowercased(), negated: negate) }
                case "-s", "--source":
                    if !negate { rule.sourceRestricted = true }
                case "-d", "--destination":
                    if let value, let prefix = AddressPrefix(value) { rule.destination = .init(value: prefix, negated: negate) }
                case "--dport", "--destination-port", "--dports", "--destination-ports":
                    if let value, let ranges = portRanges(value) { rule.destinationPorts = .init(value: ranges, negated: negate) }
                case "-j", "--jump", "-g", "--goto":
                    rule.target = value
                case "--set-mark", "--set-xmark", "--mark", "--or-mark", "--xor-mark":
                    if let value, let mark = HostRule.markValue(value) { rule.marks.append(mark) }
                default:
                    break
                }
                negate = false
                position += word.hasPrefix("-") && value != nil && !(value!.hasPrefix("-") && value!.count > 1) ? 2 : 1
            }
            rules.append(rule)
        }
        return rules
    }

    /// "80", "8080:8090", "80,443,8000:8100"
    static func portRanges(_ text: String) -> [ClosedRange<UInt16>]? {
        var ranges: [ClosedRange<UInt16>] = []
        for part in text.split(separator: ",") {
            let bounds = part.split(separator: ":", omittingEmptySubsequences: false).map { UInt16($0) }
            switch bounds.count {
            case 1: guard let port = bounds[0] else { return nil }; ranges.append(port...port)
            case 2:
                let low = bounds[0] ?? 0, high = bounds[1] ?? 65535
                guard low <= high else { return nil }
                ranges.append(low...high)
            default: return nil
            }
        }
        return ranges.isEmpty ? nil : ranges
    }

    /// Splits a rule into words, keeping "quoted comments" whole.
    static func tokens(_ line: String) -> [String] {
        var words: [String] = [], current = "", quoted = false, escaped = false, started = false
        for character in line {
            if escaped { current.append(character); escaped = false; continue }
            switch character {
            case "\\" where quoted: escaped = true
            case "\"": quoted.toggle(); started = true
            case " " where !quoted:
                if started { words.append(current); current = ""; started = false }
            default: current.append(character); started = true
            }
        }
        if started { words.append(current) }
        return words
    }
}
