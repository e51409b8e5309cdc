import CNetlinkRoute
import Glibc
import LBConfig

/// Tells the link that a VIP now lives here, so switches and neighbours send its traffic to this host at once
/// instead of after their caches expire (minutes, during which a radiologist's viewer would hang).
/// IPv4: a gratuitous ARP (a request for the VIP from the VIP). IPv6: an unsolicited neighbour advertisement to
/// all nodes with the override flag.
public enum Announcement {
    /// The ARP payload of a gratuitous ARP request (RFC 5227 "ARP announcement"): sender and target address both
    /// the VIP, target hardware address zero.
    public static func gratuitousARP(mac: [UInt8], address: UInt32) -> [UInt8] {
        let ip = withUnsafeBytes(of: address.bigEndian, Array.init)
        return [0, 1,           // hardware type Ethernet
                0x08, 0x00,     // protocol IPv4
                6, 4,           // address lengths
                0, 1]           // operation: request
            + mac + ip + [UInt8](repeating: 0, count: 6) + ip
    }

    /// An ICMPv6 neighbour advertisement (type 136) for `address`, override flag set, carrying the link-layer
    /// address option; the checksum is left to the kernel (raw ICMPv6 sockets compute it).
    public static func neighbourAdvertisement(mac: [UInt8], address: [UInt8]) -> [UInt8] {
        [136, 0, 0, 0,              // type, code, checksum
         0x20, 0, 0, 0]             // flags: override
            + address
            + [2, 1] + mac          // option: target link-layer address, length 1 (8 bytes)
    }

    /// The interface's hardware address.
    static func hardwareAddress(of interface: String) throws -> [UInt8] {
        guard let text = try? String(contentsOfFile: "/sys/class/net/\(interface)/address", encoding: .utf8) else {
            throw LinkError(object: "interface \(interface)", reason: "no hardware address")
        }
        let bytes = text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ":").compactMap { UInt8($0, radix: 16) }
        guard bytes.count == 6 else { throw LinkError(object: "interface \(interface)", reason: "not an Ethernet-style link") }
        return bytes
    }

    /// Sends the announcement for a VIP on its interface (a few copies, as switches may drop one).
    public static func send(for vip: VIPAddress, copies: Int = 2) throws {
        let index = if_nametoindex(vip.interface)
        guard index != 0 else { throw LinkError(object: "interface \(vip.interface)", reason: "not found") }
        let mac = try hardwareAddress(of: vip.interface)
        switch vip.address {
        case .v4(let address):
            let fd = socket(AF_PACKET, Int32(SOCK_DGRAM.rawValue), Int32(UInt16(ETH_P_ARP).bigEndian))
            guard fd >= 0 else { throw LinkError(object: "gratuitous ARP for \(vip)", reason: String(cString: strerror(errno))) }
            defer { close(fd) }
            var destination = sockaddr_ll()
            destination.sll_family = UInt16(AF_PACKET)
            destination.sll_protocol = UInt16(ETH_P_ARP).bigEndian
            destination.sll_ifindex = Int32(index)
            destination.sll_halen = 6
            withUnsafeMutableBytes(of: &destination.sll_addr) { $0.copyBytes(from: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]) }
            let packet = gratuitousARP(mac: mac, address: address)
            for _ in 0..<copies {
                let sent = withUnsafePointer(to: &destination) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, packet, packet.count, 0, $0, socklen_t(MemoryLayout<sockaddr_ll>.size))
                    }
                }
                guard sent == packet.count else { throw LinkError(object: "gratuitous ARP for \(vip)", reason: String(cString: strerror(errno))) }
            }
        case .v6(let address):
            let fd = socket(AF_INET6, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_ICMPV6))
            guard fd >= 0 else { throw LinkError(object: "neighbour advertisement for \(vip)", reason: String(cString: strerror(errno))) }
            defer { close(fd) }
            // Neighbour discovery messages must arrive with hop limit 255 (RFC 4861), sent from the VIP itself.
            var hops: Int32 = 255
            var interfaceIndex = UInt32(index)
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_MULTICAST_HOPS, &hops, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_MULTICAST_IF, &interfaceIndex, socklen_t(MemoryLayout<UInt32>.size))
            var source = sockaddr_in6()
            source.sin6_family = sa_family_t(AF_INET6)
            withUnsafeMutableBytes(of: &source.sin6_addr) { $0.copyBytes(from: address) }
            _ = withUnsafePointer(to: &source) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
            var allNodes = sockaddr_in6()
            allNodes.sin6_family = sa_family_t(AF_INET6)
            allNodes.sin6_scope_id = UInt32(index)
            withUnsafeMutableBytes(of: &allNodes.sin6_addr) { $0.copyBytes(from: [0xFF, 2] + [UInt8](repeating: 0, count: 13) + [1]) }
            let packet = neighbourAdvertisement(mac: mac, address: address)
            for _ in 0..<copies {
                let sent = withUnsafePointer(to: &allNodes) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, packet, packet.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                    }
                }
                guard sent == packet.count else { throw LinkError(object: "neighbour advertisement for \(vip)", reason: String(cString: strerror(errno))) }
            }
        }
    }
}
