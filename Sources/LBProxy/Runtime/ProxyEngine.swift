import LBConfig
import LBRuntime
import LBTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// lbd's Layer 7 data plane: runs the l7-http and l7-tcp virtual services it is given on a pool of event loops
/// (one per core by default). The agent tells it which services to run (`update`) and the effective membership of
/// their real servers (`apply`); the engine never decides either.
public final class ProxyEngine: Sendable {
    public let group: MultiThreadedEventLoopGroup
    private let logger: Logger

    private struct Running {
        /// The generation in force of each service, by name.
        var runtimes: [String: ServiceRuntime] = [:]
        var bindings: [Binding.Key: Binding] = [:]
        /// Generations replaced or removed whose client connections have not all ended yet.
        var retired: [ServiceRuntime] = []
    }

    private let running = NIOLockedValueBox(Running())

    /// The installation's secret for persistence cookie ids.
    private let cookieKey: [UInt8]

    /// Servers that real traffic finds failing (health_check.observe): service, server, reason.
    private let onObservedFailure: (@Sendable (String, String, String) -> Void)?

    public init(threads: Int = System.coreCount, logger: Logger, cookieKey: [UInt8] = [],
                onObservedFailure: (@Sendable (String, String, String) -> Void)? = nil) {
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        self.logger = logger
        self.cookieKey = cookieKey
        self.onObservedFailure = onObservedFailure
    }

    /// Starts the given services (the engine's first update).
    public func start(_ services: [VirtualService], membership: [String: ServiceMembership] = [:], freeBind: Bool = false) async throws {
        try await update(to: services, membership: membership, freeBind: freeBind)
    }

    /// Makes the running Layer 7 services equal to those in `services`. Unchanged services run on untouched
    /// (pools, connections). A changed one gets a new generation, which its listening sockets hand new connections
    /// to from now on; sockets are opened for new address:ports and closed only for address:ports no longer served.
    /// If anything cannot be set up (a certificate, a bind), nothing is changed and the error is thrown.
    /// `freeBind` (IP_FREEBIND): new sockets may listen on addresses this host does not hold yet — a pair's standby
    /// listens on every VIP so that a takeover moves addresses and nothing else.
    /// Returns the names of services given a new generation and of those stopped.
    @discardableResult
    public func update(to services: [VirtualService], membership: [String: ServiceMembership] = [:],
                       freeBind: Bool = false) async throws
        -> (started: [String], stopped: [String])
    {
        let wanted = services.filter { $0.mode.isLayer7 }
        let before = running.withLockedValue { $0 }

        // 1. A generation for every wanted service: the one running if unchanged, one retired by a change that was
        //    rolled back, or a new one (certificates load here, before anything listens).
        var runtimes: [String: ServiceRuntime] = [:]
        var started: [String] = []
        var revived: [ServiceRuntime] = []
        for service in wanted {
            if let current = before.runtimes[service.name], current.service == service {
                runtimes[service.name] = current
            } else if let old = before.retired.last(where: { $0.service == service }) {
                runtimes[service.name] = old
                revived.append(old)
                started.append(service.name)
            } else {
                // Counters carry over from the generation being replaced, server by server.
                runtimes[service.name] = try makeRuntime(service, tallies: before.runtimes[service.name]?.pool.tallies(for: service) ?? [:])
                started.append(service.name)
            }
            if let membership = membership[service.name] { runtimes[service.name]?.pool.apply(membership) }
        }

        // 2. Listening sockets for address:ports not yet served; if one cannot be bound, those opened here close.
        var opened: [Binding] = []
        do {
            for service in wanted {
                guard let runtime = runtimes[service.name] else { continue }
                for key in service.bindingKeys where before.bindings[key] == nil {
                    opened.append(try await Binding.bind(key, serving: runtime, group: group, freeBind: freeBind))
                }
            }
        } catch {
            for binding in opened { await binding.close() }
            throw error
        }

        // 3. Kept sockets hand new connections to the new generation; sockets no longer served close.
        var bindings = before.bindings
        for binding in opened { bindings[binding.key] = binding }
        var owner: [Binding.Key: ServiceRuntime] = [:]
        for service in wanted { for key in service.bindingKeys { owner[key] = runtimes[service.name] } }
        var closing: [Binding] = []
        for (key, binding) in bindings {
            if let runtime = owner[key] {
                if binding.slot.current !== runtime { binding.slot.replace(with: runtime) }
            } else {
                closing.append(binding)
                bindings[key] = nil
            }
        }
        if !closing.isEmpty {
            // The address:port has a new owner already (IPVS takes new SYNs before the socket would): connections
            // that completed their handshake just before are still in the accept queue; let it drain first, since
            // closing a listening socket resets what it holds.
            try? await Task.sleep(for: .milliseconds(200))
            for binding in closing { await binding.close() }
        }
        for binding in opened {
            logger.info("listening", metadata: ["service": "\(binding.slot.current.service.name)", "address": "\(binding.key)",
                                                "mode": "\(binding.slot.current.service.mode.rawValue)"])
        }

        // 4. Generations no longer in force are retired; retired ones whose clients have all left are released.
        let kept = Set(runtimes.values.map(ObjectIdentifier.init))
        var stopped: [String] = []
        var retired = before.retired.filter { runtime in !revived.contains { $0 === runtime } }
        for (name, runtime) in before.runtimes where !kept.contains(ObjectIdentifier(runtime)) {
            runtime.retire()
            retired.append(runtime)
            if runtimes[name] == nil { stopped.append(name) }
        }
        retired.removeAll { $0.activeConnections == 0 }
        running.withLockedValue { $0 = Running(runtimes: runtimes, bindings: bindings, retired: retired) }
        return (started.sorted(), stopped.sorted())
    }

