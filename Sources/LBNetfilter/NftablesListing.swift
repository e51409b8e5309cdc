import Foundation
import LBConfig

/// Reads native nftables rules (`nft -j list ruleset`) into `HostRule`s, so the clash scan treats them like
/// iptables rules. Only what decides whether a rule can touch a VIP's traffic is read: the hook that reaches its
/// chain (through jumps and gotos from base chains), destination address and port matches (literal values, anonymous
/// and named sets, prefixes, ranges), the transport, firewall marks, and the verdict or NAT statement. A rule in a
/// chain that no base chain reaches is inert and skipped.
public enum NftablesListing {
    /// The ip/ip6 tables that iptables-nft owns: iptables-save already lists them, so they are skipped when the host's
    /// iptables is the nf_tables variant.
    static let iptablesTables: Set<String> = ["filter", "nat", "mangle", "raw", "security"]

    /// At most this many address variants per rule (a set of addresses becomes one HostRule per element); beyond it
    /// the rule is read as matching any address.
    static let maximumVariants = 256

    /// - Parameters:
    ///   - json: the output of `nft -j list ruleset`.
    ///   - text: the output of `nft -a list ruleset` (rules with their `# handle N`), for messages; may be empty.
    ///   - iptablesUsesNftables: whether iptables-save already showed the iptables-nft tables.
    public static func parse(json: Data, text: String = "", iptablesUsesNftables: Bool) throws -> [HostRule] {
        guard let root = try JSONSerialization.jsonObject(with: json) as? [String: Any],
              let objects = root["nftables"] as? [[String: Any]] else {
            throw NetfilterError(command: "nft -j list ruleset", message: "output is not an nftables JSON listing")
        }
        let texts = ruleTexts(text)
        var baseChains: [ChainKey: (type: String, hook: String)] = [:]
        var rules: [(key: ChainKey, handle: Int, expressions: [[String: Any]])] = []
        var sets: [ChainKey: [Any]] = [:]  // named sets, keyed like chains (family, table, set name)
        for object in objects {
            if let chain = object["chain"] as? [String: Any], let key = ChainKey(chain, name: "name") {
                if let type = chain["type"] as? String, let hook = chain["hook"] as? String { baseChains[key] = (type, hook) }
            } else if let rule = object["rule"] as? [String: Any], let key = ChainKey(rule, name: "chain") {
                rules.append((key, rule["handle"] as? Int ?? 0, rule["expr"] as? [[String: Any]] ?? []))
            } else if let set = object["set"] as? [String: Any], let key = ChainKey(set, name: "name") {
                sets[key] = set["elem"] as? [Any] ?? []
            }
        }
        // Which base-chain hooks reach each chain: follow jumps and gotos until nothing changes.
        var reach: [ChainKey: Set<Hook>] = baseChains.mapValues { [Hook(type: $0.type, hook: $0.hook)] }
        var changed = true
        while changed {
            changed = false
            for rule in rules {
                guard let hooks = reach[rule.key], !hooks.isEmpty else { continue }
                for target in rule.expressions.flatMap(jumpTargets) {
                    let next = ChainKey(family: rule.key.family, table: rule.key.table, name: target)
                    let before = reach[next] ?? []
                    let after = before.union(hooks)
                    if after != before { reach[next] = after; changed = true }
                }
            }
        }
        var found: [HostRule] = []
        for rule in rules {
            if iptablesUsesNftables, ["ip", "ip6"].contains(rule.key.family), iptablesTables.contains(rule.key.table) { continue }
            guard let hooks = reach[rule.key], !hooks.isEmpty else { continue }
            let families: Set<IPAddress.Family>
            switch rule.key.family {
            case "ip": families = [.ipv4]
            case "ip6": families = [.ipv6]
            case "inet": families = [.ipv4, .ipv6]
            default: continue  // arp, bridge, netdev: not on the path lb's traffic takes through the IP stack
            }
            let read = read(rule.expressions, sets: sets, family: rule.key.family, table: rule.key.table)
            let text = texts[TextKey(family: rule.key.family, table: rule.key.table, chain: rule.key.name, handle: rule.handle)]
                ?? "handle \(rule.handle)"
            for hook in hooks.sorted(by: { ($0.type, $0.hook) < ($1.type, $1.hook) }) {
                for destination in read.destinations {
                    var host = HostRule(table: hook.table, chain: hook.hook.uppercased(), text: text, line: rule.handle)
                    host.target = read.target
                    host.origin = "nftables table \(rule.key.family) \(rule.key.table), chain \(rule.key.name)"
                    host.families = families
                    host.marks = read.marks
                    host.sourceRestricted = read.sourceRestricted
                    host.transport = read.transport
                    host.destination = destination
                    host.destinationPorts = read.ports
                    found.append(host)
                }
            }
        }
        return found
    }

