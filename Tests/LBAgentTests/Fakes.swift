import Foundation
import LBConfig
import LBHealth
import LBHighAvailability
import LBIPVS
import LBLinks
import LBNetfilter
import LBRuntime
import NIOConcurrencyHelpers
@testable import LBAgent

/// An IPVS table in memory that applies operations as the kernel would (and refuses the same mistakes).
final class FakeIPVS: IPVSKernel, @unchecked Sendable {
    private let lock = NIOLock()
    private var held = IPVSTable()
    /// Every apply waits this long first (a slow kernel).
    var delay: Duration = .zero
    var applies = 0

    var current: IPVSTable { lock.withLock { held } }

    func table() throws -> IPVSTable { current }

    func apply(_ operations: [IPVSOperation]) throws {
        if delay > .zero { Thread.sleep(forTimeInterval: Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18) }
        try lock.withLock {
            applies += 1
            var table = held
            for operation in operations {
                switch operation {
                case .addService(let service):
                    guard table.services[IPVSServiceKey(service)] == nil else { throw FakeError("service \(service): File exists") }
                    table.services[IPVSServiceKey(service)] = (service, [])
                case .updateService(let service):
                    guard let entry = table.services[IPVSServiceKey(service)] else { throw FakeError("no service \(service)") }
                    table.services[IPVSServiceKey(service)] = (service, entry.destinations)
                case .deleteService(let service):
                    guard table.services.removeValue(forKey: IPVSServiceKey(service)) != nil else { throw FakeError("no service \(service)") }
                case .addDestination(let destination, let service), .updateDestination(let destination, let service):
                    guard var entry = table.services[IPVSServiceKey(service)] else { throw FakeError("no service \(service)") }
                    entry.destinations.removeAll { $0.address == destination.address && $0.port == destination.port }
                    entry.destinations.append(destination)
                    table.services[IPVSServiceKey(service)] = entry
                case .deleteDestination(let destination, let service):
                    guard var entry = table.services[IPVSServiceKey(service)] else { throw FakeError("no service \(service)") }
                    entry.destinations.removeAll { $0.address == destination.address && $0.port == destination.port }
                    table.services[IPVSServiceKey(service)] = entry
                }
            }
            held = table
        }
    }

    func servicesWithCounters() throws -> [(IPVSService, IPVSCounters)] { current.services.values.map { ($0.service, IPVSCounters()) } }
    func destinations(of service: IPVSService) throws -> [(IPVSDestination, IPVSCounters)] {
        (current.services[IPVSServiceKey(service)]?.destinations ?? []).map { ($0, IPVSCounters()) }
    }
    func timeouts() throws -> IPVSTimeouts { IPVSTimeouts(tcp: 900, tcpFin: 120, udp: 300) }
    func setTimeouts(_ timeouts: IPVSTimeouts) throws {}
    func syncDaemons() throws -> [IPVSSyncDaemon] { [] }
    func startSyncDaemon(_ daemon: IPVSSyncDaemon) throws {}

    /// A destination's weight, or nil if absent: "10.0.0.40:104" / "10.0.1.2:104".
    func weight(_ service: String, _ destination: String) -> UInt32? {
        current.services.first { $0.key.description == service + "/tcp" }?.value.destinations
            .first { $0.address.withPort($0.port) == destination }?.weight
    }
}

final class FakeSysctl: SysctlAccess {
    var values: [String: String] = [:]
    func read(_ path: String) -> String? { values[path] ?? "0" }
    func write(_ path: String, _ value: String) throws { values[path] = value }
}

final class FakeLinks: AddressKernel {
    var addresses: Set<VIPAddress> = []
    var interfaces: Set<String> = ["lo", "eth0"]
    func interfaceExists(_ name: String) -> Bool { interfaces.contains(name) }
    func present() -> Set<VIPAddress> { addresses }
    func add(_ vip: VIPAddress) throws { addresses.insert(vip) }
    func remove(_ vip: VIPAddress) throws { addresses.remove(vip) }
    func announce(_ vip: VIPAddress) throws {}
}

