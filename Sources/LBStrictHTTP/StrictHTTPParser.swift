import Foundation

// An HTTP/1.1 request reader written from RFC 9112 alone, without NIO: the reference that lb's own parsing and
// framing are checked against, by the proxy's tests (what a real server received) and by the HTTP fuzz target (what
// a server reads in lb's output). Strict on purpose: anything ambiguous is invalid.

/// One request as a strict reader of RFC 9112 sees it: the oracle for what a real server received from lb.
public struct StrictRequest: Equatable, CustomStringConvertible {
    public var method: String
    public var target: String
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(method: String, target: String, headers: [(name: String, value: String)], body: [UInt8]) {
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
    }

    public static func == (a: StrictRequest, b: StrictRequest) -> Bool {
        a.method == b.method && a.target == b.target && a.body == b.body
            && a.headers.map { "\($0.name.lowercased()):\($0.value)" } == b.headers.map { "\($0.name.lowercased()):\($0.value)" }
    }

    public func values(_ name: String) -> [String] { headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value) }
    public var description: String { "\(method) \(target) \(headers.map { "\($0.name): \($0.value)" }) body \(body.count) bytes" }
}

public enum StrictParse {
    case request(StrictRequest, consumed: Int)
    case needMore
    case invalid(String)
}

/// Reads one message from the start of `bytes`. Only `Transfer-Encoding: chunked` (exactly) and a single decimal
/// Content-Length frame a body; anything ambiguous is invalid, which a test treats as a failure of lb.
public func strictParseRequest(_ bytes: [UInt8]) -> StrictParse {
    guard let headEnd = find([13, 10, 13, 10], in: bytes, from: 0) else {
        return bytes.count > 65536 ? .invalid("head over 64 KiB") : .needMore
    }
    let head = String(decoding: bytes[..<headEnd], as: UTF8.self)
    let lines = head.components(separatedBy: "\r\n")
    let requestLine = lines[0].split(separator: " ", omittingEmptySubsequences: false)
    guard requestLine.count == 3, requestLine[2] == "HTTP/1.1" || requestLine[2] == "HTTP/1.0",
          !requestLine[0].isEmpty, requestLine[0].allSatisfy({ $0.isUppercase }) else {
        return .invalid("request line \(lines[0].debugDescription)")
    }
    var headers: [(String, String)] = []
    for line in lines.dropFirst() {
        guard let colon = line.firstIndex(of: ":"), !line.hasPrefix(" "), !line.hasPrefix("\t") else {
            return .invalid("header line \(line.debugDescription)")
        }
        let name = String(line[..<colon])
        guard !name.isEmpty, !name.contains(" "), !name.contains("\t") else { return .invalid("header name \(name.debugDescription)") }
        headers.append((name, line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
    }
    var request = StrictRequest(method: String(requestLine[0]), target: String(requestLine[1]), headers: headers, body: [])
    let codings = request.values("transfer-encoding")
    let lengths = request.values("content-length")
    var offset = headEnd + 4
    if !codings.isEmpty {
        guard codings == ["chunked"], lengths.isEmpty else { return .invalid("framing TE \(codings) CL \(lengths)") }
        while true {
            guard let lineEnd = find([13, 10], in: bytes, from: offset) else { return .needMore }
            let sizeText = String(decoding: bytes[offset..<lineEnd], as: UTF8.self)
            guard let size = Int(sizeText, radix: 16), size >= 0 else { return .invalid("chunk size \(sizeText.debugDescription)") }
            offset = lineEnd + 2
            if size == 0 {
                // Trailers, then an empty line.
                while true {
                    guard let end = find([13, 10], in: bytes, from: offset) else { return .needMore }
                    let isEmpty = end == offset
                    offset = end + 2
                    if isEmpty { return .request(request, consumed: offset) }
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

public func find(_ needle: [UInt8], in bytes: [UInt8], from start: Int) -> Int? {
    guard bytes.count >= needle.count, start <= bytes.count - needle.count else { return nil }
    for index in start...(bytes.count - needle.count) where bytes[index] == needle[0] {
        if Array(bytes[index..<(index + needle.count)]) == needle { return index }
    }
    return nil
}
