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
    /// The client-side timeouts as NIO's `TimeAmount`, converted once: converting a `Duration` costs about 190
    /// instructions (measured in process), and a connection arms a deadline twice a request.
    let clientTimeouts: ClientTimeouts
    let logger: Logger
    let connector: BackendConnector
    private let clients = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])
    /// Refusals at max_connections come in floods: one line per interval, with the count held back.
    private let refusals = RateLimitedLog(interval: AcceptLimits.logInterval)

    init(service: VirtualService, tls: TLSContext?, backendTLS: BackendTLSContexts = .none, cookieKey: [UInt8],
         tallies: [String: ServerTally] = [:], onObservedFailure: (@Sendable (String, String, String) -> Void)? = nil,
         logger: Logger) {
        self.service = service
        self.pool = RealServerPool(service: service, cookieKey: cookieKey, tallies: tallies, onObservedFailure: onObservedFailure)
        self.tls = tls
        clientTimeouts = ClientTimeouts(header: TimeAmount(service.timeouts.header), body: TimeAmount(service.timeouts.body),
                                        idle: TimeAmount(service.timeouts.idle))
        var logger = logger
        logger[metadataKey: "service"] = "\(service.name)"
        self.logger = logger
        self.connector = BackendConnector(pool: pool, connectTimeout: service.timeouts.connect, logger: logger,
                                          backendTLS: backendTLS)
    }

    var activeConnections: Int { clients.withLockedValue { $0.count } }

    /// The client connections open now (for tests).
    var clientChannels: [Channel] { clients.withLockedValue { Array($0.values) } }

    /// Admits or refuses a new client, then hands it to the mode's pipeline; the client is not registered yet
    /// (`ClientAcceptor`). `slot` is where the client's later requests find the generation in force (l7-http reads
    /// it per request). Throws when the client is refused.
    func initialize(client channel: Channel, slot: ServiceSlot) throws {
        let limit = service.limits.maxConnections
        let admitted = clients.withLockedValue { clients -> Bool in
            guard clients.count < limit else { return false }
            clients[ObjectIdentifier(channel)] = channel
            return true
        }
        guard admitted else {
            if let held = refusals.admit() {
                logger.warning("connection refused: limit reached", metadata: ["limit": "\(limit)", "repeats": "\(held)"])
            }
            throw ProxyError.connectionLimit(service: service.name, limit: limit)
        }
        channel.closeFuture.whenComplete { [clients] _ in
            clients.withLockedValue { _ = $0.removeValue(forKey: ObjectIdentifier(channel)) }
        }
        // l7-tcp passes half-closes through. In l7-http a client's end of stream ends its connection (NIO's
        // default): a full close and a half-close look the same there, and a client that gives up (a viewer
        // switching studies) must not leave its request holding a real-server connection, as with nginx.
        // TCP_NODELAY comes from the listening socket (`Binding`).
        if service.mode == .l7TCP { try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true) }
        switch service.mode {
        case .l7TCP:
            try TCPProxy(service: service, connector: connector, logger: logger).initialize(client: channel)
        case .l7HTTP:
            try HTTPProxy(runtime: self, slot: slot).initialize(client: channel)
        case .l4DirectRouting, .l4NAT, .l4SNAT:
            // The agent never hands Layer 4 services to the proxy; refuse rather than guess.
            throw ProxyError.noServerAvailable(service: service.name)
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

/// A service's timeouts for its client connections (`Timeouts`), as the proxy's deadlines use them.
struct ClientTimeouts {
    let header: TimeAmount
    let body: TimeAmount
    let idle: TimeAmount
}
