import Foundation
import LBConfig
import LBControl
import LBHealth
import LBIPVS
import LBProxy
import Logging

/// The one place that knows both data paths: answers lbctl's requests, keeps operator overrides (persisted in the
/// state file so they survive restarts), tracks health, and steers the proxy's pools and the kernel's IPVS.
final class Agent: @unchecked Sendable {
    private var configuration: Configuration
    let configPath: String
    let engine: ProxyEngine
    private var kernel: KernelServices?
    let state: StateStore
    let logger: Logger
    /// Set once the health monitor exists (it reports to the agent).
    var health: HealthMonitor?
    /// One reload or mode switch at a time.
    private var changing = false
    private let lock = NSLock()
    /// service → server → healthy; absent until the first transition (servers start as up).
    private var healthState: [String: [String: Bool]] = [:]
    private var overrides: [String: [String: AdminState]] = [:]

    init(configuration: Configuration, configPath: String, engine: ProxyEngine, kernel: KernelServices?, state: StateStore,
         logger: Logger) {
        self.configuration = configuration
        self.configPath = configPath
        self.engine = engine
        self.kernel = kernel
        self.state = state
        self.logger = logger
    }

    /// Overrides saved by an earlier run, for servers that still exist; applied to the proxy's pools (the kernel
    /// got them before its first reconcile).
    func restoreOverrides() throws {
        let saved = try state.load().overrides
        var kept: [String: [String: AdminState]] = [:]
        for (service, servers) in saved {
            guard let virtualService = configuration.virtualServices.first(where: { $0.name == service }) else { continue }
            for (server, admin) in servers where virtualService.realServers.contains(where: { $0.name == server }) {
                kept[service, default: [:]][server] = admin
                engine.pool(for: service)?.setAdmin(server, admin)
                logger.notice("operator override restored", metadata: ["service": "\(service)", "server": "\(server)", "state": "\(admin.rawValue)"])
            }
        }
        lock.lock()
        overrides = kept
        lock.unlock()
    }

    func healthChanged(service: String, server: String, healthy: Bool) {
        lock.lock()
        healthState[service, default: [:]][server] = healthy
        lock.unlock()
        engine.pool(for: service)?.setHealthy(server, healthy)
        kernel?.setHealthy(service: service, server: server, healthy)
    }

