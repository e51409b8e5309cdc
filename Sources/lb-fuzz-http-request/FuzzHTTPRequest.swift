import CFuzz
import Foundation
import LBConfig
import LBProxy
import LBStrictHTTP
import NIOCore
import NIOEmbedded
import NIOHTTP1
import LBFuzzReplay

/// libFuzzer target (scripts/fuzz http-request): bytes from a client in, the bytes lb would send to the real server
/// out, through the same parser configuration, checks, head rewriting and request bytes as the proxy
/// (`checkedForForwarding`, `RequestBytes.forwarded`).
///
/// Invariants (a violation traps):
/// - an independent strict parser (RFC 9112; only `Transfer-Encoding: chunked` exactly and one decimal
///   Content-Length frame a body) reads exactly the requests lb forwarded — same method, target and body — and
///   nothing else. A violation is a request smuggled past lb;
/// - lb's own reader of simple requests (`RequestHeadScanner`, which reads a connection until the first request not
///   of that form) never departs from llhttp: each request it takes from the start of the input, llhttp reads too,
///   as the same method, version, keep-alive and persistence cookie, and lb forwards the same bytes for it.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    checkScanInPieces(input)
    checkSplitReadsThroughTheProxy(input)
    let forwarded = proxy(input)
    for (index, simple) in simpleRequests(input).enumerated() {
        guard index < forwarded.requests.count else {
            fatalError("simple request \(index): lb's reader takes \(simple), llhttp and lb's checks forward only \(forwarded.requests.count) requests")
        }
        let parsed = forwarded.requests[index]
        guard simple.head == parsed.head, simple.body == parsed.body, simple.keepAlive == parsed.keepAlive,
              simple.isHTTP10 == parsed.isHTTP10, simple.method == parsed.method, simple.cookie == parsed.cookie else {
            fatalError("simple request \(index): lb's reader takes \(simple), llhttp \(parsed.detail)")
        }
    }
    var offset = 0
    for (index, expected) in forwarded.requests.enumerated() {
        switch strictParseRequest(Array(forwarded.bytes[offset...])) {
        case .request(let seen, let consumed):
            guard seen.method == expected.method, seen.target == expected.target, seen.body == expected.body else {
                fatalError("request \(index): lb forwarded \(expected), the server reads \(seen)")
            }
            offset += consumed
        case .needMore, .invalid:
            fatalError("request \(index) of \(forwarded.requests.count): the server cannot read what lb sent: \(String(decoding: forwarded.bytes[offset...].prefix(200), as: UTF8.self).debugDescription)")
        }
    }
    guard offset == forwarded.bytes.count else {
        fatalError("bytes after the \(forwarded.requests.count) forwarded requests: \(String(decoding: forwarded.bytes[offset...].prefix(200), as: UTF8.self).debugDescription)")
    }
    return 0
}

struct ForwardedRequest: CustomStringConvertible {
    var method: String
    var target: String
    var body: [UInt8]
    /// The head lb forwards, and what lb reads of the request.
    var head: [UInt8] = []
    var keepAlive = false
    var isHTTP10 = false
    var cookie: String?
    var description: String { "\(method) \(target) (\(body.count) body bytes)" }
    var detail: String {
        "\(method) keep-alive \(keepAlive) 1.0 \(isHTTP10) cookie \(cookie ?? "none") body \(body.count) forwarded as \(String(decoding: head, as: UTF8.self).debugDescription)"
    }
}

