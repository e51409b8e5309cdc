import Foundation
import LBConfig
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
@testable import LBProxy

#if canImport(Glibc)
import Glibc
#endif

/// Ports for one test: each test takes its own block so suites can run in parallel.
enum Ports {
    private static let counter = NIOLockedCounter()
    /// A block of 10 ports from a range lbd does not use elsewhere in the tests.
    static func block() -> UInt16 { UInt16(20_000 + Int(getpid() % 100) * 100 + counter.next() * 10) }
}

final class NIOLockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func next() -> Int {
        lock.lock(); defer { lock.unlock() }
        value += 1
        return value
    }
    var current: Int {
        lock.lock(); defer { lock.unlock() }
        return value
    }
}

let testLogger: Logger = {
    var logger = Logger(label: "lb-test")
    logger.logLevel = .critical
    return logger
}()

/// Builds a virtual service from YAML fragments, through the real loader.
func makeService(_ yaml: String) throws -> VirtualService {
    let report = ConfigurationLoader.check(yaml: "virtual_services:\n" + yaml, file: "test.yaml")
    guard let service = report.configuration?.virtualServices.first else {
        throw TestFailure("config rejected: \(report.diagnostics)")
    }
    return service
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

// MARK: Backends

/// A small HTTP/1.1 server on loopback that answers with its name and reports what it received in headers.
final class HTTPBackend: @unchecked Sendable {
    let name: String
    let port: UInt16
    private var channel: Channel?
    private let group: EventLoopGroup
    let requests = NIOLockedCounter()
    /// TCP connections accepted: what keep-alive saves.
    let connections = NIOLockedCounter()

    init(name: String, port: UInt16, group: EventLoopGroup) throws {
        self.name = name
        self.port = port
        self.group = group
        try start()
    }

    func start() throws {
        let name = self.name, requests = self.requests, connections = self.connections
        channel = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                _ = connections.next()
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(EchoingHTTPHandler(name: name, requests: requests))
                }
            }
            .bind(host: "127.0.0.1", port: Int(port)).wait()
    }

    func stop() throws {
        try channel?.close().wait()
        channel = nil
    }
}

/// Answers every request with 200 and the backend's name; echoes X-Forwarded-For and the body size back.
final class EchoingHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let name: String
    let requests: NIOLockedCounter
    var head: HTTPRequestHead?
    var bodyBytes = 0

    init(name: String, requests: NIOLockedCounter) {
        self.name = name
        self.requests = requests
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            bodyBytes = 0
        case .body(let body):
            bodyBytes += body.readableBytes
        case .end:
            _ = requests.next()
            guard let head else { return }
            var headers = HTTPHeaders()
            headers.add(name: "X-Backend", value: name)
            headers.add(name: "X-Seen-Forwarded-For", value: head.headers["x-forwarded-for"].joined(separator: ", "))
            headers.add(name: "X-Seen-Forwarded-Proto", value: head.headers["x-forwarded-proto"].joined(separator: ", "))
            headers.add(name: "X-Seen-Body-Bytes", value: "\(bodyBytes)")
            headers.add(name: "X-Seen-Connection", value: head.headers["connection"].joined(separator: ","))
            var body = ByteBuffer(string: name)
            if head.uri.hasPrefix("/big/"), let size = Int(head.uri.dropFirst(5)) {
                body = ByteBuffer(repeating: UInt8(ascii: "x"), count: size)
            }
            headers.add(name: "Content-Length", value: "\(body.readableBytes)")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}

/// A TCP server that greets with its name, echoes everything, and half-closes after the client does.
final class EchoBackend: @unchecked Sendable {
    let name: String
    let port: UInt16
    private var channel: Channel?

    init(name: String, port: UInt16, group: EventLoopGroup) throws {
        self.name = name
        self.port = port
        let greeting = "hello from \(name)\n"
        channel = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(EchoHandler(greeting: greeting))
                }
            }
            .bind(host: "127.0.0.1", port: Int(port)).wait()
    }

    func stop() throws { try channel?.close().wait() }
}

final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let greeting: String
    init(greeting: String) { self.greeting = greeting }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: greeting)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) { context.flush() }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            // Everything echoed, then our own FIN: the client must still get all of it.
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "bye\n"))).whenComplete { _ in
                context.close(mode: .output, promise: nil)
            }
        }
    }
}

// MARK: A raw client

/// A blocking TCP client on plain sockets: the test decides every byte, as an attacker would.
final class RawClient: @unchecked Sendable {
    let fd: Int32

    init(port: UInt16, from source: String? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if let source {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            inet_pton(AF_INET, source, &local.sin_addr)
            let bound = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else { throw TestFailure("bind to \(source) failed") }
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            close(fd)
            throw TestFailure("connect to \(port) failed: errno \(errno)")
        }
    }

    deinit { close(fd) }

    func send(_ text: String) { send(Array(text.utf8)) }

    /// The local port, to tell in a failure which connection it was.
    var localPort: UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    /// Sends everything unless the connection fails; returns the number of bytes the kernel accepted.
    @discardableResult
    func send(_ bytes: [UInt8]) -> Int {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent < 0 && errno == EINTR { continue }
            if sent <= 0 { return offset }
            offset += sent
        }
        return offset
    }

    func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    /// Reads until the peer closes (or `timeout` seconds pass without a byte).
    func readAll(timeout seconds: Int = 5) -> [UInt8] {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count < 0 && errno == EINTR { continue }  // SIGCHLD from tests that spawn processes
            if count <= 0 {
                lastReadEnd = count == 0 ? "end of stream" : String(cString: strerror(errno))
                break
            }
            result += buffer[0..<count]
        }
        return result
    }

    /// How the last readAll ended: "end of stream", or the error (a timeout shows as "Resource temporarily unavailable").
    private(set) var lastReadEnd = ""

    func readAllText() -> String { String(decoding: readAll(), as: UTF8.self) }

    /// Reads one HTTP response with a Content-Length body.
    func readResponse() -> String {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let text = String(decoding: data, as: UTF8.self)
            if let headEnd = text.range(of: "\r\n\r\n") {
                let head = text[..<headEnd.lowerBound].lowercased()
                let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
                let have = data.count - text[..<headEnd.upperBound].utf8.count
                if have >= length { return text }
            }
            let count = recv(fd, &buffer, buffer.count, 0)
            if count < 0 && errno == EINTR { continue }  // SIGCHLD from tests that spawn processes
            if count <= 0 { return String(decoding: data, as: UTF8.self) }
            data += buffer[0..<count]
        }
    }
}

/// The value of a header in a raw response.
func header(_ name: String, in response: String) -> String? {
    for line in response.components(separatedBy: "\r\n") {
        let parts = line.split(separator: ":", maxSplits: 1)
        if parts.count == 2, parts[0].lowercased() == name.lowercased() {
            return parts[1].trimmingCharacters(in: .whitespaces)
        }
    }
    return nil
}

func statusLine(_ response: String) -> String {
    response.components(separatedBy: "\r\n").first ?? ""
}

/// One HTTP GET on a fresh connection.
func get(_ port: UInt16, _ path: String = "/", headers: [String] = [], from source: String? = nil) throws -> String {
    let client = try RawClient(port: port, from: source)
    client.send("GET \(path) HTTP/1.1\r\nHost: test\r\n" + headers.map { $0 + "\r\n" }.joined() + "Connection: close\r\n\r\n")
    return client.readResponse()
}

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

/// Waits for a condition (polling every 10 ms) up to `timeout`; returns whether it became true.
func eventually(timeout: Duration = .seconds(3), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
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