    /// Chains a rule's expression jumps or goes to, wherever the verdict sits (a verdict map included).
    static func jumpTargets(_ value: Any) -> [String] {
        if let object = value as? [String: Any] {
            var targets: [String] = []
            for (key, inner) in object {
                if key == "jump" || key == "goto", let target = (inner as? [String: Any])?["target"] as? String {
                    targets.append(target)
                } else {
                    targets += jumpTargets(inner)
                }
            }
            return targets
        }
        if let array = value as? [Any] { return array.flatMap(jumpTargets) }
        return []
    }

    struct ChainKey: Hashable {
        var family: String, table: String, name: String
        init(family: String, table: String, name: String) { (self.family, self.table, self.name) = (family, table, name) }
        init?(_ object: [String: Any], name field: String) {
            guard let family = object["family"] as? String, let table = object["table"] as? String,
                  let name = object[field] as? String else { return nil }
            self.init(family: family, table: table, name: name)
        }
    }

    struct Hook: Hashable {
        var type: String, hook: String
        /// The iptables table with the same job: nat chains rewrite addresses, route chains may reroute (mangle).
        var table: String { type == "route" ? "mangle" : type }
    }

    struct TextKey: Hashable { var family: String, table: String, chain: String, handle: Int }

    /// What one rule matches and does.
    struct Reading {
        var target: String?
        var transport: HostRule.Match<String>?
        /// One entry per address variant; [nil] when the rule names no destination address.
        var destinations: [HostRule.Match<AddressPrefix>?] = [nil]
        var ports: HostRule.Match<[ClosedRange<UInt16>]>?
        var marks: [UInt32] = []
        var sourceRestricted = false
    }

    static func read(_ expressions: [[String: Any]], sets: [ChainKey: [Any]], family: String, table: String) -> Reading {
        var reading = Reading()
        /// The elements a match compares with: a literal, an anonymous set, or a named set; an element with a
        /// comment, timeout or counter comes wrapped as {"elem": {"val": …}}.
        func elements(_ right: Any) -> [Any] {
            let raw: [Any]
            if let name = right as? String, name.hasPrefix("@") {
                raw = sets[ChainKey(family: family, table: table, name: String(name.dropFirst()))] ?? []
            } else if let set = (right as? [String: Any])?["set"] as? [Any] {
                raw = set
            } else {
                raw = [right]
            }
            return raw.map { ((($0 as? [String: Any])?["elem"] as? [String: Any])?["val"]) ?? $0 }
        }
        /// Every element read, or nil when one cannot be (the match then counts as unrestricted).
        func all<T>(_ values: [Any], _ read: (Any) -> [T]?) -> [T]? {
            var result: [T] = []
            for value in values {
                guard let items = read(value) else { return nil }
                result += items
            }
            return result.isEmpty ? nil : result
        }
        for expression in expressions {
            if let match = expression["match"] as? [String: Any], let left = match["left"] as? [String: Any],
               let right = match["right"] {
                let op = match["op"] as? String ?? "=="
                let negated = op == "!="
                if let bound = right as? Int, let ports = portsOrdered(op, bound), let payload = left["payload"] as? [String: Any],
                   payload["field"] as? String == "dport", let proto = payload["protocol"] as? String {
                    // "tcp dport < 1024": the ports below the bound.
                    if proto != "th" { reading.transport = .init(value: proto, negated: false) }
                    reading.ports = .init(value: [ports], negated: false)
                    continue
                }
                // Otherwise equality and set membership only; any other operator is left unread: it matches more.
                guard ["==", "!=", "in"].contains(op) else { continue }
                if let payload = left["payload"] as? [String: Any], let field = payload["field"] as? String,
                   let proto = payload["protocol"] as? String {
                    switch (proto, field) {
                    case ("ip", "daddr"), ("ip6", "daddr"):
                        let prefixes = all(elements(right), prefixes)
                        if negated {
                            // "not in a set" cannot be one prefix; a single negated prefix can.
                            if let prefixes, prefixes.count == 1 { reading.destinations = [.init(value: prefixes[0], negated: true)] }
                        } else if let prefixes, prefixes.count <= maximumVariants {
                            reading.destinations = prefixes.map { .init(value: $0, negated: false) }
                        }
                    case ("ip", "saddr"), ("ip6", "saddr"):
                        // Limited to some clients (a ban list, say): it cannot be the VIP's traffic as a whole.
                        if !negated { reading.sourceRestricted = true }
                    case ("tcp", "dport"), ("udp", "dport"), ("th", "dport"):
                        if proto != "th" { reading.transport = .init(value: proto, negated: false) }
                        if let ranges = all(elements(right), { portRange($0).map { [$0] } }) {
                            reading.ports = .init(value: ranges, negated: negated)
                        }
                    case ("ip", "protocol"), ("ip6", "nexthdr"):
                        if let name = right as? String { reading.transport = .init(value: name, negated: negated) }
                    default:
                        break
                    }
                } else if let meta = left["meta"] as? [String: Any], let key = meta["key"] as? String {
                    if key == "l4proto", let name = right as? String { reading.transport = .init(value: name, negated: negated) }
                    if key == "mark", !negated { reading.marks += elements(right).compactMap(mark) }
                }
            } else if let mangle = expression["mangle"] as? [String: Any],
                      ((mangle["key"] as? [String: Any])?["meta"] as? [String: Any])?["key"] as? String == "mark",
                      let value = mangle["value"].flatMap(mark) {
                reading.marks.append(value)
                reading.target = reading.target ?? "MARK"
            } else {
                for (statement, target) in [("drop", "DROP"), ("reject", "REJECT"), ("dnat", "DNAT"), ("redirect", "REDIRECT"),
                                            ("snat", "SNAT"), ("masquerade", "MASQUERADE"), ("tproxy", "TPROXY"),
                                            ("accept", "ACCEPT")] where expression.keys.contains(statement) {
                    reading.target = target
                }
            }
        }
        return reading
    }