/// lb's chains as the set of services they were last filled for.
final class FakeFirewall: FirewallEffector {
    var applied: [VirtualService] = []
    var failApply: String?
    var drifted = false
    func conflicts(for services: [VirtualService]) throws -> [NetfilterConflict] { [] }
    func apply(_ services: [VirtualService]) throws {
        if let failApply { throw FakeError(failApply) }
        applied = services
        drifted = false
    }
    func needsRepair(for services: [VirtualService]) -> Bool { drifted || applied != services }
    var snatServices: [String] { applied.filter { $0.mode == .l4SNAT }.map(\.name).sorted() }
}

/// The proxy as the services and membership it was given.
final class FakeProxy: ProxyEffector {
    var services: [String: VirtualService] = [:]
    var membership: [String: ServiceMembership] = [:]
    var failUpdate: String?
    var freeBind = false
    func update(to services: [VirtualService], membership: [String: ServiceMembership], freeBind: Bool) throws {
        if let failUpdate { throw FakeError(failUpdate) }
        self.freeBind = freeBind
        self.services = Dictionary(uniqueKeysWithValues: services.filter { $0.mode.isLayer7 }.map { ($0.name, $0) })
        for (name, servers) in membership where self.services[name] != nil { self.membership[name] = servers }
        self.membership = self.membership.filter { self.services[$0.key] != nil }
    }
    func apply(_ membership: [String: ServiceMembership]) {
        for (name, servers) in membership where services[name] != nil { self.membership[name] = servers }
    }
    func counters() -> [String: [String: ServerCounters]] { [:] }

    /// The pool's view of a server: nil when the proxy does not run the service.
    func member(_ service: String, _ server: String) -> Membership? { membership[service]?.membership(of: server) }
}

final class FakeHealth: HealthChecking {
    var running: Set<String> = []
    /// What each start carried over, by service.
    var carried: [String: [String: HealthMonitor.CarriedCheck]] = [:]
    var states: [String: [String: CheckState]] = [:]
    func start(_ services: [VirtualService], carrying: [String: [String: HealthMonitor.CarriedCheck]]) {
        for service in services where service.healthCheck.probe != .none {
            running.insert(service.name)
            carried[service.name] = carrying[service.name] ?? [:]
        }
    }
    func stop(service: String) -> [String: HealthMonitor.CarriedCheck] {
        running.remove(service)
        return [:]
    }
    func stopAll() { running = [] }
    var markedDown: [String] = []
    func markDown(service: String, server: String) { markedDown.append("\(service)/\(server)") }
}

struct FakeError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// keepalived and the peer channel as what the agent asked of them. Locked: the agent's heartbeat sends from its
/// queue while a test reads.
final class FakePair: PairEffector, @unchecked Sendable {
    private let lock = NIOLock()
    private var _started: String?, _reloads: [String] = [], _standby: [Bool] = [], _sent: [PeerMessage] = []
    private var _stopped = false
    let keepalivedFiles = KeepalivedConfig.Files(directory: "/var/lib/lb", runtimeDirectory: "/run/lb")
    /// What IPVS held when keepalived was started (it must start last, once every VIP is served).
    var ipvsAtStart: IPVSTable?
    var ipvs: FakeIPVS?
    var started: String? { lock.withLock { _started } }
    var reloads: [String] { lock.withLock { _reloads } }
    var standby: [Bool] { lock.withLock { _standby } }
    var sent: [PeerMessage] { lock.withLock { _sent } }
    var stopped: Bool { lock.withLock { _stopped } }
    func check(_ pair: HighAvailability) throws {}
    func start(_ pair: HighAvailability, node: String, keepalivedConfig: String, standby: Bool,
               events: @escaping @Sendable (PairEvent) -> Void) throws {
        ipvsAtStart = ipvs?.current
        lock.withLock {
            _started = keepalivedConfig
            _standby.append(standby)
        }
    }
    func reload(keepalivedConfig: String) throws { lock.withLock { _reloads.append(keepalivedConfig) } }
    func setStandby(_ on: Bool) throws { lock.withLock { _standby.append(on) } }
    func send(_ message: PeerMessage) { lock.withLock { _sent.append(message) } }
    func stop() { lock.withLock { _stopped = true } }
}
