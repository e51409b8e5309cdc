import NIOCore
import NIOEmbedded
import NIOHTTP1
import LBTestSupport
import Testing
@testable import LBProxy

/// lb's own reader of simple response heads: what it accepts, what it leaves to llhttp, and that a response it reads
/// is forwarded byte for byte as llhttp's reading of it would be.
@Suite("l7-http: simple response heads read by lb itself")
struct ResponseHeadScannerTests {
    static func scan(_ text: String, to method: HTTPMethod = .GET, maxHeadBytes: Int = 8192,
                     maxFields: Int = 100) -> (ResponseHeadScan, [FieldSpan]) {
        var scanner = ResponseHeadScanner(maxHeadBytes: maxHeadBytes, maxFields: maxFields)
        let result = scanner.scan(ByteBuffer(string: text), requestMethod: method)
        return (result, scanner.fields)
    }

    static let nginx = "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 28 Nov 2026 07:00:00 GMT\r\n"
        + "Content-Type: application/dicom\r\nContent-Length: 1048576\r\nConnection: keep-alive\r\n"
        + "ETag: \"6564b1a0-100000\"\r\nAccept-Ranges: bytes\r\n\r\n"

    @Test func aWebServersResponseIsSimple() throws {
        let (result, fields) = Self.scan(Self.nginx)
        guard case .simple(let head) = result else { Issue.record("not simple: \(result)"); return }
        #expect(head.status == .ok && !head.isHTTP10 && head.keepAlive)
        #expect(head.contentLength == 1_048_576 && head.bodyLength == 1_048_576)
        #expect(head.size == Self.nginx.utf8.count)
        #expect(fields.count == 7 && head.connectionField == 4 && head.keepAliveField == nil)
        let bytes = Array(Self.nginx.utf8)
        #expect(String(decoding: bytes[fields[3].name], as: UTF8.self) == "Content-Length")
        #expect(String(decoding: bytes[fields[5].value], as: UTF8.self) == "\"6564b1a0-100000\"")
    }

    @Test func bodyAndKeepAliveAreReadAsNIOReadsThem() {
        func head(_ text: String, to method: HTTPMethod = .GET) -> SimpleResponseHead? {
            if case .simple(let head) = Self.scan(text, to: method).0 { return head }
            return nil
        }
        // No body for HEAD, 204 and 304, whatever a length says.
        #expect(head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", to: .HEAD)?.bodyLength == 0)
        #expect(head("HTTP/1.1 200 OK\r\n\r\n", to: .HEAD)?.bodyLength == 0)
        #expect(head("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")?.bodyLength == 0)
        #expect(head("HTTP/1.1 304 Not Modified\r\n\r\n")?.bodyLength == 0)
        #expect(head("HTTP/1.1 204 No Content\r\n\r\n")?.bodyLength == 0)
        #expect(head("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?.bodyLength == 0)
        #expect(head("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 7\r\n\r\n")?.bodyLength == 7)
        // Keep-alive as llhttp reads it.
        #expect(head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")?.keepAlive == false)
        #expect(head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\n\r\n")?.keepAlive == true)
        #expect(head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?.keepAlive == false)
        // A response to HEAD without a length: llhttp reads it as delimited by the close (NIO asks before it skips
        // the body), so the connection is not kept.
        #expect(head("HTTP/1.1 200 OK\r\n\r\n", to: .HEAD)?.keepAlive == false)
        #expect(head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", to: .HEAD)?.keepAlive == true)
        #expect(head("HTTP/1.1 304 Not Modified\r\n\r\n")?.keepAlive == true)
        // The reason phrase is NIO's, as lb writes it for llhttp's reading.
        #expect(head("HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n")?.status == .ok)
        #expect(head("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n")?.status == .ok)
    }

    /// Everything outside the simple form goes to llhttp, which reads, refuses or forwards it as before.
    @Test(arguments: [
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.0 200 OK\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
        "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 299 Odd\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", "HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n",
        "http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 01\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1 \r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close, x-secret\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\nClose: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nKeep-Alive: a\r\nKeep-Alive: b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nTrailer: X-A\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nUpgrade: h2c\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: a\r\n folded\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A : a\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: \u{80}\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: a\u{0}\r\n\r\n",
        "HTTP/1.1 200 \u{7F}\r\nContent-Length: 0\r\n\r\n",
        // Not a response at all: known at once, without waiting for an empty line.
        "SSH-2.0-OpenSSH_9.2\r\n", "H", "HTTP/1.", "HTTP/1.3",
    ])
    func whatIsNotSimpleGoesToLLHTTP(_ text: String) {
        let result = Self.scan(text).0
        if text == "H" || text == "HTTP/1." {
            #expect(result == .incomplete, "\(text.debugDescription)")
        } else {
            #expect(result == .notSimple, "\(text.debugDescription)")
        }
    }

