import Foundation
import NIOCore
import LBTestSupport
import Testing
@testable import LBProxy

/// Request framing: raw bytes from a hostile client, and exactly what the real server parsed.
@Suite("l7-http framing: what the real server receives", .serialized)
struct RequestFramingTests {
    /// A body whose data is a whole second request: the smuggling payload of every case below.
    static let smuggled = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    static var smuggledChunk: String { String(smuggled.utf8.count, radix: 16) + "\r\n" + smuggled + "\r\n0\r\n\r\n" }

    @Test func getWithCapitalisedChunkedIsOneRequest() async throws {
        let fixture = try await RawFixture { _, _ in .send(ok()) }
        let client = try RawClient(port: fixture.vipPort)
        client.send("GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n" + Self.smuggledChunk)
        let response = client.readResponse()
        #expect(statusLine(response) == "HTTP/1.1 200 OK" || statusLine(response) == "HTTP/1.1 400 Bad Request")
        // Nothing further may arrive: a second response would be the smuggled request's.
        client.send("GET /next HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        let rest = client.readAllText()
        #expect(rest.components(separatedBy: "HTTP/1.1 ").count <= 2, "\(rest)")
        #expect(await eventually { fixture.backend.requests.count >= 1 })
        let targets = fixture.backend.requests.map(\.target)
        #expect(!targets.contains("/smuggled"), "the backend parsed the body as a request: \(targets)")
        #expect(fixture.backend.invalid.isEmpty, "\(fixture.backend.invalid)")
        if let first = fixture.backend.requests.first, first.target == "/" {
            #expect(first.values("transfer-encoding") == ["chunked"])
            #expect(first.body == Array(Self.smuggled.utf8))
        }
        await fixture.stop()
    }

    /// Every method keeps its body, framed by lb from what its parser read.
    @Test(arguments: ["GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "POST", "PUT", "PATCH", "PROPFIND"])
    func bodyOfEveryMethodIsFramed(_ method: String) async throws {
        let fixture = try await RawFixture { _, _ in .send(ok()) }
        for framing in ["Content-Length: \(Self.smuggled.utf8.count)\r\n\r\n" + Self.smuggled,
                        "Transfer-Encoding: chunked\r\n\r\n" + Self.smuggledChunk] {
            let client = try RawClient(port: fixture.vipPort)
            client.send("\(method) /m HTTP/1.1\r\nHost: t\r\n\(framing)")
            let response = client.readResponse()
            #expect(statusLine(response) == "HTTP/1.1 200 OK", "\(method): \(response.prefix(60))")
        }
        #expect(await eventually { fixture.backend.requests.count == 2 })
        let requests = fixture.backend.requests
        #expect(requests.map(\.target) == ["/m", "/m"], "\(method): \(requests)")
        #expect(requests.allSatisfy { $0.body == Array(Self.smuggled.utf8) }, "\(method)")
        #expect(requests.first?.values("content-length") == ["\(Self.smuggled.utf8.count)"])
        #expect(requests.last?.values("transfer-encoding") == ["chunked"])
        #expect(fixture.backend.invalid.isEmpty, "\(fixture.backend.invalid)")
        await fixture.stop()
    }

    /// A response to HEAD has no body whatever its Content-Length says, and the real-server connection then
    /// carries the next request: lb writes request bytes itself, and must tell its response parser each method.
    @Test func headResponseHasNoBodyAndTheServerConnectionCarriesOn() async throws {
        let fixture = try await RawFixture { request, _ in
            request.method == "HEAD" ? .send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n") : .send(ok("after"))
        }
        let client = try RawClient(port: fixture.vipPort)
        client.send("HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n")
        let head = client.read(until: "\r\n\r\n")
        #expect(statusLine(head) == "HTTP/1.1 200 OK", "\(head)")
        #expect(header("content-length", in: head) == "5")
        // Had the parser waited for 5 body bytes, this response would be cut into them (or never come).
        client.send("GET /g HTTP/1.1\r\nHost: t\r\n\r\n")
        let next = client.readResponse()
        #expect(statusLine(next) == "HTTP/1.1 200 OK" && next.hasSuffix("\r\n\r\nafter"), "\(next)")
        #expect(fixture.backend.requests.map(\.method) == ["HEAD", "GET"])
        #expect(fixture.backend.connections == 1, "the real-server connection was not reused")
        await fixture.stop()
    }

    static let refused: [(String, String)] = [
        ("a coding before chunked", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + smuggledChunk),
        ("chunked twice", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + smuggledChunk),
        ("a coding other than chunked", "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n" + smuggled),
        ("chunked not last", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n" + smuggledChunk),
        ("two Host headers", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("a Host list", "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"),
        ("an absolute URI contradicting Host", "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n"),
        ("CONNECT", "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"),
    ]

    @Test(arguments: 0..<refused.count)
    func ambiguousRequestIsRefused(_ index: Int) async throws {
        let (name, bytes) = Self.refused[index]
        let fixture = try await RawFixture { _, _ in .send(ok()) }
        let client = try RawClient(port: fixture.vipPort)
        client.send(bytes)
        let response = client.readAllText()
        #expect(response.hasPrefix("HTTP/1.1 400 Bad Request") || response.hasPrefix("HTTP/1.1 405"), "\(name): \(response.prefix(80))")
        #expect(client.lastReadEnd == "end of stream", "\(name): the connection is closed")
        #expect(fixture.backend.connections == 0 && fixture.backend.requests.isEmpty, "\(name) reached the server")
        await fixture.stop()
    }

    @Test func absoluteURIMatchingHostIsForwarded() async throws {
        let fixture = try await RawFixture { _, _ in .send(ok()) }
        let client = try RawClient(port: fixture.vipPort)
        client.send("GET http://A.example:80/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        await fixture.stop()
    }

    /// lbd does not switch protocols: the request is answered, Upgrade is not forwarded, and the connection closes
    /// (lbd's parser reads nothing after such a request, so keeping it open would leave the client hanging).
    @Test func upgradeRequestIsAnsweredThenClosed() async throws {
        let fixture = try await RawFixture { _, _ in .send(ok()) }
        let client = try RawClient(port: fixture.vipPort)
        let started = ContinuousClock.now
        client.send("GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        let response = client.readAllText()
        #expect(statusLine(response) == "HTTP/1.1 200 OK" && header("Connection", in: response) == "close", "\(response)")
        #expect(client.lastReadEnd == "end of stream" && ContinuousClock.now - started < .seconds(2))
        #expect(fixture.backend.requests.first?.values("upgrade").isEmpty == true)
        await fixture.stop()
    }

    /// `Connection` may not strip what frames or routes the request.
    @Test func connectionCannotRemoveFramingOrHost() async throws {
        let fixture = try await RawFixture { _, _ in .send(ok()) }
        let client = try RawClient(port: fixture.vipPort)
        client.send("POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: \(Self.smuggled.utf8.count)\r\n"
                    + "Connection: content-length, host, x-forwarded-for, x-custom\r\nX-Custom: 1\r\n\r\n" + Self.smuggled)
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        client.send("POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n"
                    + Self.smuggledChunk)
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        #expect(await eventually { fixture.backend.requests.count == 2 })
        let requests = fixture.backend.requests
        #expect(requests.map(\.target) == ["/a", "/b"], "\(requests)")
        #expect(requests[0].values("host") == ["t"] && requests[0].values("x-custom").isEmpty)
        #expect(requests[0].values("x-forwarded-for") == ["127.0.0.1"])
        #expect(requests.allSatisfy { $0.body == Array(Self.smuggled.utf8) })
        #expect(fixture.backend.invalid.isEmpty)
        await fixture.stop()
    }
}

/// Responses: lb frames what it sends to the client, and refuses what it cannot frame.
@Suite("l7-http framing: responses", .serialized)
struct ResponseFramingTests {
    @Test func capitalisedChunkedResponseIsReframed() async throws {
        let fixture = try await RawFixture { _, _ in
            .send("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        }
        let client = try RawClient(port: fixture.vipPort)
        client.send("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        let response = client.readAllText()
        #expect(header("Transfer-Encoding", in: response) == "chunked", "\(response)")
        #expect(response.hasSuffix("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "\(response)")
        await fixture.stop()
    }

    static let malformed: [(String, String)] = [
        ("a coding other than chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello"),
        ("two lengths", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ("length and chunked", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("not HTTP", "SSH-2.0-OpenSSH_9.2\r\n"),
        ("a switch of protocols nobody asked for", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"),
        ("a bad chunk size right after the head", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ]

    @Test(arguments: 0..<malformed.count)
    func malformedResponseIsBadGateway(_ index: Int) async throws {
        let (name, bytes) = Self.malformed[index]
        let fixture = try await RawFixture { _, _ in .send(bytes) }
        let client = try RawClient(port: fixture.vipPort)
        let started = ContinuousClock.now
        client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        let response = client.readAllText()
        #expect(response.hasPrefix("HTTP/1.1 502 Bad Gateway"), "\(name): \(response.prefix(80))")
        #expect(client.lastReadEnd == "end of stream", "\(name): closed")
        #expect(ContinuousClock.now - started < .seconds(2))
        #expect(await eventually { fixture.backend.closedByPeer == 1 }, "\(name): the server connection is closed (\(fixture.backend.closedByPeer), \(fixture.backend.connections))")
        await fixture.stop()
    }
}

/// Every failure of a real server is answered at once, and nothing is sent twice unless that is safe.
@Suite("l7-http failures", .serialized)
struct BackendFailureTests {
    @Test(arguments: [RawBackend.Reply.close, .reset])
    func serverGoneBeforeAnsweringIsBadGatewayAtOnce(_ reply: RawBackend.Reply) async throws {
        let fixture = try await RawFixture(extra: ["timeouts: {idle: 30s}"]) { _, _ in reply }
        let client = try RawClient(port: fixture.vipPort)
        let started = ContinuousClock.now
        client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        let response = client.readAllText()
        #expect(response.hasPrefix("HTTP/1.1 502 Bad Gateway"), "\(response.prefix(80)) after \(client.lastReadEnd)")
        #expect(ContinuousClock.now - started < .seconds(2))
        await fixture.stop()
    }

    /// A reused connection answers the POST with garbage: 502, and the POST reached the server once.
    @Test func postIsNeverSentTwice() async throws {
        let fixture = try await RawFixture { _, index in index == 0 ? .send(ok()) : .send("garbage\r\n\r\n") }
        let client = try RawClient(port: fixture.vipPort)
        client.send("GET /warm HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        client.send("POST /order HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        // A second copy would have been sent before lb gave up and answered 502: the count is final now.
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 502 Bad Gateway")
        #expect(fixture.backend.requests.filter { $0.method == "POST" }.count == 1, "\(fixture.backend.requests)")
        await fixture.stop()
    }

    /// A reused connection closed by the server as the request arrived: an idempotent GET is retried on a new one.
    @Test func idempotentRequestIsRetriedOnAFreshConnection() async throws {
        let fixture = try await RawFixture { _, index in index == 1 ? .close : .send(ok()) }
        let client = try RawClient(port: fixture.vipPort)
        client.send("GET /1 HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        client.send("GET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        #expect(fixture.backend.requests.map(\.target) == ["/1", "/2", "/2"])
        #expect(fixture.backend.connections == 2)
        await fixture.stop()
    }

    /// The same race for an idempotent request with a body (PUT): head and body are sent again, whole.
    @Test func idempotentRequestWithABodyIsRetriedWhole() async throws {
        let fixture = try await RawFixture { _, index in index == 1 ? .close : .send(ok()) }
        let client = try RawClient(port: fixture.vipPort)
        client.send("GET /1 HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        client.send("PUT /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        let requests = fixture.backend.requests
        #expect(requests.map(\.target) == ["/1", "/2", "/2"])
        #expect(requests.last?.body == Array("hello world".utf8), "\(requests)")
        #expect(requests.last?.values("content-length") == ["11"])
        #expect(fixture.backend.connections == 2)
        await fixture.stop()
    }

    /// The server closes its keep-alive connection right after answering: the client's next request is answered
    /// on a fresh connection, whether lbd already saw the close (the connection left the pool) or meets it as it
    /// sends (an idempotent request is retried). A POST in that race gets 502 (see docs/layer7.md); that lbd drops
    /// closed idle connections is shown deterministically by halfClosedIdleConnectionIsClosedByLB.
    @Test func requestAfterTheServerClosedItsConnectionIsServed() async throws {
        let fixture = try await RawFixture { _, _ in .sendAndClose(ok()) }
        let client = try RawClient(port: fixture.vipPort)
        client.send("GET /1 HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        client.send("GET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        #expect(fixture.backend.requests.map(\.target) == ["/1", "/2"])
        #expect(fixture.backend.connections == 2)
        await fixture.stop()
    }

    @Test func halfClosedIdleConnectionIsClosedByLB() async throws {
        // The server answers, then shuts down only its sending side: lb must close the connection itself.
        let fixture = try await RawFixture { _, _ in .send(ok()) }
        let client = try RawClient(port: fixture.vipPort)
        client.send("GET /1 HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        #expect(fixture.backend.closedByPeer == 0)
        try fixture.backend.halfCloseAll()
        #expect(await eventually { fixture.backend.closedByPeer == 1 }, "lb left the pooled connection in CLOSE-WAIT")
        await fixture.stop()
    }

    /// A server that answers with more than one response: the extra one must never reach the next client that
    /// reuses the connection (cross-user response mixing).
    @Test func extraResponseNeverReachesAnotherClient() async throws {
        let fixture = try await RawFixture { request, _ in
            // The extra response is left incomplete: whatever follows on this connection would complete its body.
            .send(ok("for \(request.target)") + "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npwned!")
        }
        let attacker = try RawClient(port: fixture.vipPort)
        attacker.send("GET /attacker HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(attacker.readResponse().hasSuffix("for /attacker"))
        // The extra bytes reach the pooled connection, and lb closes it (a server that owes no answer spoke).
        #expect(await eventually { fixture.backend.closedByPeer >= 1 }, "lb kept the connection that carried the extra response")
        for index in 0..<5 {
            let victim = try RawClient(port: fixture.vipPort)
            victim.send("GET /victim-\(index) HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            let response = victim.readAllText()
            #expect(response.hasSuffix("for /victim-\(index)"), "\(response)")
        }
        await fixture.stop()
    }

    /// The same extra response, in the same read as the answer to the first of two pipelined requests: lb sends
    /// the second request on that connection as soon as the first response ends, but the extra bytes were already
    /// there before it and are never its answer (the client gets a 502, never "pwned!").
    @Test func extraResponseNeverAnswersAPipelinedRequest() async throws {
        let fixture = try await RawFixture { request, _ in
            request.target == "/a" ? .send(ok("for /a") + "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npwned!") : .send(ok("for \(request.target)"))
        }
        let client = try RawClient(port: fixture.vipPort)
        client.send("GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        let both = client.readAllText()
        #expect(both.hasPrefix("HTTP/1.1 200 OK\r\n") && both.contains("\r\n\r\nfor /a"), "\(both)")
        #expect(!both.contains("pwned!"), "the extra response answered the pipelined request: \(both)")
        #expect(both.hasSuffix("for /b") || both.contains("HTTP/1.1 502 Bad Gateway"), "\(both)")
        await fixture.stop()
    }

    @Test func interimResponsesReachHTTP11ClientsOnly() async throws {
        let fixture = try await RawFixture { _, _ in
            .send("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + ok("done"))
        }
        let modern = try RawClient(port: fixture.vipPort)
        modern.send("POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
        let both = modern.readAllText()
        #expect(both.hasPrefix("HTTP/1.1 100 Continue\r\n"), "\(both)")
        #expect(both.contains("HTTP/1.1 103") && both.contains("Link: </a.css>; rel=preload"), "\(both.debugDescription)")
        #expect(both.hasSuffix("\r\n\r\ndone"))
        let old = try RawClient(port: fixture.vipPort)
        old.send("POST / HTTP/1.0\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
        let final = old.readAllText()
        #expect(final.hasPrefix("HTTP/1.1 200 OK\r\n") && final.hasSuffix("done"), "\(final)")
        await fixture.stop()
    }

    @Test func http10KeepAliveIsAnsweredAs10ClientsExpect() async throws {
        let fixture = try await RawFixture { request, _ in
            request.target == "/chunked"
                ? .send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n") : .send(ok("body"))
        }
        let client = try RawClient(port: fixture.vipPort)
        for _ in 0..<2 {
            client.send("GET / HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
            let response = client.readResponse()
            #expect(header("Connection", in: response)?.lowercased() == "keep-alive", "\(response)")
            #expect(header("Content-Length", in: response) == "4")
        }
        // A body of unknown length: a 1.0 client can only see its end by the close.
        client.send("GET /chunked HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        let started = ContinuousClock.now
        let last = client.readAllText()
        #expect(header("Connection", in: last) == "close" && header("Transfer-Encoding", in: last) == nil, "\(last)")
        #expect(last.hasSuffix("\r\n\r\nbody"), "\(last)")
        #expect(client.lastReadEnd == "end of stream" && ContinuousClock.now - started < .seconds(2))
        // Without keep-alive, 1.0 means one response and the close.
        let plain = try RawClient(port: fixture.vipPort)
        plain.send("GET / HTTP/1.0\r\nHost: t\r\n\r\n")
        #expect(plain.readAllText().hasSuffix("body") && plain.lastReadEnd == "end of stream")
        await fixture.stop()
    }
}
