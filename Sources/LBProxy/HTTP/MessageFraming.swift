import NIOHTTP1

/// How a message's body is delimited, as lb's own parser read it. lb forwards a message with framing it writes from
/// this value, never with the peer's Content-Length or Transfer-Encoding text: a framing header the next hop could
/// read differently from lb (`Transfer-Encoding: Chunked` on a GET, a coding list, a duplicated length) is exactly
/// how one request becomes two behind a proxy.
package enum BodyFraming: Equatable {
    /// No framing header: an empty request body, or a response read until the server closes.
    case unframed
    case contentLength(Int)
    case chunked
}

/// Why a message's header section cannot be forwarded. The description is what lb logs; the peer gets only a status.
package enum MessageRefusal: Error, Equatable, CustomStringConvertible {
    case unsupportedTransferEncoding(String)
    case invalidContentLength(String)
    case lengthAndTransferEncoding
    case duplicateHost
    case invalidHost(String)
    case hostContradictsURI(host: String, uri: String)
    case unsupportedMethod(String)
    case unexpectedUpgrade(UInt)

    package var description: String {
        switch self {
        case .unsupportedTransferEncoding(let value): "Transfer-Encoding \"\(value)\" is not exactly \"chunked\""
        case .invalidContentLength(let value): "invalid Content-Length \"\(value)\""
        case .lengthAndTransferEncoding: "both Content-Length and Transfer-Encoding"
        case .duplicateHost: "more than one Host header"
        case .invalidHost(let value): "invalid Host \"\(value)\""
        case .hostContradictsURI(let host, let uri): "Host \"\(host)\" contradicts the absolute URI \"\(uri)\""
        case .unsupportedMethod(let method): "method \(method) is not proxied"
        case .unexpectedUpgrade(let status): "status \(status): lb never asks a real server to switch protocols"
        }
    }
}

/// Headers that describe one hop, not the message: never forwarded (RFC 9110 §7.6.1).
let hopByHopHeaders = Set(hopByHopNames)

/// Whether `name` is one of `hopByHopHeaders`, compared without case and without allocating.
func isHopByHopName<Name: StringProtocol>(_ name: Name) -> Bool { hopByHopIndex(name) != nil }

/// The hop-by-hop field names, in the order `hopByHopIndex` numbers them.
let hopByHopNames = ["te", "trailer", "upgrade", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
                     "proxy-authenticate", "proxy-authorization"]

/// The position of `name` in `hopByHopNames` (compared without case), or nil.
func hopByHopIndex<Name: StringProtocol>(_ name: Name) -> Int? {
    switch name.utf8.count {
    case 2: name.equalsIgnoringASCIICase("te") ? 0 : nil
    case 7: name.equalsIgnoringASCIICase("trailer") ? 1 : name.equalsIgnoringASCIICase("upgrade") ? 2 : nil
    case 10: name.equalsIgnoringASCIICase("connection") ? 3 : name.equalsIgnoringASCIICase("keep-alive") ? 4 : nil
    case 16: name.equalsIgnoringASCIICase("proxy-connection") ? 5 : nil
    case 17: name.equalsIgnoringASCIICase("transfer-encoding") ? 6 : nil
    case 18: name.equalsIgnoringASCIICase("proxy-authenticate") ? 7 : nil
    case 19: name.equalsIgnoringASCIICase("proxy-authorization") ? 8 : nil
    default: nil
    }
}

extension StringProtocol {
    /// Equal to `lowercase` (which must be lower-case ASCII) when ASCII letters are compared without case.
    func equalsIgnoringASCIICase(_ lowercase: StaticString) -> Bool {
        lowercase.withUTF8Buffer { equalsIgnoringASCIICase(lowercaseBytes: $0) }
    }

    /// The same, against a name known only at run time (one a `Connection` list named).
    func equalsIgnoringASCIICase(lowercase: String) -> Bool { equalsIgnoringASCIICase(lowercaseBytes: lowercase.utf8) }

    private func equalsIgnoringASCIICase<Lower: Collection<UInt8>>(lowercaseBytes theirs: Lower) -> Bool {
        bytesEqualIgnoringASCIICase(utf8, lowercase: theirs)
    }
}

extension UnsafeRawBufferPointer {
    /// The same for bytes in place (a field name in a head lb scanned itself). Written out rather than through the
    /// generic comparison below: the scanners classify every field name with it, and the generic one's iterators
    /// cost about 70 instructions a call (measured in process); this one stops at the length or the first byte.
    /// (`withUTF8Buffer` serves both of StaticString's forms; `utf8Start` traps for one held as a single scalar.)
    @inline(__always)
    func equalsIgnoringASCIICase(_ lowercase: StaticString) -> Bool {
        lowercase.withUTF8Buffer { theirs in
            guard count == theirs.count else { return false }
            for index in 0..<count {
                let byte = self[index], lower = theirs[index]
                guard byte == lower || (byte &- UInt8(ascii: "A") < 26 && byte | 0x20 == lower) else { return false }
            }
            return true
        }
    }
}

