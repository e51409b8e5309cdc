import LBConfig

/// One IPVS virtual service as the kernel holds it: the key (protocol, address, port) and its settings.
public struct IPVSService: Hashable, Sendable, CustomStringConvertible {
    public enum TransportProtocol: UInt16, Sendable { case tcp = 6, udp = 17 }

    public var transport: TransportProtocol
    public var address: IPAddress
    public var port: UInt16
    /// IPVS's scheduler name ("rr", "wlc", "sh", "mh", ...).
    public var scheduler: String
    /// Persistence timeout in seconds; nil = not persistent.
    public var persistenceTimeout: UInt32?
    /// IPv4 persistence granularity (network-order mask); 255.255.255.255 by default.
    public var persistenceNetmask: UInt32

    public init(transport: TransportProtocol, address: IPAddress, port: UInt16, scheduler: String,
                persistenceTimeout: UInt32? = nil, persistenceNetmask: UInt32 = 0xFFFF_FFFF) {
        self.transport = transport
        self.address = address
        self.port = port
        self.scheduler = scheduler
        self.persistenceTimeout = persistenceTimeout
        self.persistenceNetmask = persistenceNetmask
    }

    /// `10.0.0.1:80/tcp`, as errors name it.
    public var description: String { "\(address.withPort(port))/\(transport == .tcp ? "tcp" : "udp")" }
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

/// Counters the kernel reports with a dump.
public struct IPVSCounters: Hashable, Sendable {
    public var activeConnections: UInt32 = 0
    public var inactiveConnections: UInt32 = 0
    public init() {}
}