    @Test func aHeadInPiecesIsCheckedAsItComes() {
        var scanner = ResponseHeadScanner(maxHeadBytes: 8192, maxFields: 100)
        var buffer = ByteBuffer()
        let bytes = Array(Self.nginx.utf8)
        for (index, byte) in bytes.enumerated() {
            buffer.writeInteger(byte)
            let result = scanner.scan(buffer, requestMethod: .GET)
            if index < bytes.count - 1 {
                #expect(result == .incomplete, "after \(index + 1) bytes")
            } else {
                guard case .simple(let head) = result else { Issue.record("not simple at the end: \(result)"); return }
                #expect(head.size == bytes.count)
            }
        }
        scanner.nextHead()
        guard case .simple = scanner.scan(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), requestMethod: .GET) else {
            Issue.record("the next head is not read from its start"); return
        }
    }

    @Test func limitsAreLeftToLLHTTP() {
        let long = "HTTP/1.1 200 OK\r\nX-A: " + String(repeating: "a", count: 100)
        #expect(Self.scan(long, maxHeadBytes: 64).0 == .notSimple)
        #expect(Self.scan(long + "\r\nContent-Length: 0\r\n\r\n", maxHeadBytes: 64).0 == .notSimple)
        #expect(Self.scan("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 0\r\n\r\n", maxFields: 2).0 == .notSimple)
    }

    /// The bytes lb forwards for a simple head are those it writes for llhttp's reading of the same head, with each
    /// of lb's own fields (Connection, the persistence cookie) and without.
    @Test(arguments: [
        nginx,
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.0 404 Whatever\r\nx-a:a\r\nX-B:   spaced   \r\nX-C:\ttab\t\r\nX-Empty:\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nKeep-Alive: timeout=5, max=100\r\nConnection: Keep-Alive\r\n\r\n",
        "HTTP/1.1 204 No Content\r\nSet-Cookie: a=b\r\nSet-Cookie: c=d\r\n\r\n",
        "HTTP/1.1 302 Found\r\nLocation: /viewer/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ])
    func simpleHeadsAreForwardedAsLLHTTPsReadingOfThem(_ text: String) throws {
        let (result, fields) = Self.scan(text)
        guard case .simple(let head) = result else { Issue.record("not simple: \(text.debugDescription)"); return }
        let feed = ResponseParserFeed(HTTPResponseDecoder())
        let channel = EmbeddedChannel(handler: feed.makeHandler())
        defer { _ = try? channel.finish() }
        feed.expectResponse(to: .GET)
        try channel.writeInbound(ByteBuffer(string: text))
        guard case .head(let parsed) = try channel.readInbound(as: HTTPClientResponsePart.self) else {
            Issue.record("llhttp read no head"); return
        }
        #expect(head.keepAlive == parsed.isKeepAlive && head.status == parsed.status && head.isHTTP10 == (parsed.version.minor == 0))
        let framing = head.contentLength.map { BodyFraming.contentLength($0) } ?? .unframed
        #expect(try parsed.headers.bodyFraming() == framing)
        for connection in [nil, "close", "keep-alive"] as [StaticString?] {
            for cookie in [nil, ("LBSRV", "web-1", true)] as [(String, String, Bool)?] {
                var ours = ForwardedResponseHead(.simple(head, fields: fields, bytes: ByteBuffer(string: text)), framing: framing)
                var theirs = ForwardedResponseHead(head: parsed, framing: framing)
                ours.connection = connection
                theirs.connection = connection
                ours.setCookie = cookie
                theirs.setCookie = cookie
                let allocator = ByteBufferAllocator()
                #expect(String(buffer: ResponseBytes.forwarded(ours, allocator: allocator))
                        == String(buffer: ResponseBytes.forwarded(theirs, allocator: allocator)))
            }
        }
    }
}

extension ResponseHeadScannerTests {
    /// Should lb ever frame a simple response differently from the server's length, the copied length is left out
    /// and lb's framing written, as for a response llhttp read.
    @Test func aFramingOtherThanTheServersReplacesItsLength() throws {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: a\r\n\r\n"
        let (result, fields) = Self.scan(text)
        guard case .simple(let head) = result else { Issue.record("not simple"); return }
        #expect(head.contentLengthField == 0 && head.statedFraming == .contentLength(5))
        for framing in [BodyFraming.chunked, .unframed, .contentLength(6)] {
            let written = String(buffer: ResponseBytes.forwarded(
                ForwardedResponseHead(.simple(head, fields: fields, bytes: ByteBuffer(string: text)), framing: framing),
                allocator: ByteBufferAllocator()))
            let expected = switch framing {
            case .chunked: "HTTP/1.1 200 OK\r\nX-A: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            case .unframed: "HTTP/1.1 200 OK\r\nX-A: a\r\n\r\n"
            case .contentLength: "HTTP/1.1 200 OK\r\nX-A: a\r\nContent-Length: 6\r\n\r\n"
            }
            #expect(written == expected)
        }
    }
}

