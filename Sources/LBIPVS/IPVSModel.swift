import LBConfig

/// One IPVS virtual service as the kernel holds it: the key (protocol, address, port — or a firewall mark) and its
/// settings.
public struct IPVSService: Hashable, Sendable, CustomStringConvertible {
    public enum TransportProtocol: UInt16, Sendable { case tcp = 6, udp = 17 }

    public var transport: TransportProtocol
    /// For a firewall-mark service only the family counts (the kernel keys it by mark and family).
    public var address: IPAddress
    public var port: UInt16
    /// Non-zero: a firewall-mark service (packets marked by netfilter), keyed by mark and address family.
    public var fwmark: UInt32
    /// IPVS's scheduler name ("rr", "wlc", "sh", "mh", ...).
    public var scheduler: String
    /// Persistence timeout in seconds; nil = not persistent.
    public var persistenceTimeout: UInt32?
    /// Persistence granularity: for IPv4 a netmask (network order, 255.255.255.255 by default), for IPv6 a prefix
    /// length (128 by default).
    public var persistenceNetmask: UInt32

    public init(transport: TransportProtocol, address: IPAddress, port: UInt16, scheduler: String,
                persistenceTimeout: UInt32? = nil, persistenceNetmask: UInt32? = nil, fwmark: UInt32 = 0) {
        self.transport = transport
        self.fwmark = fwmark
        self.address = address
        self.port = port
        self.scheduler = scheduler
        self.persistenceTimeout = persistenceTimeout
        // The kernel's defaults: an all-ones IPv4 mask; for IPv6 a prefix length, 128.
        self.persistenceNetmask = persistenceNetmask ?? (address.family == .ipv4 ? 0xFFFF_FFFF : 128)
    }

    /// A firewall-mark service of the given family.
    public static func firewallMark(_ mark: UInt32, family: IPAddress.Family, scheduler: String,
                                    persistenceTimeout: UInt32? = nil) -> IPVSService {
        IPVSService(transport: .tcp, address: family == .ipv4 ? .v4(0) : .v6([UInt8](repeating: 0, count: 16)), port: 0,
                    scheduler: scheduler, persistenceTimeout: persistenceTimeout, fwmark: mark)
    }

    /// `10.0.0.1:80/tcp` or `fwmark 5/ipv4`, as errors name it.
    public var description: String { IPVSServiceKey(self).description }
}

/// A real server of an IPVS service.
public struct IPVSDestination: Hashable, Sendable, CustomStringConvertible {
    /// IPVS's forwarding methods (IP_VS_CONN_F_*).
    public enum Forwarding: UInt32, Sendable { case masquerade = 0, local = 1, tunnel = 2, directRoute = 3 }

    public var address: IPAddress
    public var port: UInt16
    public var forwarding: Forwarding
    public var weight: UInt32
    public var upperThreshold: UInt32
    public var lowerThreshold: UInt32

    public init(address: IPAddress, port: UInt16, forwarding: Forwarding, weight: UInt32,
                upperThreshold: UInt32 = 0, lowerThreshold: UInt32 = 0) {
        self.address = address
        self.port = port
        self.forwarding = forwarding
        self.weight = weight
        self.upperThreshold = upperThreshold
        self.lowerThreshold = lowerThreshold
    }

    public var description: String { address.withPort(port) }
}

/// Counters the kernel reports with a dump (a destination's, or a service's totals).
public struct IPVSCounters: Hashable, Sendable {
    public var activeConnections: UInt32 = 0
    public var inactiveConnections: UInt32 = 0
    /// Totals since the service was added or last zeroed (the kernel's 64-bit stats).
    public var connections: UInt64 = 0
    public var incomingPackets: UInt64 = 0
    public var outgoingPackets: UInt64 = 0
    public var incomingBytes: UInt64 = 0
    public var outgoingBytes: UInt64 = 0
    public init() {}
}

/// The kernel's connection timeouts for IPVS entries (`ipvsadm --set tcp tcpfin udp`); 0 = leave as is.
public struct IPVSTimeouts: Hashable, Sendable {
    public var tcp: UInt32
    public var tcpFin: UInt32
    public var udp: UInt32
    public init(tcp: UInt32, tcpFin: UInt32, udp: UInt32) {
        self.tcp = tcp
        self.tcpFin = tcpFin
        self.udp = udp
    }
}

/// A connection-synchronization daemon (state sent to / received from the peer load balancer over multicast).
public struct IPVSSyncDaemon: Hashable, Sendable {
    public enum Role: UInt32, Sendable { case master = 1, backup = 2 }
    public var role: Role
    public var interface: String
    public var syncID: UInt32
    public init(role: Role, interface: String, syncID: UInt32) {
        self.role = role
        self.interface = interface
        self.syncID = syncID
    }
}

/// The kernel's IPVS version and connection hash table size.
public struct IPVSInfo: Hashable, Sendable {
    public var version: UInt32
    public var connectionTableSize: UInt32
    /// `1.2.1`
    public var versionText: String { "\(version >> 16).\((version >> 8) & 0xFF).\(version & 0xFF)" }
}
