import Foundation
import LBConfig

/// One real server of one virtual service. Health and overrides are kept per key; a reload keeps them for a key
/// whose server still exists with the same address and port.
public struct ServerKey: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var service: String
    public var server: String

    public init(service: String, server: String) {
        self.service = service
        self.server = server
    }

    public var description: String { "\(service)/\(server)" }

    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.service, lhs.server) < (rhs.service, rhs.server) }
}

/// What the health checks last concluded about a real server.
public struct HealthRecord: Hashable, Sendable {
    public var healthy: Bool
    /// The reason of the last transition ("connection refused (3 checks failed in a row)").
    public var reason: String?
    /// When the checks concluded it.
    public var since: Date?

    public init(healthy: Bool, reason: String? = nil, since: Date? = nil) {
        self.healthy = healthy
        self.reason = reason
        self.since = since
    }
}

/// How a real server takes part in its virtual service right now: the one answer that the IPVS table, the proxy's
/// pools, `lbctl status` and the metrics all read. Computed only by `Membership.derive`.
public struct Membership: Hashable, Sendable {
    /// Why the server has this membership, in the words `lbctl status` uses.
    public enum Reason: String, Hashable, Sendable {
        case serving, down, drain, halt
        /// Configured with weight 0.
        case zeroWeight = "zero-weight"
    }

    /// The weight new connections are scheduled with; 0 takes no new connections.
    public var weight: Int
    /// false: out of the service (IPVS destination removed; the proxy closes the server's connections).
    public var present: Bool
    public var reason: Reason

    public init(weight: Int, present: Bool, reason: Reason) {
        self.weight = weight
        self.present = present
        self.reason = reason
    }

    /// Whether new connections (and new persistence sessions) may go to the server.
    public var acceptsNew: Bool { present && weight > 0 }

    /// Whether clients already pinned to the server (its persistence cookie, a source-IP stick entry) may go on
    /// using it: while it takes new ones, and while it drains — that is what makes a daytime drain invisible to a
    /// radiologist's open session. A down or halted server takes nobody.
    public var acceptsPinned: Bool { acceptsNew || (present && reason == .drain) }

    /// The rule, written once: halted ⇒ removed; down ⇒ weight 0, or removed when the service says
    /// `on_server_failure: remove`; drained ⇒ weight 0; otherwise the configured weight.
    public static func derive(server: RealServer, in service: VirtualService, healthy: Bool, admin: AdminState) -> Membership {
        if admin == .halt { return Membership(weight: 0, present: false, reason: .halt) }
        if !healthy { return Membership(weight: 0, present: service.onServerFailure != .remove, reason: .down) }
        if admin == .drain { return Membership(weight: 0, present: true, reason: .drain) }
        return Membership(weight: server.weight, present: true, reason: server.weight > 0 ? .serving : .zeroWeight)
    }
}

/// The membership of every real server of one virtual service, in config order, and whether the fallback server
/// stands in (no real server takes new connections).
public struct ServiceMembership: Hashable, Sendable {
    public var service: VirtualService
    public var servers: [(server: RealServer, membership: Membership)]

    public init(service: VirtualService, servers: [(server: RealServer, membership: Membership)]) {
        self.service = service
        self.servers = servers
    }

    public var fallbackActive: Bool { service.fallback != nil && !servers.contains { $0.membership.acceptsNew } }

    public func membership(of name: String) -> Membership? { servers.first { $0.server.name == name }?.membership }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.service == rhs.service && lhs.servers.map(\.membership) == rhs.servers.map(\.membership)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(service)
        hasher.combine(servers.map(\.membership))
    }
}
