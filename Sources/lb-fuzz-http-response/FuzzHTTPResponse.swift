import CFuzz
import LBConfig
import LBFuzzReplay
import LBProxy
import NIOCore
import NIOEmbedded
import NIOHTTP1

/// libFuzzer target (scripts/fuzz http-response): bytes from a real server in, what lb reads of them and what it
/// would send the client out. The input's first byte says which requests were HEAD (bit i: the i-th response
/// answers a HEAD); the rest is what the server sent.
///
/// Invariants (a violation traps):
/// - lb's own reader of simple responses (`ResponseHeadScanner`, which reads a connection until the first response
///   not of that form) never departs from llhttp: each response it takes from the start of the input, llhttp reads
///   too, as the same status, version, keep-alive and body, and lb forwards the same head for it either way;
/// - a head arriving in pieces is read as the whole of it is;
/// - through the real-server pipeline itself (lb's reader, the hand-over to llhttp, the front handler), the client
///   receives the same bytes whether the server's bytes arrive whole or in pieces, wherever lb's reader read them.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPResponse(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let headFlags = data[0]
    let input = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let methods = (0..<8).map { headFlags & (1 << $0) != 0 ? HTTPMethod.HEAD : .GET }
    checkScanInPieces(input, method: methods[0])
    checkSplitReadsThroughTheProxy(input, method: methods[0])
    let parsed = llhttpResponses(input, methods: methods)
    for (index, simple) in simpleResponses(input, methods: methods).enumerated() {
        guard index < parsed.count else {
            fatalError("simple response \(index): lb's reader takes \(simple), llhttp reads only \(parsed.count) responses")
        }
        let theirs = parsed[index]
        guard simple.status == theirs.status, simple.isHTTP10 == theirs.isHTTP10, simple.keepAlive == theirs.keepAlive,
              simple.body == theirs.body, simple.ended == theirs.ended, simple.heads == theirs.heads else {
            fatalError("simple response \(index): lb's reader takes \(simple), llhttp \(theirs)")
        }
    }
    return 0
}

/// A response as one reader read it, and the heads lb would write for it (without and with lb's own fields).
struct ReadResponse: Equatable, CustomStringConvertible {
    var status: HTTPResponseStatus
    var isHTTP10: Bool
    var keepAlive: Bool
    var body: [UInt8] = []
    var ended = false
    var heads: [String] = []
    var description: String {
        "\(status.code) 1.0 \(isHTTP10) keep-alive \(keepAlive) body \(body.count) ended \(ended) heads \(heads.map(\.debugDescription))"
    }
}

/// The heads lb writes for a response head, with none of its own fields and with all of them.
func forwardedHeads(_ source: ForwardedResponseHead.Source, framing: BodyFraming) -> [String] {
    var plain = ForwardedResponseHead(source, framing: framing)
    var own = plain
    own.connection = "keep-alive"
    own.setCookie = ("lbsrv", "web-1", true)
    plain.connection = nil
    return [plain, own].map { String(decoding: ResponseBytes.forwarded($0, allocator: ByteBufferAllocator()).readableBytesView, as: UTF8.self) }
}

/// The responses lb's own reader takes from the start of `input`: complete simple responses, until the first that
/// is not simple or not complete (from there llhttp would read the connection), or one after which the server
/// closes.
func simpleResponses(_ input: [UInt8], methods: [HTTPMethod]) -> [ReadResponse] {
    var scanner = ResponseHeadScanner(maxHeadBytes: 80 * 1024, maxFields: 100)
    var buffer = ByteBuffer(bytes: input)
    var responses: [ReadResponse] = []
    while responses.count < methods.count, case .simple(let head) = scanner.scan(buffer, requestMethod: methods[responses.count]) {
        scanner.nextHead()
        let framing = head.contentLength.map { BodyFraming.contentLength($0) } ?? .unframed
        let heads = forwardedHeads(.simple(head, fields: scanner.fields, bytes: buffer), framing: framing)
        buffer.moveReaderIndex(forwardBy: head.size)
        guard let body = buffer.readBytes(length: head.bodyLength) else { break }  // cut short
        responses.append(ReadResponse(status: head.status, isHTTP10: head.isHTTP10, keepAlive: head.keepAlive,
                                      body: body, ended: true, heads: heads))
        if !head.keepAlive { break }
    }
    return responses
}

