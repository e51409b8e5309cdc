import LBConfig

/// Generic-netlink IPVS commands and attribute numbers, from the kernel's <linux/ip_vs.h>.
public enum IPVSCommand: UInt8, Sendable {
    case newService = 1, setService, deleteService, getService
    case newDestination, setDestination, deleteDestination, getDestination
    case newDaemon, deleteDaemon, getDaemon, setConfig, getConfig, setInfo, getInfo, zero, flush
}

enum CommandAttribute: UInt16 { case service = 1, destination, daemon, timeoutTCP, timeoutTCPFin, timeoutUDP }
enum ServiceAttribute: UInt16 {
    case family = 1, proto, address, port, fwmark, schedulerName, flags, timeout, netmask, stats, peName, stats64
}
enum DestinationAttribute: UInt16 {
    case address = 1, port, forwarding, weight, upperThreshold, lowerThreshold, activeConnections,
         inactiveConnections, persistentConnections, stats, family, stats64
}
enum InfoAttribute: UInt16 { case version = 1, connectionTableSize }
enum DaemonAttribute: UInt16 { case state = 1, interface, syncID }
/// struct ip_vs_stats64 nested attributes.
enum StatsAttribute: UInt16 { case connections = 1, incomingPackets, outgoingPackets, incomingBytes, outgoingBytes }

let IP_VS_SVC_F_PERSISTENT: UInt32 = 0x0001
let AF_INET_: UInt16 = 2
let AF_INET6_: UInt16 = 10

/// Netlink attributes (TLV: 16-bit length, 16-bit type, payload padded to 4 bytes), built and read in pure Swift
/// so the IPVS messages are unit-tested without a kernel.
public struct NetlinkAttributes: Equatable, Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    mutating func put(_ type: UInt16, _ payload: [UInt8]) {
        let length = UInt16(4 + payload.count)
        bytes += withUnsafeBytes(of: length.littleEndian, Array.init)
        bytes += withUnsafeBytes(of: type.littleEndian, Array.init)
        bytes += payload
        bytes += [UInt8](repeating: 0, count: (4 - payload.count % 4) % 4)
    }

    mutating func put(_ type: UInt16, u16 value: UInt16) { put(type, withUnsafeBytes(of: value.littleEndian, Array.init)) }
    mutating func put(_ type: UInt16, u32 value: UInt32) { put(type, withUnsafeBytes(of: value.littleEndian, Array.init)) }
    /// Ports travel in network order.
    mutating func put(_ type: UInt16, be16 value: UInt16) { put(type, withUnsafeBytes(of: value.bigEndian, Array.init)) }
    mutating func put(_ type: UInt16, string: String) { put(type, Array(string.utf8) + [0]) }
    mutating func put(_ type: UInt16, nested: NetlinkAttributes) { put(type, nested.bytes) }

    /// Parses a run of attributes into (type, payload) pairs; nil if the lengths do not add up.
    public static func parse(_ bytes: ArraySlice<UInt8>) -> [(type: UInt16, payload: ArraySlice<UInt8>)]? {
        var result: [(UInt16, ArraySlice<UInt8>)] = []
        var offset = bytes.startIndex
        while offset + 4 <= bytes.endIndex {
            let length = Int(UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8)
            let type = (UInt16(bytes[offset + 2]) | UInt16(bytes[offset + 3]) << 8) & 0x3FFF  // drop nested/byteorder flags
            guard length >= 4, offset + length <= bytes.endIndex else { return nil }
            result.append((type, bytes[(offset + 4)..<(offset + length)]))
            offset += (length + 3) & ~3
        }
        return result
    }
}

/// Encodes and decodes the attribute part of IPVS messages (the generic-netlink header is the transport's).
public enum IPVSCodec {
    static func addressBytes(_ address: IPAddress) -> [UInt8] {
        // union nf_inet_addr: 16 bytes, IPv4 in the first four.
        switch address {
        case .v4(let value): return withUnsafeBytes(of: value.bigEndian, Array.init) + [UInt8](repeating: 0, count: 12)
        case .v6(let bytes): return bytes
        }
    }

