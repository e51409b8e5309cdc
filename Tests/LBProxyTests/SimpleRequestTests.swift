import NIOCore
import NIOEmbedded
import NIOHTTP1
import LBTestSupport
import Testing
@testable import LBProxy

/// lb's own reader of simple request heads: what it accepts, what it leaves to llhttp, and that a request it reads
/// is forwarded byte for byte as llhttp's reading of it would be.
@Suite("l7-http: simple request heads read by lb itself")
struct RequestHeadScannerTests {
    static func scan(_ text: String, maxHeadBytes: Int = 8192, maxFields: Int = 100) -> (RequestHeadScan, [FieldSpan]) {
        var scanner = RequestHeadScanner(maxHeadBytes: maxHeadBytes, maxFields: maxFields)
        let result = scanner.scan(ByteBuffer(string: text))
        return (result, scanner.fields)
    }

    static let browser = "GET /viewer/study?id=1.2.840.113619%2F5 HTTP/1.1\r\nHost: viewer.hospital.example\r\n"
        + "User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: */*\r\nCookie: a=b; lbsrv=web-2\r\n"
        + "Connection: keep-alive\r\n\r\n"

    @Test func aBrowserRequestIsSimple() throws {
        let (result, fields) = Self.scan(Self.browser)
        guard case .simple(let head) = result else { Issue.record("not simple: \(result)"); return }
        #expect(head.method == .GET && !head.isHTTP10 && head.keepAlive && head.contentLength == nil)
        #expect(head.size == Self.browser.utf8.count)
        #expect(fields.count == 5 && head.connectionField == 4)
        let bytes = Array(Self.browser.utf8)
        #expect(String(decoding: bytes[head.target], as: UTF8.self) == "/viewer/study?id=1.2.840.113619%2F5")
        #expect(String(decoding: bytes[fields[1].name], as: UTF8.self) == "User-Agent")
        #expect(String(decoding: bytes[fields[1].value], as: UTF8.self) == "Mozilla/5.0 (X11; Linux x86_64)")
    }

    @Test func keepAliveAndLengthAreReadAsNIOReadsThem() {
        func head(_ text: String) -> SimpleRequestHead? {
            if case .simple(let head) = Self.scan(text).0 { return head }
            return nil
        }
        #expect(head("GET / HTTP/1.0\r\n\r\n")?.keepAlive == false)
        #expect(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")?.keepAlive == true)
        #expect(head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")?.keepAlive == false)
        #expect(head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")?.contentLength == 0)
        #expect(head("PUT / HTTP/1.1\r\ncontent-length: 123456\r\n\r\n")?.contentLength == 123456)
        #expect(head("GET / HTTP/1.1\r\nX-Empty:\r\nX-Spaces: \t a b \t\r\n\r\n") != nil)
    }

