import NIOCore
import NIOHTTP1

/// A response head in the form nearly every real server sends, read by lb itself (`ResponseHeadScanner`): HTTP/1.1
/// or 1.0, a final status NIO knows by name, plain field lines, and a body stated by a single Content-Length or none
/// at all (a response to HEAD, 204, 304). Nothing in it needs more than copying: no Transfer-Encoding, Upgrade,
/// Trailer or other hop-by-hop field but one `Connection: keep-alive` or `close` and one Keep-Alive, which lb leaves
/// out.
package struct SimpleResponseHead: Equatable, Sendable {
    /// The status lb forwards, with NIO's reason phrase (as it writes every status llhttp read).
    package var status: HTTPResponseStatus
    package var isHTTP10: Bool
    /// The server keeps the connection open after this response (as llhttp reads it).
    package var keepAlive: Bool
    /// The one Content-Length, or nil.
    package var contentLength: Int?
    /// The body bytes that follow the head: none for a response to HEAD, 204 or 304, whatever the length says.
    package var bodyLength: Int
    /// The head's bytes, the empty line included.
    package var size: Int
    /// The `Connection` and `Keep-Alive` fields, which lb leaves out, and the `Content-Length` field (positions among
    /// the fields).
    package var connectionField: Int?
    package var keepAliveField: Int?
    package var contentLengthField: Int?

    /// The framing the server's fields state.
    package var statedFraming: BodyFraming { contentLength.map { .contentLength($0) } ?? .unframed }
}

/// The outcome of looking at the start of what a real server sent (`.notSimple` also for an interim response, a
/// chunked or close-delimited body, anything else).
package typealias ResponseHeadScan = HeadScan<SimpleResponseHead>

