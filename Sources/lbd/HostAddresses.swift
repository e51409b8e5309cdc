import LBConfig
import LBLinks
import Logging

/// The agent's VIP addresses: adds the ones the config puts on an interface, announces each new one, removes
/// only those lbd added itself (recorded in the state file) once the config no longer has them.
struct HostAddresses {
    let services: [VirtualService]
    let state: StateStore
    let logger: Logger

    var desired: Set<VIPAddress> { VIPAddressPlanner.desired(for: services) }

    /// Interfaces named by the config must exist: checked before anything is changed.
    func preflight() throws {
        for vip in desired.sorted() where !LinkAddresses.interfaceExists(vip.interface) {
            throw PreflightError("VIP \(vip.address): interface \(vip.interface) does not exist on this host (see `ip link`); fix `interface:` in the config")
        }
    }

    /// Returns the addresses added by this call (for a roll-back if a later step fails).
    @discardableResult
    func apply() throws -> [VIPAddress] {
        let desired = self.desired
        var saved = try state.load()
        let plan = VIPAddressPlanner.plan(desired: desired, present: LinkAddresses.present(), owned: Set(saved.vipAddresses))
        guard !(plan.add.isEmpty && plan.remove.isEmpty && plan.vanished.isEmpty) else {
            for vip in plan.foreign { logger.info("VIP address already present (not added by lb; lb will not remove it)", metadata: ["vip": "\(vip)"]) }
            return []
        }
        let links = try LinkAddresses()
        var added: [VIPAddress] = []
        for vip in plan.add {
            // Recorded first: if lbd dies right after the add, the next start still knows the address is lb's.
            saved.vipAddresses = Array(Set(saved.vipAddresses).union([vip])).sorted()
            try state.save(saved)
            do {
                try links.add(vip)
            } catch {
                for done in added { try? links.remove(done) }
                saved.vipAddresses = Array(Set(saved.vipAddresses).subtracting(added + [vip])).sorted()
                try? state.save(saved)
                throw error
            }
            added.append(vip)
            logger.notice("VIP address added", metadata: ["vip": "\(vip)"])
            do {
                try Announcement.send(for: vip)
            } catch {
                logger.warning("VIP announcement failed: \(error); neighbours learn the VIP when their caches expire", metadata: ["vip": "\(vip)"])
            }
        }
        for vip in plan.foreign { logger.info("VIP address already present (not added by lb; lb will not remove it)", metadata: ["vip": "\(vip)"]) }
        for vip in plan.remove {
            try links.remove(vip)
            logger.notice("VIP address removed (no longer in the config)", metadata: ["vip": "\(vip)"])
        }
        saved.vipAddresses = Array(Set(saved.vipAddresses).subtracting(plan.remove).subtracting(plan.vanished)).sorted()
        try state.save(saved)
        return added
    }

    /// Takes back addresses added by `apply` in this start (a later step failed).
    func rollBack(_ added: [VIPAddress]) {
        guard !added.isEmpty, let links = try? LinkAddresses() else { return }
        for vip in added {
            do {
                try links.remove(vip)
                logger.notice("VIP address removed again (start failed)", metadata: ["vip": "\(vip)"])
            } catch {
                logger.error("VIP address could not be removed: \(error)", metadata: ["vip": "\(vip)"])
            }
        }
        try? state.update { $0.vipAddresses = Array(Set($0.vipAddresses).subtracting(added)).sorted() }
    }
}

/// A reason not to start, found before anything was changed.
struct PreflightError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
