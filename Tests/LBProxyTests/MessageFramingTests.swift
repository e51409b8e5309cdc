@testable import LBProxy
import LBTLS
import NIOCore
import NIOHTTP1
import Testing

/// The allocation-free fast paths of framing and hop-by-hop removal must agree with the general rules they skip.
@Suite("Message framing fast paths")
struct MessageFramingTests {
    @Test func hopByHopNamesAreRecognisedInAnyCaseAndNothingElseIs() {
        #expect(Set(hopByHopNames) == hopByHopHeaders && hopByHopNames.count == hopByHopHeaders.count)
        for (index, name) in hopByHopNames.enumerated() { #expect(hopByHopIndex(name.uppercased()) == index) }
        var tokens: [String] = []
        forEachListToken(" a ,,\tKeep-Alive\t, b c ,") { tokens.append(String($0)) }
        #expect(tokens == ["a", "Keep-Alive", "b c"])
        for name in hopByHopHeaders {
            #expect(isHopByHopName(name))
            #expect(isHopByHopName(name.uppercased()))
            #expect(isHopByHopName(String(name.enumerated().map { $0.offset % 2 == 0 ? Character($0.element.uppercased()) : $0.element })))
        }
        for name in ["host", "content-length", "tE ", "connections", "keep_alive", "trailers", "upgrade-insecure-requests",
                     "proxy-authorizatioN2", "x-te", "", "Ｔe"] {
            #expect(!isHopByHopName(name), "\(name)")
        }
    }

    @Test func removalTakesHopByHopFieldsAndWhatConnectionNamesButNotProtectedOnes() {
        var headers = HTTPHeaders([
            ("Host", "a"), ("Connection", "keep-alive, X-Private, Host, content-length"), ("Keep-Alive", "timeout=5"),
            ("x-private", "2"), ("connection", "close"),
            ("X-Private", "1"), ("TE", "trailers"), ("Content-Length", "3"), ("Proxy-Authorization", "x"), ("Accept", "*/*"),
        ])
        headers.removeHopByHop()
        #expect(headers.map(\.name) == ["Host", "Content-Length", "Accept"])
        var closing = HTTPHeaders([("Host", "a"), ("Connection", "close"), ("Close", "x"), ("Accept", "*/*")])
        closing.removeHopByHop()
        #expect(closing.map(\.name) == ["Host", "Accept"])
        var plain = HTTPHeaders([("Host", "a"), ("Accept", "*/*")])
        plain.removeHopByHop()
        #expect(plain.map(\.name) == ["Host", "Accept"])
    }

    @Test func methodTestsAgreeWithHTTPMethodsOwnEquality() {
        let names = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "PURGE", "head", "HEADX", ""]
        for name in names {
            for method in [HTTPMethod(rawValue: name), .RAW(value: name)] {
                #expect(method.isHEAD == (method == .HEAD), "\(name)")
                #expect(method.normallyHasBody == (method == .POST || method == .PUT || method == .PATCH), "\(name)")
            }
        }
    }