    /// One set element as address prefixes: an address, a prefix, or an IPv4 range (split into the prefixes that
    /// cover it exactly); nil for anything else (an IPv6 range, a concatenation).
    static func prefixes(_ value: Any) -> [AddressPrefix]? {
        if let address = value as? String { return AddressPrefix(address).map { [$0] } }
        if let object = (value as? [String: Any])?["prefix"] as? [String: Any],
           let address = object["addr"] as? String, let length = object["len"] as? Int {
            return AddressPrefix("\(address)/\(length)").map { [$0] }
        }
        if let bounds = (value as? [String: Any])?["range"] as? [String], bounds.count == 2,
           case .v4(let low)? = IPAddress(bounds[0]), case .v4(let high)? = IPAddress(bounds[1]), low <= high {
            var result: [AddressPrefix] = []
            var start = UInt64(low)
            while start <= UInt64(high), result.count <= maximumVariants {
                // The largest aligned block that starts at `start` and stays inside the range.
                var size: UInt64 = start == 0 ? 1 << 32 : UInt64(1) << UInt64(start.trailingZeroBitCount)
                while start + size - 1 > UInt64(high) { size >>= 1 }
                let length = 32 - (size.trailingZeroBitCount)
                guard let prefix = AddressPrefix("\(IPAddress.v4(UInt32(start)))/\(length)") else { return nil }
                result.append(prefix)
                start += size
            }
            return result.count <= maximumVariants ? result : nil
        }
        return nil
    }

    /// The ports an ordering comparison selects ("<", "<=", ">", ">=" against a number), or nil.
    static func portsOrdered(_ op: String, _ bound: Int) -> ClosedRange<UInt16>? {
        let low: Int, high: Int
        switch op {
        case "<": (low, high) = (0, bound - 1)
        case "<=": (low, high) = (0, bound)
        case ">": (low, high) = (bound + 1, 65535)
        case ">=": (low, high) = (bound, 65535)
        default: return nil
        }
        guard let low16 = UInt16(exactly: max(0, low)), let high16 = UInt16(exactly: min(65535, high)), low16 <= high16 else { return nil }
        return low16...high16
    }

    static func portRange(_ value: Any) -> ClosedRange<UInt16>? {
        if let port = value as? Int, let port16 = UInt16(exactly: port) { return port16...port16 }
        if let bounds = (value as? [String: Any])?["range"] as? [Int], bounds.count == 2,
           let low = UInt16(exactly: bounds[0]), let high = UInt16(exactly: bounds[1]), low <= high {
            return low...high
        }
        return nil
    }

    static func mark(_ value: Any) -> UInt32? {
        if let number = value as? Int { return UInt32(exactly: number) }
        if let text = value as? String { return HostRule.markValue(text) }
        return nil
    }

    /// Rule texts of `nft -a list ruleset` by table, chain and handle.
    static func ruleTexts(_ text: String) -> [TextKey: String] {
        var texts: [TextKey: String] = [:]
        var family = "", table = "", chain = ""
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            let words = line.split(separator: " ").map(String.init)
            if words.first == "table", words.count >= 3 { (family, table, chain) = (words[1], words[2], ""); continue }
            if words.first == "chain", words.count >= 2 { chain = words[1]; continue }
            guard !chain.isEmpty, let marker = line.range(of: " # handle ", options: .backwards),
                  let handle = Int(line[marker.upperBound...]) else { continue }
            texts[TextKey(family: family, table: table, chain: chain, handle: handle)] = String(line[..<marker.lowerBound])
        }
        return texts
    }
}
