import Foundation
import LBConfig
import LBSystem

/// lb's netfilter side on the host: scans the host's rules for clashes before anything is applied, and keeps lb's
/// own chains (LB-SNAT for l4-snat, LB-TPROXY for transparent Layer 7) and the transparent policy route equal to
/// what the services need. Reports what it did through `log` (the agent logs it).
public struct HostFirewall: Sendable {
    public let services: [VirtualService]
    /// Messages for the operator's log ("netfilter: LB-SNAT holds 4 rule(s)"), with the family.
    public let log: @Sendable (String) -> Void

    public init(services: [VirtualService], log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.services = services
        self.log = log
    }

    private var families: [IPAddress.Family] {
        [.ipv4, .ipv6].filter { family in services.contains { $0.address.family == family } }
    }

    /// Host rules that would fight the services: iptables rules of each family in use, native nftables rules (read
    /// with `nft` when it is installed), rules that use lb's firewall mark, and policy routes that use lb's mark or
    /// routing table. Reads only; changes nothing. Without iptables on the host its scan is skipped with a warning,
    /// unless an l4-snat service needs iptables anyway.
    public func conflicts() throws -> [NetfilterConflict] {
        var found: [NetfilterConflict] = []
        var hostRules: [HostRule] = []
        var iptablesUsesNftables = false
        for family in families {
            let listing: (rules: [HostRule], text: String)
            do {
                listing = try Iptables(family: family).listing()
            } catch {
                if services.contains(where: { $0.mode == .l4SNAT && $0.address.family == family }) { throw error }
                log("host netfilter rules not scanned for clashes: \(error)")
                continue
            }
            // iptables-nft's save names its backend in the header; its tables then also show in nft's listing.
            if listing.text.contains("(nf_tables)") { iptablesUsesNftables = true }
            found += NetfilterPlanner.conflicts(for: services.filter { $0.address.family == family }, in: listing.rules)
            hostRules += listing.rules.map { rule in
                var rule = rule
                rule.families = [family]
                return rule
            }
        }
        if !services.isEmpty, let native = nftablesRules(iptablesUsesNftables: iptablesUsesNftables) {
            found += NetfilterPlanner.conflicts(for: services, in: native)
            hostRules += native
        }
        found += NetfilterPlanner.markConflicts(for: services, in: hostRules)
        found += policyRoutingConflicts()
        return found
    }

    /// Native nftables rules, or nil (logged) when `nft` is not installed or cannot list: then no native rules can
    /// have been made with it, though a program using libnftables directly could have — the log says what was skipped.
    private func nftablesRules(iptablesUsesNftables: Bool) -> [HostRule]? {
        do {
            let json = try Subprocess.run("nft", ["-j", "list", "ruleset"], timeout: 10)
            guard json.succeeded else {
                log("native nftables rules not scanned for clashes: nft -j list ruleset: \(json.errorOutput.trimmingCharacters(in: .whitespacesAndNewlines))")
                return nil
            }
            let text = (try? Subprocess.run("nft", ["-a", "list", "ruleset"], timeout: 10).output) ?? ""
            return try NftablesListing.parse(json: Data(json.output.utf8), text: text, iptablesUsesNftables: iptablesUsesNftables)
        } catch {
            log("native nftables rules not scanned for clashes: \(error) (install the nftables package to have them scanned)")
            return nil
        }
    }