    @Test func framingFastPathsAgreeWithTheGeneralRule() throws {
        #expect(try HTTPHeaders([("Host", "a")]).bodyFraming() == .unframed)
        #expect(try HTTPHeaders([("content-LENGTH", "42")]).bodyFraming() == .contentLength(42))
        #expect(try HTTPHeaders([("Content-Length", "7"), ("Content-Length", "7")]).bodyFraming() == .contentLength(7))
        #expect(try HTTPHeaders([("Content-Length", "7, 7")]).bodyFraming() == .contentLength(7))
        #expect(try HTTPHeaders([("Content-Length", " 7 ")]).bodyFraming() == .contentLength(7))
        #expect(try HTTPHeaders([("Transfer-Encoding", "Chunked")]).bodyFraming() == .chunked)
        for bad in ["", "+1", "-1", "1 2", "0x10", "1234567890123456789", "7, 8"] {
            #expect(throws: MessageRefusal.self, "\(bad)") { try HTTPHeaders([("Content-Length", bad)]).bodyFraming() }
        }
        #expect(throws: MessageRefusal.lengthAndTransferEncoding) {
            try HTTPHeaders([("Content-Length", "1"), ("Transfer-Encoding", "chunked")]).bodyFraming()
        }
        #expect(throws: MessageRefusal.self) { try HTTPHeaders([("Content-Length", "1"), ("Content-Length", "2")]).bodyFraming() }
        #expect(throws: MessageRefusal.unsupportedTransferEncoding("")) { try HTTPHeaders([("Transfer-Encoding", "")]).bodyFraming() }
        #expect(throws: MessageRefusal.unsupportedTransferEncoding(" , ")) { try HTTPHeaders([("Transfer-Encoding", " , ")]).bodyFraming() }
        #expect(throws: MessageRefusal.invalidContentLength("")) { try HTTPHeaders([("Content-Length", "")]).bodyFraming() }
    }

    @Test func framingAlreadyInLbsFormIsKeptAndAnyOtherFormIsRewritten() {
        func framed(_ fields: [(String, String)], _ framing: BodyFraming) -> [String] {
            var headers = HTTPHeaders(fields)
            headers.setFraming(framing)
            return headers.map { "\($0.name): \($0.value)" }
        }
        #expect(framed([("Host", "a"), ("Content-Length", "12")], .contentLength(12)) == ["Host: a", "Content-Length: 12"])
        #expect(framed([("content-length", "0")], .contentLength(0)) == ["content-length: 0"])
        #expect(framed([("Transfer-Encoding", "chunked")], .chunked) == ["Transfer-Encoding: chunked"])
        #expect(framed([("Host", "a")], .unframed) == ["Host: a"])
        // Leading zeros, a list, a second field, a coding in another case, or another framing: rewritten.
        #expect(framed([("Content-Length", "012")], .contentLength(12)) == ["Content-Length: 12"])
        #expect(framed([("Content-Length", "12, 12")], .contentLength(12)) == ["Content-Length: 12"])
        #expect(framed([("Content-Length", "12"), ("Content-Length", "12")], .contentLength(12)) == ["Content-Length: 12"])
        #expect(framed([("Transfer-Encoding", "Chunked")], .chunked) == ["Transfer-Encoding: chunked"])
        #expect(framed([("Content-Length", "12")], .chunked) == ["Transfer-Encoding: chunked"])
        #expect(framed([("Transfer-Encoding", "chunked")], .unframed) == [])
        #expect(framed([("Content-Length", "12")], .contentLength(13)) == ["Content-Length: 13"])
    }

    @Test func thePersistenceCookieIsFoundAmongOthersWhateverTheSpacing() {
        func cookie(_ values: [String], _ name: String = "LBSRV") -> String? {
            HTTPHeaders(values.map { ("Cookie", $0) }).cookie(named: name)
        }
        #expect(cookie(["LBSRV=abc"]) == "abc")
        #expect(cookie(["a=1; LBSRV=abc; b=2"]) == "abc")
        #expect(cookie(["a=1;LBSRV=abc"]) == "abc")
        #expect(cookie(["a=1 ;  LBSRV = \"abc\" ; b"]) == "abc")
        #expect(cookie(["a=1", "LBSRV=second-field"]) == "second-field")
        #expect(HTTPHeaders([("cOOKIE", "LBSRV=x")]).cookie(named: "LBSRV") == "x")
        #expect(cookie(["LBSRV=a=b"]) == "a=b")
        #expect(cookie(["LBSRV=; LBSRV=later"]) == "later")
        #expect(cookie(["XLBSRV=abc; LBSRVX=def"]) == nil)
        #expect(cookie(["lbsrv=abc"]) == nil)  // cookie names are case-sensitive
        #expect(cookie(["LBSRV"]) == nil)
        #expect(cookie([""]) == nil)
        #expect(cookie([";;;"]) == nil)
        #expect(HTTPHeaders([("Host", "a")]).cookie(named: "LBSRV") == nil)
        #expect(cookie(["LBSRV=\u{e9}t\u{e9}"]) == "\u{e9}t\u{e9}")
    }
}

