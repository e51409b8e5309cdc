import CFuzz
import Foundation
import LBProxy
import NIOCore
import NIOEmbedded
import NIOHTTP1

/// libFuzzer target (scripts/fuzz http-request): bytes from a client in, the bytes lb would send to the real server
/// out, through the same parser configuration, checks, head rewriting and encoder as the proxy
/// (`checkedForForwarding`, `forwarded(framing:)`, `makeRealServerRequestEncoder`).
///
/// Invariant: an independent strict parser (RFC 9112; only `Transfer-Encoding: chunked` exactly and one decimal
/// Content-Length frame a body) reads exactly the requests lb forwarded — same method, target and body — and nothing
/// else. A violation is a request smuggled past lb, so it traps.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let forwarded = proxy(Array(UnsafeBufferPointer(start: data, count: size)))
    var offset = 0
    for (index, expected) in forwarded.requests.enumerated() {
        switch strictParse(Array(forwarded.bytes[offset...])) {
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
    let server = EmbeddedChannel()
    defer {
        _ = try? client.finish()
        _ = try? server.finish()
    }
    do {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = 32 * 1024
        limits.maxHeaderFieldSize = 32 * 1024
        limits.maxHeaderFieldCount = 100
        try client.pipeline.syncOperations.addHandler(
            ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits)))
        try server.pipeline.syncOperations.addHandler(makeRealServerRequestEncoder())
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
    var pending: [HTTPClientRequestPart] = []
    loop: for part in parts {
        switch part {
        case .head(let head):
            guard let framing = try? head.checkedForForwarding() else { break loop }
            let outbound = head.forwarded(framing: framing)
            current = ForwardedRequest(method: outbound.method.rawValue, target: outbound.uri, body: [])
            pending = [.head(outbound)]
            if head.asksForUpgrade {
                // lb answers it and closes: nothing after it is read.
                pending.append(.end(nil))
                finish(&pending, current, into: &requests, server: server)
                break loop
            }
        case .body(let body):
            current?.body += Array(body.readableBytesView)
            pending.append(.body(.byteBuffer(body)))
        case .end(let trailers):
            pending.append(.end(trailers?.forwardableTrailers()))
            finish(&pending, current, into: &requests, server: server)
            current = nil
        }
    }
    var bytes: [UInt8] = []
    while let buffer = try? server.readOutbound(as: ByteBuffer.self) {
        var buffer = buffer
        bytes += buffer.readBytes(length: buffer.readableBytes) ?? []
    }
    return (bytes, requests)
}

/// lb streams a request's parts as they come; the fuzz model sends a request once it is complete (one cut short is
/// closed upstream, never completed by later bytes).
func finish(_ pending: inout [HTTPClientRequestPart], _ request: ForwardedRequest?, into requests: inout [ForwardedRequest],
            server: EmbeddedChannel) {
    defer { pending = [] }
    guard let request else { return }
    for part in pending {
        do { try server.writeOutbound(part) } catch { fatalError("encoder: \(error)") }
    }
    requests.append(request)
}

// MARK: The independent strict parser

enum StrictParse {
    case request(ForwardedRequest, consumed: Int)
    case needMore
    case invalid(String)
}

func strictParse(_ bytes: [UInt8]) -> StrictParse {
    guard let headEnd = find([13, 10, 13, 10], in: bytes, from: 0) else { return .needMore }
    let lines = String(decoding: bytes[..<headEnd], as: UTF8.self).components(separatedBy: "\r\n")
    let requestLine = lines[0].split(separator: " ", omittingEmptySubsequences: false)
    guard requestLine.count == 3, requestLine[2] == "HTTP/1.1", !requestLine[0].isEmpty else {
        return .invalid("request line \(lines[0].debugDescription)")
    }
    var codings: [String] = [], lengths: [String] = []
    for line in lines.dropFirst() {
        guard let colon = line.firstIndex(of: ":"), !line.hasPrefix(" "), !line.hasPrefix("\t") else {
            return .invalid("header line \(line.debugDescription)")
        }
        let name = line[..<colon].lowercased()
        guard !name.isEmpty, !name.contains(" "), !name.contains("\t") else { return .invalid("header name") }
        let value = line[line.index(after: colon)...].trimmingCharacters(in: CharacterSet(charactersIn: " \t"))
        if name == "transfer-encoding" { codings.append(value) }
        if name == "content-length" { lengths.append(value) }
    }
    var request = ForwardedRequest(method: String(requestLine[0]), target: String(requestLine[1]), body: [])
    var offset = headEnd + 4
    if !codings.isEmpty {
        guard codings == ["chunked"], lengths.isEmpty else { return .invalid("framing \(codings) \(lengths)") }
        while true {
            guard let lineEnd = find([13, 10], in: bytes, from: offset) else { return .needMore }
            guard let size = Int(String(decoding: bytes[offset..<lineEnd], as: UTF8.self), radix: 16), size >= 0 else {
                return .invalid("chunk size")
            }
            offset = lineEnd + 2
            if size == 0 {
                while true {
                    guard let end = find([13, 10], in: bytes, from: offset) else { return .needMore }
                    let blank = end == offset
                    offset = end + 2
                    if blank { return .request(request, consumed: offset) }
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

#if LB_FUZZ
/// The entry point SwiftPM links as `main`: libFuzzer's driver.
@_cdecl("lb_fuzz_http_request_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    lb_fuzz_run(argc, argv) { data, size in fuzzHTTPRequest(data!, size) }
}
#else
/// Without libFuzzer (a normal build): runs the inputs named on the command line, e.g. the seed corpus and every
/// crash kept as a regression case.
@main
struct ReplayHTTPRequestInputs {
    static func main() throws {
        for path in CommandLine.arguments.dropFirst() {
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            let storage = bytes.isEmpty ? [0] : bytes  // a valid pointer even for an empty input
            _ = storage.withUnsafeBufferPointer { buffer in
                buffer.baseAddress.map { fuzzHTTPRequest($0, bytes.count) }
            }
        }
        print("http-request: \(CommandLine.arguments.count - 1) inputs replayed")
    }
}
#endif