/// A head arriving in pieces (each byte checked once, the scan resumed where it stopped) is read as the whole of it
/// is: incomplete until its end, then the same head and fields; never simple when the whole is not.
func checkScanInPieces(_ input: [UInt8]) {
    var whole = RequestHeadScanner(maxHeadBytes: 32 * 1024, maxFields: 100)
    let expected = whole.scan(ByteBuffer(bytes: input))
    var inPieces = RequestHeadScanner(maxHeadBytes: 32 * 1024, maxFields: 100)
    var buffer = ByteBuffer()
    var offset = 0
    for piece in pieces(of: input, mixing: 2654435761, largest: 16) {
        buffer.writeBytes(piece)
        offset = piece.endIndex
        let result = inPieces.scan(buffer)
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

/// The client's pipeline itself (lb's reader, the hand-over to llhttp, the front handler), fed the input whole and
/// then in pieces, the real server answering each request it reads in full: how the bytes are split into reads
/// never changes the requests lb forwards. Where llhttp reads, a refusal answers the connection at once, so a later
/// request may or may not have been forwarded depending on when the one before was answered: then one list must
/// be the start of the other; where lb's reader read the whole input, they must be equal.
func checkSplitReadsThroughTheProxy(_ input: [UInt8]) {
    func serve(in pieces: [ArraySlice<UInt8>]) -> (stream: [UInt8], readByParser: Bool) {
        guard let exchange = try? InProcessExchange(service: fuzzService, request: "", response: "") else {
            fatalError("in-process exchange set-up")
        }
        defer { exchange.finish() }
        var stream: [UInt8] = []
        var answered = 0
        for piece in pieces {
            exchange.clientSends(ByteBuffer(bytes: piece))
            // Answer every request the server has in full; an answer can release a request lb held back.
            while true {
                stream += exchange.takeBytesAtServer()
                guard case .request(_, let consumed) = strictParseRequest(Array(stream[answered...])) else { break }
                answered += consumed
                exchange.serverSends(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
            }
        }
        return (stream, exchange.clientReadByParser ?? true)
    }
    let whole = serve(in: [input[...]])
    let pieces = pieces(of: input, mixing: 2246822519, largest: 32)
    let split = serve(in: pieces)
    // Compared as the requests a server reads: lb frames a chunked body by the parts it read, so its chunk sizes
    // follow the reads.
    let wholeRequests = requests(in: whole.stream), splitRequests = requests(in: split.stream)
    let agree = !whole.readByParser && !split.readByParser
        ? wholeRequests == splitRequests
        : wholeRequests.starts(with: splitRequests) || splitRequests.starts(with: wholeRequests)
    guard agree else {
        fatalError("lb forwarded \(wholeRequests) for the input whole, \(splitRequests) in \(pieces.count) pieces")
    }
}

/// The complete requests a strict server reads from `stream`.
func requests(in stream: [UInt8]) -> [StrictRequest] {
    var found: [StrictRequest] = []
    var offset = 0
    while case .request(let request, let consumed) = strictParseRequest(Array(stream[offset...])) {
        found.append(request)
        offset += consumed
    }
    return found
}

/// An l7-http service with X-Forwarded-For and cookie persistence, as the proxy model above writes requests.
let fuzzService: VirtualService = {
    do {
        let report = ConfigurationLoader.check(yaml: """
            virtual_services:
              - name: fuzz
                vip: 192.0.2.10
                ports: [80]
                mode: l7-http
                forwarded_for: true
                persistence: {type: http-cookie, cookie: \(persistenceCookie)}
                health_check: {type: none}
                real_servers: [{name: web-1, address: 192.0.2.20, port: 80}]
            """, file: "fuzz.yaml")
        guard let service = report.configuration?.virtualServices.first else { fatalError("fuzz service: \(report.diagnostics)") }
        return service
    }
}()

/// The cookie name the fuzz service persists with.
let persistenceCookie = "lbsrv"

/// The requests lb's own reader takes from the start of `input`: complete simple requests (head and body), until
/// the first that is not simple or not complete (from there llhttp would read the connection), or one after which
/// the connection closes.
func simpleRequests(_ input: [UInt8]) -> [ForwardedRequest] {
    var scanner = RequestHeadScanner(maxHeadBytes: 32 * 1024, maxFields: 100)
    var buffer = ByteBuffer(bytes: input)
    var requests: [ForwardedRequest] = []
    while case .simple(let head) = scanner.scan(buffer) {
        scanner.nextHead()
        let (forwarded, cookie) = buffer.withUnsafeReadableBytes { raw in
            (RequestBytes.forwarded(simple: head, fields: scanner.fields, head: raw, forwardedFor: ("198.51.100.7", "http"),
                                    allocator: ByteBufferAllocator()),
             SimpleRequestHead.cookie(named: persistenceCookie, in: scanner.fields, of: raw))
        }
        let target = buffer.getString(at: buffer.readerIndex + head.target.lowerBound, length: head.target.count) ?? ""
        buffer.moveReaderIndex(forwardBy: head.size)
        guard let body = buffer.readBytes(length: head.contentLength ?? 0) else { break }  // cut short
        requests.append(ForwardedRequest(method: head.method.rawValue, target: target, body: body,
                                         head: Array(forwarded.readableBytesView), keepAlive: head.keepAlive,
                                         isHTTP10: head.isHTTP10, cookie: cookie))
        // The connection closes after this one's response: what follows is never read.
        if !head.keepAlive { break }
    }
    return requests
}

/// What lb sends upstream for `input`: complete requests only (a request lb would refuse, or one cut short, ends
/// the connection and sends nothing more).
func proxy(_ input: [UInt8]) -> (bytes: [UInt8], requests: [ForwardedRequest]) {
    let client = EmbeddedChannel()
    defer { _ = try? client.finish() }
    do {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = 32 * 1024
        limits.maxHeaderFieldSize = 32 * 1024
        limits.maxHeaderFieldCount = 100
        try client.pipeline.syncOperations.addHandler(
            ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits)))
    } catch {
        fatalError("pipeline: \(error)")
    }
    var parts: [HTTPServerRequestPart] = []
    do {
        try client.writeInbound(ByteBuffer(bytes: input))
    } catch {
        // The parser refused: lb answers 400 and closes; what was complete before still went out.
    }
    while let part = try? client.readInbound(as: HTTPServerRequestPart.self) { parts.append(part) }

    var requests: [ForwardedRequest] = []
    var current: ForwardedRequest?
    var pending: [ByteBuffer] = []
    var bytes: [UInt8] = []
    var chunked = false
    let allocator = ByteBufferAllocator()
    var lastRequest = false
    loop: for part in parts {
        switch part {
        case .head(let head):
            guard let framing = try? head.checkedForForwarding() else { break loop }
            // As a service with X-Forwarded-For writes it (the fields lb adds are covered too).
            let headBytes = RequestBytes.forwarded(head, framing: framing, forwardedFor: ("198.51.100.7", "http"), allocator: allocator)
            current = ForwardedRequest(method: head.method.rawValue, target: head.uri, body: [],
                                       head: Array(headBytes.readableBytesView), keepAlive: head.isKeepAlive && !head.asksForUpgrade,
                                       isHTTP10: head.version.major == 1 && head.version.minor == 0,
                                       cookie: head.headers.cookie(named: persistenceCookie))
            pending = [headBytes]
            chunked = framing == .chunked
            // lb answers a request asking to switch protocols and closes: nothing after its end is forwarded.
            lastRequest = head.asksForUpgrade
        case .body(let body):
            current?.body += Array(body.readableBytesView)
            if let framed = RequestBytes.body(body, chunked: chunked, allocator: allocator) { pending.append(framed) }
        case .end(let trailers):
            if let end = RequestBytes.end(trailers: trailers?.forwardableTrailers(), chunked: chunked, allocator: allocator) {
                pending.append(end)
            }
            finish(&pending, current, into: &requests, bytes: &bytes)
            current = nil
            if lastRequest { break loop }
        }
    }
    return (bytes, requests)
}

/// lb streams a request's parts as they come; the fuzz model sends a request once it is complete (one cut short is
/// closed upstream, never completed by later bytes).
func finish(_ pending: inout [ByteBuffer], _ request: ForwardedRequest?, into requests: inout [ForwardedRequest],
            bytes: inout [UInt8]) {
    defer { pending = [] }
    guard let request else { return }
    for buffer in pending { bytes += buffer.readableBytesView }
    requests.append(request)
}

#if LB_FUZZ
/// The entry point SwiftPM links as `main`: libFuzzer's driver.
@_cdecl("lb_fuzz_http_request_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    lb_fuzz_run(argc, argv) { data, size in fuzzHTTPRequest(data!, size) }
}
#else
/// Without libFuzzer (a normal build): replays the inputs named on the command line (seed corpus, kept crashes).
@main
struct ReplayHTTPRequestInputs {
    static func main() throws { try FuzzReplay.run("http-request", fuzzHTTPRequest) }
}
#endif
