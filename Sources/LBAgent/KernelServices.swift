import Foundation
import LBConfig
import LBIPVS
import Logging

/// The agent's Layer 4 side: makes the kernel's IPVS table equal to a desired table the agent derives, sending only
/// the difference. Services lbd did not create are reported, never touched. Used only from the agent's queue, so
/// one netlink socket is never shared between threads.
final class KernelServices {
    private let kernel: IPVSKernel
    private let sysctl: SysctlAccess
    private let state: StateStore
    private let logger: Logger
    /// IPVS services lbd created (persisted in the state file).
    private(set) var owned: Set<IPVSServiceKey> = []
    /// Foreign services already reported, so the periodic check does not repeat itself.
    private var reportedForeign: Set<IPVSServiceKey> = []
    /// What the kernel held after the last successful apply. Health transitions plan against it instead of dumping
    /// the whole table each time; after a failure it is dropped, so the next change starts from a fresh dump.
    private var lastApplied: IPVSTable?

    init(kernel: IPVSKernel, sysctl: SysctlAccess, state: StateStore, logger: Logger) throws {
        self.kernel = kernel
        self.sysctl = sysctl
        self.state = state
        self.logger = logger
        try loadOwned()
    }

    /// The services lbd created, as the state file records them and the kernel still holds them.
    func loadOwned() throws {
        let present = try kernel.table()
        let saved = Set(try state.load().ipvsServices)
        owned = Set(present.services.keys.filter { saved.contains($0.description) })
        lastApplied = nil
    }

    func table() throws -> IPVSTable { try kernel.table() }

    /// The kernel settings the Layer 4 modes depend on: NAT and SNAT forward packets (`ip_forward`); SNAT needs
    /// IPVS connections tracked by netfilter (`vs.conntrack`) so its source-NAT rules see them. Returns the settings
    /// changed with their previous values (for a roll-back).
    @discardableResult
    func applySysctls(for services: [VirtualService]) throws -> [(path: String, previous: String)] {
        var wanted: [(String, String)] = []
        if services.contains(where: { $0.mode == .l4NAT || $0.mode == .l4SNAT }) {
            wanted.append(("/proc/sys/net/ipv4/ip_forward", "1"))
        }
        if services.contains(where: { $0.mode == .l4SNAT }) {
            wanted.append(("/proc/sys/net/ipv4/vs/conntrack", "1"))
        }
        var changed: [(path: String, previous: String)] = []
        for (path, value) in wanted {
            let current = sysctl.read(path)
            guard current != value else { continue }
            try sysctl.write(path, value)
            // Read back: a value the kernel silently refused is as bad as a failed write.
            let now = sysctl.read(path)
            guard now == value else { throw SysctlError(path: path, value: value, reason: "reads back as \(now ?? "nothing")") }
            changed.append((path, current ?? "0"))
            logger.notice("kernel setting changed", metadata: ["setting": "\(path)", "value": "\(value)"])
        }
        return changed
    }

    func restoreSysctls(_ changed: [(path: String, previous: String)]) {
        for (path, previous) in changed.reversed() {
            do {
                try sysctl.write(path, previous)
                logger.notice("kernel setting restored", metadata: ["setting": "\(path)", "value": "\(previous)"])
            } catch {
                logger.error("kernel setting could not be restored: \(error)")
            }
        }
    }

    /// Connection timeouts and the sync daemon, when the config sets them. A running daemon with other settings
    /// is reported and left alone (it may belong to keepalived).
    func applySettings(of configuration: Configuration) throws {
        let settings = configuration.ipvs
        if settings.tcpTimeout != nil || settings.tcpFinTimeout != nil || settings.udpTimeout != nil {
            func seconds(_ value: Duration?) -> UInt32 { value.map { UInt32($0.components.seconds) } ?? 0 }
            let wanted = IPVSTimeouts(tcp: seconds(settings.tcpTimeout), tcpFin: seconds(settings.tcpFinTimeout),
                                      udp: seconds(settings.udpTimeout))
            let current = try kernel.timeouts()
            if (wanted.tcp != 0 && wanted.tcp != current.tcp) || (wanted.tcpFin != 0 && wanted.tcpFin != current.tcpFin)
                || (wanted.udp != 0 && wanted.udp != current.udp) {
                try kernel.setTimeouts(wanted)
                logger.notice("IPVS timeouts set", metadata: ["tcp": "\(wanted.tcp)", "tcp_fin": "\(wanted.tcpFin)", "udp": "\(wanted.udp)"])
            }
        }
        for wanted in Self.syncDaemons(for: configuration) {
            let running = try kernel.syncDaemons()
            if running.contains(wanted) { continue }
            if let other = running.first(where: { $0.role == wanted.role }) {
                logger.warning("an IPVS sync daemon with other settings is running; left alone",
                               metadata: ["running": "\(other.role) on \(other.interface) id \(other.syncID)"])
                continue
            }
            try kernel.startSyncDaemon(wanted)
            logger.notice("IPVS sync daemon started", metadata: ["role": "\(wanted.role)", "interface": "\(wanted.interface)",
                                                                  "sync_id": "\(wanted.syncID)"])
        }
    }