    /// Policy routing rules and routes that would share lb's mark or routing table (only when a transparent service
    /// needs them): another rule steering lb's marked replies elsewhere, or other routes in lb's table.
    private func policyRoutingConflicts() -> [NetfilterConflict] {
        guard let service = services.first(where: { $0.transparent && $0.mode.isLayer7 && $0.address.family == .ipv4 }) else { return [] }
        let mark = NetfilterPlanner.tproxyMark, table = NetfilterPlanner.tproxyTable
        let endpoint = "\(service.address.withPort(service.ports.allPorts.first ?? 0))/\(service.transport.rawValue)"
        var found: [NetfilterConflict] = []
        let rules = (try? Subprocess.run("ip", ["-4", "rule", "show"], timeout: 10).output) ?? ""
        for (index, line) in rules.split(separator: "\n").enumerated() {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            let own = words.first == "\(table):" && line.contains("fwmark \(mark) lookup \(table)")
            let usesMark = words.indices.contains { words[$0] == "fwmark" && $0 + 1 < words.count
                && HostRule.markValue(words[$0 + 1]) == HostRule.markValue(mark) }
            let usesTable = words.indices.contains { words[$0] == "lookup" && $0 + 1 < words.count && words[$0 + 1] == table }
            guard !own, usesMark || usesTable else { continue }
            let rule = HostRule(table: "routing", chain: "rules", text: String(line).trimmingCharacters(in: .whitespaces),
                                line: index + 1, origin: "ip -4 rule")
            found.append(NetfilterConflict(
                service: service.name, endpoint: endpoint, rule: rule,
                reason: usesMark ? "routes packets with lb's firewall mark \(mark), which lb needs for replies to its transparent connections"
                                 : "uses routing table \(table), which lb fills for replies to its transparent connections",
                hint: "move the rule to another mark or table (ip rule del …); lb's transparent proxying owns mark \(mark) and table \(table)"))
        }
        let routes = (try? Subprocess.run("ip", ["-4", "route", "show", "table", table], timeout: 10).output) ?? ""
        for (index, line) in routes.split(separator: "\n").enumerated()
        where !line.hasPrefix("local default dev lo") && !line.hasPrefix("local 0.0.0.0/0 dev lo") {
            let rule = HostRule(table: "routing", chain: "table \(table)", text: String(line).trimmingCharacters(in: .whitespaces),
                                line: index + 1, origin: "ip -4 route show table \(table)")
            found.append(NetfilterConflict(
                service: service.name, endpoint: endpoint, rule: rule,
                reason: "is a route in routing table \(table), which lb owns for replies to its transparent connections",
                hint: "move the route to another table; lb's transparent proxying owns table \(table)"))
        }
        return found
    }

    /// Makes lb's chains match the config from one iptables-save per family: LB-SNAT (nat) for l4-snat services and,
    /// for IPv4, LB-TPROXY (mangle) for transparent Layer 7 services, sent in one iptables-restore; then the policy
    /// route that delivers transparent replies locally. Chains, jumps and the route go with their last service.
    public func apply() throws {
        for family in [IPAddress.Family.ipv4, .ipv6] {
            let wantsSNAT = services.contains { $0.mode == .l4SNAT && $0.address.family == family }
            let wantsTPROXY = family == .ipv4 && !NetfilterPlanner.tproxyRules(for: services).isEmpty
            let iptables = Iptables(family: family)
            for attempt in 1... {
                let listing: (rules: [HostRule], text: String)
                do {
                    listing = try iptables.listing()
                } catch {
                    if wantsSNAT || wantsTPROXY { throw error }
                    break  // no iptables and nothing to do
                }
                var rulesets = [NetfilterPlanner.ruleset(
                    for: services, family: family, current: listing.rules,
                    chainExists: iptables.chainExists(NetfilterPlanner.snatChain, inListing: listing.text))]
                if family == .ipv4 {
                    rulesets.append(NetfilterPlanner.tproxyRuleset(
                        for: services, current: listing.rules,
                        chainExists: iptables.chainExists(NetfilterPlanner.tproxyChain, inListing: listing.text, table: "mangle")))
                }
                let restore = rulesets.compactMap(\.restore).joined()
                // Refilling a chain is one atomic transaction per table and idempotent: no need to compare first.
                guard !restore.isEmpty else { break }
                do {
                    try iptables.apply(restore)
                } catch where Iptables.isResourceProblem(error) && attempt < Iptables.restoreAttempts {
                    // Planned again from a fresh listing: part of the restore may have gone through.
                    log("netfilter: \(error); trying again (attempt \(attempt + 1) of \(Iptables.restoreAttempts))")
                    Thread.sleep(forTimeInterval: Iptables.retryPause)
                    continue
                }
                for (chain, ruleset) in zip([NetfilterPlanner.snatChain, NetfilterPlanner.tproxyChain], rulesets) where ruleset.restore != nil {
                    log((ruleset.rules.isEmpty ? "netfilter: \(chain) removed (no service needs it)"
                                               : "netfilter: \(chain) holds \(ruleset.rules.count) rule(s)") + " (\(family.rawValue))")
                }
                break
            }
            if family == .ipv4 { try applyPolicyRoute(wanted: wantsTPROXY) }
        }
    }

