import LBConfig
import LBRuntime

/// lbctl ↔ lbd over the control socket: one JSON object per line each way, one request per connection.
public enum ControlProtocol {
    public static let defaultSocketPath = "/run/lb/lbd.sock"
    /// lbd answers every request within this many seconds, if only to say the change is still being applied.
    public static let answerDeadline = 30
    /// lbctl waits this long for the answer: the deadline plus time to deliver it, so lbd always has the last word.
    public static let clientTimeout = answerDeadline + 5
    /// A connection gets this long to send its one request line.
    public static let requestReadTimeout = 5
    /// The longest request line lbd reads (requests are small JSON objects).
    public static let maximumRequestBytes = 64 * 1024
}

public struct ControlRequest: Codable, Equatable, Sendable {
    public enum Command: String, Codable, Sendable {
        case status, drain, halt, online, reload, mode
        /// The audit trail, answered by lbd itself (STATE_DIR/audit.log), not by the agent.
        case audit
        /// A pair: hand the master role to the peer and keep out of it (maintenance), and undo that.
        case haStandby = "ha-standby"
        case haResume = "ha-resume"

        /// The commands that change something; each is recorded in the audit trail.
        public var isOperatorAction: Bool {
            switch self {
            case .drain, .halt, .online, .reload, .mode, .haStandby, .haResume: return true
            case .status, .audit: return false
            }
        }
    }
    public var command: Command
    /// drain / halt / online: the virtual service (nil with `server` alone: that server in every service).
    public var service: String?
    public var server: String?
    /// mode: the forwarding mode to switch `service` to.
    public var mode: String?
    /// audit: only entries at or after this time (ISO 8601, as AuditTime writes it).
    public var since: String?

    public init(command: Command, service: String? = nil, server: String? = nil, mode: String? = nil,
                since: String? = nil) {
        self.command = command
        self.service = service
        self.server = server
        self.mode = mode
        self.since = since
    }
}

public struct ControlResponse: Codable, Equatable, Sendable {
    public var ok: Bool
    /// What went wrong (ok == false), or what was done.
    public var message: String?
    public var status: [ServiceStatus]?
    /// audit: the entries asked for, oldest first.
    public var audit: [AuditEntry]?
    /// status, on a node of a pair: its role, the peer, the last transition.
    public var pair: PairReport?

    public init(ok: Bool, message: String? = nil, status: [ServiceStatus]? = nil, audit: [AuditEntry]? = nil,
                pair: PairReport? = nil) {
        self.pair = pair
        self.ok = ok
        self.message = message
        self.status = status
        self.audit = audit
    }
}

/// One VIP as `lbctl status` shows it.
public struct ServiceStatus: Codable, Equatable, Sendable {
    public var name: String
    public var mode: String
    public var vip: String
    public var ports: String
    public var transport: String
    /// up (every server usable), degraded, down (none usable).
    public var state: String
    public var servers: [ServerStatus]

    public init(name: String, mode: String, vip: String, ports: String, transport: String, state: String, servers: [ServerStatus]) {
        self.name = name
        self.mode = mode
        self.vip = vip
        self.ports = ports
        self.transport = transport
        self.state = state
        self.servers = servers
    }
}

public struct ServerStatus: Codable, Equatable, Sendable {
    public var name: String
    public var address: String
    /// checking (no result yet), up, down, or unchecked (health_check type none).
    public var health: String
    public var admin: AdminState
    /// What the server does for the service now: checking, up, down, drain, halt (or unchecked).
    public var state: String
    /// Why: the reason of the last health transition ("connection refused (3 checks failed in a row)").
    public var reason: String?
    /// When the last health transition happened (ISO 8601, UTC).
    public var since: String?
    /// The weight in effect (0 while draining or down); `configuredWeight` is the config's.
    public var weight: Int
    public var configuredWeight: Int
    /// What is checked: "http-get 10.20.1.11:80", "none".
    public var check: String
    public var activeConnections: Int
    /// Connections since start (Layer 7) or since the IPVS service was added or zeroed (Layer 4).
    public var totalConnections: Int
    /// Bytes sent to / received from the server: IPVS's counters (Layer 4); for the proxy, of connections as they
    /// pass each megabyte and when they end.
    public var bytesToServer: UInt64
    public var bytesFromServer: UInt64
    /// Layer 7: clients pinned to the server (persistence cookie or stick entry) seen in the last ten minutes — what a
    /// draining server still holds besides its open connections.
    public var sessions: Int

    enum CodingKeys: String, CodingKey {
        case name, address, health, admin, state, reason, since, weight, check
        case configuredWeight = "configured_weight"
        case activeConnections = "active_connections"
        case totalConnections = "total_connections"
        case bytesToServer = "bytes_to_server"
        case bytesFromServer = "bytes_from_server"
        case sessions
    }

    public init(name: String, address: String, health: String, admin: AdminState, weight: Int, activeConnections: Int,
                totalConnections: Int, bytesToServer: UInt64 = 0, bytesFromServer: UInt64 = 0, state: String? = nil,
                reason: String? = nil, since: String? = nil, configuredWeight: Int? = nil, check: String = "none",
                sessions: Int = 0) {
        self.sessions = sessions
        self.state = state ?? health
        self.reason = reason
        self.since = since
        self.configuredWeight = configuredWeight ?? weight
        self.check = check
        self.bytesToServer = bytesToServer
        self.bytesFromServer = bytesFromServer
        self.name = name
        self.address = address
        self.health = health
        self.admin = admin
        self.weight = weight
        self.activeConnections = activeConnections
        self.totalConnections = totalConnections
    }
}

/// A node of a pair as `lbctl status` shows it.
public struct PairReport: Codable, Equatable, Sendable {
    public var node: String
    /// master, backup, fault, stopped or starting (keepalived's view).
    public var role: String
    /// `lbctl ha standby` is in force.
    public var standby: Bool
    public var peer: String
    public var peerAddress: String
    public var peerReachable: Bool
    /// The peer's role as it last said, if heard.
    public var peerRole: String?
    /// Seconds since the peer was last heard.
    public var peerLastHeardSecondsAgo: Double?
    /// nil until the peer was heard.
    public var configsMatch: Bool?
    public var lastTransition: String?
    public var lastTransitionTime: String?
    public var transitions: Int
    public var refusedPeerMessages: Int

    public init(node: String, role: String, standby: Bool, peer: String, peerAddress: String, peerReachable: Bool,
                peerRole: String?, peerLastHeardSecondsAgo: Double?, configsMatch: Bool?, lastTransition: String?,
                lastTransitionTime: String?, transitions: Int, refusedPeerMessages: Int) {
        self.node = node
        self.role = role
        self.standby = standby
        self.peer = peer
        self.peerAddress = peerAddress
        self.peerReachable = peerReachable
        self.peerRole = peerRole
        self.peerLastHeardSecondsAgo = peerLastHeardSecondsAgo
        self.configsMatch = configsMatch
        self.lastTransition = lastTransition
        self.lastTransitionTime = lastTransitionTime
        self.transitions = transitions
        self.refusedPeerMessages = refusedPeerMessages
    }
}