@Suite("Response bytes")
struct ResponseBytesTests {
    @Test func headsChunkFramingAndTrailersAreWrittenExactly() {
        let allocator = ByteBufferAllocator()
        let headers = HTTPHeaders([("Server", "nginx"), ("Content-Length", "2"), ("Set-Cookie", "LBSRV=0a; Path=/; HttpOnly")])
        var head = ResponseBytes.head(HTTPResponseHead(version: .http1_0, status: .ok, headers: headers), extra: 2, allocator: allocator)
        let capacity = head.capacity
        #expect(String(buffer: head) == "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\nSet-Cookie: LBSRV=0a; Path=/; HttpOnly\r\n\r\n")
        head.writeStaticString("{}")
        #expect(head.capacity == capacity)  // the body fitted in the room asked for
        let custom = HTTPResponseHead(version: .http1_1, status: .init(statusCode: 299), headers: [:])
        #expect(String(buffer: ResponseBytes.head(custom, allocator: allocator)) == "HTTP/1.1 299 \r\n\r\n")
        let interim = HTTPResponseHead(version: .http1_1, status: .continue, headers: [:])
        #expect(String(buffer: ResponseBytes.head(interim, allocator: allocator)) == "HTTP/1.1 100 Continue\r\n\r\n")
        var chunk = allocator.buffer(capacity: 0)
        MessageBytes.writeChunkSize(0x1a2b, to: &chunk)
        #expect(String(buffer: chunk) == "1a2b\r\n")
        #expect(String(buffer: MessageBytes.lastChunk(trailers: nil, allocator: allocator)) == "0\r\n\r\n")
        #expect(String(buffer: MessageBytes.lastChunk(trailers: [:], allocator: allocator)) == "0\r\n\r\n")
        #expect(String(buffer: MessageBytes.lastChunk(trailers: ["Digest": "x", "Expires": "0"], allocator: allocator))
                == "0\r\nDigest: x\r\nExpires: 0\r\n\r\n")
    }
}

