import CFuzz
import Foundation
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
/// Invariant: an independent strict parser (RFC 9112; only `Transfer-Encoding: chunked` exactly and one decimal
/// Content-Length frame a body) reads exactly the requests lb forwarded — same method, target and body — and nothing
/// else. A violation is a request smuggled past lb, so it traps.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let forwarded = proxy(Array(UnsafeBufferPointer(start: data, count: size)))
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
    var description: String { "\(method) \(target) (\(body.count) body bytes)" }
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
            current = ForwardedRequest(method: head.method.rawValue, target: head.uri, body: [])
            // As a service with X-Forwarded-For writes it (the fields lb adds are covered too).
            pending = [RequestBytes.forwarded(head, framing: framing, forwardedFor: ("198.51.100.7", "http"), allocator: allocator)]
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
