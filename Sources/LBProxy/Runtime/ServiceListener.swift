import LBConfig
import LBTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// One Layer 7 virtual service at run time: its listening sockets, its pool, and the client connections it holds.
final class ServiceListener: Sendable {
    let service: VirtualService
    let pool: RealServerPool
    /// l7-http with `tls`: the server context every client connection's session is made from.
    let tls: TLSContext?
    let logger: Logger
    private let state = NIOLockedValueBox(State())
    /// Refusals at max_connections come in floods: one line per interval, with the count held back.
    private let refusalLog = RateLimitedLog(interval: AcceptLimits.logInterval)

    private struct State {
        var listeners: [Channel] = []
        var clients: [ObjectIdentifier: Channel] = [:]
        var accepting = true
    }

    init(service: VirtualService, pool: RealServerPool, tls: TLSContext?, logger: Logger) {
        self.service = service
        self.pool = pool
        self.tls = tls
        var logger = logger
        logger[metadataKey: "service"] = "\(service.name)"
        self.logger = logger
    }

    var activeConnections: Int { state.withLockedValue { $0.clients.count } }

    /// Binds every port of the service; if one fails, the others are closed again so nothing is half-started.
    func start(group: EventLoopGroup) async throws {
        var bound: [Channel] = []
        do {
            for port in service.ports.allPorts {
                bound.append(try await bind(port: port, group: group))
            }
        } catch {
            for channel in bound { try? await channel.close() }
            throw error
        }
        state.withLockedValue { $0.listeners = bound }
        logger.info("listening", metadata: ["vip": "\(service.address)", "ports": "\(service.ports.summary)",
                                            "mode": "\(service.mode.rawValue)"])
    }

    private func bind(port: UInt16, group: EventLoopGroup) async throws -> Channel {
        let address = service.address.withPort(port)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // A changed service's new listener binds beside the old one, which then stops: no refused connections.
            .serverChannelOption(ChannelOptions.Types.SocketOption(level: .socket, name: NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: service.mode == .l7TCP)
            .serverChannelInitializer { [service, logger] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptLimits.pauseHandler(service: service.name, logger: logger))
                }
            }
            .childChannelInitializer { [self] channel in
                self.initialize(client: channel)
            }
        do {
            return try await bootstrap.bind(host: service.address.description, port: Int(port)).get()
        } catch {
            throw ProxyError.bindFailed(service: service.name, address: address, reason: "\(error)")
        }
    }

    /// Admits or refuses a new client, then hands it to the mode's pipeline.
    private func initialize(client channel: Channel) -> EventLoopFuture<Void> {
        let admitted = state.withLockedValue { state -> Bool in
            guard state.accepting, state.clients.count < service.limits.maxConnections else { return false }
            state.clients[ObjectIdentifier(channel)] = channel
            return true
        }
        guard admitted else {
            if let held = refusalLog.admit() {
                logger.warning("connection refused: limit reached", metadata: ["limit": "\(service.limits.maxConnections)", "repeats": "\(held)"])
            }
            return channel.eventLoop.makeFailedFuture(ProxyError.connectionLimit(service: service.name, limit: service.limits.maxConnections))
        }
        channel.closeFuture.whenComplete { [state] _ in
            state.withLockedValue { _ = $0.clients.removeValue(forKey: ObjectIdentifier(channel)) }
        }
        let connector = BackendConnector(pool: pool, connectTimeout: service.timeouts.connect, logger: logger)
        switch service.mode {
        case .l7TCP:
            return TCPProxy(service: service, connector: connector, logger: logger).initialize(client: channel)
        case .l7HTTP:
            return HTTPProxy(service: service, connector: connector, tls: tls, logger: logger).initialize(client: channel)
        case .l4DirectRouting, .l4NAT, .l4SNAT:
            // The agent never hands Layer 4 services to the proxy; refuse rather than guess.
            return channel.eventLoop.makeFailedFuture(ProxyError.noServerAvailable(service: service.name))
        }
    }

    /// Stops accepting: the listening sockets close, established connections carry on.
    func stopAccepting() async {
        let listeners = state.withLockedValue { state -> [Channel] in
            state.accepting = false
            defer { state.listeners = [] }
            return state.listeners
        }
        for channel in listeners { try? await channel.close() }
    }

    /// Ends every remaining client connection now.
    func closeAll() async {
        let clients = state.withLockedValue { Array($0.clients.values) }
        for channel in clients { try? await channel.close() }
    }
}

extension IPAddress {
    /// The address of a NIO socket address, if it is IPv4 or IPv6.
    init?(_ address: SocketAddress?) {
        guard let text = address?.ipAddress else { return nil }
        self.init(text)
    }
}

/// Closes a connection that has been silent in both directions for the idle timeout.
final class IdleCloser: ChannelInboundHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