    /// The sync daemons a config asks for. A pair runs both roles on both nodes, so that whichever node is master
    /// sends its connection table and the other already holds it at takeover — and, after a failback, the old
    /// master holds what the new one accepted meanwhile (keepalived issue 1076: connections lost on failback).
    static func syncDaemons(for configuration: Configuration) -> [IPVSSyncDaemon] {
        if let ha = configuration.highAvailability, let interface = ha.connectionSyncInterface {
            return [.master, .backup].map { IPVSSyncDaemon(role: $0, interface: interface, syncID: UInt32(ha.virtualRouterID)) }
        }
        guard let daemon = configuration.ipvs.syncDaemon else { return [] }
        return [IPVSSyncDaemon(role: daemon.role == .master ? .master : .backup, interface: daemon.interface,
                               syncID: UInt32(daemon.syncID))]
    }

    /// Makes the kernel hold `desired`. With a `scope` (one VIP's services) and a record of the last apply, only
    /// that part is planned, against the record; otherwise against a fresh dump. Returns the operations sent.
    @discardableResult
    func apply(_ desired: IPVSTable, scope: Set<IPVSServiceKey>? = nil) throws -> [IPVSOperation] {
        if let scope, let lastApplied {
            return try send(desired, from: lastApplied, scope: scope)
        }
        return try send(desired, from: kernel.table(), scope: nil)
    }

    /// The periodic check: plans from a fresh dump and repairs what someone changed behind lbd's back (e.g.
    /// `ipvsadm -C`). Returns the operations sent (none when the kernel matches).
    @discardableResult
    func repair(_ desired: IPVSTable) throws -> [IPVSOperation] {
        let actual = try kernel.table()
        var relevant = actual
        relevant.services = actual.services.filter { desired.services[$0.key] != nil || owned.contains($0.key) }
        if relevant == desired {
            lastApplied = desired
            return []
        }
        return try send(desired, from: actual, scope: nil)
    }

    /// Puts back a table the kernel held before a change that failed: lb's services are returned to what `before`
    /// had; services lb created during the change are deleted; foreign services are not touched.
    func restore(_ before: IPVSTable, ownedBefore: Set<IPVSServiceKey>) throws {
        let touched = owned.union(ownedBefore)
        var target = IPVSTable()
        target.services = before.services.filter { touched.contains($0.key) }
        let (operations, _) = IPVSPlanner.plan(from: try kernel.table(), to: target, owned: touched)
        for operation in operations { logger.info("IPVS (roll-back): \(operation)") }
        lastApplied = nil
        try kernel.apply(operations)
        owned = ownedBefore
        try state.update { $0.ipvsServices = ownedBefore.map(\.description).sorted() }
    }

    private func send(_ desired: IPVSTable, from actual: IPVSTable, scope: Set<IPVSServiceKey>?) throws -> [IPVSOperation] {
        let (operations, foreign) = IPVSPlanner.plan(from: actual, to: desired, owned: owned, scope: scope)
        for key in foreign where !reportedForeign.contains(key) {
            logger.notice("IPVS service not created by lb left alone", metadata: ["service": "\(key)"])
            reportedForeign.insert(key)
        }
        guard !operations.isEmpty else {
            if scope == nil { lastApplied = desired }
            return []
        }
        for operation in operations { logger.info("IPVS: \(operation)") }
        let before = lastApplied
        lastApplied = nil
        let adding = Set(desired.services.keys).subtracting(owned)
        if !adding.isEmpty {
            // Recorded before the kernel has them: if lbd dies in between, the next start finds them absent and
            // drops them from the record.
            owned.formUnion(adding)
            let names = owned.map(\.description).sorted()
            try state.update { $0.ipvsServices = names }
        }
        try kernel.apply(operations)
        if let scope, var table = before {
            for key in scope { table.services[key] = desired.services[key] }
            lastApplied = table
        } else {
            lastApplied = desired
        }
        let deleted = operations.compactMap { operation -> IPVSServiceKey? in
            if case .deleteService(let service) = operation { return IPVSServiceKey(service) }
            return nil
        }
        if !deleted.isEmpty {
            owned.subtract(deleted)
            let names = owned.map(\.description).sorted()
            try state.update { $0.ipvsServices = names }
        }
        return operations
    }

    /// Deletes every IPVS service lbd created (for --cleanup-on-stop).
    func removeAll(_ desired: IPVSTable) throws {
        let actual = try kernel.table()
        let mine = owned.union(desired.services.keys)
        let operations = IPVSPlanner.plan(from: actual, to: IPVSTable(), owned: mine).operations
        for operation in operations { logger.info("IPVS: \(operation)") }
        try kernel.apply(operations)
        lastApplied = nil
        owned = []
        try state.update { $0.ipvsServices = [] }
    }

    /// The kernel's totals for the given services.
    func serviceCounters(_ desired: IPVSTable) -> [(String, IPVSCounters)] {
        let mine = Set(desired.services.keys)
        return ((try? kernel.servicesWithCounters()) ?? [])
            .filter { mine.contains(IPVSServiceKey($0.0)) }
            .map { ($0.0.description, $0.1) }
            .sorted { $0.0 < $1.0 }
    }

    /// Counters of each destination ("address:port") of a service's first VIP port.
    func destinationCounters(of service: VirtualService) -> [String: IPVSCounters] {
        guard let first = IPVSPlanner.desiredTable(for: [service]).services.values.min(by: { $0.service.port < $1.service.port }),
              let found = try? kernel.destinations(of: first.service)
        else { return [:] }
        return Dictionary(found.map { ($0.0.address.withPort($0.0.port), $0.1) }, uniquingKeysWith: { a, _ in a })
    }
}
