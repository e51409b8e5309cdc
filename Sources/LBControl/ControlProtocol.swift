import LBConfig

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
    public enum Command: String, Codable, Sendable { case status, drain, halt, online, reload, mode }
    public var command: Command
    /// drain / halt / online: the virtual service (nil with `server` alone: that server in every service).
    public var service: String?
    public var server: String?
    /// mode: the forwarding mode to switch `service` to.
    public var mode: String?

    public init(command: Command, service: String? = nil, server: String? = nil, mode: String? = nil) {
        self.command = command
        self.service = service
        self.server = server
        self.mode = mode
    }
}

public struct ControlResponse: Codable, Equatable, Sendable {
    public var ok: Bool
    /// What went wrong (ok == false), or what was done.
    public var message: String?
    public var status: [ServiceStatus]?

    public init(ok: Bool, message: String? = nil, status: [ServiceStatus]? = nil) {
        self.ok = ok
        self.message = message
        self.status = status
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
    /// up, down, or unchecked (health_check type none).
    public var health: String
    public var admin: AdminState
    /// The weight in effect (IPVS's own for Layer 4; 0 while draining or down).
    public var weight: Int
    public var activeConnections: Int
    /// Connections since start (Layer 7) or since the IPVS service was added or zeroed (Layer 4).
    public var totalConnections: Int
    /// Bytes sent to / received from the server: IPVS's counters (Layer 4); for the proxy, of connections as they
    /// pass each megabyte and when they end.
    public var bytesToServer: UInt64
    public var bytesFromServer: UInt64

    enum CodingKeys: String, CodingKey {
        case name, address, health, admin, weight
        case activeConnections = "active_connections"
        case totalConnections = "total_connections"
        case bytesToServer = "bytes_to_server"
        case bytesFromServer = "bytes_from_server"
    }

    public init(name: String, address: String, health: String, admin: AdminState, weight: Int, activeConnections: Int,
                totalConnections: Int, bytesToServer: UInt64 = 0, bytesFromServer: UInt64 = 0) {
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
