import LBTLS
import NIOCore
import NIOHTTP1

/// What the bytes of requests and responses have in common: field lines and chunked framing.
///
/// Every field written here was read by llhttp from a peer (tokens; no CR, LF or NUL in values) or is lb's own, so
/// nothing needs escaping; lb decides the framing (`BodyFraming`) and states it in the head.
package enum MessageBytes {
    /// The bytes `writeFields` writes for `fields`, the empty line included.
    static func fieldsSize(_ fields: HTTPHeaders) -> Int {
        var size = 2
        for (name, value) in fields { size += name.utf8.count + 2 + value.utf8.count + 2 }
        return size
    }

    /// Each field on its line, then the empty line that ends the section.
    static func writeFields(_ fields: HTTPHeaders, to head: inout HeadWriter) {
        for (name, value) in fields { writeField(name, value, to: &head) }
        head.append("\r\n")
    }

    /// One field line: `name: value` CRLF.
    private static func writeField(_ name: String, _ value: String, to head: inout HeadWriter) {
        head.append(name)
        head.append(": ")
        head.append(value)
        head.append("\r\n")
    }

    /// The field lines of a head lb scanned itself (`head` starts at the message), but those `leavesOut` names by
    /// position: lines already in the form `name: value` CRLF are copied as they came, consecutive ones in one piece;
    /// others are written in that form.
    static func copyFieldLines(_ fields: [FieldSpan], of head: UnsafeRawBufferPointer, to out: inout HeadWriter,
                               leavingOut leavesOut: (Int, FieldSpan) -> Bool) {
        func copy(_ range: Range<Int>) { out.append(UnsafeRawBufferPointer(rebasing: head[range])) }
        var run = 0..<0  // field lines to copy in one piece
        for (index, field) in fields.enumerated() {
            if leavesOut(index, field) { continue }
            let colon = field.name.upperBound
            let normalised = field.value.lowerBound == colon + 2 && head[colon + 1] == UInt8(ascii: " ")
            if normalised {
                let line = field.name.lowerBound..<field.value.upperBound + 2
                if run.isEmpty { run = line } else if run.upperBound == line.lowerBound { run = run.lowerBound..<line.upperBound } else {
                    copy(run)
                    run = line
                }
                continue
            }
            if !run.isEmpty { copy(run); run = 0..<0 }
            copy(field.name)
            out.append(": ")
            copy(field.value)
            out.append("\r\n")
        }
        if !run.isEmpty { copy(run) }
    }

    /// Room for the framing field lb may write (`Content-Length: ` and 18 digits, or `Transfer-Encoding: chunked`).
    static let framingFieldSize = 40

    /// The fields of a message lb forwards, written as it goes: hop-by-hop fields and those the `Connection` list
    /// names are left out (`HopByHopFields`); a Content-Length that already states `framing` in lb's form stays
    /// where it is, else lb's framing field follows the others; with `droppingForwardedFor`,
    /// X-Forwarded-For and -Proto are left out for the caller to write after. The empty line is the caller's.
    /// Writing the bytes this way costs no copy of the fields and no new head.
    static func writeForwardedFields(_ fields: HTTPHeaders, framing: BodyFraming, droppingForwardedFor: Bool,
                                     to head: inout HeadWriter) {
        let hop = HopByHopFields(fields)
        let keepsLength = fields.statedLength == framing
        for (name, value) in fields {
            if hop.removes(name) { continue }
            if !keepsLength, name.equalsIgnoringASCIICase("content-length") { continue }
            if droppingForwardedFor, name.equalsIgnoringASCIICase("x-forwarded-for") || name.equalsIgnoringASCIICase("x-forwarded-proto") {
                continue
            }
            writeField(name, value, to: &head)
        }
        if !keepsLength { writeFramingField(framing, to: &head) }
    }

    /// lb's framing field for `framing`: `Content-Length`, `Transfer-Encoding: chunked`, or none.
    static func writeFramingField(_ framing: BodyFraming, to head: inout HeadWriter) {
        switch framing {
        case .unframed: break
        case .contentLength(let length):
            head.append("Content-Length: ")
            head.append(decimal: length)
            head.append("\r\n")
        case .chunked: head.append("Transfer-Encoding: chunked\r\n")
        }
    }

    /// The framing line of a chunk of `size` bytes ("1a2b\r\n"), appended to `buffer`.
    package static func writeChunkSize(_ size: Int, to buffer: inout ByteBuffer) {
        let digits = String(size, radix: 16)
        buffer.writeString(digits)
        buffer.writeStaticString("\r\n")
    }

    /// The last chunk and the trailer section of a chunked body.
    package static func lastChunk(trailers: HTTPHeaders?, allocator: ByteBufferAllocator) -> ByteBuffer {
        guard let trailers, !trailers.isEmpty else {
            var buffer = allocator.buffer(capacity: 5)
            buffer.writeStaticString("0\r\n\r\n")
            return buffer
        }
        var buffer = allocator.buffer(capacity: 3 + fieldsSize(trailers))
        buffer.writeHead(estimate: 3 + fieldsSize(trailers)) { head in
            head.append("0\r\n")
            writeFields(trailers, to: &head)
        }
        return buffer
    }
}

