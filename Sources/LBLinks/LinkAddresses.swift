import CNetlinkRoute
import Glibc
import LBConfig

/// An address change the kernel refused, naming the address and interface.
public struct LinkError: Error, CustomStringConvertible, Sendable {
    public var object: String
    public var reason: String
    public var description: String { "\(object): \(reason)" }
}

/// The effector for VIP addresses: adds and removes them through rtnetlink (libnl-route-3), lists what interfaces
/// hold, and announces a new VIP to the link so neighbours update their ARP / neighbour caches at once.
public final class LinkAddresses {
    private let socket: OpaquePointer

    public init() throws {
        guard let socket = nl_socket_alloc() else { throw LinkError(object: "rtnetlink", reason: "out of memory") }
        let status = nl_connect(socket, NETLINK_ROUTE)
        guard status == 0 else {
            nl_socket_free(socket)
            throw LinkError(object: "rtnetlink", reason: String(cString: nl_geterror(status)))
        }
        self.socket = socket
    }

    deinit { nl_socket_free(socket) }

    public static func interfaceExists(_ name: String) -> Bool { if_nametoindex(name) != 0 }

    /// Every address on every interface (getifaddrs), as VIPAddress values.
    public static func present() -> Set<VIPAddress> {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return [] }
        defer { freeifaddrs(list) }
        var result: Set<VIPAddress> = []
        var entry: UnsafeMutablePointer<ifaddrs>? = first
        while let current = entry {
            defer { entry = current.pointee.ifa_next }
            guard let socketAddress = current.pointee.ifa_addr, let namePointer = current.pointee.ifa_name else { continue }
            // An IPv4 label such as "eth0:1" names an alias of eth0.
            let name = String(cString: namePointer).split(separator: ":").first.map(String.init) ?? ""
            switch Int32(socketAddress.pointee.sa_family) {
            case AF_INET:
                let v4 = UnsafeRawPointer(socketAddress).load(as: sockaddr_in.self)
                result.insert(VIPAddress(interface: name, address: .v4(UInt32(bigEndian: v4.sin_addr.s_addr))))
            case AF_INET6:
                let v6 = UnsafeRawPointer(socketAddress).load(as: sockaddr_in6.self)
                result.insert(VIPAddress(interface: name, address: .v6(withUnsafeBytes(of: v6.sin6_addr) { Array($0) })))
            default:
                continue
            }
        }
        return result
    }

    /// Adds the address; already present is not an error (returns false).
    @discardableResult
    public func add(_ vip: VIPAddress) throws -> Bool {
        let status = lb_address_change(socket, try index(of: vip), "\(vip.address)/\(vip.prefixLength)", 1)
        if status == -NLE_EXIST { return false }
        guard status == 0 else { throw LinkError(object: "address \(vip)", reason: String(cString: nl_geterror(status))) }
        return true
    }

    /// Removes the address; already absent is not an error.
    public func remove(_ vip: VIPAddress) throws {
        let status = lb_address_change(socket, try index(of: vip), "\(vip.address)/\(vip.prefixLength)", 0)
        guard status == 0 || status == -NLE_NOADDR || status == -NLE_OBJ_NOTFOUND else {
            throw LinkError(object: "address \(vip)", reason: String(cString: nl_geterror(status)))
        }
    }

    private func index(of vip: VIPAddress) throws -> Int32 {
        let index = if_nametoindex(vip.interface)
        guard index != 0 else {
            throw LinkError(object: "address \(vip)", reason: "no interface named \(vip.interface) (see `ip link`)")
        }
        return Int32(index)
    }
}