    func handle(_ request: ControlRequest) async -> ControlResponse {
        switch request.command {
        case .status:
            return ControlResponse(ok: true, status: status(only: request.service))
        case .drain, .halt, .online:
            let admin: AdminState = request.command == .drain ? .drain : request.command == .halt ? .halt : .online
            return setAdmin(admin, service: request.service, server: request.server)
        case .reload:
            return await reload()
        case .mode:
            guard let service = request.service, let mode = request.mode.flatMap(ForwardingMode.init(rawValue:)) else {
                return ControlResponse(ok: false, message: "name a virtual service and one of: \(ForwardingMode.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return await switchMode(of: service, to: mode)
        }
    }

    private func setAdmin(_ admin: AdminState, service: String?, server: String?) -> ControlResponse {
        guard let server else { return ControlResponse(ok: false, message: "name a real server") }
        lock.lock()
        let configuration = self.configuration
        let kernel = self.kernel
        lock.unlock()
        // Either one VIP's server, or (no service) that server wherever it appears: node maintenance.
        let targets = configuration.virtualServices.filter { candidate in
            (service == nil || candidate.name == service) && candidate.realServers.contains { $0.name == server }
        }
        if let service, !configuration.virtualServices.contains(where: { $0.name == service }) {
            return ControlResponse(ok: false, message: "no virtual service named \"\(service)\"")
        }
        guard !targets.isEmpty else {
            return ControlResponse(ok: false, message: "no real server named \"\(server)\"" + (service.map { " in \"\($0)\"" } ?? ""))
        }
        var done: [String] = []
        for target in targets {
            if target.mode.isLayer4 {
                do {
                    try kernel?.setAdmin(service: target.name, server: server, admin)
                } catch {
                    return ControlResponse(ok: false, message: "\(target.name): the kernel refused: \(error)"
                                           + (done.isEmpty ? "" : " (already done: \(done.joined(separator: ", ")))"))
                }
            } else {
                engine.pool(for: target.name)?.setAdmin(server, admin)
            }
            lock.lock()
            overrides[target.name, default: [:]][server] = admin == .online ? nil : admin
            if overrides[target.name]?.isEmpty == true { overrides[target.name] = nil }
            let snapshot = overrides
            lock.unlock()
            do {
                try state.update { $0.overrides = snapshot }
            } catch {
                logger.error("override applied but not saved: \(error)")
            }
            done.append(target.name)
            logger.notice("real server \(admin.rawValue)", metadata: ["service": "\(target.name)", "server": "\(server)"])
        }
        return ControlResponse(ok: true, message: "\(server): \(admin.rawValue) in \(done.joined(separator: ", "))")
    }

    /// Every service's status, for metrics.
    func statusReport() -> [ServiceStatus] { status(only: nil) }

    /// IPVS totals per kernel service ("10.0.0.40:104/tcp").
    func ipvsCounters() -> [(String, IPVSCounters)] { currentKernel?.serviceCounters() ?? [] }

    private func status(only name: String?) -> [ServiceStatus] {
        lock.lock()
        let health = self.healthState, overrides = self.overrides, configuration = self.configuration
        lock.unlock()
        return configuration.virtualServices.filter { name == nil || $0.name == name }.map { service in
            let unchecked = service.healthCheck.probe == .none
            let kernelView = service.mode.isLayer4 ? kernel?.destinationStatus(of: service) ?? [:] : [:]
            let poolView = Dictionary(uniqueKeysWithValues: (engine.pool(for: service.name)?.status ?? []).map { ($0.name, $0) })
            let firstPort = service.ports.first?.lower ?? 0
            let servers = service.realServers.map { server -> ServerStatus in
                let healthy = health[service.name]?[server.name] ?? true
                let admin = overrides[service.name]?[server.name] ?? .online
                var weight = 0, active = 0, total = 0
                var toServer: UInt64 = 0, fromServer: UInt64 = 0
                if service.mode.isLayer4 {
                    if let (destination, counters) = kernelView[server.address.withPort(server.port(forVIPPort: firstPort))] {
                        weight = Int(destination.weight)
                        active = Int(counters.activeConnections)
                        total = Int(counters.connections)
                        toServer = counters.incomingBytes
                        fromServer = counters.outgoingBytes
                    }
                } else if let member = poolView[server.name] {
                    weight = member.healthy && member.admin == .online ? member.weight : 0
                    active = member.activeConnections
                    total = member.totalConnections
                    toServer = member.bytesToServer
                    fromServer = member.bytesFromServer
                }
                return ServerStatus(name: server.name, address: server.address.withPort(server.port(forVIPPort: firstPort)),
                                    health: unchecked ? "unchecked" : healthy ? "up" : "down",
                                    admin: admin, weight: weight, activeConnections: active, totalConnections: total,
                                    bytesToServer: toServer, bytesFromServer: fromServer)
            }
            let usable = servers.filter { $0.health != "down" && $0.admin == .online }.count
            return ServiceStatus(name: service.name, mode: service.mode.rawValue, vip: service.address.description,
                                 ports: service.ports.summary, transport: service.transport.rawValue,
                                 state: usable == servers.count ? "up" : usable == 0 ? "down" : "degraded",
                                 servers: servers)
        }
    }

    // MARK: Shared state, under the lock

    var currentConfiguration: Configuration { lock.lock(); defer { lock.unlock() }; return configuration }
    var currentKernel: KernelServices? { lock.lock(); defer { lock.unlock() }; return kernel }
    var currentOverrides: [String: [String: AdminState]] { lock.lock(); defer { lock.unlock() }; return overrides }

    func setKernel(_ kernel: KernelServices) { lock.lock(); self.kernel = kernel; lock.unlock() }

    func setConfiguration(_ next: Configuration, dropping gone: Set<String>) {
        lock.lock()
        configuration = next
        for name in gone { overrides[name] = nil; healthState[name] = nil }
        let snapshot = overrides
        lock.unlock()
        try? state.update { $0.overrides = snapshot }
    }

    func beginChange() -> Bool {
        lock.lock(); defer { lock.unlock() }
        if changing { return false }
        changing = true
        return true
    }

    func endChange() { lock.lock(); changing = false; lock.unlock() }
}