/// The bytes of the requests lb sends to real servers, written by `HTTPFrontHandler` itself instead of through NIO's
/// request encoder: no handler between `BackendHandler` and the socket, the head written into one buffer sized for
/// it, and a request without a body sent as that one buffer.
package enum RequestBytes {
    /// The head lb forwards for a client's request `head`, whose body its parser delimited as `framing`, written
    /// straight from the client's fields (`MessageBytes.writeForwardedFields`): HTTP/1.1, no hop-by-hop fields,
    /// lb's framing, and with `forwardedFor` (the client's address, and "http" or "https") X-Forwarded-For (the
    /// client's list with the client appended) and X-Forwarded-Proto last.
    package static func forwarded(_ head: HTTPRequestHead, framing: BodyFraming, forwardedFor: (client: String, proto: String)?,
                                  allocator: ByteBufferAllocator) -> ByteBuffer {
        var fresh = ReusableBuffer()
        return forwarded(head, framing: framing, forwardedFor: forwardedFor, into: &fresh, allocator: allocator)
    }

    /// As above, written into the storage of the connection's last head if nothing else holds it (`ReusableBuffer`).
    static func forwarded(_ head: HTTPRequestHead, framing: BodyFraming, forwardedFor: (client: String, proto: String)?,
                          into heads: inout ReusableBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        // An empty body of a method that normally has one is stated: some servers refuse such a request without a
        // length (411).
        let stated = framing == .unframed && head.method.normallyHasBody
            ? BodyFraming.contentLength(0) : framing
        let method = head.method.rawValue
        // At most: the request line, every field, lb's framing and the X-Forwarded fields (the client's own list is
        // among the fields).
        var size = method.utf8.count + 1 + head.uri.utf8.count + 11 + MessageBytes.fieldsSize(head.headers)
            + MessageBytes.framingFieldSize
        if let forwardedFor { size += 17 + 2 + forwardedFor.client.utf8.count + 2 + 19 + forwardedFor.proto.utf8.count + 2 }
        var buffer = heads.take(capacity: size, allocator: allocator)
        buffer.writeHead(estimate: size) { out in
            out.append(method)
            out.append(byte: UInt8(ascii: " "))
            out.append(head.uri)
            out.append(" HTTP/1.1\r\n")
            MessageBytes.writeForwardedFields(head.headers, framing: stated, droppingForwardedFor: forwardedFor != nil, to: &out)
            if let forwardedFor {
                out.append("X-Forwarded-For: ")
                // The client's fields joined with ", " (as one list), then the client: nothing is built but bytes.
                var listBytes = 0, fieldCount = 0
                for (name, value) in head.headers where name.equalsIgnoringASCIICase("x-forwarded-for") {
                    if fieldCount > 0 { out.append(", "); listBytes += 2 }
                    out.append(value)
                    listBytes += value.utf8.count
                    fieldCount += 1
                }
                writeForwardedForEnd(afterListOf: listBytes, forwardedFor, to: &out)
            }
            out.append("\r\n")
        }
        return buffer
    }

    /// The same bytes for a request of the simple form (`SimpleRequestHead`), written from the client's own bytes
    /// (`head` starts at the request): the field lines lb keeps are copied as they came, consecutive ones in one
    /// piece, where they are already in the form `name: value` CRLF. The fuzz target checks that these are the
    /// bytes the function above writes for llhttp's reading of the same head.
    package static func forwarded(simple: SimpleRequestHead, fields: [FieldSpan], head: UnsafeRawBufferPointer,
                                  forwardedFor: (client: String, proto: String)?, allocator: ByteBufferAllocator) -> ByteBuffer {
        var fresh = ReusableBuffer()
        return forwarded(simple: simple, fields: fields, head: head, forwardedFor: forwardedFor, into: &fresh, allocator: allocator)
    }

    /// As above, written into the storage of the connection's last head if nothing else holds it.
    static func forwarded(simple: SimpleRequestHead, fields: [FieldSpan], head: UnsafeRawBufferPointer,
                          forwardedFor: (client: String, proto: String)?, into heads: inout ReusableBuffer,
                          allocator: ByteBufferAllocator) -> ByteBuffer {
        let statesEmptyBody = simple.contentLength == nil
            && simple.method.normallyHasBody
        // At most: the head as it came with every line normalised (": " adds at most 2 bytes a line), an empty
        // body's length, the X-Forwarded fields.
        var size = simple.size + 2 * fields.count + 20
        if let forwardedFor { size += 17 + 2 + forwardedFor.client.utf8.count + 2 + 19 + forwardedFor.proto.utf8.count + 2 }
        var buffer = heads.take(capacity: size, allocator: allocator)
        buffer.writeHead(estimate: size) { out in
            func copy(_ range: Range<Int>) { out.append(UnsafeRawBufferPointer(rebasing: head[range])) }
            copy(0..<simple.target.upperBound)
            out.append(" HTTP/1.1\r\n")
            var forwardedForFields = 0
            MessageBytes.copyFieldLines(fields, of: head, to: &out) { index, field in
                if index == simple.connectionField { return true }
                guard forwardedFor != nil, let kind = forwardedKind(UnsafeRawBufferPointer(rebasing: head[field.name])) else {
                    return false
                }
                if kind == .forwardedFor { forwardedForFields += 1 }
                return true
            }
            if statesEmptyBody { out.append("Content-Length: 0\r\n") }
            if let forwardedFor {
                out.append("X-Forwarded-For: ")
                // The client's fields joined with ", " (as one list), then the client, as above.
                var listBytes = 0, written = 0
                if forwardedForFields > 0 {
                    for field in fields where forwardedKind(UnsafeRawBufferPointer(rebasing: head[field.name])) == .forwardedFor {
                        if written > 0 { out.append(", "); listBytes += 2 }
                        copy(field.value)
                        listBytes += field.value.count
                        written += 1
                    }
                }
                writeForwardedForEnd(afterListOf: listBytes, forwardedFor, to: &out)
            }
            out.append("\r\n")
        }
        return buffer
    }

    private enum ForwardedKind { case forwardedFor, forwardedProto }

    private static func forwardedKind(_ name: UnsafeRawBufferPointer) -> ForwardedKind? {
        switch name.count {
        case 15: name.equalsIgnoringASCIICase("x-forwarded-for") ? .forwardedFor : nil
        case 17: name.equalsIgnoringASCIICase("x-forwarded-proto") ? .forwardedProto : nil
        default: nil
        }
    }

    /// After the client's own X-Forwarded-For list (`listBytes` long, maybe empty): the client, and X-Forwarded-Proto.
    private static func writeForwardedForEnd(afterListOf listBytes: Int, _ forwardedFor: (client: String, proto: String),
                                             to out: inout HeadWriter) {
        if listBytes > 0 { out.append(", ") }
        out.append(forwardedFor.client)
        out.append("\r\nX-Forwarded-Proto: ")
        out.append(forwardedFor.proto)
        out.append("\r\n")
    }

    /// A part of a request body, framed as the head stated: as it came, or as one chunk. Nil for an empty part,
    /// which as a chunk would end the body.
    package static func body(_ body: ByteBuffer, chunked: Bool, allocator: ByteBufferAllocator) -> ByteBuffer? {
        let size = body.readableBytes
        guard size > 0 else { return nil }
        guard chunked else { return body }
        var chunk = allocator.buffer(capacity: size + 12)
        MessageBytes.writeChunkSize(size, to: &chunk)
        var body = body
        chunk.writeBuffer(&body)
        chunk.writeStaticString("\r\n")
        return chunk
    }

    /// What ends a request body: the last chunk and trailers of a chunked body; nothing for any other.
    package static func end(trailers: HTTPHeaders?, chunked: Bool, allocator: ByteBufferAllocator) -> ByteBuffer? {
        chunked ? MessageBytes.lastChunk(trailers: trailers, allocator: allocator) : nil
    }
}

