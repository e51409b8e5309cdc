import Foundation
import LBConfig
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Ports for one test: each test takes its own block of 10, so suites (and other test processes on the machine)
/// can run in parallel. A block is handed out only if all its ports can be bound right now. Blocks come from
/// outside the kernel's ephemeral range (`ip_local_port_range`): a test that stops and restarts a backend must
/// not find its port taken meanwhile by some other test's outgoing connection.
public enum Ports {
    private static let counter = NIOLockedCounter()
    private static let start = Int(getpid() % 1000) * 10
    private static let window: Range<Int> = {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        let bounds = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) }
        guard bounds.count == 2 else { return 20_000..<30_000 }
        if bounds[0] >= 12_000 { return 10_000..<min(bounds[0], 30_000) }
        if bounds[1] <= 55_000 { return (bounds[1] + 1)..<65_000 }
        return 20_000..<30_000  // the whole space is ephemeral: HTTPBackend.start() retries a taken port
    }()

    public static func block() -> UInt16 {
        let blocks = window.count / 10
        while true {
            let base = UInt16(window.lowerBound + ((start / 10 + counter.next()) % blocks) * 10)
            if (base..<base + 10).allSatisfy(isFree) { return base }
        }
    }

    private static func isFree(_ port: UInt16) -> Bool {
        withLoopbackSocket(port: port) { fd, address, length in bind(fd, address, length) == 0 }
    }
}

public final class NIOLockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    public func next() -> Int {
        lock.lock(); defer { lock.unlock() }
        value += 1
        return value
    }
    public var current: Int {
        lock.lock(); defer { lock.unlock() }
        return value
    }
}

public let testLogger: Logger = {
    var logger = Logger(label: "lb-test")
    // LB_TEST_LOG=1 swift test …: the code under test logs everything (to read a failure); quiet otherwise.
    logger.logLevel = ProcessInfo.processInfo.environment["LB_TEST_LOG"] == nil ? .critical : .debug
    return logger
}()

/// Builds a virtual service from YAML fragments, through the real loader.
public func makeService(_ yaml: String) throws -> VirtualService {
    let report = ConfigurationLoader.check(yaml: "virtual_services:\n" + yaml, file: "test.yaml")
    guard let service = report.configuration?.virtualServices.first else {
        throw TestFailure("config rejected: \(report.diagnostics)")
    }
    return service
}

public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

// MARK: Backends

/// A small HTTP/1.1 server on loopback that answers with its name and reports what it received in headers.
public final class HTTPBackend: @unchecked Sendable {
    public let name: String
    public let port: UInt16
    private var channel: Channel?
    private let group: EventLoopGroup
    public let requests = NIOLockedCounter()
    /// TCP connections accepted: what keep-alive saves.
    public let connections = NIOLockedCounter()

    public init(name: String, port: UInt16, group: EventLoopGroup) throws {
        self.name = name
        self.port = port
        self.group = group
        try start()
    }

    /// Binds the backend's port. A restart retries for up to five seconds while the port is in use: on a machine
    /// whose ephemeral range covers the test ports, another test's outgoing connection can hold it briefly.
    public func start() throws {
        var attempt = 0
        while true {
            do {
                return try bind()
            } catch let error as IOError where error.errnoCode == EADDRINUSE && attempt < 100 {
                attempt += 1
                usleep(50_000)
            }
        }
    }

