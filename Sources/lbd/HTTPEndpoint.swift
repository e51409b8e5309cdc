import Foundation
import LBAgent
import LBConfig
import LBControl
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// lbd's read-only HTTP listener. `--metrics ADDRESS:PORT` serves only GET /metrics (Prometheus text);
/// `--http ADDRESS:PORT` also serves the status page: `/` (HTML), its script and style (no external assets, so the
/// page works on an isolated hospital network), `/status.json` (the JSON of `lbctl status --format json`) and
/// `/transitions.json` (the last 20 health transitions, newest first), `/audit.json` (the last ten entries of the
/// audit trail). Nothing here changes state: changes stay with lbctl and the control socket's peer check. Every read goes through the agent's queue, never blocking an event loop.
final class HTTPEndpoint: @unchecked Sendable {
    enum Content { case metricsOnly, statusPages }

    private let content: Content
    private let agent: Agent
    private let metrics: PrometheusMetrics
    private let audit: AuditLog
    private let logger: Logger
    private var channel: Channel?

    init(content: Content, agent: Agent, metrics: PrometheusMetrics, audit: AuditLog, logger: Logger) {
        self.content = content
        self.agent = agent
        self.metrics = metrics
        self.audit = audit
        self.logger = logger
    }

    func start(host: String, port: Int, group: EventLoopGroup) async throws {
        let option = content == .statusPages ? "--http" : "--metrics"
        do {
            let channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { [self] channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                        try channel.pipeline.syncOperations.addHandler(HTTPEndpointHandler(endpoint: self))
                    }
                }
                .bind(host: host, port: port).get()
            self.channel = channel
        } catch {
            throw ControlServerError(description: "\(option) \(host):\(port): \(error)")
        }
        let paths = content == .statusPages ? "/, /status.json, /transitions.json, /audit.json, /metrics" : "/metrics"
        logger.info("HTTP listening", metadata: ["address": "\(host):\(port)", "paths": "\(paths)"])
    }

    func stop() async { try? await channel?.close().get() }

    struct Reply {
        var status: HTTPResponseStatus
        var contentType: String
        var body: [UInt8]
    }

    /// The answer to GET `path` (query string already removed).
    func reply(to path: String) async -> Reply {
        switch (content, path) {
        case (_, "/metrics"):
            return Reply(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: await metrics.render())
        case (.statusPages, "/"), (.statusPages, "/index.html"):
            return Reply(status: .ok, contentType: "text/html; charset=utf-8", body: Array(StatusPage.html.utf8))
        case (.statusPages, "/status.js"):
            return Reply(status: .ok, contentType: "text/javascript; charset=utf-8", body: Array(StatusPage.script.utf8))
        case (.statusPages, "/status.css"):
            return Reply(status: .ok, contentType: "text/css; charset=utf-8", body: Array(StatusPage.style.utf8))
        case (.statusPages, "/status.json"):
            return Reply(status: .ok, contentType: "application/json", body: Array(StatusJSON.encode(await agent.statusReport())))
        case (.statusPages, "/audit.json"):
            return auditReply()
        case (.statusPages, "/transitions.json"):
            return Reply(status: .ok, contentType: "application/json",
                         body: Array(TransitionStatus.encode(await agent.recentTransitions())))
        case (.metricsOnly, _):
            return Reply(status: .notFound, contentType: "text/plain; charset=utf-8",
                         body: Array("only /metrics is served here (lbd --http serves the status page)\n".utf8))
        case (.statusPages, _):
            return Reply(status: .notFound, contentType: "text/plain; charset=utf-8",
                         body: Array("not found: / (status page), /status.json, /transitions.json, /audit.json, /metrics\n".utf8))
        }
    }

    /// The last ten audit entries, newest last; an unreadable trail is a 500 with the reason.
    private func auditReply() -> Reply {
        do {
            let entries = try audit.entries(since: nil).entries.suffix(10)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            return Reply(status: .ok, contentType: "application/json", body: Array(try encoder.encode(Array(entries))))
        } catch {
            return Reply(status: .internalServerError, contentType: "text/plain; charset=utf-8", body: Array("\(error)\n".utf8))
        }
    }

    /// ADDRESS:PORT with a literal address (IPv6 as [::1]:9780), or PORT alone for 127.0.0.1.
    static func parseEndpoint(_ text: String) -> (host: String, port: Int)? {
        if let port = Int(text), (1...65535).contains(port) { return ("127.0.0.1", port) }
        guard let colon = text.lastIndex(of: ":"),
              let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else { return nil }
        let host = text[..<colon].trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        guard IPAddress(host) != nil else { return nil }
        return (host, port)
    }
}

private final class HTTPEndpointHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let endpoint: HTTPEndpoint
    private var head: HTTPRequestHead?

    init(endpoint: HTTPEndpoint) { self.endpoint = endpoint }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            let eventLoop = context.eventLoop
            guard head.method == .GET || head.method == .HEAD else {
                let reply = HTTPEndpoint.Reply(status: .methodNotAllowed, contentType: "text/plain; charset=utf-8",
                                               body: Array("read-only: GET only (changes are made with lbctl)\n".utf8))
                Self.respond(loopBound.value, reply, includeBody: true)
                return
            }
            let path = String(head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
            let endpoint = self.endpoint, includeBody = head.method == .GET
            Task {
                let reply = await endpoint.reply(to: path)
                eventLoop.execute { Self.respond(loopBound.value, reply, includeBody: includeBody) }
            }
        }
    }

    private static func respond(_ context: ChannelHandlerContext, _ reply: HTTPEndpoint.Reply, includeBody: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: reply.contentType)
        headers.add(name: "Content-Length", value: "\(reply.body.count)")
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        // The page loads only what lbd itself serves: no CDN, no inline script, no framing by another site.
        headers.add(name: "Content-Security-Policy",
                    value: "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'")
        headers.add(name: "Connection", value: "close")
        context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: reply.status, headers: headers))), promise: nil)
        if includeBody {
            context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: reply.body)))), promise: nil)
        }
        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }
}
