import LBConfig
import LBTLS
import Logging
import NIOCore
import NIOEmbedded

/// The l7-http path of one client connection without sockets: the client's pipeline exactly as a listener builds
/// it, one kept-alive real-server connection with its own pipeline, both on one embedded event loop. Each
/// `exchange` pushes a request's bytes in at the client side, takes what lb sends the real server, answers with a
/// response's bytes and takes what reaches the client.
///
/// It exists to count the work lb does per request (allocations, retains) with nothing else in the measurement:
/// `Benchmarks/` runs it under ordo-one/benchmark, and `InProcessExchangeTests` checks that it forwards correctly.
///
/// A service with `tls` is served as lb serves it, TLS terminated by the client pipeline's `TLSHandler`; a browser
/// (its own embedded channel with a client `TLSHandler`, real OpenSSL on both ends) encrypts the requests and
/// decrypts the responses. lb's part of an exchange is in the functions named `lbHandles…`, so a profiler can count
/// it alone (callgrind's `--toggle-collect`).
public final class InProcessExchange {
    public enum Failure: Error, CustomStringConvertible {
        case setup(String)
        case noRequestAtServer
        case noResponseAtClient
        public var description: String {
            switch self {
            case .setup(let reason): "in-process exchange set-up: \(reason)"
            case .noRequestAtServer: "lb sent the real server nothing for the request"
            case .noResponseAtClient: "lb sent the client nothing for the response"
            }
        }
    }

    private let loop = EmbeddedEventLoop()
    private let client: EmbeddedChannel
    private let server: EmbeddedChannel
    /// The browser's end of an HTTPS connection (nil for plain HTTP).
    private let browser: EmbeddedChannel?
    private let runtime: ServiceRuntime
    private let slot: ServiceSlot
    private let request: ByteBuffer
    private let response: ByteBuffer
    /// What the last exchange delivered, for checks (the benchmark does not read them).
    public private(set) var lastRequestAtServer = ByteBuffer()
    public private(set) var lastResponseAtClient = ByteBuffer()
    /// What lb wrote on the client's connection for the last response: TLS records for an HTTPS service (for tests).
    private(set) var lastResponseOnClientWire = ByteBuffer()
    /// Whether `exchange` keeps what it delivered in the two above. The benchmark turns it off: a kept buffer is
    /// one lb would find still referenced at the next request, as if the socket had not taken its bytes, and lb
    /// would not reuse its head buffers (`ReusableBuffer`) as it does behind a real socket.
    public var keepsLastMessages = true {
        didSet {
            if !keepsLastMessages {
                lastRequestAtServer = ByteBuffer(); lastResponseAtClient = ByteBuffer(); lastResponseOnClientWire = ByteBuffer()
            }
        }
    }

    /// Client connections lbd's registry holds (for tests: a closed connection leaves it), and held while the last
    /// `newConnectionExchange` was open.
    var registeredClients: Int { runtime.activeConnections }
    private(set) var registeredDuringLastNewConnection = 0

    /// Whether the client connection still holds `WaitingClientHandler` / `HTTPFrontHandler` (for tests).
    var clientIsWaiting: Bool { (try? client.pipeline.syncOperations.handler(type: WaitingClientHandler.self)) != nil }
    var clientHasFrontHandler: Bool { (try? client.pipeline.syncOperations.handler(type: HTTPFrontHandler.self)) != nil }
    /// Whether the client connection's requests are read by NIO's parser rather than lb's reader (for tests).
    package var clientReadByParser: Bool? { (try? client.pipeline.syncOperations.handler(type: ClientRequestReader.self))?.handedToParser }
    /// Whether the real server's responses are read by NIO's parser rather than lb's reader (for tests).
    package var serverReadByParser: Bool? { (try? server.pipeline.syncOperations.handler(type: RealServerResponseReader.self))?.handedToParser }
    /// The loop's connection clock, if one is registered, and whether the client's `HTTPFrontHandler` is on it
    /// (for tests).
    var clock: ConnectionClock? { ConnectionClock.registered(on: loop) }
    var frontIsOnClock: Bool { (try? client.pipeline.syncOperations.handler(type: HTTPFrontHandler.self))?.clockPosition != nil }

