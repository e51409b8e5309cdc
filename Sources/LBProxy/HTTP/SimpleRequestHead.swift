import NIOCore
import NIOHTTP1

/// A request head in the form nearly every client sends, read by lb itself (`RequestHeadScanner`): one of seven
/// methods, an origin-form target, HTTP/1.1 or 1.0, plain field lines, no body or one stated by a single
/// Content-Length, and none of the fields that need more than copying (framing by Transfer-Encoding, Upgrade,
/// Expect, a `Connection` list naming fields, other hop-by-hop fields, a second Host).
package struct SimpleRequestHead: Equatable, Sendable {
    package var method: HTTPMethod
    package var isHTTP10: Bool
    /// The client keeps the connection open after the response (HTTP/1.1 without `Connection: close`, or HTTP/1.0
    /// with `Connection: keep-alive`), as NIO's `isKeepAlive` reads it.
    package var keepAlive: Bool
    /// The body's length from the one Content-Length field, or nil without one (no body).
    package var contentLength: Int?
    /// The head's bytes, the empty line included.
    package var size: Int
    /// The request target.
    package var target: Range<Int>
    /// The one `Connection` field (`keep-alive` or `close`): lb leaves it out, as every hop-by-hop field.
    package var connectionField: Int?

    /// The first pair named `name` in the Cookie fields of a simple head, as `HTTPHeaders.cookie(named:)` reads it
    /// from llhttp's fields.
    package static func cookie(named name: String, in fields: [FieldSpan], of head: UnsafeRawBufferPointer) -> String? {
        cookieValueBytes(named: name, in: fields, of: head).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The same pair's value as a persistence cookie lb issued, if it is one (`PersistenceCookie`): no String made.
    /// Nil if there is no such pair, or if the first is not a value lb issues (as that String would match no server).
    static func persistenceCookie(named name: String, in fields: [FieldSpan], of head: UnsafeRawBufferPointer) -> PersistenceCookie? {
        cookieValueBytes(named: name, in: fields, of: head).flatMap(PersistenceCookie.init)
    }

    /// The bytes of that pair's value, which both of the above read (the fuzz target checks `cookie` against llhttp).
    private static func cookieValueBytes(named name: String, in fields: [FieldSpan], of head: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        for field in fields where UnsafeRawBufferPointer(rebasing: head[field.name]).equalsIgnoringASCIICase("cookie") {
            let value = UnsafeRawBufferPointer(rebasing: head[field.value])
            if let range = cookieValueRange(named: name, in: value.assumingMemoryBound(to: UInt8.self)) {
                return UnsafeRawBufferPointer(rebasing: value[range])
            }
        }
        return nil
    }
}

/// The outcome of looking at the start of what a client sent (`.notSimple` also for what is not a request at all).
package typealias RequestHeadScan = HeadScan<SimpleRequestHead>

/// Reads simple request heads (`SimpleRequestHead`) without llhttp, and without building a String or a header
/// list per request: the proxy then forwards the head by copying its field lines (`RequestBytes.forwarded(simple:)`).
///
/// It never refuses anything and never accepts more than llhttp does: whatever is not of the simple form is
/// `.notSimple`, and the connection is read by NIO's parser from there on (`ClientRequestReader`). The fuzz target
/// (`scripts/fuzz http-request`) checks on every input that llhttp reads each head this scanner accepts as the same
/// request, and that lb forwards the same bytes for it either way.
package struct RequestHeadScanner {
    /// Heads larger than this, or with more fields, are left to NIO's parser and its limits.
    let maxHeadBytes: Int
    let maxFields: Int
    /// The field lines of the last simple head (storage kept from request to request).
    package private(set) var fields: [FieldSpan] = []
    /// How far the bytes of the current head have been checked (a head arriving in pieces is not checked again).
    private var check = HeadBytesCheck()

    package init(maxHeadBytes: Int, maxFields: Int) {
        self.maxHeadBytes = maxHeadBytes
        self.maxFields = maxFields
    }

    /// Looks at `bytes`, whose readable bytes begin where a request must begin; call again with the same bytes and
    /// more after `.incomplete`, and `nextHead()` once a simple head has been consumed.
    package mutating func scan(_ bytes: ByteBuffer) -> RequestHeadScan {
        bytes.withUnsafeReadableBytes { scan($0) }
    }

    /// The head before was consumed: the next bytes begin a new one.
    package mutating func nextHead() { check.reset() }

    private mutating func scan(_ bytes: UnsafeRawBufferPointer) -> RequestHeadScan {
        // Not a request of the simple form at all (llhttp may refuse it at once): no need to wait for an empty line.
        if let first = bytes.first, !"GPHDO".utf8.contains(first) { return .notSimple }
        switch check.findEnd(bytes, maxHeadBytes: maxHeadBytes) {
        case .incomplete: return .incomplete
        case .notPlain: return .notSimple
        case .end(let end): return parse(UnsafeRawBufferPointer(rebasing: bytes[..<end]))
        }
    }

    /// The lines of a complete head whose bytes passed `HeadBytesCheck`.
    private mutating func parse(_ head: UnsafeRawBufferPointer) -> RequestHeadScan {
        fields.startHead(maxFields: maxFields)
        // The request line: METHOD SP /target SP HTTP/1.x CRLF.
        guard let (method, methodEnd) = Self.method(head) else { return .notSimple }
        var index = methodEnd + 1
        let targetStart = index
        guard index < head.count, head[index] == ASCII.slash else { return .notSimple }
        while index < head.count, isTargetByte(head[index]) { index += 1 }
        let target = targetStart..<index
        guard index + 10 <= head.count, head[index] == ASCII.space, let isHTTP10 = httpVersionIsHTTP10(head, at: index + 1),
              head[index + 9] == ASCII.cr
        else { return .notSimple }
        index += 11  // past CR LF

        var contentLength: Int?
        var connection: (index: Int, close: Bool)?
        var hostSeen = false
        let plain = forEachFieldLine(of: head, from: index) { field in
            guard fields.count < maxFields else { return false }
            switch Self.kind(of: UnsafeRawBufferPointer(rebasing: head[field.name])) {
            case .other:
                break
            case .needsParser:
                return false
            case .contentLength:
                guard contentLength == nil, let length = plainLength(UnsafeRawBufferPointer(rebasing: head[field.value]))
                else { return false }
                contentLength = length
            case .connection:
                guard connection == nil, let closes = connectionCloses(UnsafeRawBufferPointer(rebasing: head[field.value]))
                else { return false }
                connection = (fields.count, closes)
            case .host:
                guard !hostSeen, !field.value.isEmpty,
                      !head[field.value].contains(where: { $0 == ASCII.comma || $0 == ASCII.space || $0 == ASCII.tab || $0 == ASCII.slash || $0 == ASCII.at })
                else { return false }
                hostSeen = true
            }
            fields.append(field)
            return true
        }
        guard plain else { return .notSimple }
        let keepAlive = keepsAlive(isHTTP10: isHTTP10, connectionCloses: connection?.close)
        return .simple(SimpleRequestHead(method: method, isHTTP10: isHTTP10, keepAlive: keepAlive,
                                         contentLength: contentLength, size: head.count, target: target,
                                         connectionField: connection?.index))
    }

    /// The seven methods of the simple form, followed by a space.
    private static func method(_ head: UnsafeRawBufferPointer) -> (HTTPMethod, Int)? {
        func starts(_ word: StaticString) -> Bool {
            let count = word.utf8CodeUnitCount
            guard head.count > count, head[count] == ASCII.space else { return false }
            return word.withUTF8Buffer { $0.elementsEqual(head[0..<count]) }
        }
        if starts("GET") { return (.GET, 3) }
        if starts("POST") { return (.POST, 4) }
        if starts("HEAD") { return (.HEAD, 4) }
        if starts("PUT") { return (.PUT, 3) }
        if starts("DELETE") { return (.DELETE, 6) }
        if starts("OPTIONS") { return (.OPTIONS, 7) }
        if starts("PATCH") { return (.PATCH, 5) }
        return nil
    }

    private enum FieldKind { case other, needsParser, contentLength, connection, host }

    /// Fields lb reads, and those that take a request out of the simple form.
    private static func kind(of name: UnsafeRawBufferPointer) -> FieldKind {
        switch name.count {
        case 4: return name.equalsIgnoringASCIICase("host") ? .host : .other
        case 10:
            if name.equalsIgnoringASCIICase("connection") { return .connection }
            return name.equalsIgnoringASCIICase("keep-alive") ? .needsParser : .other
        case 14: return name.equalsIgnoringASCIICase("content-length") ? .contentLength : .other
        // Expect (100-continue).
        case 6: return name.equalsIgnoringASCIICase("expect") ? .needsParser : .other
        default: return leavesSimpleForm(name) ? .needsParser : .other
        }
    }
}

extension HTTPMethod {
    /// A head carrying only this method, for the response parser (which reads nothing else of a request), shared
    /// by every request of the simple form.
    var headForResponseParser: HTTPRequestHead {
        switch self {
        case .GET: Self.getHead
        case .HEAD: Self.headHead
        case .POST: Self.postHead
        default: HTTPRequestHead(version: .http1_1, method: self, uri: "")
        }
    }

    private static let getHead = HTTPRequestHead(version: .http1_1, method: .GET, uri: "")
    private static let headHead = HTTPRequestHead(version: .http1_1, method: .HEAD, uri: "")
    private static let postHead = HTTPRequestHead(version: .http1_1, method: .POST, uri: "")
}

/// The bytes of an origin-form target in the simple form: RFC 3986 path and query characters (pchar, "/", "?"):
/// unreserved ("-._~", digits, letters), sub-delims ("!$&'()*+,;="), ":", "@", "/", "?" and "%". As bits, as
/// `isTokenByte` (checked against the set spelled out).
@inline(__always) func isTargetByte(_ byte: UInt8) -> Bool {
    let mask: UInt64 = byte < 64 ? 0xAFFF_FFF2_0000_0000 : 0x47FF_FFFE_87FF_FFFF
    return byte < 128 && (mask >> (byte & 63)) & 1 == 1
}
