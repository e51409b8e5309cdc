import LBConfig

/// Everything lbd knows about its virtual services at one moment: the config in force, each real server's health,
/// the operator's overrides. A value: the owner (LBAgent's `Agent`) holds the only live copy and hands out
/// snapshots; every derived view (membership, IPVS table, status) is computed from it.
public struct RuntimeState: Sendable, Equatable {
    public private(set) var configuration: Configuration
    /// Absent: no check has concluded yet (the server counts as up: a freshly started lbd serves at once).
    public private(set) var health: [ServerKey: HealthRecord] = [:]
    /// Online servers are not listed.
    public private(set) var overrides: [ServerKey: AdminState] = [:]
    /// The latest health transitions, oldest first, at most `transitionsKept` (what the status page lists). History:
    /// a reload keeps it, even for servers that went.
    public private(set) var recentTransitions: [TransitionRecord] = []
    /// When each override last changed and where (online included); a pair's nodes merge these, newest first.
    public private(set) var overrideChanges: [ServerKey: OverrideChange] = [:]
    /// This node's place in a pair; nil on a single node.
    public var pair: PairStatus?
    public static let transitionsKept = 50

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    public func service(named name: String) -> VirtualService? {
        configuration.virtualServices.first { $0.name == name }
    }

    public func admin(_ key: ServerKey) -> AdminState { overrides[key] ?? .online }

    public func healthy(_ key: ServerKey) -> Bool { health[key]?.healthy ?? true }

    /// Records a health transition for a server of the config in force; returns false (and changes nothing) for
    /// one that is not (a check of a service that a reload just removed).
    @discardableResult
    public mutating func setHealth(_ key: ServerKey, _ record: HealthRecord) -> Bool {
        guard contains(key) else { return false }
        health[key] = record
        recentTransitions.append(TransitionRecord(key: key, record: record))
        if recentTransitions.count > Self.transitionsKept { recentTransitions.removeFirst(recentTransitions.count - Self.transitionsKept) }
        return true
    }

    @discardableResult
    public mutating func setAdmin(_ key: ServerKey, _ admin: AdminState) -> Bool {
        guard contains(key) else { return false }
        overrides[key] = admin == .online ? nil : admin
        return true
    }

    /// Sets the override and records the change (an operator's here, or the peer's).
    @discardableResult
    public mutating func setAdmin(_ key: ServerKey, change: OverrideChange) -> Bool {
        guard setAdmin(key, change.admin) else { return false }
        overrideChanges[key] = change
        return true
    }

    /// Puts back the override and change record a failed change replaced.
    public mutating func restoreAdmin(_ key: ServerKey, _ admin: AdminState, change: OverrideChange?) {
        setAdmin(key, admin)
        overrideChanges[key] = change
    }

    /// A change from the peer: applied when it is newer than what this node has; returns whether it was.
    public mutating func mergeOverride(_ key: ServerKey, _ change: OverrideChange) -> Bool {
        guard contains(key), change.supersedes(overrideChanges[key]) else { return false }
        return setAdmin(key, change: change)
    }

    /// Change records saved by an earlier run, for servers that still exist.
    public mutating func restoreOverrideChanges(_ saved: [String: [String: OverrideChange]]) {
        for (service, servers) in saved {
            for (server, change) in servers {
                let key = ServerKey(service: service, server: server)
                if contains(key) { overrideChanges[key] = change }
            }
        }
    }

    /// Change records as the state file keeps them (service → server → change).
    public var overrideChangesByService: [String: [String: OverrideChange]] {
        var result: [String: [String: OverrideChange]] = [:]
        for (key, change) in overrideChanges { result[key.service, default: [:]][key.server] = change }
        return result
    }

    /// Overrides as the state file keeps them (service → server → state).
    public var overridesByService: [String: [String: AdminState]] {
        var result: [String: [String: AdminState]] = [:]
        for (key, admin) in overrides { result[key.service, default: [:]][key.server] = admin }
        return result
    }

    /// Overrides saved by an earlier run, for servers that still exist; returns the ones kept.
    @discardableResult
    public mutating func restoreOverrides(_ saved: [String: [String: AdminState]]) -> [ServerKey: AdminState] {
        var kept: [ServerKey: AdminState] = [:]
        for (service, servers) in saved {
            for (server, admin) in servers where admin != .online {
                let key = ServerKey(service: service, server: server)
                if contains(key) { kept[key] = admin }
            }
        }
        overrides = kept
        return kept
    }

    /// A reload or mode switch: the new config replaces the old. Health and overrides stay with every server that is
    /// still there with the same address and port (in the same service), whatever else changed — as keepalived
    /// migrates checker state across reloads; the rest are dropped.
    public mutating func reconfigure(to next: Configuration) {
        let before = self
        configuration = next
        func same(_ key: ServerKey) -> Bool {
            guard let old = before.server(key), let new = server(key) else { return false }
            return old.address == new.address && old.port == new.port
        }
        health = before.health.filter { same($0.key) }
        overrides = before.overrides.filter { contains($0.key) }
        overrideChanges = before.overrideChanges.filter { contains($0.key) }
    }

    public func server(_ key: ServerKey) -> RealServer? {
        service(named: key.service)?.realServers.first { $0.name == key.server }
    }

    public func contains(_ key: ServerKey) -> Bool { server(key) != nil }

    /// The effective membership of every real server of a service: `Membership.derive` over this state.
    public func membership(of service: VirtualService) -> ServiceMembership {
        ServiceMembership(service: service, servers: service.realServers.map { server in
            let key = ServerKey(service: service.name, server: server.name)
            return (server, Membership.derive(server: server, in: service, healthy: healthy(key), admin: admin(key)))
        })
    }

    /// Every service's membership, by name.
    public var memberships: [String: ServiceMembership] {
        Dictionary(uniqueKeysWithValues: configuration.virtualServices.map { ($0.name, membership(of: $0)) })
    }
}

/// One health transition as it happened: which server, to what, why and when.
public struct TransitionRecord: Hashable, Sendable {
    public var key: ServerKey
    public var record: HealthRecord
}