    /// Everything outside the simple form goes to llhttp, which reads, refuses or forwards it as before.
    @Test(arguments: [
        "get / HTTP/1.1\r\n\r\n", "PROPFIND / HTTP/1.1\r\n\r\n", "TRACE / HTTP/1.1\r\n\r\n", "GET  / HTTP/1.1\r\n\r\n",
        "GET http://t/ HTTP/1.1\r\n\r\n", "OPTIONS * HTTP/1.1\r\n\r\n", "GET /a#b HTTP/1.1\r\n\r\n",
        "GET /a\"b HTTP/1.1\r\n\r\n", "GET / HTTP/2.0\r\n\r\n", "GET / HTTP/1.1 \r\n\r\n", "GET / http/1.1\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\nHost: t\r\n\r\n", "GET / HTTP/1.1\r\nHost: t\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\r\n\r\n", "GET / HTTP/1.1\r\nHost : t\r\n\r\n", "GET / HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\n: t\r\n\r\n", "GET / HTTP/1.1\r\nX-A: \u{80}\r\n\r\n", "GET / HTTP/1.1\r\nX-A: a\u{0}b\r\n\r\n",
        "GET / HTTP/1.1\r\nX-A: a\u{7F}\r\n\r\n", "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 01\r\n\r\n", "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1 1\r\n\r\n", "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1234567890123456789\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", "GET / HTTP/1.1\r\nConnection: close, x-a\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: close\r\nConnection: close\r\n\r\n", "GET / HTTP/1.1\r\nKeep-Alive: 5\r\n\r\n",
        "GET / HTTP/1.1\r\nTE: trailers\r\n\r\n", "GET / HTTP/1.1\r\nTrailer: x\r\n\r\n", "GET / HTTP/1.1\r\nClose: x\r\n\r\n",
        "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", "GET / HTTP/1.1\r\nProxy-Connection: x\r\n\r\n",
        "GET / HTTP/1.1\r\nProxy-Authorization: x\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", "GET / HTTP/1.1\r\nHost:\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    ])
    func whatIsNotSimpleGoesToLLHTTP(_ text: String) {
        #expect(Self.scan(text).0 == .notSimple, "\(text.debugDescription)")
    }

    /// A head arriving in pieces is incomplete until its empty line, and each byte is checked once; a byte that
    /// cannot be in a simple head hands the connection to llhttp at once, without waiting for the rest.
    @Test func aHeadInPiecesIsCheckedAsItComes() {
        var scanner = RequestHeadScanner(maxHeadBytes: 8192, maxFields: 100)
        var buffer = ByteBuffer()
        let bytes = Array(Self.browser.utf8)
        for (index, byte) in bytes.enumerated() {
            buffer.writeInteger(byte)
            let result = scanner.scan(buffer)
            if index < bytes.count - 1 {
                #expect(result == .incomplete, "at byte \(index)")
            } else if case .simple(let head) = result {
                #expect(head.size == bytes.count)
            } else {
                Issue.record("the complete head is \(result)")
            }
        }
        var bad = RequestHeadScanner(maxHeadBytes: 8192, maxFields: 100)
        #expect(bad.scan(ByteBuffer(string: "GET / HTTP/1.1\r\nX-A: a")) == .incomplete)
        #expect(bad.scan(ByteBuffer(string: "GET / HTTP/1.1\r\nX-A: a\u{1}")) == .notSimple)
    }

    /// Over the service's head limits, llhttp decides (and refuses, as before).
    @Test func limitsAreLeftToLLHTTP() {
        #expect(Self.scan("GET / HTTP/1.1\r\nX-A: " + String(repeating: "a", count: 100), maxHeadBytes: 64).0 == .notSimple)
        #expect(Self.scan("GET / HTTP/1.1\r\nX-A: " + String(repeating: "a", count: 100) + "\r\n\r\n", maxHeadBytes: 64).0 == .notSimple)
        #expect(Self.scan("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", maxFields: 2).0 == .notSimple)
        if case .simple = Self.scan("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", maxFields: 2).0 {} else { Issue.record("two fields of two") }
    }

    /// The bytes lb forwards for a simple head are those it writes for llhttp's reading of the same head: fields
    /// copied in runs where already in `name: value` form, the others normalised, X-Forwarded-For lists merged.
    @Test(arguments: [
        browser,
        "GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /a HTTP/1.0\r\nhost:t\r\nX-A:   spaced   \r\nX-B:\ttab\t\r\nX-Empty:\r\nX-Empty2: \r\n\r\n",
        "POST /form HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n\r\n",
        "PATCH /p HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        "PUT /p HTTP/1.1\r\nContent-Length: 3\r\nHost: t\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nHost: t\r\nx-forwarded-for: 10.0.0.2, 10.0.0.3\r\nX-Forwarded-Proto: https\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Forwarded-For:\r\nHost: t\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Forwarded-For:\r\nX-Forwarded-For:\r\n\r\n",
        "DELETE /d HTTP/1.1\r\nConnection: close\r\nCookie: lbsrv=\"web-1\"\r\nCookie: other=1\r\n\r\n",
        "OPTIONS /o HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nCookie: a=1; lbsrv=0aade72225f76924; b=2\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nCookie: lbsrv = \"0aade72225f76924\"\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nCookie: lbsrv=0aade72225f7692\r\nCookie: lbsrv=0aade72225f76924\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nCookie: lbsrv=; lbsrv=0aade72225f76924\r\n\r\n",
    ])
    func simpleHeadsAreForwardedAsLLHTTPsReadingOfThem(_ text: String) throws {
        let (result, fields) = Self.scan(text)
        guard case .simple(let head) = result else { Issue.record("not simple: \(text.debugDescription)"); return }
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(HTTPRequestDecoder()))
        defer { _ = try? channel.finish() }
        try channel.writeInbound(ByteBuffer(string: text))
        guard case .head(let parsed) = try channel.readInbound(as: HTTPServerRequestPart.self) else {
            Issue.record("llhttp read no head"); return
        }
        for forwardedFor in [("198.51.100.7", "https"), nil] as [(String, String)?] {
            let ours = ByteBuffer(string: text).withUnsafeReadableBytes {
                RequestBytes.forwarded(simple: head, fields: fields, head: $0, forwardedFor: forwardedFor, allocator: ByteBufferAllocator())
            }
            let theirs = RequestBytes.forwarded(parsed, framing: try parsed.checkedForForwarding(), forwardedFor: forwardedFor,
                                                allocator: ByteBufferAllocator())
            #expect(String(buffer: ours) == String(buffer: theirs))
        }
        #expect(head.keepAlive == parsed.isKeepAlive && head.method == parsed.method && head.isHTTP10 == (parsed.version.minor == 0))
        let cookie = ByteBuffer(string: text).withUnsafeReadableBytes { SimpleRequestHead.cookie(named: "lbsrv", in: fields, of: $0) }
        #expect(cookie == parsed.headers.cookie(named: "lbsrv"))
        // The persistence cookie read in place is that String's reading (nil when it is not a value lb issues).
        let persistence = ByteBuffer(string: text).withUnsafeReadableBytes {
            SimpleRequestHead.persistenceCookie(named: "lbsrv", in: fields, of: $0)
        }
        #expect(persistence == parsed.headers.cookie(named: "lbsrv").flatMap(PersistenceCookie.init))
        if text.contains("lbsrv=; lbsrv=0aade72225f76924") || text.contains("= \"0aade72225f76924\"") {
            #expect(persistence == PersistenceCookie("0aade72225f76924"))
        }
    }

    /// lb's cookie values are 16 hex digits, and only a value of 16 bytes can be one: every value the pool issues is
    /// read back as itself, a value one byte longer, shorter or different is not.
    @Test func persistenceCookiesAreTheValuesLBIssues() throws {
        let service = try makeService("""
              - name: viewer
                vip: 192.0.2.10
                ports: [80]
                mode: l7-http
                persistence: {type: http-cookie}
                real_servers: [{name: web1, address: 192.0.2.20}, {name: web2, address: 192.0.2.21}]
            """)
        let pool = RealServerPool(service: service, cookieKey: Array(repeating: 7, count: 32))
        var issued: [String] = []
        for _ in 0..<4 {
            let selection = try #require(pool.select(client: nil, port: 80))
            let value = try #require(selection.cookieValue)
            #expect(value.utf8.count == 16)
            #expect(PersistenceCookie(value) == selection.cookie)
            #expect(pool.select(client: nil, cookie: value, port: 80)?.name == selection.name, "\(value) names its server")
            issued.append(value)
        }
        #expect(Set(issued).count == 2)
        let value = issued[0]
        #expect(PersistenceCookie(String(value.dropLast())) == nil)
        #expect(PersistenceCookie(value + "0") == nil)
        #expect(PersistenceCookie(String(value.dropLast()) + (value.last == "0" ? "1" : "0")) != PersistenceCookie(value))
        #expect(PersistenceCookie(value.uppercased()) != PersistenceCookie(value) || value == value.uppercased())
    }
}

/// The reader on a real connection: simple requests, the hand-over to llhttp in the middle of a connection, bodies
/// and heads split across reads, pipelining.
@Suite("l7-http: the client's requests through lb's reader and llhttp", .serialized)
struct ClientRequestReaderTests {
    /// A simple request, a chunked one (not simple: llhttp reads from there on) and a simple one again, pipelined
    /// in one write: each reaches the server once, in order, with its body.
    @Test func theConnectionGoesToLLHTTPAtTheFirstRequestNotSimple() async throws {
        let fixture = try await RawFixture { request, _ in .send(ok("for \(request.target)")) }
        let client = try RawClient(port: fixture.vipPort)
        client.send("GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
                    + "POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    + "GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        let all = client.readAllText()
        #expect(all.components(separatedBy: "HTTP/1.1 200 OK").count == 4, "\(all)")
        #expect(all.hasSuffix("for /c"), "\(all)")
        #expect(await eventually { fixture.backend.requests.count == 3 })
        let requests = fixture.backend.requests
        #expect(requests.map(\.target) == ["/a", "/b", "/c"])
        #expect(requests[1].body == Array("hello".utf8) && requests[1].values("transfer-encoding") == ["chunked"])
        #expect(fixture.backend.invalid.isEmpty, "\(fixture.backend.invalid)")
        await fixture.stop()
    }

    /// Bytes after a request that ends the connection are never read, whichever parser read it: the request is
    /// answered, then the connection closes. (llhttp refuses such bytes; lb used to answer 400 and drop the
    /// request in flight.)
    @Test(arguments: [
        "GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "GET /last HTTP/1.0\r\nHost: t\r\n\r\n",
        "POST /last HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    ])
    func bytesAfterTheLastRequestAreNotRead(_ last: String) async throws {
        let fixture = try await RawFixture { request, _ in .send(ok("for \(request.target)")) }
        let client = try RawClient(port: fixture.vipPort)
        client.send(last + "GET /never HTTP/1.1\r\nHost: t\r\n\r\n\u{1}garbage")
        let all = client.readAllText()
        #expect(statusLine(all) == "HTTP/1.1 200 OK" && all.hasSuffix("for /last"), "\(all)")
        #expect(all.components(separatedBy: "HTTP/1.1 ").count == 2, "\(all)")
        #expect(await eventually { fixture.backend.requests.count == 1 })
        #expect(fixture.backend.requests.map(\.target) == ["/last"])
        await fixture.stop()
    }

    /// A head and a body in pieces, the next request's head right behind the body in the same read.
    @Test func headsAndBodiesInPiecesAreForwardedWhole() async throws {
        let fixture = try await RawFixture { request, _ in .send(ok("for \(request.target)")) }
        let client = try RawClient(port: fixture.vipPort)
        client.send("POST /p HTTP/1.1\r\nHo")
        client.send("st: t\r\nContent-Length: 10\r\n\r\n01234")
        #expect(await eventually { fixture.backend.connections == 1 })
        client.send("56789GET /q HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        let all = client.readAllText()
        #expect(all.contains("for /p") && all.hasSuffix("for /q"), "\(all)")
        let requests = fixture.backend.requests
        #expect(requests.map(\.target) == ["/p", "/q"])
        #expect(requests.first?.body == Array("0123456789".utf8))
        #expect(requests.first?.values("content-length") == ["10"])
        #expect(fixture.backend.invalid.isEmpty, "\(fixture.backend.invalid)")
        await fixture.stop()
    }

    /// A client whose every read ends inside a head (here: each carries the end of one request and the start of the
    /// next) must not make the reader keep what it passed on: the buffer holds only the unread part. Before, each
    /// read appended to the whole history, which grew by the requests' size every time and was copied each read.
    @Test func theReaderKeepsOnlyWhatItHasNotPassedOn() throws {
        let exchange = try InProcessExchangeTests.viewerExchange(request: "", response: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        defer { exchange.finish() }
        let body = String(repeating: "x", count: 4096)
        let rest = "st: t\r\nContent-Length: 4096\r\n\r\n" + body + "POST /p HTTP/1.1\r\nHo"
        try exchange.clientSendsAndOneRequestIsAnswered("POST /p HTTP/1.1\r\nHo" + rest)
        for _ in 0..<40 { try exchange.clientSendsAndOneRequestIsAnswered(rest) }
        #expect(exchange.clientReadByParser == false)
        let capacity = try #require(exchange.clientReaderCapacity)
        #expect(capacity < 16 * 1024, "the reader holds \(capacity) bytes")
    }
}
