import LBConfig
import LBNetfilter
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

    /// Makes lb's SNAT chain match the config (one iptables-restore transaction per family), removing it when no
    /// l4-snat service is left.
    func apply() throws {
        for family in [IPAddress.Family.ipv4, .ipv6] {
            let wantsRules = services.contains { $0.mode == .l4SNAT && $0.address.family == family }
            let iptables = Iptables(family: family)
            let listing: (rules: [IptablesRule], text: String)
            do {
                listing = try iptables.listing()
            } catch {
                if wantsRules { throw error }
                continue  // no iptables and nothing to do
            }
            let ruleset = NetfilterPlanner.ruleset(
                for: services, family: family, current: listing.rules,
                chainExists: iptables.chainExists(NetfilterPlanner.snatChain, inListing: listing.text))
            guard let restore = ruleset.restore else { continue }
            // Refilling the chain is one atomic transaction and idempotent: no need to compare first.
            try iptables.apply(restore)
            if wantsRules {
                logger.notice("netfilter: \(NetfilterPlanner.snatChain) holds \(ruleset.rules.count) rule(s)", metadata: ["family": "\(family.rawValue)"])
            } else {
                logger.notice("netfilter: \(NetfilterPlanner.snatChain) removed (no l4-snat service)", metadata: ["family": "\(family.rawValue)"])
            }
        }
    }
}
