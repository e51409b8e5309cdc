#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 address, parsed and printed by the C library so its text form is the canonical one
/// (`::ffff:10.0.0.1` and `0:0:0:0:0:ffff:a00:1` compare equal).
public enum IPAddress: Hashable, Sendable, CustomStringConvertible, Comparable {
    case v4(UInt32)                 // host byte order, for readable arithmetic
    case v6([UInt8])                // 16 bytes, network order

    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self = .v4(UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self = .v6(withUnsafeBytes(of: &v6) { Array($0) })
            return
        }
        return nil
    }

    public var family: Family {
        switch self {
        case .v4: return .ipv4
        case .v6: return .ipv6
        }
    }

    public enum Family: String, Sendable { case ipv4, ipv6 }

    public var description: String {
        switch self {
        case .v4(let host):
            // Written here rather than by inet_ntop (which formats through sprintf) because the proxy makes this
            // text once per client connection for X-Forwarded-For: at most 15 bytes, a small string, no allocation.
            return String(unsafeUninitializedCapacity: 15) { text in
                var count = 0
                for index: UInt32 in 0..<4 {
                    if index > 0 { text[count] = UInt8(ascii: "."); count += 1 }
                    let octet = UInt8(truncatingIfNeeded: host >> (24 - 8 * index))
                    if octet >= 100 { text[count] = UInt8(ascii: "0") + octet / 100; count += 1 }
                    if octet >= 10 { text[count] = UInt8(ascii: "0") + octet / 10 % 10; count += 1 }
                    text[count] = UInt8(ascii: "0") + octet % 10; count += 1
                }
                return count
            }
        case .v6(let bytes):
            var addr = in6_addr()
            withUnsafeMutableBytes(of: &addr) { $0.copyBytes(from: bytes) }
            return withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(INET6_ADDRSTRLEN)) { buffer in
                guard let base = buffer.baseAddress,
                      inet_ntop(AF_INET6, &addr, base, socklen_t(buffer.count)) != nil else { return "?" }
                return String(cString: base)
            }
        }
    }

    /// `ADDR:PORT` for IPv4, `[ADDR]:PORT` for IPv6, the form operators paste into tools.
    public func withPort(_ port: UInt16) -> String {
        switch self {
        case .v4: return "\(self):\(port)"
        case .v6: return "[\(self)]:\(port)"
        }
    }

    /// 0.0.0.0 / :: — a wildcard, not a host. Also the rest of 0.0.0.0/8 ("this network", never a destination),
    /// and the same inside an IPv4-mapped IPv6 address (`::ffff:0.0.0.0` is the IPv4 wildcard to a dual-stack socket).
    public var isUnspecified: Bool {
        switch self {
        case .v4(let a): return (a >> 24) == 0
        case .v6(let b): return b.allSatisfy { $0 == 0 } || mappedIPv4?.isUnspecified == true
        }
    }

    public var isMulticastOrBroadcast: Bool {
        switch self {
        case .v4(let a): return (a >> 28) == 0xE || a == 0xFFFF_FFFF
        case .v6(let b): return b[0] == 0xFF || mappedIPv4?.isMulticastOrBroadcast == true
        }
    }

    /// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), which names an IPv4 host.
    public var mappedIPv4: IPAddress? {
        guard case .v6(let b) = self, b[0..<10].allSatisfy({ $0 == 0 }), b[10] == 0xFF, b[11] == 0xFF else { return nil }
        return .v4(UInt32(b[12]) << 24 | UInt32(b[13]) << 16 | UInt32(b[14]) << 8 | UInt32(b[15]))
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        switch (lhs, rhs) {
        case let (.v4(a), .v4(b)): return a < b
        case let (.v6(a), .v6(b)): return a.lexicographicallyPrecedes(b)
        case (.v4, .v6): return true
        case (.v6, .v4): return false
        }
    }
}