    private func bind() throws {
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

    public func stop() throws {
        try closeListener(channel, port: port)
        channel = nil
    }
}

/// Closes a test server's listener and waits until its port refuses connections. SwiftNIO's sockets are not
/// close-on-exec: a program this test process is starting at that moment (lbd, lbctl, ip…) holds a copy of the
/// listener from its fork to its exec, and a connection made then is accepted and reset, not refused — a test that
/// stops a server to see lb route around it would see that reset instead.
public func closeListener(_ channel: Channel?, port: UInt16) throws {
    guard let channel else { return }
    try channel.close().wait()
    let deadline = ContinuousClock.now + .seconds(5)
    while acceptsConnections(port: port), ContinuousClock.now < deadline { usleep(2_000) }
}

/// Answers every request with 200 and the backend's name; echoes X-Forwarded-For and the body size back. A request
/// for `/early/N` is answered with N bytes as soon as its head arrives, before its body (which is read and dropped),
/// as a server refusing an upload early does.
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
            if head.uri.hasPrefix("/early/"), let size = Int(head.uri.dropFirst(7)) {
                self.head = nil  // answered: the end of the request adds nothing
                let headers: HTTPHeaders = ["X-Backend": name, "Content-Length": "\(size)"]
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(repeating: UInt8(ascii: "e"), count: size)))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
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
public final class EchoBackend: @unchecked Sendable {
    public let name: String
    public let port: UInt16
    private var channel: Channel?

    public init(name: String, port: UInt16, group: EventLoopGroup) throws {
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

    public func stop() throws { try closeListener(channel, port: port) }
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
public final class RawClient: @unchecked Sendable {
    public let fd: Int32

    /// `receiveBuffer`: SO_RCVBUF, set before connecting, for a client whose socket takes little before it reads.
    public init(port: UInt16, from source: String? = nil, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if var receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receiveBuffer, socklen_t(MemoryLayout<Int32>.size))
        }
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

    public func send(_ text: String) { send(Array(text.utf8)) }

    /// The local port, to tell in a failure which connection it was.
    public var localPort: UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    /// Sends everything unless the connection fails; returns the number of bytes the kernel accepted.
    @discardableResult
    public func send(_ bytes: [UInt8]) -> Int {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent < 0 && errno == EINTR { continue }
            if sent <= 0 { return offset }
            offset += sent
        }
        return offset
    }

    public func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    /// Reads until the peer closes (or `timeout` seconds pass without a byte).
    public func readAll(timeout seconds: Int = 5) -> [UInt8] {
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
    public private(set) var lastReadEnd = ""

    public func readAllText() -> String { String(decoding: readAll(), as: UTF8.self) }

    /// Reads until `text` has arrived (or the peer closes, or 5 s pass without a byte); returns everything read.
    public func read(until text: String) -> String {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !String(decoding: data, as: UTF8.self).contains(text) {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            data += buffer[0..<count]
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Reads one HTTP response with a Content-Length body.
    public func readResponse() -> String {
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
public func header(_ name: String, in response: String) -> String? {
    for line in response.components(separatedBy: "\r\n") {
        let parts = line.split(separator: ":", maxSplits: 1)
        if parts.count == 2, parts[0].lowercased() == name.lowercased() {
            return parts[1].trimmingCharacters(in: .whitespaces)
        }
    }
    return nil
}

public func statusLine(_ response: String) -> String {
    response.components(separatedBy: "\r\n").first ?? ""
}

/// One HTTP GET on a fresh connection.
public func get(_ port: UInt16, _ path: String = "/", headers: [String] = [], from source: String? = nil) throws -> String {
    let client = try RawClient(port: port, from: source)
    client.send("GET \(path) HTTP/1.1\r\nHost: test\r\n" + headers.map { $0 + "\r\n" }.joined() + "Connection: close\r\n\r\n")
    return client.readResponse()
}

/// Waits for a condition (polling every 10 ms) up to `timeout`; returns whether it became true.
public func eventually(timeout: Duration = .seconds(3), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

/// Whether something accepts TCP connections on 127.0.0.1:port right now.
public func acceptsConnections(port: UInt16) -> Bool {
    withLoopbackSocket(port: port) { fd, address, length in connect(fd, address, length) == 0 }
}

/// A fresh TCP socket and the address 127.0.0.1:port, for one call (bind, connect); the socket is closed after.
func withLoopbackSocket(port: UInt16, _ body: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Bool) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}