/// The reader on real connections: simple responses, the hand-over to llhttp in the middle of a kept-alive
/// connection, heads and bodies in pieces, bytes that answer no request.
@Suite("l7-http: the real server's responses through lb's reader and llhttp", .serialized)
struct RealServerResponseReaderTests {
    /// A simple response, a chunked one (not simple: llhttp reads from there on) and a simple one again, on one
    /// kept-alive real-server connection: each reaches the client whole, in order.
    @Test func theConnectionGoesToLLHTTPAtTheFirstResponseNotSimple() async throws {
        let fixture = try await RawFixture { request, index in
            index == 1 ? .send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nchunked\r\n0\r\n\r\n")
                : .send(ok("for \(request.target)"))
        }
        let client = try RawClient(port: fixture.vipPort)
        for target in ["/a", "/b", "/c"] {
            client.send("GET \(target) HTTP/1.1\r\nHost: t\r\n\r\n")
            let response = target == "/b" ? client.read(until: "0\r\n\r\n") : client.readResponse()
            #expect(statusLine(response) == "HTTP/1.1 200 OK", "\(response)")
            #expect(response.hasSuffix(target == "/b" ? "7\r\nchunked\r\n0\r\n\r\n" : "for \(target)"), "\(response)")
        }
        #expect(fixture.backend.connections == 1)
        await fixture.stop()
    }

    /// A response in pieces, its body cut anywhere, then the next response's head in the same read as the end of
    /// a body: the client receives each response whole, and lb's reader reads them all.
    @Test func headsAndBodiesInPiecesAreForwardedWhole() throws {
        let exchange = try InProcessExchangeTests.viewerExchange(request: "", response: "")
        defer { exchange.finish() }
        var atClient: [UInt8] = []
        exchange.clientSends(ByteBuffer(string: "GET /a HTTP/1.1\r\nHost: t\r\nCookie: LBSRV=x\r\n\r\n"))
        for piece in ["HTTP/1.1 200 OK\r\nConte", "nt-Length: 10\r\n", "\r\n01234", "56789"] {
            atClient += exchange.serverSendsAndClientReceives(ByteBuffer(string: piece))
        }
        let first = String(decoding: atClient, as: UTF8.self)
        #expect(first.hasPrefix("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n") && first.hasSuffix("\r\n\r\n0123456789"), "\(first)")
        #expect(exchange.serverReadByParser == false)
        // A HEAD: its length states a body that never comes; the next response follows at once.
        exchange.clientSends(ByteBuffer(string: "HEAD /b HTTP/1.1\r\nHost: t\r\n\r\n"))
        let head = String(decoding: exchange.serverSendsAndClientReceives(
            ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")), as: UTF8.self)
        #expect(head.hasPrefix("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n") && head.hasSuffix("\r\n\r\n"), "\(head)")
        // A reader that took the stated length for a body would take the next response for it.
        exchange.clientSends(ByteBuffer(string: "GET /c HTTP/1.1\r\nHost: t\r\n\r\n"))
        let next = String(decoding: exchange.serverSendsAndClientReceives(
            ByteBuffer(string: "HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nnext")), as: UTF8.self)
        #expect(next.hasPrefix("HTTP/1.1 201 Created\r\n") && next.hasSuffix("\r\n\r\nnext"), "\(next)")
        #expect(exchange.serverReadByParser == false)
    }

    /// Bytes after a response, in the same read, answer no request: the real-server connection closes and the
    /// next request never receives them as its answer (NIO's parser fails them the same way).
    @Test func bytesAfterAResponseAreNeverTheNextAnswer() async throws {
        let fixture = try await RawFixture { request, _ in
            .send(ok("for \(request.target)") + "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
        }
        let client = try RawClient(port: fixture.vipPort)
        for target in ["/a", "/b"] {
            client.send("GET \(target) HTTP/1.1\r\nHost: t\r\n\r\n")
            let response = client.readResponse()
            #expect(response.hasSuffix("for \(target)"), "\(response)")
        }
        #expect(fixture.backend.connections == 2)
        await fixture.stop()
    }

    /// A kept-alive server connection closed inside a response head: the server answered, so the request is never
    /// sent again (as after a plain close before any answer); the client gets a 502 at once. (Reported as a plain
    /// close, lb would try a fresh connection, which on this embedded loop NIO refuses with a trap.)
    @Test func aCloseInsideAHeadIsABadGatewayNotARetry() throws {
        let exchange = try InProcessExchangeTests.viewerExchange(request: "", response: "")
        defer { exchange.finish() }
        exchange.clientSends(ByteBuffer(string: "GET /a HTTP/1.1\r\nHost: t\r\n\r\n"))
        #expect(exchange.serverSendsAndClientReceives(ByteBuffer(string: "HTTP/1.1 200 OK\r\nConte")).isEmpty)
        let answer = String(decoding: exchange.serverClosesAndClientReceives(), as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"), "\(answer)")
        #expect(exchange.serverReadByParser == false)
    }

    /// A server that closes inside a response: the client, who already has the head, sees the connection close.
    @Test func aCloseInsideABodyClosesTheClient() async throws {
        let fixture = try await RawFixture { _, _ in .sendAndClose("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort") }
        let client = try RawClient(port: fixture.vipPort)
        client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        let all = client.readAllText()
        #expect(all.hasPrefix("HTTP/1.1 200 OK") && all.hasSuffix("short"), "\(all)")
        #expect(client.lastReadEnd == "end of stream")
        await fixture.stop()
    }
}
