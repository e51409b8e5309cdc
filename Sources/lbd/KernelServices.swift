import Foundation
import LBConfig
import LBIPVS
import Logging

/// The agent's Layer 4 side: keeps the kernel's IPVS table equal to what the config and the health checks ask for.
/// Every change is planned from a dump (or from what lbd last applied) and only the difference is sent; services
/// lbd did not create are reported, never touched. Netlink requests are serialized here (health transitions arrive
/// from several threads).
final class KernelServices: @unchecked Sendable {
    private let client: IPVSClient
    private var services: [VirtualService]
    private var settings: IPVSSettings
    private let state: StateStore
    private let logger: Logger
    private let lock = NSLock()
    /// service name → servers currently failing their checks (weight 0 or removed, per on_server_failure).
    private var down: [String: Set<String>] = [:]
    /// Operator overrides: service name → server → drain (weight 0) or halt (removed).
    private var admin: [String: [String: AdminState]] = [:]
    private var owned: Set<IPVSServiceKey> = []
    /// Foreign services already reported, so the periodic check does not repeat itself.
    private var reportedForeign: Set<IPVSServiceKey> = []
    /// What the kernel held after the last successful apply. Health transitions plan against it instead of dumping
    /// the whole table each time; after a failure it is dropped, so the next change starts from a fresh dump.
    private var lastApplied: IPVSTable?

    /// Opens IPVS; fails (changing nothing) when the kernel has none.
    init(configuration: Configuration, state: StateStore, logger: Logger) throws {
        self.client = try IPVSClient()
        self.services = configuration.virtualServices.filter { $0.mode.isLayer4 }
        self.settings = configuration.ipvs
        self.state = state
        self.logger = logger
    }

    /// The kernel settings the Layer 4 modes depend on: NAT and SNAT forward packets (`ip_forward`); SNAT needs
    /// IPVS connections tracked by netfilter (`vs.conntrack`) so its source-NAT rules see them.
    func applySysctls() throws {
        var settings: [(String, String)] = []
        if services.contains(where: { $0.mode == .l4NAT || $0.mode == .l4SNAT }) {
            settings.append(("/proc/sys/net/ipv4/ip_forward", "1"))
        }
        if services.contains(where: { $0.mode == .l4SNAT }) {
            settings.append(("/proc/sys/net/ipv4/vs/conntrack", "1"))
        }
        for (path, value) in settings {
            let current = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            guard current != value else { continue }
            do {
                try value.write(toFile: path, atomically: false, encoding: .utf8)
            } catch {
                throw SysctlError(path: path, value: value, reason: "\(error.localizedDescription)")
            }
            // Read back: a value the kernel silently refused is as bad as a failed write.
            let now = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            guard now == value else { throw SysctlError(path: path, value: value, reason: "reads back as \(now ?? "nothing")") }
            logger.notice("kernel setting changed", metadata: ["setting": "\(path)", "value": "\(value)"])
        }
    }

    /// Connection timeouts and the sync daemon, when the config sets them. A running daemon with other settings
    /// is reported and left alone (it may belong to keepalived).
    func applyIPVSSettings() throws {
        if settings.tcpTimeout != nil || settings.tcpFinTimeout != nil || settings.udpTimeout != nil {
            func seconds(_ value: Duration?) -> UInt32 { value.map { UInt32($0.components.seconds) } ?? 0 }
            let wanted = IPVSTimeouts(tcp: seconds(settings.tcpTimeout), tcpFin: seconds(settings.tcpFinTimeout),
                                      udp: seconds(settings.udpTimeout))
            let current = try client.timeouts()
            if (wanted.tcp != 0 && wanted.tcp != current.tcp) || (wanted.tcpFin != 0 && wanted.tcpFin != current.tcpFin)
                || (wanted.udp != 0 && wanted.udp != current.udp) {
                try client.setTimeouts(wanted)
                logger.notice("IPVS timeouts set", metadata: ["tcp": "\(wanted.tcp)", "tcp_fin": "\(wanted.tcpFin)", "udp": "\(wanted.udp)"])
            }
        }
        if let daemon = settings.syncDaemon {
            let wanted = IPVSSyncDaemon(role: daemon.role == .master ? .master : .backup, interface: daemon.interface,
                                        syncID: UInt32(daemon.syncID))
            let running = try client.syncDaemons()
            if running.contains(wanted) { return }
            if let other = running.first(where: { $0.role == wanted.role }) {
                logger.warning("an IPVS sync daemon with other settings is running; left alone",
                               metadata: ["running": "\(other.role) on \(other.interface) id \(other.syncID)"])
                return
            }
            try client.startSyncDaemon(wanted)
            logger.notice("IPVS sync daemon started", metadata: ["role": "\(daemon.role.rawValue)", "interface": "\(daemon.interface)",
                                                                  "sync_id": "\(daemon.syncID)"])
        }
    }

