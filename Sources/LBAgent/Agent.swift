import Foundation
import LBConfig
import LBControl
import LBHealth
import LBIPVS
import LBLinks
import LBRuntime
import Logging

/// The one owner of lbd's runtime state: the config in force, each real server's health, the operator's overrides
/// and what was applied. Every event — a health transition, an lbctl request, a reload, the periodic drift check —
/// is handled on one serial queue (a thread of its own, never a proxy event loop), one at a time and to its end,
/// so nothing is kept in step by hand and no change interleaves with another. Each change derives the effective
/// membership of the servers concerned (`RuntimeState.membership`, one rule) and hands it to the effectors: the
/// proxy's pools and the kernel's IPVS table. `lbctl status` and the metrics read the same derivation.
public final class Agent: @unchecked Sendable {
    // Everything below is read and written only on `queue`.
    let queue = DispatchQueue(label: "lb.agent")
    var state: RuntimeState
    /// The config file's text as lbd last loaded it: `lbctl mode` edits this text, and refuses if the file on disk
    /// has changed since (an edit not yet reloaded would otherwise be applied behind the operator's back).
    var loadedConfigText: String?
    let configPath: String
    let effectors: Effectors
    let store: StateStore
    let logger: Logger
    let addresses: HostAddresses
    var kernel: KernelServices?
    /// This node's name in a pair (`lbd --node`, default the host name).
    let node: String
    var heartbeatTimer: DispatchSourceTimer?
    /// The periodic drift checks run since start, and how many of them repaired something (metrics).
    var driftCounts = DriftCounts()
    var peerWasReachable = false

    public init(configuration: Configuration, configText: String?, configPath: String, effectors: Effectors,
                state store: StateStore, logger: Logger, node: String = "") {
        self.node = node
        self.state = RuntimeState(configuration: configuration)
        self.loadedConfigText = configText
        self.configPath = configPath
        self.effectors = effectors
        self.store = store
        self.logger = logger
        self.addresses = HostAddresses(kernel: effectors.addresses, state: store, logger: logger)
    }

