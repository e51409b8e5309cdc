import Foundation
import LBConfig
import LBStrictHTTP
import LBTestSupport
@testable import LBProxy
import NIOCore
import Testing

/// The harness that Benchmarks/ measures must forward as the real proxy does, or its figures describe nothing.
@Suite("In-process l7-http exchange")
struct InProcessExchangeTests {
    static let viewerService = """
          - name: viewer
            vip: 192.0.2.10
            ports: [80]
            mode: l7-http
            forwarded_for: true
            persistence: {type: http-cookie, cookie: LBSRV}
            real_servers: [{name: web1, address: 192.0.2.20}]
        """

    /// The viewer's service exchanging `request` and `response`.
    static func viewerExchange(request: String, response: String) throws -> InProcessExchange {
        try InProcessExchange(service: try makeService(viewerService), request: request, response: response)
    }

    @Test func requestsReachTheServerRewrittenAndResponsesReachTheClient() throws {
        let exchange = try Self.viewerExchange(
            request: "GET /study/1 HTTP/1.1\r\nHost: viewer\r\nConnection: keep-alive\r\nUser-Agent: t\r\n\r\n",
            response: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok")
        defer { exchange.finish() }
        // Until its first bytes, the client connection holds only the waiting handler; with them, the HTTP
        // handlers take its place and it leaves (requests then pay no hop for it).
        #expect(exchange.clientIsWaiting && !exchange.clientHasFrontHandler)
        var firstAtServer: (buffer: ByteBuffer, text: String)?
        for round in 1...3 {
            try exchange.exchange()
            // The harness holds each round's bytes, as a slow socket would: later heads must not be written over
            // them (lb reuses a head's storage only when nothing else holds it).
            if round == 1 { firstAtServer = (exchange.lastRequestAtServer, String(buffer: exchange.lastRequestAtServer)) }
            #expect(!exchange.clientIsWaiting && exchange.clientHasFrontHandler)
            // A simple request: lb's reader reads it, NIO's parser is not in the pipeline.
            #expect(exchange.clientReadByParser == false)
            // A simple response too: lb's reader reads it, NIO's response parser is not in the pipeline.
            #expect(exchange.serverReadByParser == false)
            let bytes = Array(exchange.lastRequestAtServer.readableBytesView)
            guard case .request(let request, let consumed) = strictParseRequest(bytes) else {
                Issue.record("round \(round): the server could not read \(String(decoding: bytes, as: UTF8.self).debugDescription)")
                return
            }
            #expect(consumed == bytes.count)
            #expect(request.method == "GET" && request.target == "/study/1")
            #expect(request.values("x-forwarded-for") == ["198.51.100.7"])
            #expect(request.values("x-forwarded-proto") == ["http"])
            #expect(request.values("connection").isEmpty)
            let response = String(buffer: exchange.lastResponseAtClient)
            #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(response)")
            #expect(response.hasSuffix("\r\n\r\nok"))
            #expect(!response.lowercased().contains("keep-alive: timeout"))
            // The client sent no cookie, so every response pins it (round 1 and after).
            #expect(response.contains("Set-Cookie: LBSRV="), "\(response)")
        }
        if let firstAtServer { #expect(String(buffer: firstAtServer.buffer) == firstAtServer.text) }
    }

    /// A connection's deadlines sit on the loop's `ConnectionClock`: the waiting handler put the connection on it at
    /// connect time (one tick scheduled, not yet due on this embedded loop), the HTTP handler joined before the
    /// waiting handler left (so the clock never stopped and was never made again), and keep-alive requests re-arm
    /// the header deadline by a store.
    @Test func aConnectionStaysOnOneClockThroughItsRequests() throws {
        let exchange = try Self.viewerExchange(request: "GET / HTTP/1.1\r\nHost: viewer\r\n\r\n",
                                               response: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        let clock = try #require(exchange.clock, "the waiting handler put the connection on a clock")
        #expect(clock.count == 1)
        for _ in 1...5 { try exchange.exchange() }
        #expect(exchange.clock === clock)
        #expect(exchange.frontIsOnClock)
        #expect(clock.count == 1)
        #expect(clock.ticksScheduled == 1)
        exchange.finish()
        #expect(exchange.clock == nil, "the closed connection left, and the clock stopped")
    }

    /// With `tls`, the client pipeline terminates TLS as lb's does and a browser with real OpenSSL encrypts the
    /// requests and decrypts the responses: the harness measures lb's HTTPS path, not a plain one.
    @Test func anHTTPSServiceIsServedThroughTLS() throws {
        let certificates = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("examples/certs")
        let service = try makeService(Self.viewerService + """

                tls: {certificate: \(certificates.appendingPathComponent("demo-viewer.pem").path), key: \(certificates.appendingPathComponent("demo-viewer.key").path)}
            """)
        let exchange = try InProcessExchange(service: service, request: "GET /study/1 HTTP/1.1\r\nHost: viewer\r\n\r\n",
                                             response: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        defer { exchange.finish() }
        for round in 1...2 {
            try exchange.exchange()
            let atServer = String(buffer: exchange.lastRequestAtServer)
            #expect(atServer.hasPrefix("GET /study/1 HTTP/1.1\r\n"), "round \(round): \(atServer)")
            #expect(atServer.contains("\r\nX-Forwarded-Proto: https\r\n"), "round \(round): \(atServer)")
            let atClient = String(buffer: exchange.lastResponseAtClient)
            #expect(atClient.hasPrefix("HTTP/1.1 200 OK\r\n") && atClient.hasSuffix("\r\n\r\nok"), "round \(round): \(atClient)")
            #expect(atClient.contains("; HttpOnly; Secure\r\n"), "the cookie of an HTTPS service is Secure: \(atClient)")
            // On the wire: TLS 1.2-framed application data records, not the response's text.
            let wire = Array(exchange.lastResponseOnClientWire.readableBytesView)
            #expect(wire.starts(with: [0x17, 0x03, 0x03]), "round \(round): \(wire.prefix(8))")
            #expect(!String(decoding: wire, as: UTF8.self).contains("200 OK"))
        }
    }

    /// A client per request (`Connection: close`), as the benchmark's new-connection figure measures: each is set
    /// up as lbd's listener sets one up, answered with `Connection: close`, and leaves the registry when it closes;
    /// the real-server connection is the same kept-alive one throughout.
    @Test func aNewConnectionPerRequestIsSetUpAnsweredAndClosed() throws {
        let exchange = try InProcessExchange(service: try makeService(Self.viewerService),
                                             request: "GET /study/1 HTTP/1.1\r\nHost: viewer\r\nConnection: close\r\n\r\n",
                                             response: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        defer { exchange.finish() }
        let before = exchange.registeredClients  // the harness's own kept-alive client, set up without the registry
        for round in 1...3 {
            try exchange.newConnectionExchange()
            let response = String(buffer: exchange.lastResponseAtClient)
            #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n") && response.contains("\r\nConnection: close\r\n"), "round \(round): \(response)")
            #expect(response.hasSuffix("\r\n\r\nok"))
            #expect(exchange.registeredDuringLastNewConnection == before + 1, "round \(round): the open connection was registered")
            #expect(exchange.registeredClients == before, "round \(round): the closed connection left the registry")
        }
    }
}