/// `bytes` equal to `lowercase` (lower-case ASCII) when ASCII letters are compared without case.
func bytesEqualIgnoringASCIICase<Bytes: Collection<UInt8>, Lower: Collection<UInt8>>(_ bytes: Bytes, lowercase: Lower) -> Bool {
    guard bytes.count == lowercase.count else { return false }
    return zip(bytes, lowercase).allSatisfy { byte, lower in
        byte == lower || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") && byte | 0x20 == lower)
    }
}

/// Calls `body` with each non-empty element of a comma-separated field value, without spaces or tabs around it.
func forEachListToken(_ value: String, _ body: (Substring) -> Void) {
    let bytes = value.utf8
    var start = bytes.startIndex
    while start < bytes.endIndex {
        let end = bytes[start...].firstIndex(of: UInt8(ascii: ",")) ?? bytes.endIndex
        var first = start, last = end
        while first < last, bytes[first] == 0x20 || bytes[first] == 0x09 { first = bytes.index(after: first) }
        while last > first, bytes[bytes.index(before: last)] == 0x20 || bytes[bytes.index(before: last)] == 0x09 {
            last = bytes.index(before: last)
        }
        if first < last { body(value[first..<last]) }
        start = end < bytes.endIndex ? bytes.index(after: end) : end
    }
}

/// Which fields of a header section lb leaves out when it forwards the message, worked out in one pass: the
/// hop-by-hop ones, and those the `Connection` list names (except protected ones). Nothing is allocated for the
/// usual `Connection: keep-alive` or `close`.
struct HopByHopFields {
    /// Lower-case names the `Connection` list names (not hop-by-hop, not protected, not `close`).
    private(set) var listed: [String] = []
    /// `Connection: close` names a field called "close" too (RFC 9112 §9.6 reserves the name); without allocating
    /// for every `close` list, it is removed only when such a field is there.
    private(set) var removesClose = false

    init(_ fields: HTTPHeaders) {
        var closeListed = false, closeFieldPresent = false
        for (name, value) in fields {
            guard let index = hopByHopIndex(name) else {
                if name.equalsIgnoringASCIICase("close") { closeFieldPresent = true }
                continue
            }
            guard index == 3 else { continue }  // Connection: the fields its list names go too
            forEachListToken(value) { token in
                // Hop-by-hop names are gone anyway; protected fields are never removed by a client.
                if token.equalsIgnoringASCIICase("close") { closeListed = true; return }
                if isHopByHopName(token) { return }
                let lowered = token.lowercased()
                if !protectedHeaders.contains(lowered), !listed.contains(lowered) { listed.append(lowered) }
            }
        }
        removesClose = closeListed && closeFieldPresent
    }

    /// Whether the field `name` is removed.
    func removes(_ name: String) -> Bool {
        if hopByHopIndex(name) != nil { return true }
        if removesClose, name.equalsIgnoringASCIICase("close") { return true }
        return !listed.isEmpty && listed.contains { name.equalsIgnoringASCIICase(lowercase: $0) }
    }
}

/// Headers a `Connection` list may not remove: the message's framing and routing, and what lb reads or writes itself.
/// A client naming them in `Connection` would otherwise strip them between lb's view of the request and the server's.
let protectedHeaders: Set<String> = [
    "host", "content-length", "transfer-encoding", "cookie", "set-cookie", "x-forwarded-for", "x-forwarded-proto",
    "forwarded", "content-type", "authorization",
]

extension HTTPHeaders {
    /// The framing of this message's body from its Content-Length and Transfer-Encoding fields. Only a lone
    /// `chunked` coding is accepted (case-insensitive, as the parser matched it); lb forwards it as exactly `chunked`.
    package func bodyFraming() throws(MessageRefusal) -> BodyFraming {
        // The common cases without building value lists: no framing field, or one plain Content-Length.
        if !contains(name: "transfer-encoding") {
            var lengthFields = 0
            var onlyLength = ""
            for (name, value) in self where name.equalsIgnoringASCIICase("content-length") {
                lengthFields += 1
                onlyLength = value
            }
            if lengthFields == 0 { return .unframed }
            if lengthFields == 1, let length = Self.plainLength(onlyLength) { return .contentLength(length) }
        }
        let codings = self[canonicalForm: "transfer-encoding"]
        let lengths = self[canonicalForm: "content-length"]
        if !codings.isEmpty {
            guard lengths.isEmpty else { throw .lengthAndTransferEncoding }
            guard codings.count == 1, codings[0].lowercased() == "chunked" else {
                throw .unsupportedTransferEncoding(self["transfer-encoding"].joined(separator: ", "))
            }
            return .chunked
        }
        guard let first = lengths.first else {
            // A framing field with no value is as wrong as a bad one.
            if contains(name: "transfer-encoding") { throw .unsupportedTransferEncoding("") }
            if contains(name: "content-length") { throw .invalidContentLength("") }
            return .unframed
        }
        guard lengths.allSatisfy({ $0 == first }), let length = Self.plainLength(first) else {
            throw .invalidContentLength(self["content-length"].joined(separator: ", "))
        }
        return .contentLength(length)
    }