    /// Runs `body` on the agent's queue and returns its result.
    func onQueue<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            queue.async { continuation.resume(returning: body()) }
        }
    }

    // MARK: Events

    /// A health transition from the checkers (called on an event loop: it only queues the event, in order).
    public func healthChanged(_ transition: HealthTransition) {
        queue.async { self.recordHealth(transition) }
    }

    /// Real traffic found a server failing (health_check.observe): down now, like a failed check, and its check
    /// must pass `rise` times to bring it back. Called on an event loop: it only queues the event.
    public func observedFailure(service: String, server: String, reason: String) {
        queue.async {
            let key = ServerKey(service: service, server: server)
            guard self.state.contains(key), self.state.healthy(key) else { return }
            self.logger.error("real server down", metadata: ["service": "\(service)", "server": "\(server)", "reason": "\(reason)"])
            self.effectors.health.markDown(service: service, server: server)
            self.recordHealth(HealthTransition(service: service, server: server, healthy: false, reason: reason))
        }
    }

    /// The same, returning once the transition is applied (tests).
    public func healthChangedAndApplied(_ transition: HealthTransition) async {
        await onQueue { self.recordHealth(transition) }
    }

    public func handle(_ request: ControlRequest) async -> ControlResponse {
        await onQueue { self.handleNow(request) }
    }

    /// The periodic check that the kernel still holds what lbd put there; each repair is logged.
    public func repairDrift() async {
        await onQueue { self.repairDriftNow() }
    }

    /// Every service's status, for metrics.
    public func statusReport() async -> [ServiceStatus] {
        await onQueue { self.status(only: nil) }
    }

    /// This node's place in a pair (nil on a single node), for metrics and the status page.
    public func pairStatus() async -> PairReport? {
        await onQueue { self.pairReport() }
    }

    /// The drift checks run so far and how many found something to repair.
    public func driftCheckCounts() async -> DriftCounts {
        await onQueue { self.driftCounts }
    }

    /// IPVS totals per kernel service ("10.0.0.40:104/tcp").
    public func ipvsCounters() async -> [(String, IPVSCounters)] {
        await onQueue { self.kernel?.serviceCounters(self.desiredIPVSTable()) ?? [] }
    }

    /// A copy of the runtime state (tests, diagnostics).
    /// The latest health transitions, newest first, for the status page.
    public func recentTransitions(limit: Int = 20) async -> [TransitionStatus] {
        await onQueue {
            self.state.recentTransitions.suffix(limit).reversed().map { transition in
                TransitionStatus(time: transition.record.since.map(Self.timestamp) ?? "-", service: transition.key.service,
                                 server: transition.key.server, health: transition.record.healthy ? "up" : "down",
                                 reason: transition.record.reason)
            }
        }
    }

    public func snapshot() async -> RuntimeState {
        await onQueue { self.state }
    }

    // MARK: Handling, on the queue

    private func recordHealth(_ transition: HealthTransition) {
        let key = ServerKey(service: transition.service, server: transition.server)
        guard state.setHealth(key, HealthRecord(healthy: transition.healthy, reason: transition.reason, since: Date())) else { return }
        do {
            try publish(service: transition.service)
        } catch {
            logger.error("IPVS update failed: \(error)", metadata: ["service": "\(transition.service)", "server": "\(transition.server)"])
        }
    }

    private func handleNow(_ request: ControlRequest) -> ControlResponse {
        switch request.command {
        case .status:
            return ControlResponse(ok: true, status: status(only: request.service), pair: pairReport())
        case .haStandby, .haResume:
            return setStandbyNow(request.command == .haStandby)
        case .drain, .halt, .online:
            let admin: AdminState = request.command == .drain ? .drain : request.command == .halt ? .halt : .online
            return setAdmin(admin, service: request.service, server: request.server)
        case .reload:
            return reloadNow()
        case .mode:
            guard let service = request.service, let mode = request.mode.flatMap(ForwardingMode.init(rawValue:)) else {
                return ControlResponse(ok: false, message: "name a virtual service and one of: \(ForwardingMode.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return switchModeNow(of: service, to: mode)
        case .audit:
            // lbd answers it from its audit trail before the agent is asked (LBD's OperatorActions).
            return ControlResponse(ok: false, message: "the audit trail is kept by lbd, not the agent")
        }
    }

    /// Hands one service's derived membership to the effector that serves it: its proxy pool, or its IPVS services
    /// (planned for that VIP alone).
    func publish(service name: String) throws {
        guard let service = state.service(named: name) else { return }
        let membership = state.membership(of: service)
        if service.mode.isLayer7 {
            effectors.proxy.apply([name: membership])
        } else if let kernel {
            // Only this VIP's part of the table is derived and planned (a transition must not cost the whole table).
            let desired = desiredIPVSTable(only: [service])
            try kernel.apply(desired, scope: Set(desired.services.keys))
        }
    }

    /// The IPVS table the state in force asks for: every Layer 4 service, each server at its derived membership
    /// (absent when not present, at its derived weight otherwise), the fallback where no server takes new
    /// connections.
    func desiredIPVSTable(for state: RuntimeState? = nil, only subset: [VirtualService]? = nil) -> IPVSTable {
        let state = state ?? self.state
        var weights: [String: [String: UInt32]] = [:]
        var removed: [String: Set<String>] = [:]
        var fallbacks: Set<String> = []
        let services = (subset ?? state.configuration.virtualServices).filter { $0.mode.isLayer4 }
        for service in services {
            let membership = state.membership(of: service)
            for (server, member) in membership.servers {
                if member.present {
                    weights[service.name, default: [:]][server.name] = UInt32(member.weight)
                } else {
                    removed[service.name, default: []].insert(server.name)
                }
            }
            if membership.fallbackActive { fallbacks.insert(service.name) }
        }
        return IPVSPlanner.desiredTable(for: services, weights: weights, removed: removed, fallbacks: fallbacks)
    }

    private func setAdmin(_ admin: AdminState, service: String?, server: String?) -> ControlResponse {
        guard let server else { return ControlResponse(ok: false, message: "name a real server") }
        let services = state.configuration.virtualServices
        if let service, !services.contains(where: { $0.name == service }) {
            return ControlResponse(ok: false, message: "no virtual service named \"\(service)\"")
        }
        // Either one VIP's server, or (no service) that server wherever it appears: node maintenance.
        let targets = services.filter { candidate in
            (service == nil || candidate.name == service) && candidate.realServers.contains { $0.name == server }
        }
        guard !targets.isEmpty else {
            return ControlResponse(ok: false, message: "no real server named \"\(server)\"" + (service.map { " in \"\($0)\"" } ?? ""))
        }
        var done: [String] = []
        var failure: String?
        for target in targets {
            let key = ServerKey(service: target.name, server: server)
            let before = state.admin(key), beforeChange = state.overrideChanges[key]
            // Later than the change it replaces even if this clock lags the peer's (which may have made that one).
            let at = max(Self.nowMilliseconds(), (beforeChange?.at ?? 0) + 1)
            state.setAdmin(key, change: OverrideChange(admin: admin, at: at, node: node))
            do {
                try publish(service: target.name)
            } catch {
                // Nothing half-applied: this service keeps its previous override.
                state.restoreAdmin(key, before, change: beforeChange)
                try? publish(service: target.name)
                failure = "\(target.name): the kernel refused: \(error)"
                break
            }
            done.append(target.name)
            logger.notice("real server \(admin.rawValue)", metadata: ["service": "\(target.name)", "server": "\(server)"])
        }
        if !done.isEmpty { tellPeer() }
        var saveError: String?
        do {
            try saveOverrides()
        } catch {
            saveError = "\(error)"
            logger.error("override applied but not saved: \(error)")
        }
        if let failure {
            return ControlResponse(ok: false, message: failure + (done.isEmpty ? "" : " (already done: \(done.joined(separator: ", ")))"))
        }
        if let saveError {
            return ControlResponse(ok: false, message: "\(server): \(admin.rawValue) in \(done.joined(separator: ", ")), but not saved (a restart would forget it): \(saveError)")
        }
        return ControlResponse(ok: true, message: "\(server): \(admin.rawValue) in \(done.joined(separator: ", "))")
    }

    func saveOverrides() throws {
        let overrides = state.overridesByService, changes = state.overrideChangesByService
        try store.update {
            $0.overrides = overrides
            $0.overrideChanges = changes
        }
    }

    // MARK: Status

    static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }

    func status(only name: String?) -> [ServiceStatus] {
        let proxyCounters = effectors.proxy.counters()
        return state.configuration.virtualServices.filter { name == nil || $0.name == name }.map { service in
            let unchecked = service.healthCheck.probe == .none
            let membership = state.membership(of: service)
            let firstPort = service.ports.first?.lower ?? 0
            let kernelCounters = service.mode.isLayer4 ? kernel?.destinationCounters(of: service) ?? [:] : [:]
            let servers = membership.servers.map { server, member -> ServerStatus in
                let key = ServerKey(service: service.name, server: server.name)
                let address = server.address.withPort(server.port(forVIPPort: firstPort))
                var counters = ServerCounters()
                if service.mode.isLayer4 {
                    if let found = kernelCounters[address] {
                        counters = ServerCounters(activeConnections: Int(found.activeConnections), totalConnections: Int(found.connections),
                                                  bytesToServer: found.incomingBytes, bytesFromServer: found.outgoingBytes)
                    }
                } else if let found = proxyCounters[service.name]?[server.name] {
                    counters = found
                }
                let record = state.health[key]
                let health = unchecked ? "unchecked" : record.map { $0.healthy ? "up" : "down" } ?? "checking"
                let serverState: String
                switch member.reason {
                case .halt: serverState = "halt"
                case .drain: serverState = "drain"
                case .down: serverState = "down"
                case .serving, .zeroWeight: serverState = health
                }
                let checkPort = service.healthCheck.port ?? server.port ?? firstPort
                return ServerStatus(name: server.name, address: address, health: health,
                                    admin: state.admin(key), weight: member.weight,
                                    activeConnections: counters.activeConnections, totalConnections: counters.totalConnections,
                                    bytesToServer: counters.bytesToServer, bytesFromServer: counters.bytesFromServer,
                                    state: serverState, reason: record?.reason, since: record?.since.map(Self.timestamp),
                                    configuredWeight: server.weight,
                                    check: unchecked ? "none" : "\(service.healthCheck.probe.typeName) \(server.address.withPort(checkPort))",
                                    sessions: counters.pinnedSessions)
            }
            let usable = membership.servers.filter { $0.membership.acceptsNew }.count
            return ServiceStatus(name: service.name, mode: service.mode.rawValue, vip: service.address.description,
                                 ports: service.ports.summary, transport: service.transport.rawValue,
                                 state: usable == servers.count ? "up" : usable == 0 ? "down" : "degraded",
                                 servers: servers)
        }
    }
}

/// The periodic check that the kernel still holds what lbd put there (IPVS, VIP addresses, lb's netfilter chains):
/// how often it ran, and how often it found a difference and repaired it. Something that keeps undoing lbd's work
/// (a script, another tool) shows as repairs growing.
public struct DriftCounts: Sendable, Equatable {
    public var checks = 0
    public var repairs = 0
}