    /// Makes the kernel match, planning from a fresh dump. If the kernel refuses part of it, what this call applied
    /// is undone (planning back to the dump taken first), so the kernel is left as it was, and the error says what
    /// was refused.
    func reconcileOrRollBack() throws {
        lock.lock()
        defer { lock.unlock() }
        let before = try client.table()
        let saved = try state.load()
        owned = Set(before.services.keys.filter { saved.ipvsServices.contains($0.description) })
        do {
            try apply(from: before)
        } catch {
            let undo = IPVSPlanner.plan(from: try client.table(), to: before, owned: Set(IPVSPlanner.desiredTable(for: services).services.keys))
            do {
                try client.apply(undo.operations)
                logger.notice("IPVS changes of this start undone", metadata: ["operations": "\(undo.operations.count)"])
            } catch {
                logger.error("IPVS changes of this start could not all be undone: \(error)")
            }
            throw error
        }
    }

    /// Must hold `lock`.
    @discardableResult
    private func apply(from actual: IPVSTable, scope: Set<IPVSServiceKey>? = nil) throws -> [IPVSOperation] {
        var weights: [String: [String: UInt32]] = [:]
        var removed: [String: Set<String>] = [:]
        for service in services {
            for (server, state) in admin[service.name] ?? [:] {
                if state == .halt { removed[service.name, default: []].insert(server) }
                if state == .drain { weights[service.name, default: [:]][server] = 0 }
            }
            for server in down[service.name] ?? [] {
                if service.onServerFailure == .remove { removed[service.name, default: []].insert(server) }
                else { weights[service.name, default: [:]][server] = 0 }
            }
        }
        let desired = IPVSPlanner.desiredTable(for: services, weights: weights, removed: removed)
        let (operations, foreign) = IPVSPlanner.plan(from: actual, to: desired, owned: owned, scope: scope)
        for key in foreign where !reportedForeign.contains(key) {
            logger.notice("IPVS service not created by lb left alone", metadata: ["service": "\(key)"])
            reportedForeign.insert(key)
        }
        for operation in operations { logger.info("IPVS: \(operation)") }
        lastApplied = nil
        if !desired.services.keys.allSatisfy(owned.contains) {
            // Recorded before the kernel has them: a crash in between leaves lb owning nothing it did not make
            // only if the adds then fail, which the next start cleans up by dropping absent entries.
            owned.formUnion(desired.services.keys)
            let names = owned.map(\.description).sorted()
            try state.update { $0.ipvsServices = names }
        }
        try client.apply(operations)
        lastApplied = desired
        return operations
    }

    /// Operator overrides restored from the state file, before the first reconcile.
    func restoreAdmin(_ overrides: [String: [String: AdminState]]) {
        lock.lock()
        defer { lock.unlock() }
        admin = overrides
    }

    /// A reload: the new config's Layer 4 services replace the old ones; the kernel is planned from a fresh dump, so
    /// services lbd created and the config dropped are deleted, and only the differences are sent.
    func update(to configuration: Configuration) throws {
        lock.lock()
        services = configuration.virtualServices.filter { $0.mode.isLayer4 }
        settings = configuration.ipvs
        let names = Set(services.map(\.name))
        down = down.filter { names.contains($0.key) }
        admin = admin.filter { names.contains($0.key) }
        lastApplied = nil  // it describes the old config: plan from a dump
        lock.unlock()
        try applySysctls()
        try applyIPVSSettings()
        try reconcile()
    }

