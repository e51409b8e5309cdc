import LBConfig
import LBTLS
import Logging
import NIOCore
import NIOHTTP1

/// l7-http: sets up a client connection's pipeline. NIO's HTTP/1 parser reads the framing and refuses malformed
/// requests (conflicting Content-Length / Transfer-Encoding, bad chunk sizes, oversized or too many headers);
/// `HTTPFrontHandler` answers those with 400, refuses what the parser lets through but lb will not forward (see
/// `checkedForForwarding`), writes the framing of what it forwards, and does the proxying.
///
/// Every handler costs each request part a hop (and its reference counting), so the pipeline holds only what does
/// work: [TLS], NIO's encoder and decoder, and `HTTPFrontHandler`, which also answers parse errors and closes idle
/// connections. NIO's outbound header validators are left out: every field lb writes was read by
/// llhttp, whose rules for names and values are the validators' (tokens; no CR, LF, NUL or other controls but
/// HTAB), or is lb's own (X-Forwarded-*, the cookie whose name the config loader checks as a token, framing).
/// The request target is forwarded as llhttp accepted it (no space, control or non-ASCII byte, so it cannot split
/// the request line); characters such as `{` or `|` that the real-server validator used to refuse (a 502 counted
/// against a healthy server) reach the server, as through nginx.
struct HTTPProxy: Sendable {
    let runtime: ServiceRuntime
    let slot: ServiceSlot
    var service: VirtualService { runtime.service }

    func initialize(client channel: Channel) -> EventLoopFuture<Void> {
        do {
            var limits = NIOHTTPDecoderLimitConfiguration()
            limits.maxHeaderListSize = service.limits.maxHeaderBytes
            limits.maxHeaderFieldSize = service.limits.maxHeaderBytes
            limits.maxHeaderFieldCount = service.limits.maxHeaders
            let sync = channel.pipeline.syncOperations
            // TLS sits nearest the socket, so everything above it, even the 408 to a half-sent head, is encrypted.
            if let tls = runtime.tls { try sync.addHandler(TLSHandler(context: tls)) }
            // Pipelined requests are queued by HTTPFrontHandler itself; NIO's pipelining helper would pause and
            // resume reading around every request, which costs a system call each time.
            // lb writes every response's framing itself (see BodyFraming): NIO's encoder must not add or drop any.
            var encoder = HTTPResponseEncoder.Configuration()
            encoder.automaticallySetFramingHeaders = false
            try sync.configureHTTPServerPipeline(
                withPipeliningAssistance: false, withErrorHandling: false, withOutboundHeaderValidation: false,
                withEncoderConfiguration: encoder, withDecoderLimitConfiguration: limits)
            try sync.addHandler(HTTPFrontHandler(runtime: runtime, slot: slot, scheme: service.tls == nil ? "http" : "https"))
            return channel.eventLoop.makeSucceededVoidFuture()
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
    }
}

extension HTTPHeaders {
    /// The value of one cookie from the Cookie header(s).
    func cookie(named name: String) -> String? {
        for header in self["cookie"] {
            for pair in header.split(separator: ";") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                if parts.count == 2, parts[0].trimmingCharacters(in: " ") == name {
                    return String(parts[1].trimmingCharacters(in: " \""))
                }
            }
        }
        return nil
    }
}

extension Substring {
    func trimmingCharacters(in set: String) -> Substring {
        var slice = self
        while let first = slice.first, set.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, set.contains(last) { slice = slice.dropLast() }
        return slice
    }
}