@Suite("Request bytes")
struct RequestBytesTests {
    @Test func headBodyAndEndAreWrittenExactlyInTheStatedFraming() {
        let allocator = ByteBufferAllocator()
        let headers = HTTPHeaders([("Host", "pacs"), ("Connection", "keep-alive, X-Private"), ("X-Private", "1"),
                                   ("Content-Length", "2"), ("X-Forwarded-For", "10.0.0.1"), ("Accept", "*/*")])
        let post = HTTPRequestHead(version: .http1_0, method: .POST, uri: "/wado?a=1&b={x}", headers: headers)
        #expect(String(buffer: RequestBytes.forwarded(post, framing: .contentLength(2), forwardedFor: ("198.51.100.7", "https"),
                                                      allocator: allocator))
                == "POST /wado?a=1&b={x} HTTP/1.1\r\nHost: pacs\r\nContent-Length: 2\r\nAccept: */*\r\n"
                 + "X-Forwarded-For: 10.0.0.1, 198.51.100.7\r\nX-Forwarded-Proto: https\r\n\r\n")
        #expect(String(buffer: RequestBytes.forwarded(post, framing: .chunked, forwardedFor: nil, allocator: allocator))
                == "POST /wado?a=1&b={x} HTTP/1.1\r\nHost: pacs\r\nX-Forwarded-For: 10.0.0.1\r\nAccept: */*\r\n"
                 + "Transfer-Encoding: chunked\r\n\r\n")
        let custom = HTTPRequestHead(version: .http1_1, method: .RAW(value: "PROPFIND"), uri: "*", headers: [:])
        #expect(String(buffer: RequestBytes.forwarded(custom, framing: .unframed, forwardedFor: nil, allocator: allocator))
                == "PROPFIND * HTTP/1.1\r\n\r\n")
        // An empty POST states its length.
        let emptyPost = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/", headers: [:])
        #expect(String(buffer: RequestBytes.forwarded(emptyPost, framing: .unframed, forwardedFor: nil, allocator: allocator))
                == "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")

        let body = ByteBuffer(string: "{}")
        #expect(RequestBytes.body(body, chunked: false, allocator: allocator).map { String(buffer: $0) } == "{}")
        #expect(RequestBytes.body(body, chunked: true, allocator: allocator).map { String(buffer: $0) } == "2\r\n{}\r\n")
        // An empty part is nothing: as a chunk it would end the body early.
        #expect(RequestBytes.body(ByteBuffer(), chunked: true, allocator: allocator) == nil)
        #expect(RequestBytes.body(ByteBuffer(), chunked: false, allocator: allocator) == nil)
        #expect(RequestBytes.end(trailers: nil, chunked: false, allocator: allocator) == nil)
        #expect(RequestBytes.end(trailers: ["Digest": "x"], chunked: false, allocator: allocator) == nil)
        #expect(RequestBytes.end(trailers: ["Digest": "x"], chunked: true, allocator: allocator).map { String(buffer: $0) }
                == "0\r\nDigest: x\r\n\r\n")
    }

    /// The bytes `RequestBytes.forwarded` writes in one pass are those of the earlier way, kept here as the model:
    /// a copy of the head with hop-by-hop fields removed, lb's framing set, X-Forwarded-For and -Proto replaced,
    /// then serialised. Random header sections from a vocabulary of the fields lb treats specially.
    @Test func forwardedHeadMatchesTheRewriteModelByteForByte() {
        var random = SplitMix64(seed: 13)
        let vocabulary: [(String, [String])] = [
            ("Host", ["pacs", ""]), ("Content-Length", ["0", "12", "012", "12, 12", "7"]), ("content-length", ["12"]),
            ("Transfer-Encoding", ["chunked", "Chunked"]), ("Connection", ["close", "keep-alive", "X-Private",
            "x-private, Upgrade", "close, x-private", "Content-Length, host", "Keep-Alive", "te", ", ,"]),
            ("connection", ["X-PRIVATE"]), ("Keep-Alive", ["timeout=5"]), ("TE", ["trailers"]), ("Upgrade", ["websocket"]),
            ("Close", ["x"]), ("X-Private", ["1"]), ("x-private", ["2"]), ("X-Forwarded-For", ["", "10.0.0.1", "10.0.0.1, 10.0.0.2"]),
            ("x-forwarded-for", ["10.0.0.3"]), ("X-Forwarded-Proto", ["http"]), ("Cookie", ["LBSRV=0a"]),
            ("Accept", ["*/*"]), ("Proxy-Connection", ["keep-alive"]), ("Trailer", ["Digest"]), ("Authorization", ["Basic x"]),
        ]
        let methods: [HTTPMethod] = [.GET, .HEAD, .POST, .PUT, .PATCH, .DELETE, .RAW(value: "PROPFIND")]
        let framings: [BodyFraming] = [.unframed, .contentLength(0), .contentLength(12), .chunked]
        let allocator = ByteBufferAllocator()
        for round in 0..<5000 {
            let headers = random.headers(from: vocabulary)
            let head = HTTPRequestHead(version: .http1_1, method: random.pick(methods), uri: "/r\(round)", headers: headers)
            let framing = random.pick(framings)
            let forwardedFor: (client: String, proto: String)? = random.next() % 2 == 0 ? nil : ("198.51.100.7", "https")
            let written = String(buffer: RequestBytes.forwarded(head, framing: framing, forwardedFor: forwardedFor, allocator: allocator))
            let model = Self.modelForwarded(head, framing: framing, forwardedFor: forwardedFor)
            #expect(written == model, "round \(round): \(headers) \(framing)")
            if written != model { return }
        }
    }

    static func modelForwarded(_ head: HTTPRequestHead, framing: BodyFraming, forwardedFor: (client: String, proto: String)?) -> String {
        var headers = head.headers
        headers.removeHopByHop()
        if framing == .unframed, head.method == .POST || head.method == .PUT || head.method == .PATCH {
            headers.setFraming(.contentLength(0))
        } else {
            headers.setFraming(framing)
        }
        if let forwardedFor {
            let previous = head.headers["x-forwarded-for"].joined(separator: ", ")
            headers.replaceOrAdd(name: "X-Forwarded-For", value: previous.isEmpty ? forwardedFor.client : "\(previous), \(forwardedFor.client)")
            headers.replaceOrAdd(name: "X-Forwarded-Proto", value: forwardedFor.proto)
        }
        var text = "\(head.method.rawValue) \(head.uri) HTTP/1.1\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        return text + "\r\n"
    }
}

