import Foundation
import LBConfig
import LBProxy
import LBStrictHTTP
import LBTestSupport
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix


// MARK: A scripted backend that records exactly what it parsed

/// A real server on loopback that parses what lb sends with `strictParseRequest` and answers each request with
/// the bytes the test scripts. Every request, and anything unparsable, is recorded in arrival order.
final class RawBackend: @unchecked Sendable {
    enum Reply: Sendable {
        /// Send these bytes and keep reading.
        case send(String)
        /// Send these bytes, then close.
        case sendAndClose(String)
        /// Close without a byte (FIN).
        case close
        /// Abort the connection (RST).
        case reset
        /// Say nothing.
        case silent
    }

    let port: UInt16
    private let lock = NSLock()
    private var _requests: [StrictRequest] = []
    private var _invalid: [String] = []
    private var _connections = 0
    private var _closedByPeer = 0
    private var _bytesReceived = 0
    private var _bytesSent = 0
    private var channel: Channel?
    let reply: @Sendable (_ request: StrictRequest, _ indexOnConnection: Int) -> Reply

    init(port: UInt16, group: EventLoopGroup, reply: @escaping @Sendable (StrictRequest, Int) -> Reply) throws {
        self.port = port
        self.reply = reply
        channel = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RawBackendHandler(backend: self))
                }
            }
            .bind(host: "127.0.0.1", port: Int(port)).wait()
    }

    var requests: [StrictRequest] { lock.lock(); defer { lock.unlock() }; return _requests }
    var invalid: [String] { lock.lock(); defer { lock.unlock() }; return _invalid }
    var connections: Int { lock.lock(); defer { lock.unlock() }; return _connections }
    /// Connections that lb closed (the server saw end of stream or a reset).
    var closedByPeer: Int { lock.lock(); defer { lock.unlock() }; return _closedByPeer }

    fileprivate func record(_ change: (RawBackend) -> Void) { lock.lock(); change(self); lock.unlock() }
    fileprivate func recordRequest(_ request: StrictRequest) { record { $0._requests.append(request) } }
    fileprivate func recordInvalid(_ reason: String) { record { $0._invalid.append(reason) } }
    fileprivate func recordConnection() { record { $0._connections += 1 } }
    fileprivate func recordClosedByPeer() { record { $0._closedByPeer += 1 } }
    fileprivate func recordReceived(_ count: Int) { record { $0._bytesReceived += count } }
    fileprivate func recordSent(_ text: String) { record { $0._bytesSent += text.utf8.count } }
    /// Every byte read from lb, and every byte of the replies written to it.
    var bytesReceived: Int { lock.lock(); defer { lock.unlock() }; return _bytesReceived }
    var bytesSent: Int { lock.lock(); defer { lock.unlock() }; return _bytesSent }

    func stop() throws { try closeListener(channel, port: port) }

    private var open: [Channel] = []
    fileprivate func recordOpen(_ channel: Channel) { record { $0.open.append(channel) } }

    /// Shuts down the sending side of every connection, as a server timing out an idle keep-alive would.
    func halfCloseAll() throws {
        let channels = lock.withLock { open }
        for channel in channels { try channel.close(mode: .output).wait() }
    }
}

final class RawBackendHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let backend: RawBackend
    var buffer: [UInt8] = []
    var index = 0
    var closing = false
    init(backend: RawBackend) { self.backend = backend }

    func channelActive(context: ChannelHandlerContext) {
        backend.recordConnection()
        backend.recordOpen(context.channel)
    }

    private var peerGone = false

    func channelInactive(context: ChannelHandlerContext) {
        if !closing, !peerGone { backend.recordClosedByPeer() }
        peerGone = true
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case ChannelEvent.inputClosed = event else { return }
        if !closing, !peerGone { backend.recordClosedByPeer() }
        peerGone = true
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        backend.recordReceived(bytes.readableBytes)
        buffer += bytes.readBytes(length: bytes.readableBytes) ?? []
        while !closing, !buffer.isEmpty {
            switch strictParseRequest(buffer) {
            case .needMore:
                return
            case .invalid(let reason):
                backend.recordInvalid(reason)
                closing = true
                context.close(promise: nil)
                return
            case .request(let request, let consumed):
                buffer.removeFirst(consumed)
                backend.recordRequest(request)
                let reply = backend.reply(request, index)
                index += 1
                switch reply {
                case .send(let text):
                    backend.recordSent(text)
                    context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
                case .sendAndClose(let text):
                    closing = true
                    backend.recordSent(text)
                    context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text))).whenComplete { _ in
                        context.close(promise: nil)
                    }
                case .close:
                    closing = true
                    context.close(promise: nil)
                case .reset:
                    closing = true
                    // SO_LINGER 0: the close sends a reset.
                    if let provider = context.channel as? SocketOptionProvider {
                        provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in context.close(promise: nil) }
                    } else {
                        context.close(promise: nil)
                    }
                case .silent:
                    break
                }
            }
        }
    }
}



/// A proxy in front of one scripted backend.
final class RawFixture: @unchecked Sendable {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let base = Ports.block()
    var vipPort: UInt16 { base }
    let backend: RawBackend
    let engine: ProxyEngine

    init(extra: [String] = [], reply: @escaping @Sendable (StrictRequest, Int) -> RawBackend.Reply) async throws {
        backend = try RawBackend(port: base + 1, group: group, reply: reply)
        var yaml = """
              - name: web
                vip: 127.0.0.1
                ports: [\(base)]
                mode: l7-http
                health_check: {type: none}
                real_servers:
                  - {name: web-1, address: 127.0.0.1, port: \(base + 1)}

            """
        for line in extra { yaml += "    \(line)\n" }
        let service = try makeService(yaml)
        engine = ProxyEngine(threads: 1, logger: testLogger)
        try await engine.start([service])
    }

    func stop() async {
        await engine.shutdown(drainTimeout: .seconds(1))
        try? backend.stop()
        try? await group.shutdownGracefully()
    }
}

/// A 200 response with a body and a length, kept alive.
func ok(_ body: String = "ok", extra: String = "") -> String {
    "HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\n\(extra)\r\n\(body)"
}