    static func family(_ address: IPAddress) -> UInt16 { address.family == .ipv4 ? AF_INET_ : AF_INET6_ }

    /// The key attributes that name a service (enough for delete and for destination commands).
    static func serviceKey(_ service: IPVSService) -> NetlinkAttributes {
        var attributes = NetlinkAttributes()
        attributes.put(ServiceAttribute.family.rawValue, u16: family(service.address))
        if service.fwmark != 0 {
            attributes.put(ServiceAttribute.fwmark.rawValue, u32: service.fwmark)
            return attributes
        }
        attributes.put(ServiceAttribute.proto.rawValue, u16: service.transport.rawValue)
        attributes.put(ServiceAttribute.address.rawValue, addressBytes(service.address))
        attributes.put(ServiceAttribute.port.rawValue, be16: service.port)
        return attributes
    }

    /// A complete service, for add and edit.
    public static func service(_ service: IPVSService) -> NetlinkAttributes {
        var attributes = serviceKey(service)
        attributes.put(ServiceAttribute.schedulerName.rawValue, string: service.scheduler)
        // struct ip_vs_flags { __u32 flags; __u32 mask; }: the mask says which flags this message sets.
        let flags: UInt32 = service.persistenceTimeout == nil ? 0 : IP_VS_SVC_F_PERSISTENT
        attributes.put(ServiceAttribute.flags.rawValue,
                       withUnsafeBytes(of: flags.littleEndian, Array.init) + withUnsafeBytes(of: UInt32.max.littleEndian, Array.init))
        attributes.put(ServiceAttribute.timeout.rawValue, u32: service.persistenceTimeout ?? 0)
        attributes.put(ServiceAttribute.netmask.rawValue, u32: service.persistenceNetmask)
        return attributes
    }

    public static func destination(_ destination: IPVSDestination) -> NetlinkAttributes {
        var attributes = NetlinkAttributes()
        attributes.put(DestinationAttribute.address.rawValue, addressBytes(destination.address))
        attributes.put(DestinationAttribute.port.rawValue, be16: destination.port)
        attributes.put(DestinationAttribute.forwarding.rawValue, u32: destination.forwarding.rawValue)
        attributes.put(DestinationAttribute.weight.rawValue, u32: destination.weight)
        attributes.put(DestinationAttribute.upperThreshold.rawValue, u32: destination.upperThreshold)
        attributes.put(DestinationAttribute.lowerThreshold.rawValue, u32: destination.lowerThreshold)
        attributes.put(DestinationAttribute.family.rawValue, u16: family(destination.address))
        return attributes
    }

    /// SET_CONFIG: the TCP, TCP-FIN and UDP connection timeouts in seconds (0 leaves one unchanged).
    public static func timeouts(_ timeouts: IPVSTimeouts) -> NetlinkAttributes {
        var attributes = NetlinkAttributes()
        attributes.put(CommandAttribute.timeoutTCP.rawValue, u32: timeouts.tcp)
        attributes.put(CommandAttribute.timeoutTCPFin.rawValue, u32: timeouts.tcpFin)
        attributes.put(CommandAttribute.timeoutUDP.rawValue, u32: timeouts.udp)
        return attributes
    }

    /// NEW_DAEMON / DEL_DAEMON: the sync daemon's role, multicast interface and sync id.
    public static func daemon(_ daemon: IPVSSyncDaemon) -> NetlinkAttributes {
        var nested = NetlinkAttributes()
        nested.put(DaemonAttribute.state.rawValue, u32: daemon.role.rawValue)
        nested.put(DaemonAttribute.interface.rawValue, string: daemon.interface)
        nested.put(DaemonAttribute.syncID.rawValue, u32: daemon.syncID)
        var attributes = NetlinkAttributes()
        attributes.put(CommandAttribute.daemon.rawValue, nested: nested)
        return attributes
    }