/// A connection's head buffer is reused only when nothing else holds it, and never written over bytes that are.
@Suite("Head buffers")
struct ReusableBufferTests {
    private func storage(_ buffer: ByteBuffer) -> UInt { buffer.withVeryUnsafeBytes { UInt(bitPattern: $0.baseAddress) } }

    @Test func aHeadTheSocketHasTakenLendsItsStorageToTheNext() {
        var heads = ReusableBuffer()
        var first = heads.take(capacity: 100, allocator: ByteBufferAllocator())
        first.writeString("GET /a HTTP/1.1\r\n\r\n")
        let address = storage(first)
        heads.keep(first)
        first = ByteBuffer()  // the socket has written it and let go
        var second = heads.take(capacity: 100, allocator: ByteBufferAllocator())
        #expect(storage(second) == address)
        #expect(second.readableBytes == 0)
        second.writeString("GET /b HTTP/1.1\r\n\r\n")
        #expect(String(buffer: second) == "GET /b HTTP/1.1\r\n\r\n")
    }

    @Test func aHeadStillQueuedIsNeverWrittenOver() {
        var heads = ReusableBuffer()
        var queued = heads.take(capacity: 100, allocator: ByteBufferAllocator())
        queued.writeString("GET /a HTTP/1.1\r\n\r\n")
        heads.keep(queued)  // `queued` stands for the copy a slow socket (or a retry) still holds
        var next = heads.take(capacity: 100, allocator: ByteBufferAllocator())
        next.writeString("GET /b HTTP/1.1\r\n\r\n")
        #expect(storage(next) != storage(queued))
        #expect(String(buffer: queued) == "GET /a HTTP/1.1\r\n\r\n")
        #expect(String(buffer: next) == "GET /b HTTP/1.1\r\n\r\n")
    }

    @Test func aLargeHeadIsNotKept() {
        var heads = ReusableBuffer()
        var large = heads.take(capacity: ReusableBuffer.keptCapacityLimit + 1, allocator: ByteBufferAllocator())
        let largeCapacity = large.capacity
        heads.keep(large)
        large = ByteBuffer()  // written and let go: only a kept copy could still hold its storage
        let next = heads.take(capacity: 16, allocator: ByteBufferAllocator())
        #expect(next.capacity < largeCapacity, "a kept large buffer would have been reused")
    }
}

