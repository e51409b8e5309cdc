import LBConfig

/// A VIP address on a named interface, as a host route (/32, /128): the VIP is answered for on the link without
/// claiming a subnet.
public struct VIPAddress: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    public var interface: String
    public var address: IPAddress

    public init(interface: String, address: IPAddress) {
        self.interface = interface
        self.address = address
    }

    public var prefixLength: Int { address.family == .ipv4 ? 32 : 128 }
    public var description: String { "\(address)/\(prefixLength) on \(interface)" }

    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.interface, lhs.address) < (rhs.interface, rhs.address) }

    enum CodingKeys: String, CodingKey { case interface, address }
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        interface = try container.decode(String.self, forKey: .interface)
        let text = try container.decode(String.self, forKey: .address)
        guard let address = IPAddress(text) else {
            throw DecodingError.dataCorruptedError(forKey: .address, in: container, debugDescription: "not an address: \(text)")
        }
        self.address = address
    }
    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(interface, forKey: .interface)
        try container.encode(address.description, forKey: .address)
    }
}

/// Pure planning of VIP addresses: add what is missing, remove only what lb itself added and no longer wants.
public enum VIPAddressPlanner {
    /// The addresses the config puts on interfaces (services without `interface` leave their VIP to others).
    public static func desired(for services: [VirtualService]) -> Set<VIPAddress> {
        Set(services.compactMap { service in service.interface.map { VIPAddress(interface: $0, address: service.address) } })
    }

    public struct Plan: Equatable, Sendable {
        /// Missing: lb adds them (and then owns them).
        public var add: [VIPAddress]
        /// Added by lb earlier and no longer in the config.
        public var remove: [VIPAddress]
        /// Wanted and already present without lb having added them: used as they are, never removed by lb.
        public var foreign: [VIPAddress]
        /// Recorded as lb's but gone from the host (someone removed them); they drop out of the record.
        public var vanished: [VIPAddress]
    }

    public static func plan(desired: Set<VIPAddress>, present: Set<VIPAddress>, owned: Set<VIPAddress>) -> Plan {
        Plan(add: desired.subtracting(present).sorted(),
             remove: owned.subtracting(desired).intersection(present).sorted(),
             foreign: desired.intersection(present).subtracting(owned).sorted(),
             vanished: owned.subtracting(desired).subtracting(present).sorted())
    }
}