/// Reads simple response heads (`SimpleResponseHead`) without llhttp, and without building a String or a header
/// list per response: the proxy forwards the head by copying its field lines (`ResponseBytes.forwarded`).
///
/// Like `RequestHeadScanner`, it never refuses anything and never accepts more than llhttp: whatever is not of the
/// simple form is `.notSimple`, and the connection is read by NIO's parser from there on (`RealServerResponseReader`).
/// The fuzz target (`scripts/fuzz http-response`) checks on every input that llhttp reads each response this
/// scanner accepts as the same response, and that lb forwards the same bytes for it either way.
package struct ResponseHeadScanner {
    /// Heads larger than this, or with more fields, are left to NIO's parser and its limits.
    let maxHeadBytes: Int
    let maxFields: Int
    /// The field lines of the last simple head (storage kept from response to response).
    package private(set) var fields: [FieldSpan] = []
    private var check = HeadBytesCheck()

    package init(maxHeadBytes: Int, maxFields: Int) {
        self.maxHeadBytes = maxHeadBytes
        self.maxFields = maxFields
    }

    /// Looks at `bytes`, whose readable bytes begin where the response to a `requestMethod` request must begin; call
    /// again with the same bytes and more after `.incomplete`, and `nextHead()` once a simple head has been consumed.
    package mutating func scan(_ bytes: ByteBuffer, requestMethod: HTTPMethod) -> ResponseHeadScan {
        bytes.withUnsafeReadableBytes { raw -> ResponseHeadScan in
            // Not a response at all (llhttp refuses it at once): no need to wait for an empty line.
            guard Self.couldBeginStatusLine(raw) else { return .notSimple }
            switch check.findEnd(raw, maxHeadBytes: maxHeadBytes) {
            case .incomplete: return .incomplete
            case .notPlain: return .notSimple
            case .end(let end): return parse(UnsafeRawBufferPointer(rebasing: raw[..<end]), requestMethod: requestMethod)
            }
        }
    }

    /// The head before was consumed: the next bytes begin a new one.
    package mutating func nextHead() { check.reset() }

    private static func couldBeginStatusLine(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let start: StaticString = "HTTP/1."
        let matches = start.withUTF8Buffer { start in zip(bytes, start).allSatisfy { $0 == $1 } }
        return matches && (bytes.count < 8 || bytes[7] == ASCII.zero || bytes[7] == ASCII.one)
    }

    /// The lines of a complete head whose bytes passed `HeadBytesCheck`.
    private mutating func parse(_ head: UnsafeRawBufferPointer, requestMethod: HTTPMethod) -> ResponseHeadScan {
        fields.startHead(maxFields: maxFields)
        // The status line: HTTP/1.x SP 3DIGIT SP reason CRLF, a final status NIO names.
        guard head.count >= 15, let isHTTP10 = httpVersionIsHTTP10(head, at: 0), head[8] == ASCII.space,
              let code = Self.statusCode(head[9], head[10], head[11]), head[12] == ASCII.space else { return .notSimple }
        let status = HTTPResponseStatus(statusCode: code)
        if case .custom = status { return .notSimple }
        var index = 13
        while head[index] != ASCII.cr { index += 1 }  // the reason phrase, which lb does not forward
        index += 2

        var contentLength: (index: Int, length: Int)?
        var connection: (index: Int, close: Bool)?
        var keepAliveField: Int?
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
                contentLength = (fields.count, length)
            case .connection:
                guard connection == nil, let closes = connectionCloses(UnsafeRawBufferPointer(rebasing: head[field.value]))
                else { return false }
                connection = (fields.count, closes)
            case .keepAlive:
                guard keepAliveField == nil else { return false }
                keepAliveField = fields.count
            }
            fields.append(field)
            return true
        }
        guard plain else { return .notSimple }
        // The body: lb writes the head as it came, so only framing it forwards unchanged is simple (a 204's length
        // is left out by lb, a missing length means a body read until the close).
        let bodyLength: Int
        if requestMethod.isHEAD || code == 304 {
            bodyLength = 0
        } else if code == 204 {
            guard contentLength == nil else { return .notSimple }
            bodyLength = 0
        } else {
            guard let contentLength else { return .notSimple }
            bodyLength = contentLength.length
        }
        // As NIO reads it from llhttp before it tells llhttp that a response to HEAD has no body: without a length,
        // a status that may carry one is delimited by the close, so the connection is not kept.
        let delimitedByClose = contentLength == nil && code != 204 && code != 304
        let keepAlive = !delimitedByClose && keepsAlive(isHTTP10: isHTTP10, connectionCloses: connection?.close)
        return .simple(SimpleResponseHead(status: status, isHTTP10: isHTTP10, keepAlive: keepAlive,
                                          contentLength: contentLength?.length, bodyLength: bodyLength, size: head.count,
                                          connectionField: connection?.index, keepAliveField: keepAliveField,
                                          contentLengthField: contentLength?.index))
    }

    /// A final status (200 to 599) from three digits, or nil.
    private static func statusCode(_ hundreds: UInt8, _ tens: UInt8, _ units: UInt8) -> Int? {
        guard hundreds >= UInt8(ascii: "2"), hundreds <= UInt8(ascii: "5"), tens >= ASCII.zero, tens <= ASCII.zero + 9,
              units >= ASCII.zero, units <= ASCII.zero + 9 else { return nil }
        return Int(hundreds - ASCII.zero) * 100 + Int(tens - ASCII.zero) * 10 + Int(units - ASCII.zero)
    }

    private enum FieldKind { case other, needsParser, contentLength, connection, keepAlive }

    /// Fields lb reads or leaves out, and those that take a response out of the simple form.
    private static func kind(of name: UnsafeRawBufferPointer) -> FieldKind {
        switch name.count {
        case 10:
            if name.equalsIgnoringASCIICase("connection") { return .connection }
            return name.equalsIgnoringASCIICase("keep-alive") ? .keepAlive : .other
        case 14: return name.equalsIgnoringASCIICase("content-length") ? .contentLength : .other
        default: return leavesSimpleForm(name) ? .needsParser : .other
        }
    }
}