    /// The periodic check: plans from a fresh dump and repairs what someone changed behind lbd's back (e.g.
    /// `ipvsadm -C`), logging each repair. Returns the operations sent.
    @discardableResult
    func reconcile() throws -> [IPVSOperation] {
        lock.lock()
        defer { lock.unlock() }
        let actual = try client.table()
        if let lastApplied {
            // Services lbd neither wants nor owns are not its business.
            var relevant = actual
            relevant.services = actual.services.filter { lastApplied.services[$0.key] != nil || owned.contains($0.key) }
            if relevant == lastApplied { return [] }
        }
        return try apply(from: actual)
    }

    /// drain / halt / online from lbctl: one plan for the VIP concerned; the kernel's refusal is thrown.
    func setAdmin(service: String, server: String, _ state: AdminState) throws {
        guard let virtualService = services.first(where: { $0.name == service }) else { return }
        lock.lock()
        defer { lock.unlock() }
        admin[service, default: [:]][server] = state == .online ? nil : state
        try applyChange(to: virtualService)
    }

    /// Must hold `lock`. One VIP changed: plan only its IPVS services against what lbd last applied (or, after a
    /// failure, everything against a fresh dump).
    private func applyChange(to service: VirtualService) throws {
        guard let lastApplied else { try apply(from: client.table()); return }
        try apply(from: lastApplied, scope: Set(IPVSPlanner.desiredTable(for: [service]).services.keys))
    }

    /// The kernel's destinations of a service's first VIP port, with counters, keyed by "address:port".
    func destinationStatus(of service: VirtualService) -> [String: (IPVSDestination, IPVSCounters)] {
        lock.lock()
        defer { lock.unlock() }
        guard let first = IPVSPlanner.desiredTable(for: [service]).services.values.min(by: { $0.service.port < $1.service.port }),
              let found = try? client.destinations(of: first.service)
        else { return [:] }
        return Dictionary(found.map { ($0.0.address.withPort($0.0.port), $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// Deletes every IPVS service lbd created (for --cleanup-on-stop).
    func removeAll() throws {
        lock.lock()
        defer { lock.unlock() }
        let actual = try client.table()
        let mine = owned.union(IPVSPlanner.desiredTable(for: services).services.keys)
        let operations = IPVSPlanner.plan(from: actual, to: IPVSTable(), owned: mine).operations
        for operation in operations { logger.info("IPVS: \(operation)") }
        try client.apply(operations)
        lastApplied = nil
        owned = []
        try state.update { $0.ipvsServices = [] }
    }

    /// The kernel's totals for the services lbd manages.
    func serviceCounters() -> [(String, IPVSCounters)] {
        lock.lock()
        defer { lock.unlock() }
        let mine = Set(IPVSPlanner.desiredTable(for: services).services.keys)
        return ((try? client.servicesWithCounters()) ?? [])
            .filter { mine.contains(IPVSServiceKey($0.0)) }
            .map { ($0.0.description, $0.1) }
            .sorted { $0.0 < $1.0 }
    }

    func setHealthy(service: String, server: String, _ healthy: Bool) {
        guard let virtualService = services.first(where: { $0.name == service }) else { return }
        lock.lock()
        defer { lock.unlock() }
        if healthy { down[service, default: []].remove(server) } else { down[service, default: []].insert(server) }
        do {
            try applyChange(to: virtualService)
        } catch {
            logger.error("IPVS update failed: \(error)", metadata: ["service": "\(service)", "server": "\(server)"])
        }
    }
}

struct SysctlError: Error, CustomStringConvertible {
    let path: String
    let value: String
    let reason: String
    var description: String { "cannot set \(path) to \(value): \(reason)" }
}
