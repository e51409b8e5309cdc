import LBConfig
import LBLinks
import Logging

/// The agent's VIP addresses: adds the ones the config puts on an interface, announces each new one, removes
/// only those lbd added itself (recorded in the state file) once the config no longer has them.
struct HostAddresses {
    let kernel: AddressKernel
    let state: StateStore
    let logger: Logger

    /// Interfaces named by the config must exist: checked before anything is changed.
    func preflight(_ services: [VirtualService]) throws {
        for vip in VIPAddressPlanner.desired(for: services).sorted() where !kernel.interfaceExists(vip.interface) {
            throw PreflightError("VIP \(vip.address): interface \(vip.interface) does not exist on this host (see `ip link`); fix `interface:` in the config")
        }
    }

    /// Makes the host hold the addresses of `services`. With `removing: false` addresses no longer wanted stay (a
    /// change adds first and removes last, so a failure in between leaves the old services whole).
    /// Returns the addresses added by this call.
    @discardableResult
    func apply(_ services: [VirtualService], removing: Bool = true) throws -> [VIPAddress] {
        let desired = VIPAddressPlanner.desired(for: services)
        var saved = try state.load()
        let plan = VIPAddressPlanner.plan(desired: desired, present: kernel.present(), owned: Set(saved.vipAddresses))
        let remove = removing ? plan.remove : []
        guard !(plan.add.isEmpty && remove.isEmpty && plan.vanished.isEmpty) else { return [] }
        var added: [VIPAddress] = []
        for vip in plan.add {
            // Recorded first: if lbd dies right after the add, the next start still knows the address is lb's.
            saved.vipAddresses = Array(Set(saved.vipAddresses).union([vip])).sorted()
            try state.save(saved)
            do {
                try kernel.add(vip)
            } catch {
                for done in added { try? kernel.remove(done) }
                saved.vipAddresses = Array(Set(saved.vipAddresses).subtracting(added + [vip])).sorted()
                try? state.save(saved)
                throw error
            }
            added.append(vip)
            logger.notice("VIP address added", metadata: ["vip": "\(vip)"])
            do {
                try kernel.announce(vip)
            } catch {
                logger.warning("VIP announcement failed: \(error); neighbours learn the VIP when their caches expire", metadata: ["vip": "\(vip)"])
            }
        }
        for vip in plan.foreign { logger.info("VIP address already present (not added by lb; lb will not remove it)", metadata: ["vip": "\(vip)"]) }
        for vip in remove {
            try kernel.remove(vip)
            logger.notice("VIP address removed (no longer in the config)", metadata: ["vip": "\(vip)"])
        }
        saved.vipAddresses = Array(Set(saved.vipAddresses).subtracting(remove).subtracting(plan.vanished)).sorted()
        try state.save(saved)
        return added
    }

    /// Takes back addresses added in a change that failed.
    func rollBack(_ added: [VIPAddress]) {
        guard !added.isEmpty else { return }
        for vip in added {
            do {
                try kernel.remove(vip)
                logger.notice("VIP address removed again (the change failed)", metadata: ["vip": "\(vip)"])
            } catch {
                logger.error("VIP address could not be removed: \(error)", metadata: ["vip": "\(vip)"])
            }
        }
        try? state.update { $0.vipAddresses = Array(Set($0.vipAddresses).subtracting(added)).sorted() }
    }
}

extension Configuration {
    /// The services whose VIP addresses lbd itself puts on their interfaces: all of them on a single node; none in a
    /// pair, where keepalived moves every VIP with the master role.
    var servicesWithVIPsAddedByLB: [VirtualService] { highAvailability == nil ? virtualServices : [] }
}

/// A reason not to start or change, found before anything was changed.
public struct PreflightError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