@Suite("Forwarded response heads")
struct ForwardedResponseHeadTests {
    /// The head `ResponseBytes.forwarded` writes from the server's fields is the one the earlier way built: a copy
    /// of the fields with hop-by-hop ones removed, lb's framing set, Connection replaced and Set-Cookie added.
    @Test func forwardedResponseHeadMatchesTheRewriteModelByteForByte() {
        var random = SplitMix64(seed: 29)
        let vocabulary: [(String, [String])] = [
            ("Server", ["nginx"]), ("Content-Length", ["0", "12", "012", "12, 12"]), ("content-length", ["12"]),
            ("Transfer-Encoding", ["chunked", "gzip, chunked"]), ("Connection", ["close", "keep-alive", "X-Private",
            "x-private, Upgrade", "close", "Content-Length", "Set-Cookie"]), ("Keep-Alive", ["timeout=5"]),
            ("Upgrade", ["h2c"]), ("Close", ["x"]), ("X-Private", ["1"]), ("Set-Cookie", ["a=b", "LBSRV=old"]),
            ("Content-Type", ["application/dicom"]), ("Proxy-Authenticate", ["Basic"]), ("Trailer", ["Digest"]),
        ]
        let statuses: [HTTPResponseStatus] = [.ok, .noContent, .notModified, .continue, .notFound,
                                              .custom(code: 299, reasonPhrase: "Fine"), .custom(code: 599, reasonPhrase: "")]
        let framings: [BodyFraming] = [.unframed, .contentLength(0), .contentLength(12), .chunked]
        let connections: [StaticString?] = [nil, "close", "keep-alive"]
        let allocator = ByteBufferAllocator()
        for round in 0..<5000 {
            let headers = random.headers(from: vocabulary)
            let head = HTTPResponseHead(version: .http1_0, status: random.pick(statuses), headers: headers)
            var out = ForwardedResponseHead(head: head, framing: random.pick(framings))
            out.connection = random.pick(connections)
            if random.next() % 2 == 0 { out.setCookie = ("LBSRV", "0a1b", secure: random.next() % 2 == 0) }

            var model = head.headers
            model.removeHopByHop()
            model.setFraming(out.framing)
            if let connection = out.connection { model.replaceOrAdd(name: "Connection", value: "\(connection)") }
            if let cookie = out.setCookie {
                model.add(name: "Set-Cookie", value: "\(cookie.name)=\(cookie.value); Path=/; HttpOnly" + (cookie.secure ? "; Secure" : ""))
            }
            let expected = String(buffer: ResponseBytes.head(HTTPResponseHead(version: .http1_1, status: head.status, headers: model),
                                                             allocator: allocator))
            let written = String(buffer: ResponseBytes.forwarded(out, allocator: allocator))
            #expect(written == expected, "round \(round): \(headers)")
            if written != expected { return }
        }
    }
}

/// A seeded generator: the same header sections on every run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension SplitMix64 {
    mutating func pick<Item>(_ items: [Item]) -> Item { items[Int(next() % UInt64(items.count))] }

    /// Up to 8 fields, each a name of `vocabulary` with one of its values.
    mutating func headers(from vocabulary: [(String, [String])]) -> HTTPHeaders {
        var headers = HTTPHeaders()
        for _ in 0..<Int(next() % 9) {
            let (name, values) = pick(vocabulary)
            headers.add(name: name, value: pick(values))
        }
        return headers
    }
}

/// The rewrite lb did before it wrote forwarded heads straight from the peer's fields (`MessageBytes`): a copy of
/// the fields edited in place. Kept as the reference the writers are held to, byte for byte.
extension HTTPHeaders {
    /// Removes hop-by-hop headers and those the `Connection` list names, except protected ones.
    mutating func removeHopByHop() {
        let hop = HopByHopFields(self)
        for name in hopByHopNames { remove(name: name) }
        for name in hop.listed { remove(name: name) }
        if hop.removesClose { remove(name: "close") }
    }

    /// Writes lb's own framing for a message forwarded with `framing`, unless the fields already state exactly it.
    mutating func setFraming(_ framing: BodyFraming) {
        if framing == statedFraming { return }
        remove(name: "content-length")
        remove(name: "transfer-encoding")
        switch framing {
        case .unframed: break
        case .contentLength(let length): add(name: "Content-Length", value: String(length))
        case .chunked: add(name: "Transfer-Encoding", value: "chunked")
        }
    }

    /// The framing these fields state in lb's own form — none, one plain Content-Length, or a lone
    /// `Transfer-Encoding: chunked` — else nil.
    private var statedFraming: BodyFraming? {
        var codings = 0, chunked = false
        for (name, value) in self where name.equalsIgnoringASCIICase("transfer-encoding") {
            codings += 1
            chunked = value == "chunked"
        }
        guard codings > 0 else { return statedLength }
        return codings == 1 && chunked && statedLength == .unframed ? .chunked : nil
    }
}
