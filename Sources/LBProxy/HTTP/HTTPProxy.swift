import LBConfig
import LBTLS
import Logging
import NIOCore
import NIOHTTP1

/// l7-http: sets up a client connection's pipeline. lb's reader reads the requests nearly every client sends
/// (`ClientRequestReader`), NIO's HTTP/1 parser the rest of a connection from the first that is not simple: it reads
/// the framing and refuses malformed requests (conflicting Content-Length / Transfer-Encoding, bad chunk sizes,
/// oversized or too many headers); `HTTPFrontHandler` answers those with 400, refuses what the parser lets through but
/// lb will not forward (see `checkedForForwarding`), writes the framing of what it forwards, and does the proxying.
///
/// Every handler costs each request part a hop (and its reference counting), so the pipeline holds only what does
/// work: [TLS], the reader (and NIO's decoder once it is needed), and `HTTPFrontHandler`, which also writes the
/// responses' bytes (`ResponseBytes`), answers parse errors and closes idle connections. No outbound header
/// validation: every field lb writes was read by llhttp or lb's reader, whose rules for names and values are the
/// validators' (tokens; no CR, LF, NUL or other controls but HTAB), or is lb's own (X-Forwarded-*, the cookie whose
/// name the config loader checks as a token, framing). The request target is forwarded as it was accepted (no space,
/// control or non-ASCII byte, so it cannot split the request line); characters such as `{` or `|` that the
/// real-server validator used to refuse (a 502 counted against a healthy server) reach the server, as through nginx.
struct HTTPProxy: Sendable {
    let runtime: ServiceRuntime
    let slot: ServiceSlot
    var service: VirtualService { runtime.service }

    func initialize(client channel: Channel) throws {
        let sync = channel.pipeline.syncOperations
        // Every handler lb adds per connection is named: without a name NIO formats one ("handler7"), about 400
        // instructions each, measured in process.
        // TLS sits nearest the socket, so everything above it, even the 408 to a half-sent head, is encrypted.
        if let tls = runtime.tls { try sync.addHandler(TLSHandler(context: tls), name: "tls") }
        // Until the client sends something, only this: see `WaitingClientHandler`.
        try sync.addHandler(WaitingClientHandler(proxy: self), name: "waiting")
    }

    /// The HTTP handlers of a client connection that has sent its first bytes, after `waiting`, whose deadline and
    /// clock they take over.
    func addHTTPHandlers(to sync: ChannelPipeline.SynchronousOperations, after waiting: WaitingClientHandler,
                         headerDeadline: NIODeadline, clock: ConnectionClock) throws {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = service.limits.maxHeaderBytes
        limits.maxHeaderFieldSize = service.limits.maxHeaderBytes
        limits.maxHeaderFieldCount = service.limits.maxHeaders
        // Pipelined requests are queued by HTTPFrontHandler itself (NIO's pipelining helper would pause and
        // resume reading around every request, a system call each time), and it writes the responses' bytes
        // itself (`ResponseBytes`). The reader reads simple requests itself and puts NIO's parser in for the rest.
        let front = HTTPFrontHandler(runtime: runtime, slot: slot, scheme: service.tls == nil ? "http" : "https",
                                     headerDeadline: headerDeadline, clock: clock)
        let reader = ClientRequestReader(front: front, limits: limits)
        front.reader = reader
        try sync.addHandler(reader, name: "request-reader", position: .after(waiting))
        try sync.addHandler(front, name: "front", position: .after(reader))
    }
}

extension HTTPHeaders {
    /// The value of one cookie from the Cookie header(s): the first pair whose name is `name` (spaces around the
    /// name and value, and quotes around the value, dropped). Read in place: nothing is allocated but the value.
    package func cookie(named name: String) -> String? {
        for (field, value) in self where field.equalsIgnoringASCIICase("cookie") {
            var value = value
            value.makeContiguousUTF8()  // a no-op for the native strings the parser makes
            if let found = value.utf8.withContiguousStorageIfAvailable({ cookieValue(named: name, in: $0) }) ?? nil {
                return found
            }
        }
        return nil
    }
}

/// The value of the first cookie named `name` in one Cookie field's value (spaces around the name and value, and
/// quotes around the value, dropped); nil if there is none, or only empty ones.
func cookieValue(named name: String, in bytes: UnsafeBufferPointer<UInt8>) -> String? {
    cookieValueRange(named: name, in: bytes).map { String(decoding: UnsafeBufferPointer(rebasing: bytes[$0]), as: UTF8.self) }
}

/// Where that value is in `bytes`.
func cookieValueRange(named name: String, in bytes: UnsafeBufferPointer<UInt8>) -> Range<Int>? {
    // The name's bytes are compared in place (a generic comparison of a String's UTF-8 view with a slice cost
    // about 260 instructions a pair, measured in process, and the viewer's browsers send several cookies).
    func equal(_ name: String, _ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        name.utf8.withContiguousStorageIfAvailable { name in
            guard name.count == bytes.count else { return false }
            for index in 0..<name.count where name[index] != bytes[index] { return false }
            return true
        } ?? name.utf8.elementsEqual(bytes)
    }
    func isTrimmed(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
    var pairStart = 0
    while pairStart <= bytes.count {
        var pairEnd = pairStart
        while pairEnd < bytes.count, bytes[pairEnd] != UInt8(ascii: ";") { pairEnd += 1 }
        if let equals = bytes[pairStart..<pairEnd].firstIndex(of: UInt8(ascii: "=")) {
            var nameStart = pairStart, nameEnd = equals
            while nameStart < nameEnd, isTrimmed(bytes[nameStart]) { nameStart += 1 }
            while nameEnd > nameStart, isTrimmed(bytes[nameEnd - 1]) { nameEnd -= 1 }
            if equal(name, UnsafeBufferPointer(rebasing: bytes[nameStart..<nameEnd])) {
                var valueStart = equals + 1, valueEnd = pairEnd
                func isDropped(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\"") }
                while valueStart < valueEnd, isDropped(bytes[valueStart]) { valueStart += 1 }
                while valueEnd > valueStart, isDropped(bytes[valueEnd - 1]) { valueEnd -= 1 }
                // An empty value names no server: a later pair of the same name may.
                if valueStart < valueEnd { return valueStart..<valueEnd }
            }
        }
        pairStart = pairEnd + 1
    }
    return nil
}
