import Foundation
import LBConfig
import LBIPVS
import Logging

/// The agent's Layer 4 side: keeps the kernel's IPVS table equal to what the config and the health checks ask for.
/// Every change is planned from a fresh dump and only the difference is sent; services lb does not own are reported,
/// never touched. Netlink requests are serialized here (health transitions arrive from several threads).
final class KernelServices: @unchecked Sendable {
    private let client: IPVSClient
    private let services: [VirtualService]
    private let logger: Logger
    private let lock = NSLock()
    /// service name → servers currently failing their checks (they get weight 0: existing connections finish).
    private var down: [String: Set<String>] = [:]
    private var owned: Set<IPVSServiceKey> = []

    init(services: [VirtualService], logger: Logger) throws {
        self.client = try IPVSClient()
        self.services = services.filter { $0.mode.isLayer4 }
        self.logger = logger
    }

    /// The kernel settings the Layer 4 modes depend on: NAT and SNAT forward packets (`ip_forward`); SNAT needs
    /// IPVS connections tracked by netfilter (`vs.conntrack`) so its source-NAT rules see them.
    func applySysctls() throws {
        var settings: [(String, String)] = []
        if services.contains(where: { $0.mode == .l4NAT || $0.mode == .l4SNAT }) {
            settings.append(("/proc/sys/net/ipv4/ip_forward", "1"))
        }
        if services.contains(where: { $0.mode == .l4SNAT }) {
            settings.append(("/proc/sys/net/ipv4/vs/conntrack", "1"))
        }
        for (path, value) in settings {
            let current = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            guard current != value else { continue }
            do {
                try value.write(toFile: path, atomically: false, encoding: .utf8)
            } catch {
                throw SysctlError(path: path, value: value, reason: "\(error.localizedDescription)")
            }
            // Read back: a value the kernel silently refused is as bad as a failed write.
            let now = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            guard now == value else { throw SysctlError(path: path, value: value, reason: "reads back as \(now ?? "nothing")") }
            logger.notice("kernel setting changed", metadata: ["setting": "\(path)", "value": "\(value)"])
        }
    }

    /// What the kernel held after the last successful apply. Health transitions plan against it instead of dumping
    /// the whole table each time; after a failure it is dropped, so the next change starts from a fresh dump.
    private var lastApplied: IPVSTable?

    /// Makes the kernel match, planning from a fresh dump; throws with what was and was not applied if the
    /// kernel refuses something.
    func reconcile() throws {
        lock.lock()
        defer { lock.unlock() }
        try apply(from: client.table())
    }

    /// Must hold `lock`.
    private func apply(from actual: IPVSTable) throws {
        let weights = down.mapValues { Dictionary(uniqueKeysWithValues: $0.map { ($0, UInt32(0)) }) }
        let desired = IPVSPlanner.desiredTable(for: services, weights: weights)
        owned.formUnion(desired.services.keys)
        let (operations, foreign) = IPVSPlanner.plan(from: actual, to: desired, owned: owned)
        for key in foreign {
            logger.notice("IPVS service not created by lb left alone", metadata: ["service": "\(key)"])
        }
        for operation in operations { logger.info("IPVS: \(operation)") }
        lastApplied = nil
        try client.apply(operations)
        lastApplied = desired
    }

    func setHealthy(service: String, server: String, _ healthy: Bool) {
        guard services.contains(where: { $0.name == service }) else { return }
        lock.lock()
        defer { lock.unlock() }
        if healthy { down[service, default: []].remove(server) } else { down[service, default: []].insert(server) }
        do {
            try apply(from: lastApplied ?? client.table())
        } catch {
            logger.error("IPVS update failed: \(error)", metadata: ["service": "\(service)", "server": "\(server)"])
        }
    }
}

struct SysctlError: Error, CustomStringConvertible {
    let path: String
    let value: String
    let reason: String
    var description: String { "cannot set \(path) to \(value): \(reason)" }
}
