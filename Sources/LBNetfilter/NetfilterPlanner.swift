import LBConfig

/// The rules lb owns, as `iptables-restore --noflush` input. lb's rules live in chains named `LB-…`; declaring a
/// chain in a restore file empties it first, so each apply replaces the whole chain in one transaction.
public struct NetfilterRuleset: Equatable, Sendable {
    /// `iptables-restore --noflush` input, or nil when lb wants no rules of this family and none exist.
    public var restore: String?
    /// lb's rule lines (chain contents), for display and tests.
    public var rules: [String]
}

/// A host rule that would fight one of lb's services.
public struct NetfilterConflict: Error, Equatable, Sendable, CustomStringConvertible {
    public var service: String
    /// `10.0.0.41:2762/tcp`
    public var endpoint: String
    public var rule: HostRule
    public var reason: String
    public var hint: String

    public var description: String {
        "virtual service \"\(service)\" (\(endpoint)): host rule \"\(rule.text)\" (\(rule.origin ?? "table \(rule.table), chain \(rule.chain)"))"
            + " \(reason)\n  hint: \(hint)"
    }
}

/// Pure planning of lb's netfilter rules and of the host-rule conflict scan.
public enum NetfilterPlanner {
    /// lb's own chain in the nat table, jumped to from POSTROUTING.
    public static let snatChain = "LB-SNAT"
    static let jump = "-A POSTROUTING -m comment --comment \"lb: source NAT for l4-snat services\" -j \(snatChain)"

    /// For every `l4-snat` VIP port and real server: traffic IPVS sends to that real server for that VIP leaves with
    /// the load balancer's own address (MASQUERADE picks the address of the outgoing interface), so the real server
    /// answers the load balancer and needs no route back through it. `-m ipvs` keeps the rule to IPVS's traffic.
    public static func snatRules(for services: [VirtualService], family: IPAddress.Family) -> [String] {
        var rules: [String] = []
        for service in services where service.mode == .l4SNAT && service.address.family == family {
            let full = family == .ipv4 ? 32 : 128
            for port in service.ports.allPorts {
                for server in service.realServers {
                    let proto = service.transport.rawValue
                    rules.append("-A \(snatChain) -d \(server.address)/\(full) -p \(proto) -m \(proto) --dport \(server.port(forVIPPort: port))"
                                 + " -m ipvs --vaddr \(service.address)/\(full) --vport \(port)"
                                 + " -m comment --comment \"lb: \(service.name)\" -j MASQUERADE")
                }
            }
        }
        return rules
    }

    /// The restore input that makes the host hold exactly `snatRules`, given the current listing of the nat table:
    /// the chain is (re)declared and refilled; the jump is added once; with no rules wanted, chain and jump go.
    public static func ruleset(for services: [VirtualService], family: IPAddress.Family, current: [HostRule],
                               chainExists: Bool) -> NetfilterRuleset {
        chainRuleset(table: "nat", chain: snatChain, jump: jump, rules: snatRules(for: services, family: family),
                     current: current, chainExists: chainExists)
    }

    /// The restore input that makes `chain` in `table` hold exactly `rules`: the chain is (re)declared and refilled
    /// (declaring a chain empties it), the jump to it is added once; with no rules wanted, chain and jump go.
    static func chainRuleset(table: String, chain: String, jump: String, rules: [String], current: [HostRule],
                             chainExists: Bool) -> NetfilterRuleset {
        let hook = String(jump.split(separator: " ")[1])
        // More than one jump can be left by a restore that went through in part and was tried again: one stays.
        // Only lb's own jump counts: an operator's rule may jump to lb's chain too, and is not lb's to delete.
        let jumps = ownJumps(jump, table: table, in: current)
        let deleteJump = jump.replacingOccurrences(of: "-A \(hook)", with: "-D \(hook)")
        if rules.isEmpty {
            guard chainExists || jumps > 0 else { return NetfilterRuleset(restore: nil, rules: []) }
            var lines = ["*\(table)", ":\(chain) - [0:0]"]
            lines += Array(repeating: deleteJump, count: jumps)
            lines += ["-X \(chain)", "COMMIT"]
            return NetfilterRuleset(restore: lines.joined(separator: "\n") + "\n", rules: [])
        }
        var lines = ["*\(table)", ":\(chain) - [0:0]"] + rules
        if jumps == 0 { lines.append(jump) }
        lines += Array(repeating: deleteJump, count: max(0, jumps - 1))
        lines.append("COMMIT")
        return NetfilterRuleset(restore: lines.joined(separator: "\n") + "\n", rules: rules)
    }

    /// How many copies of lb's own `jump` rule (matched by its words, comment included) `current` holds.
    static func ownJumps(_ jump: String, table: String, in current: [HostRule]) -> Int {
        let words = IptablesListing.tokens(jump)
        let hook = words.count > 1 ? words[1] : ""
        let wanted = Set(words)
        return current.filter { $0.table == table && $0.chain == hook && Set(IptablesListing.tokens($0.text)) == wanted }.count
    }

    // MARK: Transparent Layer 7

    /// lb's chain in the mangle table for transparent proxying, and the firewall mark and routing table that deliver
    /// real servers' replies (addressed to a client's address) to lbd's transparent socket instead of forwarding them.
    public static let tproxyChain = "LB-TPROXY"
    public static let tproxyMark = "0x4c42"
    public static let tproxyTable = "19522"
    static let tproxyJump = "-A PREROUTING -m comment --comment \"lb: replies to transparent proxy connections\" -j \(tproxyChain)"