    /// The attributes of a command message.
    public static func message(service: NetlinkAttributes? = nil, destination: NetlinkAttributes? = nil) -> NetlinkAttributes {
        var attributes = NetlinkAttributes()
        if let service { attributes.put(CommandAttribute.service.rawValue, nested: service) }
        if let destination { attributes.put(CommandAttribute.destination.rawValue, nested: destination) }
        return attributes
    }

    // MARK: Decoding dump replies

    static func u16(_ payload: ArraySlice<UInt8>) -> UInt16? {
        payload.count >= 2 ? UInt16(payload[payload.startIndex]) | UInt16(payload[payload.startIndex + 1]) << 8 : nil
    }
    static func u32(_ payload: ArraySlice<UInt8>) -> UInt32? {
        guard payload.count >= 4 else { return nil }
        return payload.prefix(4).reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }
    static func address(_ payload: ArraySlice<UInt8>, family: UInt16) -> IPAddress? {
        let bytes = Array(payload)
        if family == AF_INET_, bytes.count >= 4 {
            return .v4(bytes.prefix(4).reduce(0) { $0 << 8 | UInt32($1) })
        }
        if family == AF_INET6_, bytes.count >= 16 { return .v6(Array(bytes.prefix(16))) }
        return nil
    }

    /// A service from a GET_SERVICE dump reply (the attributes of one message).
    public static func decodeService(_ message: ArraySlice<UInt8>) -> IPVSService? {
        guard let top = NetlinkAttributes.parse(message),
              let nested = top.first(where: { $0.type == CommandAttribute.service.rawValue }),
              let fields = NetlinkAttributes.parse(nested.payload)
        else { return nil }
        func field(_ attribute: ServiceAttribute) -> ArraySlice<UInt8>? { fields.first { $0.type == attribute.rawValue }?.payload }
        guard let family = field(.family).flatMap(u16), let schedulerBytes = field(.schedulerName) else { return nil }
        let scheduler = String(decoding: schedulerBytes.prefix { $0 != 0 }, as: UTF8.self)
        let flags = field(.flags).flatMap(u32) ?? 0
        let timeout = field(.timeout).flatMap(u32) ?? 0
        let persistence = flags & IP_VS_SVC_F_PERSISTENT != 0 ? timeout : nil
        let netmask = field(.netmask).flatMap(u32)
        if let mark = field(.fwmark).flatMap(u32), mark != 0 {
            guard family == AF_INET_ || family == AF_INET6_ else { return nil }
            var service = IPVSService.firewallMark(mark, family: family == AF_INET_ ? .ipv4 : .ipv6, scheduler: scheduler,
                                                   persistenceTimeout: persistence)
            if let netmask { service.persistenceNetmask = netmask }
            return service
        }
        guard let proto = field(.proto).flatMap(u16), let transport = IPVSService.TransportProtocol(rawValue: proto),
              let addressBytes = field(.address), let address = address(addressBytes, family: family),
              let portBytes = field(.port), portBytes.count >= 2
        else { return nil }
        let port = UInt16(portBytes[portBytes.startIndex]) << 8 | UInt16(portBytes[portBytes.startIndex + 1])
        return IPVSService(transport: transport, address: address, port: port, scheduler: scheduler,
                           persistenceTimeout: persistence, persistenceNetmask: netmask)
    }