/// llhttp's reading of `input` (NIO's response parser as lb configures it), every request's method told first.
func llhttpResponses(_ input: [UInt8], methods: [HTTPMethod]) -> [ReadResponse] {
    let feed = ResponseParserFeed(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .forward))
    let channel = EmbeddedChannel(handler: feed.makeHandler())
    defer { _ = try? channel.finish() }
    for method in methods { feed.expectResponse(to: method) }
    _ = try? channel.writeInbound(ByteBuffer(bytes: input))
    var responses: [ReadResponse] = []
    var current: ReadResponse?
    while let part = try? channel.readInbound(as: HTTPClientResponsePart.self) {
        switch part {
        case .head(let head):
            if (100..<200).contains(head.status.code) { continue }  // interim: lb's reader never takes one
            let framing = (try? head.headers.bodyFraming()) ?? .unframed
            current = ReadResponse(status: head.status, isHTTP10: head.version.minor == 0, keepAlive: head.isKeepAlive,
                                   heads: forwardedHeads(.parsed(head), framing: framing))
        case .body(let body):
            current?.body += body.readableBytesView
        case .end:
            current?.ended = true
            if let current { responses.append(current) }
            current = nil
        }
    }
    return responses
}

/// A head arriving in pieces is read as the whole of it is: incomplete until its end, then the same head and fields.
func checkScanInPieces(_ input: [UInt8], method: HTTPMethod) {
    var whole = ResponseHeadScanner(maxHeadBytes: 80 * 1024, maxFields: 100)
    let expected = whole.scan(ByteBuffer(bytes: input), requestMethod: method)
    var inPieces = ResponseHeadScanner(maxHeadBytes: 80 * 1024, maxFields: 100)
    var buffer = ByteBuffer()
    for piece in pieces(of: input, mixing: 2654435761, largest: 16) {
        buffer.writeBytes(piece)
        let offset = piece.endIndex
        let result = inPieces.scan(buffer, requestMethod: method)
        switch (result, expected) {
        case (.incomplete, .simple(let wholeHead)) where offset < wholeHead.size:
            continue
        case (.incomplete, .notSimple) where offset < input.count, (.incomplete, .incomplete) where offset < input.count:
            continue
        case (.notSimple, .notSimple), (.incomplete, .incomplete):
            return
        case (.simple(let head), .simple(let wholeHead)) where head == wholeHead && inPieces.fields == whole.fields:
            return
        default:
            fatalError("the head read in pieces (\(offset) of \(input.count) bytes) is \(result), read whole \(expected)")
        }
    }
}

/// The real-server pipeline itself, behind a client that sent one request: what the client receives does not
/// depend on how the server's bytes are split into reads, wherever lb's reader read them all. (Where llhttp reads,
/// a malformed part after a head refuses the response with a 502 only while the head has not left, which depends
/// on the reads: no comparison then.)
func checkSplitReadsThroughTheProxy(_ input: [UInt8], method: HTTPMethod) {
    func serve(in pieces: [ArraySlice<UInt8>]) -> (received: [UInt8], readByParser: Bool) {
        guard let exchange = try? InProcessExchange(service: fuzzService, request: "", response: "") else {
            fatalError("in-process exchange set-up")
        }
        defer { exchange.finish() }
        exchange.clientSends(ByteBuffer(string: "\(method.rawValue) / HTTP/1.1\r\nHost: t\r\nCookie: lbsrv=x\r\n\r\n"))
        var received: [UInt8] = []
        for piece in pieces { received += exchange.serverSendsAndClientReceives(ByteBuffer(bytes: piece)) }
        return (received, exchange.serverReadByParser ?? true)
    }
    let whole = serve(in: [input[...]])
    let pieces = pieces(of: input, mixing: 2246822519, largest: 32)
    let split = serve(in: pieces)
    guard whole.readByParser || split.readByParser || whole.received == split.received else {
        fatalError("lb sent the client \(String(decoding: whole.received, as: UTF8.self).debugDescription) for the input whole, "
                   + "\(String(decoding: split.received, as: UTF8.self).debugDescription) in \(pieces.count) pieces")
    }
}

/// An l7-http service with cookie persistence: lb adds its own Set-Cookie to what the server sends.
let fuzzService: VirtualService = {
    let report = ConfigurationLoader.check(yaml: """
        virtual_services:
          - name: fuzz
            vip: 192.0.2.10
            ports: [80]
            mode: l7-http
            persistence: {type: http-cookie, cookie: lbsrv}
            health_check: {type: none}
            real_servers: [{name: web-1, address: 192.0.2.20, port: 80}]
        """, file: "fuzz.yaml")
    guard let service = report.configuration?.virtualServices.first else { fatalError("fuzz service: \(report.diagnostics)") }
    return service
}()

#if LB_FUZZ
/// The entry point SwiftPM links as `main`: libFuzzer's driver.
@_cdecl("lb_fuzz_http_response_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    lb_fuzz_run(argc, argv) { data, size in fuzzHTTPResponse(data!, size) }
}
#else
/// Without libFuzzer (a normal build): replays the inputs named on the command line (seed corpus, kept crashes).
@main
struct ReplayHTTPResponseInputs {
    static func main() throws { try FuzzReplay.run("http-response", fuzzHTTPResponse) }
}
#endif
