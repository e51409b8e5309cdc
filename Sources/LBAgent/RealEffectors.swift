import Foundation
import LBConfig
import LBHealth
import LBHighAvailability
import LBIPVS
import LBLinks
import LBNetfilter
import LBProxy
import LBRuntime
import Logging

extension IPVSClient: IPVSKernel {}

/// /proc/sys, written and read back.
public final class ProcSysctl: SysctlAccess {
    public init() {}

    public func read(_ path: String) -> String? {
        (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    public func write(_ path: String, _ value: String) throws {
        do {
            try value.write(toFile: path, atomically: false, encoding: .utf8)
        } catch {
            throw SysctlError(path: path, value: value, reason: error.localizedDescription)
        }
    }
}

/// The host's interfaces over rtnetlink (libnl-route); one socket, used only from the agent's queue.
public final class HostLinks: AddressKernel {
    private var links: LinkAddresses?

    public init() {}

    private func open() throws -> LinkAddresses {
        if let links { return links }
        let opened = try LinkAddresses()
        links = opened
        return opened
    }

    public func interfaceExists(_ name: String) -> Bool { LinkAddresses.interfaceExists(name) }
    public func present() -> Set<VIPAddress> { LinkAddresses.present() }
    public func add(_ vip: VIPAddress) throws { _ = try open().add(vip) }
    public func remove(_ vip: VIPAddress) throws { try open().remove(vip) }
    public func announce(_ vip: VIPAddress) throws { try Announcement.send(for: vip) }
}

/// iptables / ip6tables and `ip rule` on the host.
public final class HostNetfilter: FirewallEffector {
    private let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    private func firewall(_ services: [VirtualService]) -> HostFirewall {
        let logger = self.logger
        return HostFirewall(services: services) { logger.notice("\($0)") }
    }

    public func conflicts(for services: [VirtualService]) throws -> [NetfilterConflict] { try firewall(services).conflicts() }
    public func apply(_ services: [VirtualService]) throws { try firewall(services).apply() }
    public func needsRepair(for services: [VirtualService]) -> Bool { firewall(services).needsRepair() }
}

/// The proxy engine, driven from the agent's queue (a thread of its own, never an event loop, so waiting on the
/// engine's asynchronous start-up is safe there).
public final class ProxyEngineEffector: ProxyEffector {
    public let engine: ProxyEngine

    public init(engine: ProxyEngine) { self.engine = engine }

    public func update(to services: [VirtualService], membership: [String: ServiceMembership], freeBind: Bool) throws {
        let engine = self.engine
        try waitFor { try await engine.update(to: services, membership: membership, freeBind: freeBind) }
    }

    public func apply(_ membership: [String: ServiceMembership]) { engine.apply(membership) }

    public func counters() -> [String: [String: ServerCounters]] {
        engine.counters.mapValues { members in
            Dictionary(members.map {
                ($0.name, ServerCounters(activeConnections: $0.activeConnections, totalConnections: $0.totalConnections,
                                         bytesToServer: $0.bytesToServer, bytesFromServer: $0.bytesFromServer,
                                         pinnedSessions: $0.pinnedSessions))
            }, uniquingKeysWith: { a, _ in a })
        }
    }
}

extension HealthMonitor: HealthChecking {
    public func stopAll() { stop() }
}

/// Runs async work to its end from a thread that may block (the agent's queue; never an event loop or a thread of
/// Swift's cooperative pool).
func waitFor<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) throws -> T {
    let done = DispatchSemaphore(value: 0)
    let result = ResultBox<T>()
    Task {
        do { result.value = .success(try await work()) } catch { result.value = .failure(error) }
        done.signal()
    }
    done.wait()
    guard let value = result.value else { throw CancellationError() }
    return try value.get()
}

private final class ResultBox<T>: @unchecked Sendable {
    var value: Result<T, Error>?
}

public struct SysctlError: Error, CustomStringConvertible {
    public let path: String
    public let value: String
    public let reason: String
    public var description: String { "cannot set \(path) to \(value): \(reason)" }
}

extension KeepalivedPair: PairEffector {}