    /// `ip rule fwmark MARK lookup TABLE` and `local 0.0.0.0/0 dev lo` in TABLE, for transparent Layer 7 replies.
    private func applyPolicyRoute(wanted: Bool) throws {
        let mark = NetfilterPlanner.tproxyMark, table = NetfilterPlanner.tproxyTable
        let rules = (try? Subprocess.run("ip", ["-4", "rule", "show"]).output) ?? ""
        let hasRule = rules.contains("fwmark \(mark) lookup \(table)")
        if wanted {
            if !hasRule { try run("ip", ["-4", "rule", "add", "fwmark", mark, "lookup", table, "priority", table]) }
            try run("ip", ["-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", table])
        } else if hasRule {
            try run("ip", ["-4", "rule", "del", "fwmark", mark, "lookup", table, "priority", table])
            try run("ip", ["-4", "route", "flush", "table", table])
        }
    }

    private func run(_ program: String, _ arguments: [String]) throws {
        let result = try Subprocess.run(program, arguments, timeout: 10)
        guard result.succeeded else {
            throw NetfilterError(command: ([program] + arguments).joined(separator: " "),
                                 message: result.errorOutput.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    /// Whether lb's chains or the transparent policy route differ from what the config needs (missing or extra
    /// rules, a missing jump, a missing policy rule or route): the periodic drift check then re-applies them. Rules
    /// are compared by their words, so the order iptables-save prints options in does not matter.
    public func needsRepair() -> Bool {
        for family in [IPAddress.Family.ipv4, .ipv6] {
            guard let listing = try? Iptables(family: family).listing() else { continue }
            let chains: [(table: String, chain: String, jump: String, wanted: [String])] = [
                ("nat", NetfilterPlanner.snatChain, NetfilterPlanner.jump, NetfilterPlanner.snatRules(for: services, family: family)),
                ("mangle", NetfilterPlanner.tproxyChain, NetfilterPlanner.tproxyJump,
                 family == .ipv4 ? NetfilterPlanner.tproxyRules(for: services) : []),
            ]
            for (table, chain, jump, wanted) in chains {
                let present = listing.rules.filter { $0.table == table && $0.chain == chain }
                let jumps = NetfilterPlanner.ownJumps(jump, table: table, in: listing.rules)
                if wanted.isEmpty {
                    if !present.isEmpty || jumps > 0 { return true }
                    continue
                }
                if jumps != 1 || present.count != wanted.count { return true }
                let wantedKeys = Set(IptablesListing.parse("*\(table)\n" + wanted.joined(separator: "\n")).map(Self.key))
                if Set(present.map(Self.key)) != wantedKeys { return true }
            }
        }
        let wantsRoute = !NetfilterPlanner.tproxyRules(for: services).isEmpty
        let rules = (try? Subprocess.run("ip", ["-4", "rule", "show"]).output) ?? ""
        let hasRule = rules.contains("fwmark \(NetfilterPlanner.tproxyMark) lookup \(NetfilterPlanner.tproxyTable)")
        if wantsRoute != hasRule { return true }
        if wantsRoute {
            let routes = (try? Subprocess.run("ip", ["-4", "route", "show", "table", NetfilterPlanner.tproxyTable]).output) ?? ""
            if !routes.contains("local default dev lo") && !routes.contains("local 0.0.0.0/0 dev lo") { return true }
        }
        return false
    }

    /// A rule by its words, less the chain it is in; iptables-save may print an address without its /32 or /128.
    private static func key(_ rule: HostRule) -> Set<String> {
        var words = IptablesListing.tokens(rule.text)
        if words.count >= 2, words[0] == "-A" { words.removeFirst(2) }
        return Set(words.map { word in
            for suffix in ["/32", "/128"] where word.hasSuffix(suffix) { return String(word.dropLast(suffix.count)) }
            return word
        })
    }

    /// lbd --cleanup-on-stop: lb's chains and policy route go.
    public func removeAll() throws {
        try HostFirewall(services: [], log: log).apply()
    }
}
