import Foundation
import LBConfig
import LBHighAvailability
import LBHealth
import LBIPVS
import LBLinks
import LBNetfilter
import LBProxy
import LBRuntime

// The agent reaches the machine only through these protocols. lbd composes the real implementations (below, in
// RealEffectors.swift); the agent's tests compose in-memory fakes, so its logic can be checked as a table without
// root or a kernel.

/// The kernel's IPVS table and settings (generic netlink).
public protocol IPVSKernel: AnyObject {
    func table() throws -> IPVSTable
    func apply(_ operations: [IPVSOperation]) throws
    func servicesWithCounters() throws -> [(IPVSService, IPVSCounters)]
    func destinations(of service: IPVSService) throws -> [(IPVSDestination, IPVSCounters)]
    func timeouts() throws -> IPVSTimeouts
    func setTimeouts(_ timeouts: IPVSTimeouts) throws
    func syncDaemons() throws -> [IPVSSyncDaemon]
    func startSyncDaemon(_ daemon: IPVSSyncDaemon) throws
}

/// Kernel settings under /proc/sys.
public protocol SysctlAccess: AnyObject {
    func read(_ path: String) -> String?
    func write(_ path: String, _ value: String) throws
}

/// Addresses on the host's interfaces (rtnetlink) and their announcement.
public protocol AddressKernel: AnyObject {
    func interfaceExists(_ name: String) -> Bool
    func present() -> Set<VIPAddress>
    func add(_ vip: VIPAddress) throws
    func remove(_ vip: VIPAddress) throws
    /// Gratuitous ARP or unsolicited neighbour advertisement for a newly added address.
    func announce(_ vip: VIPAddress) throws
}

/// lb's netfilter chains and the host-rule clash scan, for a set of services.
public protocol FirewallEffector: AnyObject {
    func conflicts(for services: [VirtualService]) throws -> [NetfilterConflict]
    func apply(_ services: [VirtualService]) throws
    func needsRepair(for services: [VirtualService]) -> Bool
}

/// lbd's Layer 7 proxy.
public protocol ProxyEffector: AnyObject {
    /// Runs exactly the Layer 7 services given (with their servers' membership); throws, changing nothing, if one
    /// cannot be set up. `freeBind`: listen on VIPs this host does not hold yet (a pair's standby, IP_FREEBIND).
    func update(to services: [VirtualService], membership: [String: ServiceMembership], freeBind: Bool) throws
    func apply(_ membership: [String: ServiceMembership])
    /// Connections and bytes per real server, by service.
    func counters() -> [String: [String: ServerCounters]]
}

/// Connections and bytes of one real server, from the proxy or the kernel.
public struct ServerCounters: Equatable, Sendable {
    public var activeConnections = 0
    public var totalConnections = 0
    public var bytesToServer: UInt64 = 0
    public var bytesFromServer: UInt64 = 0
    /// Clients pinned to the server (persistence cookie or stick entry) seen in the last ten minutes.
    public var pinnedSessions = 0

    public init(activeConnections: Int = 0, totalConnections: Int = 0, bytesToServer: UInt64 = 0, bytesFromServer: UInt64 = 0,
                pinnedSessions: Int = 0) {
        self.pinnedSessions = pinnedSessions
        self.activeConnections = activeConnections
        self.totalConnections = totalConnections
        self.bytesToServer = bytesToServer
        self.bytesFromServer = bytesFromServer
    }
}

/// The health checkers.
public protocol HealthChecking: AnyObject {
    func start(_ services: [VirtualService], carrying: [String: [String: HealthMonitor.CarriedCheck]])
    /// Stops one service's checks, returning where each server's check stood.
    func stop(service: String) -> [String: HealthMonitor.CarriedCheck]
    func stopAll()
    /// Real traffic found the server failing (observe): its check now counts `rise` passes before it is back.
    func markDown(service: String, server: String)
}

/// Everything the agent acts on. `ipvs` is made on first need (a config without Layer 4 services runs on a kernel
/// without IPVS); its factory throws when the kernel has none.
/// A pair's moving parts: keepalived (VRRP) and the authenticated channel to the peer lbd.
public protocol PairEffector: AnyObject {
    /// Before anything changes: keepalived is installed, the peer secret can be read.
    func check(_ pair: HighAvailability) throws
    /// Starts keepalived with `keepalivedConfig` and opens the peer channel; `events` may be called on any thread.
    func start(_ pair: HighAvailability, node: String, keepalivedConfig: String, standby: Bool,
               events: @escaping @Sendable (PairEvent) -> Void) throws
    /// A changed keepalived configuration (VIP set or pair section).
    func reload(keepalivedConfig: String) throws
    func setStandby(_ on: Bool) throws
    func send(_ message: PeerMessage)
    func stop()
    /// Where keepalived's files are (its configuration is written there).
    var keepalivedFiles: KeepalivedConfig.Files { get }
}

public struct Effectors {
    public var ipvs: () throws -> IPVSKernel
    public var sysctl: SysctlAccess
    public var addresses: AddressKernel
    public var firewall: FirewallEffector
    public var proxy: ProxyEffector
    public var health: HealthChecking
    /// keepalived and the peer channel, for a config with high_availability; nil: this lbd cannot run in a pair.
    public var pair: PairEffector?

    public init(ipvs: @escaping () throws -> IPVSKernel, sysctl: SysctlAccess, addresses: AddressKernel,
                firewall: FirewallEffector, proxy: ProxyEffector, health: HealthChecking, pair: PairEffector? = nil) {
        self.pair = pair
        self.ipvs = ipvs
        self.sysctl = sysctl
        self.addresses = addresses
        self.firewall = firewall
        self.proxy = proxy
        self.health = health
    }
}
