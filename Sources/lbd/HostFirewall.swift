import LBConfig
import LBNetfilter
import LBSystem
import Foundation
import Logging

/// The agent's netfilter side: scans the host's rules for clashes before anything is applied, and keeps lb's
/// own chain (LB-SNAT) equal to what the l4-snat services need.
struct HostFirewall {
    let services: [VirtualService]
    let logger: Logger

    private var families: [IPAddress.Family] {
        [.ipv4, .ipv6].filter { family in services.contains { $0.address.family == family } }
    }

    /// Host rules that would fight the services. Reads only; changes nothing. Without iptables on the host the
    /// scan is skipped with a warning, unless an l4-snat service needs iptables anyway.
    func conflicts() throws -> [NetfilterConflict] {
        var found: [NetfilterConflict] = []
        for family in families {
            let listing: [IptablesRule]
            do {
                listing = try Iptables(family: family).listing().rules
            } catch {
                if services.contains(where: { $0.mode == .l4SNAT && $0.address.family == family }) { throw error }
                logger.warning("host netfilter rules not scanned for clashes: \(error)")
                continue
            }
            found += NetfilterPlanner.conflicts(for: services.filter { $0.address.family == family }, in: listing)
        }
        return found
    }

    /// Makes lb's chains match the config from one iptables-save per family: LB-SNAT (nat) for l4-snat services and,
    /// for IPv4, LB-TPROXY (mangle) for transparent Layer 7 services, sent in one iptables-restore; then the policy
    /// route that delivers transparent replies locally. Chains, jumps and the route go with their last service.
    func apply() throws {
        for family in [IPAddress.Family.ipv4, .ipv6] {
            let wantsSNAT = services.contains { $0.mode == .l4SNAT && $0.address.family == family }
            let wantsTPROXY = family == .ipv4 && !NetfilterPlanner.tproxyRules(for: services).isEmpty
            let iptables = Iptables(family: family)
            let listing: (rules: [IptablesRule], text: String)
            do {
                listing = try iptables.listing()
            } catch {
                if wantsSNAT || wantsTPROXY { throw error }
                continue  // no iptables and nothing to do
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
            if !restore.isEmpty {
                try iptables.apply(restore)
                for (chain, ruleset) in zip([NetfilterPlanner.snatChain, NetfilterPlanner.tproxyChain], rulesets) where ruleset.restore != nil {
                    logger.notice(ruleset.rules.isEmpty ? "netfilter: \(chain) removed (no service needs it)"
                                                        : "netfilter: \(chain) holds \(ruleset.rules.count) rule(s)",
                                  metadata: ["family": "\(family.rawValue)"])
                }
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

    /// Whether lb's chain differs from what the config needs (missing rules, a missing jump, rules left over):
    /// the periodic drift check then re-applies it. Rules are compared by what they match (addresses and ports).
    func needsRepair() -> Bool {
        for family in [IPAddress.Family.ipv4, .ipv6] {
            let wanted = NetfilterPlanner.snatRules(for: services, family: family)
            guard let listing = try? Iptables(family: family).listing() else { continue }
            let present = listing.rules.filter { $0.table == "nat" && $0.chain == NetfilterPlanner.snatChain }
            let jump = listing.rules.contains { $0.table == "nat" && $0.chain == "POSTROUTING" && $0.target == NetfilterPlanner.snatChain }
            if present.count != wanted.count || (!wanted.isEmpty && !jump) { return true }
            let wantedKeys = Set(IptablesListing.parse("*nat\n" + wanted.joined(separator: "\n")).map(Self.key))
            if Set(present.map(Self.key)) != wantedKeys { return true }
        }
        return false
    }

    private static func key(_ rule: IptablesRule) -> String {
        // iptables-save may print the VIP without its /32 or /128.
        let words = rule.text.split(separator: " ").map(String.init)
        var vip = "-", vport = "-"
        if let at = words.firstIndex(of: "--vaddr"), at + 1 < words.count { vip = words[at + 1] }
        if let at = words.firstIndex(of: "--vport"), at + 1 < words.count { vport = words[at + 1] }
        for suffix in ["/32", "/128"] where vip.hasSuffix(suffix) { vip.removeLast(suffix.count) }
        return "\(rule.destination?.value.description ?? "-") \(rule.destinationPorts?.value.description ?? "-") \(vip) \(vport)"
    }

    /// lbd --cleanup-on-stop: lb's chains and policy route go.
    func removeAll() throws {
        try HostFirewall(services: [], logger: logger).apply()
    }
}