    static func u64(_ payload: ArraySlice<UInt8>) -> UInt64? {
        guard payload.count >= 8 else { return nil }
        return payload.prefix(8).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// The 64-bit counters nested in a service or destination (IPVS_*_ATTR_STATS64).
    static func decodeStats(_ payload: ArraySlice<UInt8>?, into counters: inout IPVSCounters) {
        guard let payload, let fields = NetlinkAttributes.parse(payload) else { return }
        func value(_ attribute: StatsAttribute) -> UInt64 { fields.first { $0.type == attribute.rawValue }.flatMap { u64($0.payload) } ?? 0 }
        counters.connections = value(.connections)
        counters.incomingPackets = value(.incomingPackets)
        counters.outgoingPackets = value(.outgoingPackets)
        counters.incomingBytes = value(.incomingBytes)
        counters.outgoingBytes = value(.outgoingBytes)
    }

    /// A service's totals from a GET_SERVICE dump reply.
    public static func decodeServiceCounters(_ message: ArraySlice<UInt8>) -> IPVSCounters {
        var counters = IPVSCounters()
        guard let top = NetlinkAttributes.parse(message),
              let nested = top.first(where: { $0.type == CommandAttribute.service.rawValue }),
              let fields = NetlinkAttributes.parse(nested.payload) else { return counters }
        decodeStats(fields.first { $0.type == ServiceAttribute.stats64.rawValue }?.payload, into: &counters)
        return counters
    }

    /// GET_CONFIG reply: the three timeouts.
    public static func decodeTimeouts(_ message: ArraySlice<UInt8>) -> IPVSTimeouts? {
        guard let top = NetlinkAttributes.parse(message) else { return nil }
        func value(_ attribute: CommandAttribute) -> UInt32? { top.first { $0.type == attribute.rawValue }.flatMap { u32($0.payload) } }
        guard let tcp = value(.timeoutTCP), let fin = value(.timeoutTCPFin), let udp = value(.timeoutUDP) else { return nil }
        return IPVSTimeouts(tcp: tcp, tcpFin: fin, udp: udp)
    }

    /// GET_INFO reply.
    public static func decodeInfo(_ message: ArraySlice<UInt8>) -> IPVSInfo? {
        guard let top = NetlinkAttributes.parse(message),
              let version = top.first(where: { $0.type == InfoAttribute.version.rawValue }).flatMap({ u32($0.payload) }),
              let size = top.first(where: { $0.type == InfoAttribute.connectionTableSize.rawValue }).flatMap({ u32($0.payload) })
        else { return nil }
        return IPVSInfo(version: version, connectionTableSize: size)
    }

    /// One GET_DAEMON dump reply.
    public static func decodeDaemon(_ message: ArraySlice<UInt8>) -> IPVSSyncDaemon? {
        guard let top = NetlinkAttributes.parse(message),
              let nested = top.first(where: { $0.type == CommandAttribute.daemon.rawValue }),
              let fields = NetlinkAttributes.parse(nested.payload),
              let state = fields.first(where: { $0.type == DaemonAttribute.state.rawValue }).flatMap({ u32($0.payload) }),
              let role = IPVSSyncDaemon.Role(rawValue: state),
              let name = fields.first(where: { $0.type == DaemonAttribute.interface.rawValue })?.payload,
              let id = fields.first(where: { $0.type == DaemonAttribute.syncID.rawValue }).flatMap({ u32($0.payload) })
        else { return nil }
        return IPVSSyncDaemon(role: role, interface: String(decoding: name.prefix { $0 != 0 }, as: UTF8.self), syncID: id)
    }

    /// A destination and its counters from a GET_DEST dump reply.
    public static func decodeDestination(_ message: ArraySlice<UInt8>, serviceFamily: UInt16) -> (IPVSDestination, IPVSCounters)? {
        guard let top = NetlinkAttributes.parse(message),
              let nested = top.first(where: { $0.type == CommandAttribute.destination.rawValue }),
              let fields = NetlinkAttributes.parse(nested.payload)
        else { return nil }
        func field(_ attribute: DestinationAttribute) -> ArraySlice<UInt8>? { fields.first { $0.type == attribute.rawValue }?.payload }
        let family = field(.family).flatMap(u16) ?? serviceFamily
        guard let addressBytes = field(.address), let address = address(addressBytes, family: family),
              let portBytes = field(.port), portBytes.count >= 2,
              let forwardingValue = field(.forwarding).flatMap(u32),
              let forwarding = IPVSDestination.Forwarding(rawValue: forwardingValue & 0x7),
              let weight = field(.weight).flatMap(u32)
        else { return nil }
        let port = UInt16(portBytes[portBytes.startIndex]) << 8 | UInt16(portBytes[portBytes.startIndex + 1])
        var counters = IPVSCounters()
        counters.activeConnections = field(.activeConnections).flatMap(u32) ?? 0
        counters.inactiveConnections = field(.inactiveConnections).flatMap(u32) ?? 0
        decodeStats(field(.stats64), into: &counters)
        let destination = IPVSDestination(address: address, port: port, forwarding: forwarding, weight: weight,
                                          upperThreshold: field(.upperThreshold).flatMap(u32) ?? 0,
                                          lowerThreshold: field(.lowerThreshold).flatMap(u32) ?? 0)
        return (destination, counters)
    }
}

/// Netlink framing for requests lb sends in batches: several messages in one datagram, each acknowledged by the
/// kernel under its own sequence number. Pure, so the layout is unit-tested.
public enum NetlinkFrame {
    static let headerLength = 16
    static let NLM_F_REQUEST: UInt16 = 0x1
    static let NLM_F_ACK: UInt16 = 0x4
    static let NLMSG_ERROR: UInt16 = 0x2
    static let NLMSG_DONE: UInt16 = 0x3
    /// IPVS_GENL_VERSION
    static let ipvsVersion: UInt8 = 1