/// What lb sends a client for a real server's response head: the server's fields without hop-by-hop ones, and lb's
/// framing, Connection and persistence cookie. Decided when the head arrives, written when it leaves.
package struct ForwardedResponseHead {
    /// The server's head, as one of lb's two readers read it.
    package enum Source {
        /// Read by NIO's parser.
        case parsed(HTTPResponseHead)
        /// Read by lb's own reader: `bytes` begin with the head, whose field lines are `fields`. lb forwards its
        /// framing unchanged (that is what makes it simple), so only the status line and lb's fields are written.
        case simple(SimpleSource)

        package static func simple(_ head: SimpleResponseHead, fields: [FieldSpan], bytes: ByteBuffer) -> Source {
            .simple(SimpleSource(head: head, fields: fields, bytes: bytes))
        }
    }

    /// A struct, not the case's own tuple of three: Swift copied that tuple through the runtime's generic tuple
    /// functions at each `case .simple(let ...)`, about 200 instructions a copy, three a response (measured in
    /// process).
    package struct SimpleSource {
        let head: SimpleResponseHead
        let fields: [FieldSpan]
        let bytes: ByteBuffer
    }

    let source: Source
    var framing: BodyFraming
    /// `close` or `keep-alive`, or nil for none.
    package var connection: StaticString?
    /// The persistence cookie, sent as `name=value; Path=/; HttpOnly` (and `; Secure` over HTTPS).
    package var setCookie: (name: String, value: String, secure: Bool)?

    package init(_ source: Source, framing: BodyFraming) {
        self.source = source
        self.framing = framing
    }

    package init(head: HTTPResponseHead, framing: BodyFraming) { self.init(.parsed(head), framing: framing) }

    var status: HTTPResponseStatus {
        switch source {
        case .parsed(let head): head.status
        case .simple(let simple): simple.head.status
        }
    }
}

