import Foundation
import LBConfig
import LBProxy
import LBTestSupport
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

// MARK: A strict HTTP/1.1 parser, independent of NIO

/// One request as a strict reader of RFC 9112 sees it: the oracle for what a real server received from lb.
struct StrictRequest: Equatable, CustomStringConvertible {
    var method: String
    var target: String
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    static func == (a: StrictRequest, b: StrictRequest) -> Bool {
        a.method == b.method && a.target == b.target && a.body == b.body
            && a.headers.map { "\($0.name.lowercased()):\($0.value)" } == b.headers.map { "\($0.name.lowercased()):\($0.value)" }
    }

    func values(_ name: String) -> [String] { headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value) }
    var description: String { "\(method) \(target) \(headers.map { "\($0.name): \($0.value)" }) body \(body.count) bytes" }
}

enum StrictParse {
    case request(StrictRequest, consumed: Int)
    case needMore
    case invalid(String)
}

/// Reads one message from the start of `bytes`. Only `Transfer-Encoding: chunked` (exactly) and a single decimal
/// Content-Length frame a body; anything ambiguous is invalid, which a test treats as a failure of lb.
func strictParseRequest(_ bytes: [UInt8]) -> StrictParse {
    guard let headEnd = find([13, 10, 13, 10], in: bytes, from: 0) else {
        return bytes.count > 65536 ? .invalid("head over 64 KiB") : .needMore
    }
    let head = String(decoding: bytes[..<headEnd], as: UTF8.self)
    let lines = head.components(separatedBy: "\r\n")
    let requestLine = lines[0].split(separator: " ", omittingEmptySubsequences: false)
    guard requestLine.count == 3, requestLine[2] == "HTTP/1.1" || requestLine[2] == "HTTP/1.0",
          !requestLine[0].isEmpty, requestLine[0].allSatisfy({ $0.isUppercase }) else {
        return .invalid("request line \(lines[0].debugDescription)")
    }
    var headers: [(String, String)] = []
    for line in lines.dropFirst() {
        guard let colon = line.firstIndex(of: ":"), !line.hasPrefix(" "), !line.hasPrefix("\t") else {
            return .invalid("header line \(line.debugDescription)")
        }
        let name = String(line[..<colon])
        guard !name.isEmpty, !name.contains(" ") else { return .invalid("header name \(name.debugDescription)") }
        headers.append((name, line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
    }
    var request = StrictRequest(method: String(requestLine[0]), target: String(requestLine[1]), headers: headers, body: [])
    let codings = request.values("transfer-encoding")
    let lengths = request.values("content-length")
    var offset = headEnd + 4
    if !codings.isEmpty {
        guard codings == ["chunked"], lengths.isEmpty else { return .invalid("framing TE \(codings) CL \(lengths)") }
        while true {
            guard let lineEnd = find([13, 10], in: bytes, from: offset) else { return .needMore }
            let sizeText = String(decoding: bytes[offset..<lineEnd], as: UTF8.self)
            guard let size = Int(sizeText, radix: 16), size >= 0 else { return .invalid("chunk size \(sizeText.debugDescription)") }
            offset = lineEnd + 2
            if size == 0 {
                // Trailers, then an empty line.
                while true {
                    guard let end = find([13, 10], in: bytes, from: offset) else { return .needMore }
                    let isEmpty = end == offset
                    offset = end + 2
                    if isEmpty { return .request(request, consumed: offset) }
                }
            }
            guard bytes.count >= offset + size + 2 else { return .needMore }
            request.body += bytes[offset..<(offset + size)]
            guard bytes[offset + size] == 13, bytes[offset + size + 1] == 10 else { return .invalid("chunk end") }
            offset += size + 2
        }
    }
    if !lengths.isEmpty {
        guard lengths.count == 1, let length = Int(lengths[0]), lengths[0].allSatisfy(\.isNumber) else {
            return .invalid("Content-Length \(lengths)")
        }
        guard bytes.count >= offset + length else { return .needMore }
        request.body = Array(bytes[offset..<(offset + length)])
        offset += length
    }
    return .request(request, consumed: offset)
}

func find(_ needle: [UInt8], in bytes: [UInt8], from start: Int) -> Int? {
    guard bytes.count >= needle.count, start <= bytes.count - needle.count else { return nil }
    for index in start...(bytes.count - needle.count) where bytes[index] == needle[0] {
        if Array(bytes[index..<(index + needle.count)]) == needle { return index }
    }
    return nil
}

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

    func stop() throws { try channel?.close().wait() }

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
                    context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
                case .sendAndClose(let text):
                    closing = true
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