    /// One rule per real server port of each transparent service: a reply from it that belongs to one of lbd's
    /// transparent sockets (`-m socket --transparent`) gets lb's mark.
    public static func tproxyRules(for services: [VirtualService]) -> [String] {
        var rules: [String] = []
        for service in services where service.transparent && service.mode.isLayer7 && service.address.family == .ipv4 {
            var seen = Set<String>()
            for port in service.ports.allPorts {
                for server in service.realServers {
                    let key = server.address.withPort(server.port(forVIPPort: port))
                    guard seen.insert(key).inserted else { continue }
                    rules.append("-A \(tproxyChain) -s \(server.address)/32 -p tcp -m tcp --sport \(server.port(forVIPPort: port))"
                                 + " -m socket --transparent -m comment --comment \"lb: \(service.name)\""
                                 + " -j MARK --set-xmark \(tproxyMark)/0xffffffff")
                }
            }
        }
        return rules
    }

    /// Restore input for the mangle table, like `ruleset` for SNAT.
    public static func tproxyRuleset(for services: [VirtualService], current: [HostRule], chainExists: Bool) -> NetfilterRuleset {
        chainRuleset(table: "mangle", chain: tproxyChain, jump: tproxyJump, rules: tproxyRules(for: services),
                     current: current, chainExists: chainExists)
    }

    /// Host rules (outside lb's chains) that set or test lb's firewall mark while a transparent service needs it:
    /// the mark is what routes real servers' replies to lbd's transparent sockets, so another user of it would
    /// divert or lose traffic (or have lb's rules divert theirs).
    public static func markConflicts(for services: [VirtualService], in listing: [HostRule]) -> [NetfilterConflict] {
        guard let service = services.first(where: { $0.transparent && $0.mode.isLayer7 && $0.address.family == .ipv4 }),
              let mark = HostRule.markValue(tproxyMark) else { return [] }
        let endpoint = "\(service.address.withPort(service.ports.allPorts.first ?? 0))/\(service.transport.rawValue)"
        return listing.filter { !$0.chain.hasPrefix("LB-") && $0.marks.contains(mark) && ($0.families?.contains(.ipv4) ?? true) }.map { rule in
            NetfilterConflict(
                service: service.name, endpoint: endpoint, rule: rule,
                reason: "uses firewall mark \(tproxyMark), which lb sets on replies to its transparent connections",
                hint: "give the host rule another mark; lb's transparent proxying owns mark \(tproxyMark) and routing table \(tproxyTable)")
        }
    }

    /// Host rules (outside lb's chains) that would clash with the services:
    /// - a DNAT or REDIRECT that can match a VIP port (the traffic would never reach IPVS or lbd's listener);
    /// - a SNAT or MASQUERADE naming a real server that an `l4-snat` service reaches (two source rewrites);
    /// - a DROP or REJECT in INPUT (any mode) or FORWARD (NAT and SNAT, whose replies are forwarded) that names the
    ///   VIP or the VIP port (or, for nftables, a filter chain on PREROUTING), unless it is limited to some sources
    ///   (a ban list). A blanket DROP at the end of a firewall chain is not reported: it names neither.
    /// Native nftables rules arrive here in the same shape (see `NftablesListing`), each kept to its families.
    public static func conflicts(for services: [VirtualService], in listing: [HostRule]) -> [NetfilterConflict] {
        var found: [NetfilterConflict] = []
        let allHostRules = listing.filter { !$0.chain.hasPrefix("LB-") && !($0.target ?? "").hasPrefix("LB-") }
        for service in services {
            let hostRules = allHostRules.filter { $0.families?.contains(service.address.family) ?? true }
            for port in service.ports.allPorts {
                let endpoint = "\(service.address.withPort(port))/\(service.transport.rawValue)"
                for rule in hostRules where rule.canMatch(address: service.address, port: port, transport: service.transport) {
                    switch (rule.table, rule.target ?? "") {
                    case ("nat", "DNAT"), ("nat", "REDIRECT"):
                        found.append(NetfilterConflict(
                            service: service.name, endpoint: endpoint, rule: rule,
                            reason: "would redirect the VIP's traffic before lb sees it",
                            hint: "remove the rule or narrow it so it cannot match \(endpoint), or give the service another VIP or port"))
                    case ("filter", "DROP"), ("filter", "REJECT"):
                        // PREROUTING: an nftables filter chain on that hook drops before routing, for every mode.
                        let chains = service.mode.isLayer4 && service.mode != .l4DirectRouting
                            ? ["PREROUTING", "INPUT", "FORWARD"] : ["PREROUTING", "INPUT"]
                        guard chains.contains(rule.chain), !rule.sourceRestricted,
                              rule.names(address: service.address) || rule.names(port: port) else { continue }
                        found.append(NetfilterConflict(
                            service: service.name, endpoint: endpoint, rule: rule,
                            reason: "would drop the VIP's traffic",
                            hint: "allow \(endpoint) before this rule, or remove it"))
                    default:
                        continue
                    }
                }
                guard service.mode == .l4SNAT else { continue }
                for server in service.realServers {
                    let serverPort = server.port(forVIPPort: port)
                    for rule in hostRules where rule.table == "nat" && ["SNAT", "MASQUERADE"].contains(rule.target ?? "")
                        && rule.names(address: server.address)
                        && rule.canMatch(address: server.address, port: serverPort, transport: service.transport) {
                        found.append(NetfilterConflict(
                            service: service.name, endpoint: endpoint, rule: rule,
                            reason: "already rewrites the source of traffic to real server \(server.name) (\(server.address.withPort(serverPort))), which lb's \(snatChain) chain does for this l4-snat service",
                            hint: "remove the host rule (lb owns source NAT for this real server), or use l4-nat for the service"))
                    }
                }
            }
        }
        return found
    }
}