    /// `service` must be an l7-http service with one real server; `request` and `response` are complete messages.
    public init(service: VirtualService, request: String, response: String) throws {
        guard service.mode == .l7HTTP, service.realServers.count == 1 else {
            throw Failure.setup("an l7-http service with one real server is needed")
        }
        var logger = Logger(label: "lb.bench")
        logger.logLevel = .critical
        let tls = try service.tls.map { settings in
            try TLSContext.server(certificateChain: settings.certificatePath, privateKey: settings.keyPath)
        }
        runtime = ServiceRuntime(service: service, tls: tls, cookieKey: Array(repeating: 7, count: 32), logger: logger)
        self.request = ByteBuffer(string: request)
        self.response = ByteBuffer(string: response)

        server = EmbeddedChannel(loop: loop)
        // Counted as lbd counts a plain real-server connection's bytes.
        try BackendHandler.addClientCodec(to: server.pipeline.syncOperations, meter: ServerByteMeter(pool: runtime.pool, index: 0))
        try server.connect(to: SocketAddress(ipAddress: "192.0.2.20", port: 80)).wait()
        let backend = try server.pipeline.syncOperations.handler(type: BackendHandler.self)
        guard let selection = runtime.pool.select(client: nil, port: 80) else { throw Failure.setup("no server selected") }
        IdleConnections.forLoop(loop, pool: runtime.pool).put(backend, selection: selection, pool: runtime.pool)

        client = EmbeddedChannel(loop: loop)
        slot = ServiceSlot(runtime)
        try HTTPProxy(runtime: runtime, slot: slot).initialize(client: client)
        try client.connect(to: SocketAddress(ipAddress: "192.0.2.10", port: 80)).wait()
        // Set after the connect, which would make the VIP the peer.
        client.remoteAddress = try SocketAddress(ipAddress: "198.51.100.7", port: 40000)
        client.localAddress = try SocketAddress(ipAddress: "192.0.2.10", port: 80)
        if tls != nil {
            let browser = EmbeddedChannel(handler: TLSHandler(context: try TLSContext.client()), loop: loop)
            try browser.connect(to: SocketAddress(ipAddress: "192.0.2.10", port: 443)).wait()
            self.browser = browser
            // The handshake, and the session tickets that follow it.
            var moved = true
            while moved {
                moved = false
                while let bytes = try browser.readOutbound(as: ByteBuffer.self) { try client.writeInbound(bytes); moved = true }
                while let bytes = try client.readOutbound(as: ByteBuffer.self) { try browser.writeInbound(bytes); moved = true }
            }
            guard try browser.readInbound(as: ByteBuffer.self) == nil else { throw Failure.setup("plaintext before a request") }
        } else {
            browser = nil
        }
    }

    /// One request and its response through lb.
    public func exchange() throws {
        let fromBrowser = try browserSends(request)
        let toServer = try lbHandlesRequest(fromBrowser)
        if keepsLastMessages { lastRequestAtServer = toServer }
        let toBrowser = try lbHandlesResponse(response)
        let toClient = try browserReceives(toBrowser)
        if keepsLastMessages { lastResponseAtClient = toClient; lastResponseOnClientWire = toBrowser }
    }

    /// One request on a new client connection (a client that closes after each, `Connection: close`), as
    /// `scripts/bench/l7` (b) makes them: the connection is set up as lbd's listener sets one up (admission, the
    /// registry of clients, the pipeline), the request goes to the kept-alive real-server connection, the response
    /// comes back, and the connection closes. Plain HTTP only. What reached the client is kept as for `exchange`.
    public func newConnectionExchange() throws {
        guard browser == nil else { throw Failure.setup("new connections are measured over plain HTTP") }
        let fresh = EmbeddedChannel(loop: loop)
        try lbSetsUpConnection(fresh)
        if keepsLastMessages { registeredDuringLastNewConnection = runtime.activeConnections }
        try fresh.connect(to: SocketAddress(ipAddress: "192.0.2.10", port: 80)).wait()
        fresh.remoteAddress = try SocketAddress(ipAddress: "198.51.100.8", port: 40001)
        fresh.localAddress = try SocketAddress(ipAddress: "192.0.2.10", port: 80)
        _ = try lbHandlesRequest(request, on: fresh)
        let toClient = try lbHandlesResponse(response, on: fresh)
        if keepsLastMessages { lastResponseAtClient = toClient }
        try lbClosesConnection(fresh)
    }

    @inline(never)
    private func lbSetsUpConnection(_ channel: EmbeddedChannel) throws {
        try runtime.initialize(client: channel, slot: slot)
    }

    @inline(never)
    private func lbClosesConnection(_ channel: EmbeddedChannel) throws {
        guard try channel.finish(acceptAlreadyClosed: true).isClean else { throw Failure.setup("the closed connection left output") }
        loop.run()
    }