    /// nlmsghdr (length, type = the family id, flags, sequence, port 0) + genlmsghdr (command, version) + attributes.
    public static func request(family: UInt16, command: IPVSCommand, sequence: UInt32, attributes: NetlinkAttributes) -> [UInt8] {
        let length = UInt32(headerLength + 4 + attributes.bytes.count)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(length))
        bytes += withUnsafeBytes(of: length.littleEndian, Array.init)
        bytes += withUnsafeBytes(of: family.littleEndian, Array.init)
        bytes += withUnsafeBytes(of: (NLM_F_REQUEST | NLM_F_ACK).littleEndian, Array.init)
        bytes += withUnsafeBytes(of: sequence.littleEndian, Array.init)
        bytes += [0, 0, 0, 0]
        bytes += [command.rawValue, ipvsVersion, 0, 0]
        bytes += attributes.bytes
        return bytes
    }

    /// The acknowledgements in a datagram from the kernel: (sequence of the request, errno; 0 = done).
    /// Messages of other types are skipped; a truncated message ends the parse.
    public static func acknowledgements(in bytes: ArraySlice<UInt8>) -> [(sequence: UInt32, errno: Int32)] {
        var result: [(UInt32, Int32)] = []
        var offset = bytes.startIndex
        func u32(at index: Int) -> UInt32 { bytes[index..<(index + 4)].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        while offset + headerLength <= bytes.endIndex {
            let length = Int(u32(at: offset))
            guard length >= headerLength, offset + length <= bytes.endIndex else { break }
            let type = UInt16(bytes[offset + 4]) | UInt16(bytes[offset + 5]) << 8
            // struct nlmsgerr { int error; struct nlmsghdr msg; }: the request's own header carries its sequence.
            if type == NLMSG_ERROR, length >= headerLength + 4 + headerLength {
                let error = Int32(bitPattern: u32(at: offset + headerLength))
                // The kernel sends -errno; anything else (Int32.min, found by scripts/fuzz netlink-reply, would
                // overflow the negation) is still reported, never trapped on.
                result.append((u32(at: offset + headerLength + 4 + 8), Int32(clamping: -Int64(error))))
            }
            offset += (length + 3) & ~3
        }
        return result
    }
}
