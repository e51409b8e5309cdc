import LBConfig
import LBTLS
import Logging
import NIOCore
import NIOPosix

/// Opens connections to real servers, moving on to the next server when one refuses (redispatch), so that a dead
/// server costs a client nothing as long as another can take it.
struct BackendConnector: Sendable {
    let pool: RealServerPool
    let connectTimeout: Duration
    let logger: Logger
    /// TLS towards the real servers that have `backend_tls` (the service's, or their own).
    var backendTLS = BackendTLSContexts.none

    /// Connects on `eventLoop` (the client's, so both channels share one thread and need no locks).
    /// `configure` sets up the new channel's pipeline before it becomes active. The real server's wire bytes are
    /// counted by a `ByteCounter` at the bottom of the pipeline, unless the caller `countsWireBytes` itself: then
    /// `configure` is given the meter to keep when the connection is plain (nil when TLS is between, or for the
    /// fallback server, which has no counts).
    func connect(
        client: IPAddress?, cookie: String? = nil, port: UInt16, on eventLoop: EventLoop, countsWireBytes: Bool,
        configure: @escaping @Sendable (Channel, ServerByteMeter?) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<(Channel, Selection)> {
        guard let selection = pool.select(client: client, cookie: cookie, port: port) else {
            return eventLoop.makeFailedFuture(ProxyError.noServerAvailable(service: pool.service.name))
        }
        return connect(to: selection, client: client, port: port, on: eventLoop, excluding: [],
                       countsWireBytes: countsWireBytes, configure: configure)
    }

    /// Connects to an already chosen server (its active count taken), falling back to others if it refuses.
    func connect(
        to selection: Selection, client: IPAddress?, port: UInt16, on eventLoop: EventLoop, excluding: Set<Int> = [],
        countsWireBytes: Bool, configure: @escaping @Sendable (Channel, ServerByteMeter?) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<(Channel, Selection)> {
        let target: SocketAddress
        do {
            target = try SocketAddress(ipAddress: selection.address.description, port: Int(selection.port))
        } catch {
            pool.release(selection)
            return eventLoop.makeFailedFuture(error)
        }
        var bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(connectTimeout))
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)  // NIO's default too; at IPPROTO_TCP, not SOL_SOCKET
            .channelInitializer { [pool, backendTLS] channel in
                let server = selection.serverIndex.map { pool.service.realServers[$0] }
                let tls = backendTLS.context(for: server)
                var meterAbove: ServerByteMeter?
                do {
                    // Byte counts per real server (metrics), of the bytes on the wire: by the caller's handler
                    // when it sees them all (a plain l7-http connection), else by a ByteCounter at the socket.
                    if let index = selection.serverIndex {
                        let meter = ServerByteMeter(pool: pool, index: index)
                        if countsWireBytes, tls == nil {
                            meterAbove = meter
                        } else {
                            try channel.pipeline.syncOperations.addHandler(ByteCounter(meter: meter), name: "byte-counter", position: .first)
                        }
                    }
                    // Then TLS, if the server wants it: everything above speaks plaintext.
                    if let (context, name) = tls {
                        try channel.pipeline.syncOperations.addHandler(
                            TLSHandler(context: context, serverName: name, verifyAddress: selection.address.description), name: "tls")
                    }
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
                return configure(channel, meterAbove)
            }
        // Transparent: the connection leaves from the client's own address (IP_TRANSPARENT lets a socket bind a
        // non-local address; lb's TPROXY rule and policy route bring the server's replies back to this socket).
        if pool.service.transparent, let client, case .v4 = client,
           let source = try? SocketAddress(ipAddress: client.description, port: 0) {
            bootstrap = bootstrap
                .channelOption(ChannelOptions.Types.SocketOption(level: .ip, name: NIOBSDSocket.Option(rawValue: 19)), value: 1)
                .bind(to: source)
        }
        return bootstrap.connect(to: target)
            .map { [pool] channel in
                pool.track(channel, selection: selection)
                pool.observe(selection, failure: nil)
                return (channel, selection)
            }
            .flatMapError { [pool, logger, connectTimeout] (error: Error) -> EventLoopFuture<(Channel, Selection)> in
                pool.release(selection)
                pool.observe(selection, failure: Self.describe(error, timeout: connectTimeout))
                logger.warning("connect to real server failed, trying another",
                               metadata: ["service": "\(pool.service.name)", "server": "\(selection.name)",
                                          "address": "\(selection.address.withPort(selection.port))",
                                          "reason": "\(Self.describe(error, timeout: connectTimeout))"])
                // The fallback is the last resort: there is nothing left to try after it.
                guard let index = selection.serverIndex else { return eventLoop.makeFailedFuture(error) }
                let excluded = excluding.union([index])
                guard let next = pool.select(client: client, port: port, excluding: excluded) else {
                    return eventLoop.makeFailedFuture(ProxyError.noServerAvailable(service: pool.service.name))
                }
                return connect(to: next, client: client, port: port, on: eventLoop, excluding: excluded,
                               countsWireBytes: countsWireBytes, configure: configure)
            }
    }

    /// What an operator should read for a failed connect: "connection refused", not NIO's wrapping of errno 111.
    static func describe(_ error: Error, timeout: Duration) -> String {
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)).lowercased() }
        if case ChannelError.connectTimeout = error { return "no answer within \(timeout) (connect timeout)" }
        if let connection = error as? NIOConnectionError, let first = connection.connectionErrors.first {
            return describe(first.error, timeout: timeout)
        }
        return "\(error)"
    }
}

/// The client TLS contexts of a service's real servers, made once per generation (a CA file that cannot be read
/// stops the change before anything listens): one per distinct `backend_tls` setting.
struct BackendTLSContexts: Sendable {
    private let service: VirtualService?
    private let contexts: [BackendTLS: TLSContext]

    static let none = BackendTLSContexts(service: nil, contexts: [:])

    private init(service: VirtualService?, contexts: [BackendTLS: TLSContext]) {
        self.service = service
        self.contexts = contexts
    }

    init(for service: VirtualService) throws {
        var contexts: [BackendTLS: TLSContext] = [:]
        let settings = ([service.backendTLS] + service.realServers.map(\.backendTLS)).compactMap { $0 }
        for setting in settings where contexts[setting] == nil {
            contexts[setting] = try TLSContext.client(verify: setting.verify == .certificate, caFile: setting.caFile,
                                                      certificate: setting.certificatePath, key: setting.keyPath)
        }
        self.init(service: service, contexts: contexts)
    }

    /// The context and SNI name for a real server (nil: the fallback server, which gets the service's settings).
    func context(for server: RealServer?) -> (TLSContext, String?)? {
        guard let service else { return nil }
        guard let setting = server.map({ service.backendTLS(for: $0) }) ?? service.backendTLS,
              let context = contexts[setting] else { return nil }
        return (context, setting.serverName)
    }
}
