import LBConfig
import LBTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// lbd's Layer 7 data plane: runs the l7-http and l7-tcp virtual services it is given on a pool of event loops
/// (one per core by default) and exposes each service's real-server pool so health checks can steer it.
public final class ProxyEngine: Sendable {
    public let group: MultiThreadedEventLoopGroup
    private let logger: Logger
    private let listeners = NIOLockedValueBox<[String: ServiceListener]>([:])

    public init(threads: Int = System.coreCount, logger: Logger) {
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        self.logger = logger
    }

    /// Starts the given services; if any cannot bind, the ones already started are stopped and the error thrown.
    public func start(_ services: [VirtualService]) async throws {
        var started: [ServiceListener] = []
        do {
            for service in services where service.mode.isLayer7 {
                // Certificates are loaded before anything listens: a bad key stops the start, it never half-serves.
                let tls = try service.tls.map { settings in
                    do {
                        return try TLSContext.server(
                            default: (settings.certificatePath, settings.keyPath),
                            byName: settings.sniCertificates.map { ($0.certificatePath, $0.keyPath) })
                    } catch {
                        throw ProxyError.tlsSetup(service: service.name, reason: "\(error)")
                    }
                }
                let listener = ServiceListener(service: service, pool: RealServerPool(service: service), tls: tls, logger: logger)
                try await listener.start(group: group)
                started.append(listener)
            }
        } catch {
            for listener in started {
                await listener.stopAccepting()
                await listener.closeAll()
            }
            throw error
        }
        listeners.withLockedValue { listeners in
            for listener in started { listeners[listener.service.name] = listener }
        }
    }

    /// Makes the running Layer 7 services equal to those in `services`: unchanged ones run on untouched (pools,
    /// connections), removed ones stop accepting while their open connections finish, changed ones are restarted
    /// with the new settings, new ones start. Returns the names started and stopped.
    @discardableResult
    public func update(to services: [VirtualService]) async throws -> (started: [String], stopped: [String]) {
        let wanted = Dictionary(uniqueKeysWithValues: services.filter { $0.mode.isLayer7 }.map { ($0.name, $0) })
        let current = listeners.withLockedValue { $0 }
        // New and changed services start first (SO_REUSEPORT lets a changed one bind beside its old listener) ...
        let toStart = wanted.values.filter { current[$0.name]?.service != $0 }.sorted { $0.name < $1.name }
        try await start(toStart)
        // ... then the old listeners of changed and removed services stop accepting; their connections finish.
        var stopped: [String] = []
        for (name, listener) in current.sorted(by: { $0.key < $1.key }) where wanted[name] != listener.service {
            await listener.stopAccepting()
            retire(listener)
            if wanted[name] == nil { listeners.withLockedValue { _ = $0.removeValue(forKey: name) } }
            stopped.append(name)
        }
        return (toStart.map(\.name), stopped)
    }

    /// A listener that no longer accepts; its connections finish on their own and are closed at shutdown.
    private let retired = NIOLockedValueBox<[ServiceListener]>([])
    private func retire(_ listener: ServiceListener) {
        retired.withLockedValue { $0.append(listener) }
    }

    /// The live pool of a running service.
    public func pool(for service: String) -> RealServerPool? {
        listeners.withLockedValue { $0[service]?.pool }
    }

    public var activeConnections: Int {
        listeners.withLockedValue { Array($0.values) }.reduce(0) { $0 + $1.activeConnections }
    }

    /// Graceful stop: no new connections; existing ones may finish for up to `drainTimeout`, then are closed.
    public func shutdown(drainTimeout: Duration) async {
        let all = listeners.withLockedValue { listeners in
            defer { listeners = [:] }
            return Array(listeners.values)
        } + retired.withLockedValue { $0 }
        for listener in all { await listener.stopAccepting() }
        let deadline = ContinuousClock.now + drainTimeout
        while ContinuousClock.now < deadline, all.contains(where: { $0.activeConnections > 0 }) {
            try? await Task.sleep(for: .milliseconds(50))
        }
        let remaining = all.reduce(0) { $0 + $1.activeConnections }
        if remaining > 0 {
            logger.warning("drain timeout reached, closing remaining connections", metadata: ["connections": "\(remaining)"])
        }
        for listener in all { await listener.closeAll() }
        try? await group.shutdownGracefully()
    }
}
