import Foundation
import LBConfig
import LBAgent
import LBControl
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// The Prometheus text behind GET /metrics (`lbd --metrics` or `--http`, served by `HTTPEndpoint`). Values are read
/// when scraped, from the same status lbctl shows plus the kernel's IPVS counters, into a swift-prometheus
/// registry. The read is a snapshot taken on the agent's queue: the event loop that serves the request never
/// waits on netlink.
final class PrometheusMetrics: @unchecked Sendable {
    private let registry = PrometheusCollectorRegistry()
    private let agent: Agent
    private let lock = NSLock()
    /// service → server → (last check duration in seconds, passed)
    private var checks: [String: [String: (Double, Bool)]] = [:]

    init(agent: Agent) {
        self.agent = agent
    }

    func recordCheck(service: String, server: String, seconds: Double, passed: Bool) {
        lock.lock()
        checks[service, default: [:]][server] = (seconds, passed)
        lock.unlock()
        // A count, not only the last result: a server that fails one check in ten never changes state, and a
        // script can wait for the next checks to have run.
        registry.makeCounter(name: "lb_health_checks_total",
                             labels: [("service", service), ("server", server), ("result", passed ? "passed" : "failed")],
                             help: "health checks run since lbd started, by result").increment()
    }

    /// The text exposition of every metric, refreshed now.
    func render() async -> [UInt8] {
        let status = await agent.statusReport()
        let ipvs = await agent.ipvsCounters()
        let pair = await agent.pairStatus()
        let checks = lock.withLock { self.checks }
        let drift = await agent.driftCheckCounts()
        registry.makeGauge(name: "lb_drift_checks", help: "periodic checks of the kernel's state against the config since lbd started")
            .set(Double(drift.checks))
        registry.makeGauge(name: "lb_drift_repairs", help: "drift checks that found IPVS, a VIP address or lb's netfilter chains changed, and repaired them")
            .set(Double(drift.repairs))
        if let pair {
            // One series per role, 1 for the one this node is in.
            for role in ["starting", "master", "backup", "fault", "stopped"] {
                registry.makeGauge(name: "lb_ha_role", labels: [("node", pair.node), ("role", role)],
                                   help: "1 for this node's role in the pair (keepalived's VRRP state)")
                    .set(to: pair.role == role ? 1.0 : 0.0)
            }
            registry.makeGauge(name: "lb_ha_standby", labels: [("node", pair.node)], help: "1 while lbctl ha standby is in force")
                .set(to: pair.standby ? 1.0 : 0.0)
            registry.makeGauge(name: "lb_ha_transitions", labels: [("node", pair.node)], help: "role transitions since lbd started")
                .set(Double(pair.transitions))
            registry.makeGauge(name: "lb_ha_peer_reachable", labels: [("peer", pair.peer)],
                               help: "1 if a valid message from the peer arrived in the last 3 seconds")
                .set(to: pair.peerReachable ? 1.0 : 0.0)
            registry.makeGauge(name: "lb_ha_configs_match", labels: [("peer", pair.peer)],
                               help: "0 if the peer runs other virtual services than this node (1 while they match or before the peer is heard)")
                .set(to: pair.configsMatch == false ? 0.0 : 1.0)
            registry.makeGauge(name: "lb_ha_peer_messages_refused", labels: [("peer", pair.peer)],
                               help: "peer messages refused (bad MAC, replayed, stale, wrong sender) since lbd started")
                .set(Double(pair.refusedPeerMessages))
        }
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
                registry.makeGauge(name: "lb_real_server_configured_weight", labels: labels, help: "weight in the config")
                    .set(Double(server.configuredWeight))
                // One series per state, 1 for the one the server is in: checking, up, down, drain, halt, unchecked.
                for state in ["checking", "up", "down", "drain", "halt", "unchecked"] {
                    registry.makeGauge(name: "lb_real_server_state", labels: labels + [("state", state)],
                                       help: "1 for the state the real server is in (as lbctl status shows it)")
                        .set(to: server.state == state ? 1.0 : 0.0)
                }
                registry.makeGauge(name: "lb_real_server_pinned_sessions", labels: labels,
                                   help: "clients pinned to the server (cookie or source-IP entry) seen in the last ten minutes")
                    .set(Double(server.sessions))
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
