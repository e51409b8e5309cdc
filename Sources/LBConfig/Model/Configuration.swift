/// The whole declarative description lbd makes the machine match.
///
/// Model values hold no source positions, so two loads of the same file compare equal and a planner can diff them;
/// positions live in `SourceMap`, next to the model, for diagnostics.
public struct Configuration: Hashable, Sendable {
    public var virtualServices: [VirtualService]
    /// Kernel-wide IPVS settings (Layer 4).
    public var ipvs: IPVSSettings
    /// A pair of lbd nodes; nil: this node works alone.
    public var highAvailability: HighAvailability?

    public init(virtualServices: [VirtualService], ipvs: IPVSSettings = IPVSSettings(),
                highAvailability: HighAvailability? = nil) {
        self.virtualServices = virtualServices
        self.ipvs = ipvs
        self.highAvailability = highAvailability
    }
}

/// Settings of the kernel's IPVS that are not per service.
public struct IPVSSettings: Hashable, Sendable {
    /// Idle timeouts of IPVS connection entries; nil leaves the kernel's value (TCP 900 s, FIN 120 s, UDP 300 s).
    public var tcpTimeout: Duration?
    public var tcpFinTimeout: Duration?
    public var udpTimeout: Duration?
    /// Connection synchronization with a peer load balancer, so a fail-over keeps established connections.
    public var syncDaemon: SyncDaemon?

    public struct SyncDaemon: Hashable, Sendable {
        public enum Role: String, CaseIterable, Hashable, Sendable { case master, backup }
        public var role: Role
        public var interface: String
        public var syncID: Int
        public init(role: Role, interface: String, syncID: Int = 0) {
            self.role = role
            self.interface = interface
            self.syncID = syncID
        }
    }

    public init(tcpTimeout: Duration? = nil, tcpFinTimeout: Duration? = nil, udpTimeout: Duration? = nil,
                syncDaemon: SyncDaemon? = nil) {
        self.tcpTimeout = tcpTimeout
        self.tcpFinTimeout = tcpFinTimeout
        self.udpTimeout = udpTimeout
        self.syncDaemon = syncDaemon
    }
}

/// What IPVS does with a real server whose health check fails.
public enum ServerFailureAction: String, CaseIterable, Hashable, Sendable {
    /// Weight 0: no new connections; established ones run to their end (a study transfer in progress finishes).
    case drain
    /// The destination leaves the service: the kernel stops forwarding to it, established connections included.
    case remove
}

/// How traffic for a VIP reaches its real servers.
public enum ForwardingMode: String, CaseIterable, Hashable, Sendable {
    case l4DirectRouting = "l4-dr"
    case l4NAT = "l4-nat"
    case l4SNAT = "l4-snat"
    case l7HTTP = "l7-http"
    case l7TCP = "l7-tcp"

    /// Forwarded by the kernel's IPVS; packets never reach lbd.
    public var isLayer4: Bool { !isLayer7 }
    /// Terminated and re-originated by lbd's own proxy.
    public var isLayer7: Bool { self == .l7HTTP || self == .l7TCP }
}

public enum TransportProtocol: String, CaseIterable, Hashable, Sendable {
    case tcp, udp
}

/// Names follow the config file; `ipvsName` is what the kernel calls the same algorithm.
public enum Scheduler: String, CaseIterable, Hashable, Sendable {
    case roundRobin = "roundrobin"
    case weightedRoundRobin = "weighted-roundrobin"
    case leastConnections = "leastconn"
    case weightedLeastConnections = "weighted-leastconn"
    case sourceHash = "source-hash"
    case maglev = "maglev"

    public var ipvsName: String {
        switch self {
        case .roundRobin: return "rr"
        case .weightedRoundRobin: return "wrr"
        case .leastConnections: return "lc"
        case .weightedLeastConnections: return "wlc"
        case .sourceHash: return "sh"
        case .maglev: return "mh"
        }
    }
}

/// Keeps one client on one real server.
public enum Persistence: Hashable, Sendable {
    case none
    /// Same client address → same real server while the entry is younger than `timeout`.
    case sourceIP(timeout: Duration)
    /// lbd inserts a cookie naming the server by an opaque id (l7-http only).
    case httpCookie(name: String)

    public static let defaultSourceIPTimeout: Duration = .seconds(300)
    public static let defaultCookieName = "LBSRV"

    public var typeName: String {
        switch self {
        case .none: return "none"
        case .sourceIP: return "source-ip"
        case .httpCookie: return "http-cookie"
        }
    }
}

/// A host:port outside the VIP's pool, e.g. the sorry server.
public struct Endpoint: Hashable, Sendable {
    public var address: IPAddress
    /// nil: the port the client connected to on the VIP.
    public var port: UInt16?

    public init(address: IPAddress, port: UInt16? = nil) {
        self.address = address
        self.port = port
    }
}

public struct RealServer: Hashable, Sendable {
    public static let defaultWeight = 100

