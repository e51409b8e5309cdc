import LBConfig

/// What identifies a service in the kernel: protocol, address, port (or firewall mark and family). Everything else
/// can be edited in place.
public struct IPVSServiceKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var transport: IPVSService.TransportProtocol
    public var address: IPAddress
    public var port: UInt16
    public var fwmark: UInt32

    public init(_ service: IPVSService) {
        fwmark = service.fwmark
        transport = service.fwmark == 0 ? service.transport : .tcp
        address = service.fwmark == 0 ? service.address : (service.address.family == .ipv4 ? .v4(0) : .v6([UInt8](repeating: 0, count: 16)))
        port = service.fwmark == 0 ? service.port : 0
    }

    public var description: String {
        fwmark != 0 ? "fwmark \(fwmark)/\(address.family.rawValue)"
            : "\(address.withPort(port))/\(transport == .tcp ? "tcp" : "udp")"
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.fwmark, lhs.address, lhs.port, lhs.transport.rawValue) < (rhs.fwmark, rhs.address, rhs.port, rhs.transport.rawValue)
    }
}

/// An IPVS table: services with their destinations. Both what lb wants and what a dump found.
public struct IPVSTable: Equatable, Sendable {
    public var services: [IPVSServiceKey: (service: IPVSService, destinations: [IPVSDestination])]

    public init(_ entries: [(IPVSService, [IPVSDestination])] = []) {
        services = [:]
        for (service, destinations) in entries { services[IPVSServiceKey(service)] = (service, destinations) }
    }

    public static func == (lhs: IPVSTable, rhs: IPVSTable) -> Bool {
        lhs.services.keys == rhs.services.keys && lhs.services.allSatisfy { key, entry in
            guard let other = rhs.services[key] else { return false }
            return entry.service == other.service && Set(entry.destinations) == Set(other.destinations)
        }
    }
}

/// One change to send to the kernel.
public enum IPVSOperation: Equatable, Sendable, CustomStringConvertible {
    case addService(IPVSService)
    case updateService(IPVSService)
    case deleteService(IPVSService)
    case addDestination(IPVSDestination, IPVSService)
    case updateDestination(IPVSDestination, IPVSService)
    case deleteDestination(IPVSDestination, IPVSService)

    public var description: String {
        switch self {
        case .addService(let s): return "add service \(s)"
        case .updateService(let s): return "edit service \(s)"
        case .deleteService(let s): return "delete service \(s)"
        case .addDestination(let d, let s): return "add destination \(d) to \(s)"
        case .updateDestination(let d, let s): return "edit destination \(d) of \(s)"
        case .deleteDestination(let d, let s): return "delete destination \(d) from \(s)"
        }
    }
}

/// Pure planning: the table a config asks for, and the smallest list of operations from one table to another.
public enum IPVSPlanner {
    /// The kernel table for the Layer 4 services of a config: one IPVS service per VIP port.
    /// `weights` overrides a real server's weight (service name → server name → weight), e.g. 0 while it is down.
    /// `fallbacks` names the services whose fallback server stands in (no real server takes new connections), as
    /// keepalived's sorry_server: it is added as a destination of weight 1 and goes again when a server is back.
    public static func desiredTable(for services: [VirtualService], weights: [String: [String: UInt32]] = [:],
                                    removed: [String: Set<String>] = [:], fallbacks: Set<String> = []) -> IPVSTable {
        var entries: [(IPVSService, [IPVSDestination])] = []
        for service in services where service.mode.isLayer4 {
            let forwarding: IPVSDestination.Forwarding = service.mode == .l4DirectRouting ? .directRoute : .masquerade
            var timeout: UInt32?
            if case .sourceIP(let duration) = service.persistence { timeout = UInt32(duration.components.seconds) }
            for port in service.ports.allPorts {
                var mask: UInt32?
                if timeout != nil, case .v4(let bits)? = service.persistenceNetmask { mask = bits.bigEndian }
                let ipvs = IPVSService(transport: service.transport == .tcp ? .tcp : .udp, address: service.address,
                                       port: port, scheduler: service.scheduler.ipvsName, persistenceTimeout: timeout,
                                       persistenceNetmask: mask)
                // A server listed in `removed` is left out (on_server_failure: remove); otherwise `weights` may
                // override its weight (0 while it drains).
                var destinations = service.realServers.filter { removed[service.name]?.contains($0.name) != true }.map { server in
                    IPVSDestination(address: server.address, port: server.port(forVIPPort: port), forwarding: forwarding,
                                    weight: weights[service.name]?[server.name] ?? UInt32(server.weight))
                }
                if fallbacks.contains(service.name), let fallback = service.fallback {
                    let sorry = IPVSDestination(address: fallback.address, port: fallback.port ?? port, forwarding: forwarding, weight: 1)
                    // A fallback that is also a listed real server (kept at weight 0) takes weight 1 in its place.
                    destinations.removeAll { $0.address == sorry.address && $0.port == sorry.port }
                    destinations.append(sorry)
                }
                entries.append((ipvs, destinations))
            }
        }
        return IPVSTable(entries)
    }

    /// The operations that turn `actual` into `desired`. Services in `actual` that lb does not own are never
    /// touched; they are returned as `foreign` so the agent can report them. `scope` limits the comparison to some
    /// services (a health transition touches one VIP; comparing a thousand is wasted time on the way to the kernel).
    public static func plan(from actual: IPVSTable, to desired: IPVSTable, owned: Set<IPVSServiceKey>,
                            scope: Set<IPVSServiceKey>? = nil)
        -> (operations: [IPVSOperation], foreign: [IPVSServiceKey])
    {
        if let scope {
            var actualPart = IPVSTable(), desiredPart = IPVSTable()
            for key in scope {
                actualPart.services[key] = actual.services[key]
                desiredPart.services[key] = desired.services[key]
            }
            return plan(from: actualPart, to: desiredPart, owned: owned)
        }
        var operations: [IPVSOperation] = []
        for key in desired.services.keys.sorted() {
            guard let want = desired.services[key] else { continue }
            guard let have = actual.services[key] else {
                operations.append(.addService(want.service))
                operations += want.destinations.map { .addDestination($0, want.service) }
                continue
            }
            if have.service != want.service { operations.append(.updateService(want.service)) }
            // The common case, checked cheaply: nothing changed for this service.
            if have.destinations == want.destinations { continue }
            let existing = Dictionary(have.destinations.map { (DestinationKey($0), $0) }, uniquingKeysWith: { a, _ in a })
            let wanted = Set(want.destinations.map(DestinationKey.init))
            for destination in want.destinations {
                switch existing[DestinationKey(destination)] {
                case nil: operations.append(.addDestination(destination, want.service))
                case let current? where current != destination: operations.append(.updateDestination(destination, want.service))
                default: break
                }
            }
            for destination in have.destinations where !wanted.contains(DestinationKey(destination)) {
                operations.append(.deleteDestination(destination, want.service))
            }
        }
        var foreign: [IPVSServiceKey] = []
        for key in actual.services.keys.sorted() where desired.services[key] == nil {
            guard let have = actual.services[key] else { continue }
            if owned.contains(key) { operations.append(.deleteService(have.service)) } else { foreign.append(key) }
        }
        return (operations, foreign)
    }
}

/// What identifies a destination within its service.
private struct DestinationKey: Hashable {
    var address: IPAddress
    var port: UInt16
    init(_ destination: IPVSDestination) {
        address = destination.address
        port = destination.port
    }
}