/// The bytes of the responses lb sends to clients, written by `HTTPFrontHandler` itself instead of through NIO's
/// response encoder: one handler fewer for every part of every response, the head written into one buffer sized for
/// it, and a small body sent in the same buffer as its head or its chunk framing.
package enum ResponseBytes {
    /// A body up to this size is copied next to its head or chunk framing (one write instead of two or three);
    /// a larger one is sent from its own buffer, uncopied.
    static let copyLimit = 4096

    /// The status line and fields of `head`, as HTTP/1.1, and room for `extra` more bytes.
    static func head(_ head: HTTPResponseHead, extra: Int = 0, allocator: ByteBufferAllocator) -> ByteBuffer {
        let reason = head.status.reasonPhrase
        var size = 9 + 3 + 1 + reason.utf8.count + 2  // "HTTP/1.1 " code " " reason CRLF
        size += MessageBytes.fieldsSize(head.headers)
        var buffer = allocator.buffer(capacity: size + extra)
        buffer.writeHead(estimate: size) { out in
            writeStatusLine(head.status, to: &out)
            MessageBytes.writeFields(head.headers, to: &out)
        }
        return buffer
    }

    /// "HTTP/1.1 ", the code, the reason phrase.
    private static func writeStatusLine(_ status: HTTPResponseStatus, to out: inout HeadWriter) {
        out.append("HTTP/1.1 ")
        let code = status.code
        out.append(byte: UInt8(ascii: "0") + UInt8(truncatingIfNeeded: code / 100 % 10))
        out.append(byte: UInt8(ascii: "0") + UInt8(truncatingIfNeeded: code / 10 % 10))
        out.append(byte: UInt8(ascii: "0") + UInt8(truncatingIfNeeded: code % 10))
        out.append(byte: UInt8(ascii: " "))
        out.append(status.reasonPhrase)
        out.append("\r\n")
    }

    /// The head lb sends to the client for a real server's response (`ForwardedResponseHead`), written straight from
    /// the server's fields (`MessageBytes.writeForwardedFields`), then Connection and Set-Cookie if lb sets them;
    /// room for `extra` more bytes.
    package static func forwarded(_ out: ForwardedResponseHead, extra: Int = 0, allocator: ByteBufferAllocator) -> ByteBuffer {
        var fresh = ReusableBuffer()
        return forwarded(out, extra: extra, into: &fresh, allocator: allocator)
    }

    /// As above, written into the storage of the connection's last head if nothing else holds it (`ReusableBuffer`).
    static func forwarded(_ out: ForwardedResponseHead, extra: Int = 0, into heads: inout ReusableBuffer,
                          allocator: ByteBufferAllocator) -> ByteBuffer {
        let status = out.status
        var size = 9 + 3 + 1 + status.reasonPhrase.utf8.count + 2 + MessageBytes.framingFieldSize
        switch out.source {
        case .parsed(let head): size += MessageBytes.fieldsSize(head.headers)
        case .simple(let simple): size += simple.head.size + 2 * simple.fields.count  // ": " adds at most 2 a line
        }
        if let connection = out.connection { size += 12 + connection.utf8CodeUnitCount + 2 }
        if let cookie = out.setCookie { size += 12 + cookie.name.utf8.count + 1 + cookie.value.utf8.count + 18 + 8 + 2 }
        var buffer = heads.take(capacity: size + extra, allocator: allocator)
        buffer.writeHead(estimate: size) { head in writeForwarded(out, status: status, to: &head) }
        return buffer
    }

    private static func writeForwarded(_ out: ForwardedResponseHead, status: HTTPResponseStatus, to head: inout HeadWriter) {
        writeStatusLine(status, to: &head)
        switch out.source {
        case .parsed(let parsed):
            MessageBytes.writeForwardedFields(parsed.headers, framing: out.framing, droppingForwardedFor: false, to: &head)
        case .simple(let source):
            // lb forwards a simple response's framing as the server stated it; should it ever decide otherwise, the
            // server's length is left out and lb's framing written, as for any other response.
            let simple = source.head
            let keepsLength = out.framing == simple.statedFraming
            source.bytes.withUnsafeReadableBytes { raw in
                MessageBytes.copyFieldLines(source.fields, of: raw, to: &head) { index, _ in
                    index == simple.connectionField || index == simple.keepAliveField
                        || (!keepsLength && index == simple.contentLengthField)
                }
            }
            if !keepsLength { MessageBytes.writeFramingField(out.framing, to: &head) }
        }
        if let connection = out.connection {
            head.append("Connection: ")
            head.append(connection)
            head.append("\r\n")
        }
        if let cookie = out.setCookie {
            head.append("Set-Cookie: ")
            head.append(cookie.name)
            head.append(byte: UInt8(ascii: "="))
            head.append(cookie.value)
            head.append("; Path=/; HttpOnly")
            if cookie.secure { head.append("; Secure") }
            head.append("\r\n")
        }
        head.append("\r\n")
    }

    /// lb's own small answers (400, 408, 502, 503, ...): a plain-text body, and the connection closes after it.
    static func error(_ status: HTTPResponseStatus, _ text: String, allocator: ByteBufferAllocator) -> ByteBuffer {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: "\(text.utf8.count)")
        headers.add(name: "Connection", value: "close")
        var response = head(HTTPResponseHead(version: .http1_1, status: status, headers: headers), extra: text.utf8.count,
                            allocator: allocator)
        response.writeString(text)
        return response
    }

    static func requestTimeout(allocator: ByteBufferAllocator) -> ByteBuffer {
        error(.requestTimeout, "Request Timeout\n", allocator: allocator)
    }
}