    /// 1 to 18 decimal digits and nothing else (no sign, no space), or nil.
    static func plainLength<Text: StringProtocol>(_ text: Text) -> Int? {
        let digits = text.utf8
        guard !digits.isEmpty, digits.count <= 18,
              digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return Int(text)
    }

    /// The framing these fields' Content-Length states when it is in lb's own form — none, or one plain
    /// Content-Length — else nil. (Transfer-Encoding is hop-by-hop: gone before this is asked.)
    var statedLength: BodyFraming? {
        var framing = BodyFraming.unframed
        for (name, value) in self where name.equalsIgnoringASCIICase("content-length") {
            // Leading zeros are valid but rewritten: the next hop gets the plain number.
            guard framing == .unframed, value == "0" || value.utf8.first != UInt8(ascii: "0"),
                  let length = Self.plainLength(value) else { return nil }
            framing = .contentLength(length)
        }
        return framing
    }

    /// Trailer fields worth forwarding: none that could frame, route or hop.
    package func forwardableTrailers() -> HTTPHeaders {
        var trailers = self
        for name in hopByHopHeaders.union(protectedHeaders) { trailers.remove(name: name) }
        return trailers
    }
}

extension HTTPRequestHead {
    /// Checks what lb needs to forward this request unambiguously (RFC 9112 §3.2, §6) and returns its body's framing.
    package func checkedForForwarding() throws(MessageRefusal) -> BodyFraming {
        if method == .CONNECT { throw .unsupportedMethod("CONNECT") }
        var host: String?
        for (name, value) in headers where name.equalsIgnoringASCIICase("host") {
            if host != nil { throw .duplicateHost }
            host = value
        }
        if let host {
            guard !host.isEmpty || version.minor == 0,
                  !host.utf8.contains(where: { $0 == UInt8(ascii: ",") || $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t")
                      || $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "@") }) else { throw .invalidHost(host) }
        }
        if let authority = absoluteURIAuthority(uri) {
            if let host, normalizedAuthority(host, scheme: authority.scheme) != normalizedAuthority(authority.host, scheme: authority.scheme) {
                throw .hostContradictsURI(host: host, uri: uri)
            }
        }
        let framing = try headers.bodyFraming()
        return framing
    }

    /// Whether the method is idempotent (`HTTPMethod.isIdempotent`).
    package var isIdempotent: Bool { method.isIdempotent }

    /// Whether the client asked to switch protocols. lb's l7-http does not switch (Upgrade is hop-by-hop and not
    /// forwarded), and its parser reads nothing after such a request, so the connection closes after the response.
    package var asksForUpgrade: Bool {
        headers.contains(name: "upgrade") && headers[canonicalForm: "connection"].contains { $0.lowercased() == "upgrade" }
    }
}

extension HTTPMethod {
    /// Whether the method is idempotent (RFC 9110 §9.2.2): only these may be sent to a server a second time.
    package var isIdempotent: Bool {
        switch self {
        case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: true
        default: false
        }
    }

    // HTTPMethod's `==` compares the methods' names (it goes through `rawValue`: two Strings made and compared per
    // test, six tests per request on the proxy's path). These match the case, and a raw method of the same name.

    /// A response to this request has no body, whatever its head says.
    package var isHEAD: Bool {
        switch self {
        case .HEAD: true
        case .RAW(let value): value == "HEAD"
        default: false
        }
    }

    /// Requests of this method normally have a body: an empty one is stated (`Content-Length: 0`).
    package var normallyHasBody: Bool {
        switch self {
        case .POST, .PUT, .PATCH: true
        case .RAW(let value): value == "POST" || value == "PUT" || value == "PATCH"
        default: false
        }
    }
}

/// The scheme and authority of an absolute-form request target (`http://host:port/path`), or nil for origin form.
private func absoluteURIAuthority(_ uri: String) -> (scheme: String, host: String)? {
    // Origin form ("/path"), nearly every request: no search for "://".
    if uri.utf8.first == UInt8(ascii: "/") || uri == "*" { return nil }
    guard let separator = uri.range(of: "://") else { return nil }
    let scheme = uri[..<separator.lowerBound].lowercased()
    guard scheme == "http" || scheme == "https" else { return nil }
    let rest = uri[separator.upperBound...]
    let end = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
    return (scheme, String(rest[..<end]))
}

/// An authority compared without case and without the scheme's default port.
private func normalizedAuthority(_ authority: String, scheme: String) -> String {
    let lowered = authority.lowercased()
    let defaultPort = scheme == "https" ? ":443" : ":80"
    return lowered.hasSuffix(defaultPort) ? String(lowered.dropLast(defaultPort.count)) : lowered
}