    public var name: String
    public var address: IPAddress
    /// nil: the port the client connected to on the VIP (no port translation).
    public var port: UInt16?
    public var weight: Int
    /// This server's own TLS settings towards it, replacing the service's `backend_tls` (e.g. another name).
    public var backendTLS: BackendTLS?

    public init(name: String, address: IPAddress, port: UInt16? = nil, weight: Int = RealServer.defaultWeight,
                backendTLS: BackendTLS? = nil) {
        self.name = name
        self.address = address
        self.port = port
        self.weight = weight
        self.backendTLS = backendTLS
    }

    /// The port this server is reached on when a client came in on `vipPort`.
    public func port(forVIPPort vipPort: UInt16) -> UInt16 { port ?? vipPort }
}

/// TLS from lbd to a real server (re-encryption after termination, or TLS for l7-tcp), and for its https-get check.
public struct BackendTLS: Hashable, Sendable {
    public enum Verify: String, Hashable, Sendable, CaseIterable {
        /// The server's certificate must chain to `ca_file` (or the system's CAs) and name the server.
        case certificate
        /// No verification: lab set-ups with self-signed certificates only.
        case none
    }

    public var verify: Verify
    /// PEM file of the CAs that sign the real servers' certificates; nil: the system's store.
    public var caFile: String?
    /// Sent as SNI and checked against the certificate; nil: the certificate must name the server's IP address.
    public var serverName: String?
    /// A client certificate and key, for servers that ask for one.
    public var certificatePath: String?
    public var keyPath: String?

    public init(verify: Verify = .certificate, caFile: String? = nil, serverName: String? = nil,
                certificatePath: String? = nil, keyPath: String? = nil) {
        self.verify = verify
        self.caFile = caFile
        self.serverName = serverName
        self.certificatePath = certificatePath
        self.keyPath = keyPath
    }
}

public struct TLSSettings: Hashable, Sendable {
    public var certificatePath: String
    public var keyPath: String
    /// Further certificates, each served to clients asking (SNI) for a name it covers.
    public var sniCertificates: [CertificatePair]

    public struct CertificatePair: Hashable, Sendable {
        public var certificatePath: String
        public var keyPath: String

        public init(certificatePath: String, keyPath: String) {
            self.certificatePath = certificatePath
            self.keyPath = keyPath
        }
    }

    public init(certificatePath: String, keyPath: String, sniCertificates: [CertificatePair] = []) {
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self.sniCertificates = sniCertificates
    }
}

public struct VirtualService: Hashable, Sendable {
    public var name: String
    public var address: IPAddress
    public var ports: [PortRange]
    public var transport: TransportProtocol
    public var mode: ForwardingMode
    public var scheduler: Scheduler
    public var persistence: Persistence
    public var healthCheck: HealthCheck
    public var realServers: [RealServer]
    public var fallback: Endpoint?
    public var tls: TLSSettings?
    /// TLS towards the real servers (each may override it).
    public var backendTLS: BackendTLS?
    /// l7-http only: append the client address to X-Forwarded-For.
    public var forwardedFor: Bool
    /// Layer 7 modes only.
    public var timeouts: ProxyTimeouts
    /// Layer 7 modes only.
    public var limits: ProxyLimits
    /// The interface lb puts the VIP address on; nil: lb leaves the address to something else (e.g. keepalived).
    public var interface: String?
    /// Layer 4 modes only.
    public var onServerFailure: ServerFailureAction
    /// Layer 7 only: connect to the real servers from the client's own address (IP_TRANSPARENT), so they see it.
    public var transparent: Bool
    /// Layer 4 source-IP persistence granularity: clients in the same network share a server (IPv4 netmask).
    public var persistenceNetmask: IPAddress?

    public init(
        name: String, address: IPAddress, ports: [PortRange], transport: TransportProtocol = .tcp,
        mode: ForwardingMode, scheduler: Scheduler = .roundRobin, persistence: Persistence = .none,
        healthCheck: HealthCheck, realServers: [RealServer], fallback: Endpoint? = nil,
        tls: TLSSettings? = nil, forwardedFor: Bool = false, timeouts: ProxyTimeouts = .default,
        limits: ProxyLimits = .default, interface: String? = nil, onServerFailure: ServerFailureAction = .drain,
        persistenceNetmask: IPAddress? = nil, transparent: Bool = false, backendTLS: BackendTLS? = nil
    ) {
        self.backendTLS = backendTLS
        self.transparent = transparent
        self.interface = interface
        self.onServerFailure = onServerFailure
        self.persistenceNetmask = persistenceNetmask
        self.name = name
        self.address = address
        self.ports = ports
        self.transport = transport
        self.mode = mode
        self.scheduler = scheduler
        self.persistence = persistence
        self.healthCheck = healthCheck
        self.realServers = realServers
        self.fallback = fallback
        self.tls = tls
        self.forwardedFor = forwardedFor
        self.timeouts = timeouts
        self.limits = limits
    }
}

extension VirtualService {
    /// The TLS settings towards one of this service's real servers: its own, or the service's.
    public func backendTLS(for server: RealServer) -> BackendTLS? { server.backendTLS ?? backendTLS }
}