    /// What the client sends on the wire for `plaintext`: itself, or the browser's TLS records.
    @inline(never)
    private func browserSends(_ plaintext: ByteBuffer) throws -> ByteBuffer {
        guard let browser else { return plaintext }
        try browser.writeAndFlush(plaintext).wait()
        return try Self.concatenatedOutbound(of: browser) ?? ByteBuffer()
    }

    /// lb reads the client's bytes and sends the real server the request; what the server received.
    @inline(never)
    private func lbHandlesRequest(_ bytes: ByteBuffer, on client: EmbeddedChannel? = nil) throws -> ByteBuffer {
        try (client ?? self.client).writeInbound(bytes)
        guard let toServer = try Self.concatenatedOutbound(of: server) else { throw Failure.noRequestAtServer }
        return toServer
    }

    /// lb reads the server's response and sends it to the client; what the client's socket received.
    @inline(never)
    private func lbHandlesResponse(_ bytes: ByteBuffer, on client: EmbeddedChannel? = nil) throws -> ByteBuffer {
        try server.writeInbound(bytes)
        guard let toClient = try Self.concatenatedOutbound(of: client ?? self.client) else { throw Failure.noResponseAtClient }
        return toClient
    }

    /// What the client reads from `bytes`: themselves, or the browser's plaintext.
    @inline(never)
    private func browserReceives(_ bytes: ByteBuffer) throws -> ByteBuffer {
        guard let browser else { return bytes }
        try browser.writeInbound(bytes)
        var plaintext = ByteBuffer()
        while var more = try browser.readInbound(as: ByteBuffer.self) { plaintext.writeBuffer(&more) }
        return plaintext
    }

    private static func concatenatedOutbound(of channel: EmbeddedChannel) throws -> ByteBuffer? {
        guard var all = try channel.readOutbound(as: ByteBuffer.self) else { return nil }
        while var more = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&more) }
        return all
    }

    /// For the fuzz target, which drives the two ends itself: client bytes in (a refusal is lb's answer, not an
    /// error here), what lb has sent the real server since the last call, a response from the real server.
    package func clientSends(_ bytes: ByteBuffer) {
        _ = try? client.writeInbound(bytes)
        while (try? client.readOutbound(as: ByteBuffer.self)) != nil {}
    }

    package func takeBytesAtServer() -> [UInt8] {
        var bytes: [UInt8] = []
        while let buffer = try? server.readOutbound(as: ByteBuffer.self) { bytes += buffer.readableBytesView }
        return bytes
    }

    package func serverSends(_ bytes: ByteBuffer) {
        _ = try? server.writeInbound(bytes)
        while (try? client.readOutbound(as: ByteBuffer.self)) != nil {}
    }

    /// The server closes its side of the connection (its FIN); what lb has sent the client since the last call.
    func serverClosesAndClientReceives() -> [UInt8] {
        server.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        var received: [UInt8] = []
        while let buffer = try? client.readOutbound(as: ByteBuffer.self) { received += buffer.readableBytesView }
        return received
    }

    /// The server sends `bytes` (any piece of a response stream); what lb has sent the client since the last call.
    package func serverSendsAndClientReceives(_ bytes: ByteBuffer) -> [UInt8] {
        _ = try? server.writeInbound(bytes)
        var received: [UInt8] = []
        while let buffer = try? client.readOutbound(as: ByteBuffer.self) { received += buffer.readableBytesView }
        return received
    }

    /// The client sends `text` (any piece of a request stream), the server answers one request with the response
    /// (for tests: each call must complete exactly one request).
    func clientSendsAndOneRequestIsAnswered(_ text: String) throws {
        try client.writeInbound(ByteBuffer(string: text))
        guard try server.readOutbound(as: ByteBuffer.self) != nil else { throw Failure.noRequestAtServer }
        while try server.readOutbound(as: ByteBuffer.self) != nil {}
        try server.writeInbound(response)
        guard try client.readOutbound(as: ByteBuffer.self) != nil else { throw Failure.noResponseAtClient }
        while try client.readOutbound(as: ByteBuffer.self) != nil {}
    }

    /// The capacity of the buffer in which the client's reader holds what it has not passed on (for tests).
    var clientReaderCapacity: Int? { (try? client.pipeline.syncOperations.handler(type: ClientRequestReader.self))?.heldCapacity }

    /// Closes both ends and retires the service's runtime; the loop runs what they scheduled.
    public func finish() {
        _ = try? browser?.finish()
        _ = try? client.finish()
        _ = try? server.finish()
        // As a reload retires a generation: the per-loop keep-alive registry lets go of this loop and pool.
        runtime.retire()
        loop.run()
    }
}
