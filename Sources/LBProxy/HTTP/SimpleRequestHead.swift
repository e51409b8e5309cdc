import NIOCore
import NIOHTTP1

/// One field line of a scanned head: where its name and its value (without the spaces and tabs before it) are, as
/// offsets from the start of the head.
package struct FieldSpan: Equatable, Sendable {
    package var name: Range<Int>
    package var value: Range<Int>
}

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
        for field in fields where UnsafeRawBufferPointer(rebasing: head[field.name]).equalsIgnoringASCIICase("cookie") {
            let value = UnsafeRawBufferPointer(rebasing: head[field.value]).assumingMemoryBound(to: UInt8.self)
            if let found = cookieValue(named: name, in: value) { return found }
        }
        return nil
    }
}

/// The outcome of looking at the start of what a client sent.
package enum RequestHeadScan: Equatable {
    /// A complete head of the simple form (`SimpleRequestHead`); its fields are in the scanner's `fields`.
    case simple(SimpleRequestHead)
    /// Every byte so far could begin a simple head; more are needed.
    case incomplete
    /// Not of the simple form (or not a request at all): NIO's llhttp-based parser reads it, and refuses it if
    /// it must.
    case notSimple
}

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
    private var checked = 0

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
    package mutating func nextHead() { checked = 0 }

    private mutating func scan(_ bytes: UnsafeRawBufferPointer) -> RequestHeadScan {
        // 1. Only visible ASCII, spaces, tabs and CR LF line ends, up to the empty line (checked once per byte).
        var end: Int?
        var index = checked
        while index < bytes.count {
            let byte = bytes[index]
            if byte == lf {
                guard index > 0, bytes[index - 1] == cr else { return .notSimple }
                if index >= 3, bytes[index - 2] == lf, bytes[index - 3] == cr {
                    end = index + 1
                    break
                }
            } else {
                if index > 0, bytes[index - 1] == cr { return .notSimple }  // a CR not ending a line
                guard (byte >= 0x20 && byte < 0x7F) || byte == tab || byte == cr else { return .notSimple }
            }
            index += 1
        }
        guard let end else {
            checked = index
            return bytes.count > maxHeadBytes ? .notSimple : .incomplete
        }
        checked = end
        guard end <= maxHeadBytes else { return .notSimple }
        return parse(UnsafeRawBufferPointer(rebasing: bytes[..<end]))
    }

    /// 2. The lines of a complete head whose bytes passed the check above.
    private mutating func parse(_ head: UnsafeRawBufferPointer) -> RequestHeadScan {
        fields.removeAll(keepingCapacity: true)
        // The request line: METHOD SP /target SP HTTP/1.x CRLF.
        guard let (method, methodEnd) = Self.method(head) else { return .notSimple }
        var index = methodEnd + 1
        let targetStart = index
        guard index < head.count, head[index] == slash else { return .notSimple }
        while index < head.count, isTargetByte(head[index]) { index += 1 }
        let target = targetStart..<index
        guard index + 10 <= head.count, head[index] == space, head[index + 1] == h, head[index + 2] == t,
              head[index + 3] == t, head[index + 4] == p, head[index + 5] == slash, head[index + 6] == one,
              head[index + 7] == dot, head[index + 8] == one || head[index + 8] == zero, head[index + 9] == cr
        else { return .notSimple }
        let isHTTP10 = head[index + 8] == zero
        index += 11  // past CR LF

        var contentLength: Int?
        var connection: (index: Int, close: Bool)?
        var hostSeen = false
        while index < head.count - 2 {  // up to the empty line
            // name ":" OWS value OWS CRLF
            let nameStart = index
            while isTokenByte(head[index]) { index += 1 }
            guard index > nameStart, head[index] == colon else { return .notSimple }
            let name = nameStart..<index
            index += 1
            while head[index] == space || head[index] == tab { index += 1 }
            let valueStart = index
            while head[index] != cr { index += 1 }
            // Spaces and tabs at the end stay part of the value, as llhttp reads it.
            let value = valueStart..<index
            index += 2
            guard fields.count < maxFields else { return .notSimple }
            switch Self.kind(of: UnsafeRawBufferPointer(rebasing: head[name])) {
            case .other:
                break
            case .needsParser:
                return .notSimple
            case .contentLength:
                guard contentLength == nil, let length = Self.plainLength(UnsafeRawBufferPointer(rebasing: head[value]))
                else { return .notSimple }
                contentLength = length
            case .connection:
                guard connection == nil else { return .notSimple }
                let token = UnsafeRawBufferPointer(rebasing: head[value])
                if token.equalsIgnoringASCIICase("close") {
                    connection = (fields.count, true)
                } else if token.equalsIgnoringASCIICase("keep-alive") {
                    connection = (fields.count, false)
                } else {
                    return .notSimple
                }
            case .host:
                guard !hostSeen, !value.isEmpty,
                      !head[value].contains(where: { $0 == comma || $0 == space || $0 == tab || $0 == slash || $0 == at })
                else { return .notSimple }
                hostSeen = true
            }
            fields.append(FieldSpan(name: name, value: value))
        }
        let keepAlive = isHTTP10 ? connection?.close == false : connection?.close != true
        return .simple(SimpleRequestHead(method: method, isHTTP10: isHTTP10, keepAlive: keepAlive,
                                         contentLength: contentLength, size: head.count, target: target,
                                         connectionField: connection?.index))
    }

    /// The seven methods of the simple form, followed by a space.
    private static func method(_ head: UnsafeRawBufferPointer) -> (HTTPMethod, Int)? {
        func starts(_ word: StaticString) -> Bool {
            let count = word.utf8CodeUnitCount
            guard head.count > count, head[count] == space else { return false }
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
        // Hop-by-hop fields but Connection, a field named "close" (which `Connection: close` would remove), and
        // Expect (100-continue).
        case 2: return name.equalsIgnoringASCIICase("te") ? .needsParser : .other
        case 5: return name.equalsIgnoringASCIICase("close") ? .needsParser : .other
        case 6: return name.equalsIgnoringASCIICase("expect") ? .needsParser : .other
        case 7: return name.equalsIgnoringASCIICase("trailer") || name.equalsIgnoringASCIICase("upgrade") ? .needsParser : .other
        case 16: return name.equalsIgnoringASCIICase("proxy-connection") ? .needsParser : .other
        case 17: return name.equalsIgnoringASCIICase("transfer-encoding") ? .needsParser : .other
        case 18: return name.equalsIgnoringASCIICase("proxy-authenticate") ? .needsParser : .other
        case 19: return name.equalsIgnoringASCIICase("proxy-authorization") ? .needsParser : .other
        default: return .other
        }
    }

    /// 1 to 18 decimal digits, without a leading zero unless it is the only one (lb forwards the length as it
    /// came only in this form), or nil.
    private static func plainLength(_ digits: UnsafeRawBufferPointer) -> Int? {
        guard !digits.isEmpty, digits.count <= 18, digits[0] != zero || digits.count == 1 else { return nil }
        var length = 0
        for digit in digits {
            guard digit >= zero, digit <= zero + 9 else { return nil }
            length = length * 10 + Int(digit - zero)
        }
        return length
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

private let cr: UInt8 = 13, lf: UInt8 = 10, tab: UInt8 = 9, space: UInt8 = 32, colon = UInt8(ascii: ":"),
            slash = UInt8(ascii: "/"), comma = UInt8(ascii: ","), at = UInt8(ascii: "@"), dot = UInt8(ascii: "."),
            zero = UInt8(ascii: "0"), one = UInt8(ascii: "1"), h = UInt8(ascii: "H"), t = UInt8(ascii: "T"),
            p = UInt8(ascii: "P")

/// tchar (RFC 9110 §5.6.2).
@inline(__always) private func isTokenByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        return true
    case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
         UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
         UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
        return true
    default:
        return false
    }
}

/// The bytes of an origin-form target in the simple form: RFC 3986 path and query characters (pchar, "/", "?").
@inline(__always) private func isTargetByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        return true
    case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "!"), UInt8(ascii: "$"),
         UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "*"), UInt8(ascii: "+"),
         UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "="), UInt8(ascii: ":"), UInt8(ascii: "@"), UInt8(ascii: "/"),
         UInt8(ascii: "?"), UInt8(ascii: "%"):
        return true
    default:
        return false
    }
}
