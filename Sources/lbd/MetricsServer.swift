import Foundation
import LBConfig
import LBAgent
import LBControl
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// The Prometheus endpoint (`lbd --metrics ADDRESS:PORT`): GET /metrics. Values are read when scraped, from the
/// same status lbctl shows plus the kernel's IPVS counters, into a swift-prometheus registry. The read is a
/// snapshot taken on the agent's queue: the event loop that serves the request never waits on netlink.
final class MetricsServer: @unchecked Sendable {
    private let registry = PrometheusCollectorRegistry()
    private let agent: Agent
    private let logger: Logger
    private var channel: Channel?
    private let lock = NSLock()
    /// service → server → (last check duration in seconds, passed)
    private var checks: [String: [String: (Double, Bool)]] = [:]

    init(agent: Agent, logger: Logger) {
        self.agent = agent
        self.logger = logger
    }

    func recordCheck(service: String, server: String, seconds: Double, passed: Bool) {
        lock.lock()
        checks[service, default: [:]][server] = (seconds, passed)
        lock.unlock()
    }

    func start(host: String, port: Int, group: EventLoopGroup) async throws {
        do {
            try await bind(host: host, port: port, group: group)
        } catch {
            throw ControlServerError(description: "metrics endpoint \(host):\(port): \(error)")
        }
    }

    private func bind(host: String, port: Int, group: EventLoopGroup) async throws {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHandler(server: self))
                }
            }
            .bind(host: host, port: port).get()
        self.channel = channel
        logger.info("metrics listening", metadata: ["address": "\(host):\(port)", "path": "/metrics"])
    }

    func stop() async { try? await channel?.close().get() }

    /// The text exposition of every metric, refreshed now.
    func render() async -> [UInt8] {
        let status = await agent.statusReport()
        let ipvs = await agent.ipvsCounters()
        let checks = lock.withLock { self.checks }
        for service in status {
            let serviceLabels = [("service", service.name), ("mode", service.mode)]
            registry.makeGauge(name: "lb_virtual_service_up", labels: serviceLabels,
                               help: "1 if every real server can take traffic, 0.5 degraded, 0 none").set(
                service.state == "up" ? 1 : service.state == "degraded" ? 0.5 : 0)
            for server in service.servers {
                let labels = [("service", service.name), ("server", server.name)]
                registry.makeGauge(name: "lb_real_server_healthy", labels: labels, help: "1 passing its health check (or unchecked), 0 failing")
                    .set(to: server.health == "down" ? 0.0 : 1.0)
                registry.makeGauge(name: "lb_real_server_admin_online", labels: labels, help: "1 online, 0 drained or halted by an operator")
                    .set(to: server.admin == .online ? 1.0 : 0.0)
                registry.makeGauge(name: "lb_real_server_weight", labels: labels, help: "weight in effect")
                    .set(Double(server.weight))
                registry.makeGauge(name: "lb_real_server_active_connections", labels: labels, help: "open connections")
                    .set(Double(server.activeConnections))
                registry.makeGauge(name: "lb_real_server_connections", labels: labels,
                                   help: "connections since start (Layer 7) or since the IPVS service was added (Layer 4)")
                    .set(Double(server.totalConnections))
                registry.makeGauge(name: "lb_real_server_bytes_to_server", labels: labels, help: "bytes sent to the real server")
                    .set(Double(server.bytesToServer))
                registry.makeGauge(name: "lb_real_server_bytes_from_server", labels: labels, help: "bytes received from the real server")
                    .set(Double(server.bytesFromServer))
                if let (seconds, _) = checks[service.name]?[server.name] {
                    registry.makeGauge(name: "lb_health_check_seconds", labels: labels, help: "duration of the last health check")
                        .set(seconds)
                }
            }
        }
        for (service, counters) in ipvs {
            let labels = [("virtual_service", service)]
            registry.makeGauge(name: "lb_ipvs_connections", labels: labels, help: "IPVS connections scheduled").set(Double(counters.connections))
            registry.makeGauge(name: "lb_ipvs_in_bytes", labels: labels, help: "bytes from clients").set(Double(counters.incomingBytes))
            registry.makeGauge(name: "lb_ipvs_out_bytes", labels: labels, help: "bytes to clients").set(Double(counters.outgoingBytes))
            registry.makeGauge(name: "lb_ipvs_in_packets", labels: labels, help: "packets from clients").set(Double(counters.incomingPackets))
            registry.makeGauge(name: "lb_ipvs_out_packets", labels: labels, help: "packets to clients").set(Double(counters.outgoingPackets))
        }
        return registry.emitToBuffer()
    }
}

private final class MetricsHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let server: MetricsServer
    private var path = ""

    init(server: MetricsServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): path = head.uri
        case .body: break
        case .end:
            let found = path == "/metrics"
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            let server = self.server
            let eventLoop = context.eventLoop
            Task {
                let body = found ? await server.render() : Array("only /metrics is served here\n".utf8)
                eventLoop.execute { Self.respond(loopBound.value, found: found, body: body) }
            }
        }
    }

    private static func respond(_ context: ChannelHandlerContext, found: Bool, body: [UInt8]) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4" : "text/plain")
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Connection", value: "close")
        context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: found ? .ok : .notFound, headers: headers))), promise: nil)
        context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }
}
