/// Two lbd nodes acting as one: keepalived (VRRP) moves every VIP and floating address between them, the IPVS sync
/// daemon copies the connection table, and the nodes replicate operator state over an authenticated peer channel.
public struct HighAvailability: Hashable, Sendable {
    public static let defaultPeerPort: UInt16 = 9977

    /// VRRP router id, the same on both nodes (1-255).
    public var virtualRouterID: Int
    public var advertInterval: Duration
    /// Whether a node with the higher priority takes the master role back when it returns.
    public var preempt: Bool
    /// Exactly two.
    public var nodes: [Node]
    /// Addresses that move with the VIPs, such as the real servers' gateway in NAT modes.
    public var floatingAddresses: [FloatingAddress]
    /// The link the IPVS connection-sync daemons use; nil: no connection sync.
    public var connectionSyncInterface: String?
    public var peerPort: UInt16
    public var peerSecretFile: String

    public struct Node: Hashable, Sendable {
        public var name: String
        public var address: IPAddress
        public var interface: String
        public var priority: Int
        public init(name: String, address: IPAddress, interface: String, priority: Int) {
            self.name = name
            self.address = address
            self.interface = interface
            self.priority = priority
        }
    }

    public struct FloatingAddress: Hashable, Sendable {
        public var address: IPAddress
        public var prefixLength: Int
        public var interface: String
        public init(address: IPAddress, prefixLength: Int, interface: String) {
            self.address = address
            self.prefixLength = prefixLength
            self.interface = interface
        }
    }

    public init(virtualRouterID: Int, advertInterval: Duration = .seconds(1), preempt: Bool = false, nodes: [Node],
                floatingAddresses: [FloatingAddress] = [], connectionSyncInterface: String? = nil,
                peerPort: UInt16 = HighAvailability.defaultPeerPort, peerSecretFile: String) {
        self.virtualRouterID = virtualRouterID
        self.advertInterval = advertInterval
        self.preempt = preempt
        self.nodes = nodes
        self.floatingAddresses = floatingAddresses
        self.connectionSyncInterface = connectionSyncInterface
        self.peerPort = peerPort
        self.peerSecretFile = peerSecretFile
    }

    public func node(named name: String) -> Node? { nodes.first { $0.name == name } }
    /// The other node of the pair.
    public func peer(of name: String) -> Node? { nodes.first { $0.name != name } }
}