    private func makeRuntime(_ service: VirtualService, tallies: [String: ServerTally]) throws -> ServiceRuntime {
        let tls = try service.tls.map { settings in
            do {
                return try TLSContext.server(
                    default: (settings.certificatePath, settings.keyPath),
                    byName: settings.sniCertificates.map { ($0.certificatePath, $0.keyPath) })
            } catch {
                throw ProxyError.tlsSetup(service: service.name, reason: "\(error)")
            }
        }
        let backendTLS: BackendTLSContexts
        do {
            backendTLS = try BackendTLSContexts(for: service)
        } catch {
            throw ProxyError.tlsSetup(service: service.name, reason: "backend_tls: \(error)")
        }
        return ServiceRuntime(service: service, tls: tls, backendTLS: backendTLS, cookieKey: cookieKey, tallies: tallies,
                              onObservedFailure: onObservedFailure, logger: logger)
    }

    /// The agent's effective membership for the running services (by service name). Retired generations of a
    /// service get it too: their connections were opened before a reload, and a halt must close them as well.
    public func apply(_ membership: [String: ServiceMembership]) {
        let (runtimes, retired) = running.withLockedValue { ($0.runtimes, $0.retired) }
        for (name, servers) in membership {
            runtimes[name]?.pool.apply(servers)
            for runtime in retired where runtime.service.name == name { runtime.pool.apply(servers) }
        }
    }

    /// The live pool of a running service.
    public func pool(for service: String) -> RealServerPool? {
        running.withLockedValue { $0.runtimes[service]?.pool }
    }

    /// The client connections a running service has open now (for tests).
    func clientChannels(of service: String) -> [Channel] {
        running.withLockedValue { $0.runtimes[service] }?.clientChannels ?? []
    }

    /// Connections and bytes per real server of every running service.
    public var counters: [String: [RealServerPool.MemberStatus]] {
        running.withLockedValue { $0.runtimes }.mapValues(\.pool.status)
    }

    public var activeConnections: Int {
        let all = running.withLockedValue { Array($0.runtimes.values) + $0.retired }
        return all.reduce(0) { $0 + $1.activeConnections }
    }

    /// Graceful stop: no new connections; existing ones may finish for up to `drainTimeout`, then are closed.
    public func shutdown(drainTimeout: Duration) async {
        let stopping = running.withLockedValue { running in
            defer { running = Running() }
            return running
        }
        for binding in stopping.bindings.values { await binding.close() }
        let all = Array(stopping.runtimes.values) + stopping.retired
        let deadline = ContinuousClock.now + drainTimeout
        while ContinuousClock.now < deadline, all.contains(where: { $0.activeConnections > 0 }) {
            try? await Task.sleep(for: .milliseconds(50))
        }
        let remaining = all.reduce(0) { $0 + $1.activeConnections }
        if remaining > 0 {
            logger.warning("drain timeout reached, closing remaining connections", metadata: ["connections": "\(remaining)"])
        }
        for runtime in all {
            runtime.retire()
            await runtime.closeAll()
        }
        try? await group.shutdownGracefully()
    }
}
