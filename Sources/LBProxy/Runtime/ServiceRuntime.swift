import LBConfig
import LBTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// One generation of a Layer 7 virtual service: its settings, its pool, its TLS context and the client connections
/// it admitted. A reload that changes the service makes a new generation; the old one is retired: it gets no new
/// connections, its idle keep-alive connections to real servers are closed, and it is released once its last
/// client connection has ended.
final class ServiceRuntime: Sendable {
    let service: VirtualService
    let pool: RealServerPool
    /// l7-http with `tls`: the server context every client connection's session is made from.
    let tls: TLSContext?
    let logger: Logger
    let connector: BackendConnector
    private let clients = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])
    private let refusals: RefusalLog

    init(service: VirtualService, tls: TLSContext?, backendTLS: BackendTLSContexts = .none, cookieKey: [UInt8],
         tallies: [String: ServerTally] = [:], onObservedFailure: (@Sendable (String, String, String) -> Void)? = nil,
         logger: Logger) {
        self.service = service
        self.pool = RealServerPool(service: service, cookieKey: cookieKey, tallies: tallies, onObservedFailure: onObservedFailure)
        self.tls = tls
        var logger = logger
        logger[metadataKey: "service"] = "\(service.name)"
        self.logger = logger
        self.connector = BackendConnector(pool: pool, connectTimeout: service.timeouts.connect, logger: logger,
                                          backendTLS: backendTLS)
        self.refusals = RefusalLog(logger: logger)
    }

    var activeConnections: Int { clients.withLockedValue { $0.count } }

    /// Admits or refuses a new client, then hands it to the mode's pipeline. `slot` is where the client's later
    /// requests find the generation in force (l7-http reads it per request).
    func initialize(client channel: Channel, slot: ServiceSlot) -> EventLoopFuture<Void> {
        let limit = service.limits.maxConnections
        let admitted = clients.withLockedValue { clients -> Bool in
            guard clients.count < limit else { return false }
            clients[ObjectIdentifier(channel)] = channel
            return true
        }
        guard admitted else {
            refusals.refused(limit: limit)
            return channel.eventLoop.makeFailedFuture(ProxyError.connectionLimit(service: service.name, limit: limit))
        }
        channel.closeFuture.whenComplete { [clients] _ in
            clients.withLockedValue { _ = $0.removeValue(forKey: ObjectIdentifier(channel)) }
        }
        do {
            // l7-tcp passes half-closes through; l7-http answers and closes.
            try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: service.mode == .l7TCP)
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        switch service.mode {
        case .l7TCP:
            return TCPProxy(service: service, connector: connector, logger: logger).initialize(client: channel)
        case .l7HTTP:
            return HTTPProxy(runtime: self, slot: slot).initialize(client: channel)
        case .l4DirectRouting, .l4NAT, .l4SNAT:
            // The agent never hands Layer 4 services to the proxy; refuse rather than guess.
            return channel.eventLoop.makeFailedFuture(ProxyError.noServerAvailable(service: service.name))
        }
    }

    /// Retired: idle keep-alive connections to its real servers are closed; busy ones close when their request ends.
    func retire() {
        IdleConnections.retire(pool: pool)
    }

    /// Ends every remaining client connection now.
    func closeAll() async {
        let open = clients.withLockedValue { Array($0.values) }
        for channel in open { try? await channel.close() }
    }
}

/// The generation of a service that new connections on a listening socket get, swapped atomically by a reload or
/// a Layer 7 mode switch while the socket stays open.
final class ServiceSlot: Sendable {
    private let box: NIOLockedValueBox<ServiceRuntime>

    init(_ runtime: ServiceRuntime) { box = NIOLockedValueBox(runtime) }

    var current: ServiceRuntime { box.withLockedValue { $0 } }

    func replace(with runtime: ServiceRuntime) { box.withLockedValue { $0 = runtime } }
}

/// One log line per refused connection would let a flood of clients fill the log: at most one line per second,
/// with the number refused since the last line.
final class RefusalLog: Sendable {
    private let logger: Logger
    private let state = NIOLockedValueBox<(last: NIODeadline, suppressed: Int)>((.distantPast, 0))

    init(logger: Logger) { self.logger = logger }

    func refused(limit: Int) {
        let now = NIODeadline.now()
        let suppressed: Int? = state.withLockedValue { state in
            guard now - state.last >= .seconds(1) else {
                state.suppressed += 1
                return nil
            }
            defer { state = (now, 0) }
            return state.suppressed
        }
        guard let suppressed else { return }
        logger.warning("connection refused: limit reached", metadata: [
            "limit": "\(limit)", "also_refused_in_the_last_second": "\(suppressed)",
        ])
    }
}
