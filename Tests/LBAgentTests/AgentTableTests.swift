import Foundation
import LBConfig
import LBControl
import LBIPVS
import LBRuntime
import Testing
@testable import LBAgent

/// The agent as a table: each row is a sequence of events (health transitions, lbctl commands, reloads, drift
/// passes, a failing effector) against in-memory effectors, and after each step the IPVS table the fake kernel
/// holds, the membership the proxy's pool was given and what `lbctl status` says.
@Suite("Agent: one owner of runtime state, as a table")
struct AgentTableTests {
    /// A Layer 4 NAT VIP and a Layer 7 HTTP VIP with two servers each.
    static func config(coreWeight: Int = 100, extraService: String = "", webMode: String = "l7-http", webWeight: Int = 10) -> String {
        """
        virtual_services:
          - name: dicom
            vip: 10.0.0.40
            ports: [104]
            mode: l4-nat
            interface: eth0
            health_check: {type: connect}
            real_servers:
              - {name: core-1, address: 10.0.1.1, weight: \(coreWeight)}
              - {name: core-2, address: 10.0.1.2}
          - name: web
            vip: 10.0.0.41
            ports: [8080]
            mode: \(webMode)
            interface: eth0
            health_check: {type: connect}
            real_servers:
              - {name: web-1, address: 10.0.1.1, weight: \(webWeight)}
              - {name: web-2, address: 10.0.1.2}
        \(extraService)
        """
    }

    static let snatService = """
          - name: viewer
            vip: 10.0.0.42
            ports: [443]
            mode: l4-snat
            interface: eth0
            health_check: {type: connect}
            real_servers:
              - {name: web-1, address: 10.0.1.1}
        """

    enum Step: CustomStringConvertible {
        case health(String, String, up: Bool)
        case reload(String)
        case command(ControlRequest.Command, service: String?, server: String)
        case mode(String, ForwardingMode)
        case failNetfilter(Bool)
        case drift
        /// A drain and a reload sent together.
        case drainDuringReload(service: String, server: String, config: String)

        var description: String {
            switch self {
            case .health(let service, let server, let up): return "\(service)/\(server) \(up ? "up" : "down")"
            case .reload: return "reload"
            case .command(let command, let service, let server): return "\(command.rawValue) \(service ?? "*")/\(server)"
            case .mode(let service, let mode): return "mode \(service) \(mode.rawValue)"
            case .failNetfilter(let fail): return fail ? "netfilter fails" : "netfilter works"
            case .drift: return "drift pass"
            case .drainDuringReload: return "drain during reload"
            }
        }
    }

    /// What must hold after a step. IPVS: "VIP:PORT → RIP:PORT" to its weight (nil: absent). Pool: "service/server"
    /// to the weight the proxy schedules with (nil: the proxy does not run it). Status: "service/server" to
    /// "health admin weight".
    struct Expect {
        var ok = true
        var ipvs: [String: UInt32?] = [:]
        var pool: [String: Int?] = [:]
        var status: [String: String] = [:]
        var persistedOverrides: [String: [String: AdminState]]?
        var addresses: Set<String>?
        var snatChain: [String]?
    }

    struct Row: CustomStringConvertible, Sendable {
        var name: String
        var start: String
        var steps: [(Step, Expect)]
        var description: String { name }
    }

    static let rows: [Row] = [
        Row(name: "server down, its service changed by a reload, then it recovers: back in IPVS and in the pool",
            start: config(), steps: [
            (.health("dicom", "core-1", up: false), Expect(ipvs: ["10.0.0.40:104 → 10.0.1.1:104": 0], status: ["dicom/core-1": "down online 0"])),
            (.health("web", "web-1", up: false), Expect(pool: ["web/web-1": 0], status: ["web/web-1": "down online 0"])),
            (.reload(config(coreWeight: 70, webWeight: 20)), Expect(
                ipvs: ["10.0.0.40:104 → 10.0.1.1:104": 0, "10.0.0.40:104 → 10.0.1.2:104": 100],
                pool: ["web/web-1": 0, "web/web-2": 100], status: ["dicom/core-1": "down online 0", "web/web-1": "down online 0"])),
            (.health("dicom", "core-1", up: true), Expect(ipvs: ["10.0.0.40:104 → 10.0.1.1:104": 70], status: ["dicom/core-1": "up online 70"])),
            (.health("web", "web-1", up: true), Expect(pool: ["web/web-1": 20], status: ["web/web-1": "up online 20"])),
        ]),
        Row(name: "drain on a Layer 7 service, then a switch to l4-nat: weight 0 in IPVS, status drain",
            start: config(), steps: [
            (.command(.drain, service: "web", server: "web-1"), Expect(pool: ["web/web-1": 0, "web/web-2": 100], status: ["web/web-1": "checking drain 0"],
                                                                       persistedOverrides: ["web": ["web-1": .drain]])),
            (.mode("web", .l4NAT), Expect(ipvs: ["10.0.0.41:8080 → 10.0.1.1:8080": 0, "10.0.0.41:8080 → 10.0.1.2:8080": 100],
                                          pool: ["web/web-1": nil], status: ["web/web-1": "checking drain 0"],
                                          persistedOverrides: ["web": ["web-1": .drain]])),
            (.command(.online, service: "web", server: "web-1"), Expect(ipvs: ["10.0.0.41:8080 → 10.0.1.1:8080": 10],
                                                                        status: ["web/web-1": "checking online 10"], persistedOverrides: [:])),
        ]),
        Row(name: "a reload failing at netfilter leaves everything as before; a drift pass then removes nothing",
            start: config(), steps: [
            (.command(.halt, service: "dicom", server: "core-2"), Expect(ipvs: ["10.0.0.40:104 → 10.0.1.2:104": nil])),
            (.failNetfilter(true), Expect()),
            (.reload(config(coreWeight: 5, extraService: snatService)), Expect(
                ok: false, ipvs: ["10.0.0.40:104 → 10.0.1.1:104": 100, "10.0.0.40:104 → 10.0.1.2:104": nil, "10.0.0.42:443 → 10.0.1.1:443": nil],
                status: ["dicom/core-1": "checking online 100", "dicom/core-2": "checking halt 0"],
                persistedOverrides: ["dicom": ["core-2": .halt]], addresses: ["10.0.0.40", "10.0.0.41"], snatChain: [])),
            (.failNetfilter(false), Expect()),
            (.drift, Expect(ipvs: ["10.0.0.40:104 → 10.0.1.1:104": 100, "10.0.0.40:104 → 10.0.1.2:104": nil],
                            addresses: ["10.0.0.40", "10.0.0.41"], snatChain: [])),
            (.reload(config(coreWeight: 5, extraService: snatService)), Expect(
                ipvs: ["10.0.0.40:104 → 10.0.1.1:104": 5, "10.0.0.42:443 → 10.0.1.1:443": 100],
                addresses: ["10.0.0.40", "10.0.0.41", "10.0.0.42"], snatChain: ["viewer"])),
        ]),
        Row(name: "a drain and a reload at the same time: both in force and both persisted",
            start: config(), steps: [
            (.drainDuringReload(service: "dicom", server: "core-1", config: config(coreWeight: 60)), Expect(
                ipvs: ["10.0.0.40:104 → 10.0.1.1:104": 0, "10.0.0.40:104 → 10.0.1.2:104": 100],
                status: ["dicom/core-1": "checking drain 0"], persistedOverrides: ["dicom": ["core-1": .drain]])),
            (.command(.online, service: "dicom", server: "core-1"), Expect(ipvs: ["10.0.0.40:104 → 10.0.1.1:104": 60])),
        ]),
        Row(name: "a reload that removes a server: gone from IPVS, the pool and status; its override forgotten",
            start: config(), steps: [
            (.command(.drain, service: nil, server: "core-2"), Expect(persistedOverrides: ["dicom": ["core-2": .drain]])),
            (.reload(config().replacingOccurrences(of: "      - {name: core-2, address: 10.0.1.2}\n", with: "")), Expect(
                ipvs: ["10.0.0.40:104 → 10.0.1.2:104": nil, "10.0.0.40:104 → 10.0.1.1:104": 100], persistedOverrides: [:])),
        ]),
    ]

    @Test(arguments: rows)
    func row(_ row: Row) async throws {
        let harness = try await AgentHarness(config: row.start)
        for (index, (step, expect)) in row.steps.enumerated() {
            let context = "step \(index + 1) (\(step))"
            let ok = await harness.run(step)
            #expect(ok == expect.ok, "\(context): ok")
            for (entry, weight) in expect.ipvs {
                let parts = entry.components(separatedBy: " → ")
                #expect(harness.ipvs.weight(parts[0], parts[1]) == weight, "\(context): IPVS \(entry)")
            }
            for (entry, weight) in expect.pool {
                let parts = entry.split(separator: "/").map(String.init)
                let member = harness.proxy.member(parts[0], parts[1])
                #expect(member.map { $0.acceptsNew ? $0.weight : 0 } == weight, "\(context): pool \(entry)")
            }
            let status = await harness.status()
            for (entry, wanted) in expect.status {
                #expect(status[entry] == wanted, "\(context): status \(entry)")
            }
            if let overrides = expect.persistedOverrides {
                #expect(try harness.store.load().overrides == overrides, "\(context): state file")
            }
            if let addresses = expect.addresses {
                #expect(Set(harness.links.addresses.map { $0.address.description }) == addresses, "\(context): VIP addresses")
                #expect(Set(try harness.store.load().vipAddresses.map { $0.address.description }) == addresses, "\(context): owned addresses")
            }
            if let chain = expect.snatChain {
                #expect(harness.firewall.snatServices == chain, "\(context): LB-SNAT")
            }
        }
    }

    @Test func failedReloadRestoresTheKernelTableExactly() async throws {
        let harness = try await AgentHarness(config: Self.config())
        let before = harness.ipvs.current
        let proxyBefore = harness.proxy.services
        harness.firewall.failApply = "iptables-restore: exit 4: Another app is currently holding the xtables lock"
        let response = await harness.agent.handle(ControlRequest(command: .reload))
        // The file on disk is still the start config, so nothing to do: change it.
        #expect(response.ok)
        try Self.config(coreWeight: 1, extraService: Self.snatService, webMode: "l7-tcp").write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        let failed = await harness.agent.handle(ControlRequest(command: .reload))
        #expect(!failed.ok)
        #expect(failed.message?.contains("failed at netfilter") == true)
        #expect(failed.message?.contains("rolled back, nothing changed") == true, "\(failed.message ?? "")")
        #expect(harness.ipvs.current == before)
        #expect(harness.proxy.services == proxyBefore)
        #expect(await harness.agent.snapshot().configuration.virtualServices.map(\.name) == ["dicom", "web"])
        #expect(harness.health.running == ["dicom", "web"])
    }

    @Test func changedCheckCarriesOverOnlyForTheSameServer() async throws {
        let harness = try await AgentHarness(config: Self.config())
        _ = await harness.reload(Self.config(coreWeight: 70).replacingOccurrences(of: "address: 10.0.1.2}\n  - name: web", with: "address: 10.0.1.2}\n  - name: web"))
        // dicom changed: its checks were restarted (the fake monitor records the restart).
        #expect(harness.health.running.contains("dicom"))
    }

    @Test func modeSwitchRefusesWhenTheFileChangedOnDisk() async throws {
        let harness = try await AgentHarness(config: Self.config())
        try (Self.config() + "\n# edited by hand\n").write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        let response = await harness.agent.handle(ControlRequest(command: .mode, service: "web", mode: "l7-tcp"))
        #expect(!response.ok)
        #expect(response.message?.contains("changed on disk") == true)
        #expect(harness.proxy.services["web"]?.mode == .l7HTTP)
        #expect(try String(contentsOfFile: harness.configPath, encoding: .utf8).hasSuffix("# edited by hand\n"))
    }

    /// lb_drift_checks and lb_drift_repairs: every pass counts, and a pass that put something back counts once more.
    @Test func driftPassesAndRepairsAreCounted() async throws {
        let harness = try await AgentHarness(config: Self.config())
        await harness.agent.repairDrift()
        #expect(await harness.agent.driftCheckCounts() == DriftCounts(checks: 1, repairs: 0))
        let addresses = harness.links.addresses
        harness.links.addresses.removeAll()  // someone took the VIPs off the interface
        await harness.agent.repairDrift()
        #expect(await harness.agent.driftCheckCounts() == DriftCounts(checks: 2, repairs: 1))
        #expect(harness.links.addresses == addresses)
        await harness.agent.repairDrift()
        #expect(await harness.agent.driftCheckCounts() == DriftCounts(checks: 3, repairs: 1))
        // A repair that fails is a check, not a repair.
        harness.firewall.drifted = true
        harness.firewall.failApply = "iptables-restore: exit 4: Another app is currently holding the xtables lock"
        await harness.agent.repairDrift()
        #expect(await harness.agent.driftCheckCounts() == DriftCounts(checks: 4, repairs: 1))
    }

    /// A config saved on Windows keeps its CR LF line ends through `lbctl mode`; the edit used to find no line
    /// to change, because CR LF is one Swift Character and the file was read as one line.
    @Test func modeSwitchEditsAWindowsFileInPlace() async throws {
        let windows = Self.config().replacingOccurrences(of: "\n", with: "\r\n")
        let harness = try await AgentHarness(config: windows)
        let response = await harness.agent.handle(ControlRequest(command: .mode, service: "web", mode: "l7-tcp"))
        #expect(response.ok, "\(response.message ?? "")")
        #expect(harness.proxy.services["web"]?.mode == .l7TCP)
        let written = try Data(contentsOf: URL(fileURLWithPath: harness.configPath))
        #expect(written == Data(windows.replacingOccurrences(of: "mode: l7-http", with: "mode: l7-tcp").utf8))
    }

    /// The mode's column counts Unicode scalars: a combining accent before it on a flow-style line (here in the
    /// body a check expects) used to move the edit onto the comment's "l7-http", leave the mode as it was, and
    /// report the switch done.
    @Test func modeSwitchEditsTheValueAfterACombiningAccent() async throws {
        let viewer = "  - {name: viewer, health_check: {type: http-get, path: /, expect_body: \"cafe\u{301}\"}, mode: l7-http, "
            + "vip: 10.0.0.42, ports: [8443], interface: eth0, real_servers: [{name: v-1, address: 10.0.1.3}]}  # l7-http since 2025\n"
        let config = Self.config(extraService: viewer)
        let harness = try await AgentHarness(config: config)
        let response = await harness.agent.handle(ControlRequest(command: .mode, service: "viewer", mode: "l7-tcp"))
        #expect(response.ok, "\(response.message ?? "")")
        #expect(harness.proxy.services["viewer"]?.mode == .l7TCP)
        let written = try String(contentsOfFile: harness.configPath, encoding: .utf8)
        let expected = config.replacingOccurrences(of: "mode: l7-http, vip", with: "mode: l7-tcp, vip")
        #expect(written.utf8.elementsEqual(expected.utf8), "written:\n\(written)")
    }

    /// A quoted mode is edited inside its quotes.
    @Test func modeSwitchEditsAQuotedValue() async throws {
        let config = Self.config().replacingOccurrences(of: "mode: l7-http", with: "mode: 'l7-http'")
        let harness = try await AgentHarness(config: config)
        let response = await harness.agent.handle(ControlRequest(command: .mode, service: "web", mode: "l7-tcp"))
        #expect(response.ok, "\(response.message ?? "")")
        let written = try String(contentsOfFile: harness.configPath, encoding: .utf8)
        #expect(written == config.replacingOccurrences(of: "'l7-http'", with: "'l7-tcp'"))
    }

    @Test func replacingValueNeedsTheValueAtItsColumn() {
        #expect(Agent.replacingValue("l4-nat", with: "l4-dr", in: "    mode: l4-nat", atColumn: 11) == "    mode: l4-dr")
        #expect(Agent.replacingValue("l4-nat", with: "l4-dr", in: "    mode: \"l4-nat\"", atColumn: 11) == "    mode: \"l4-dr\"")
        #expect(Agent.replacingValue("l4-nat", with: "l4-dr", in: "    mode: l4-nat", atColumn: 12) == nil)
        #expect(Agent.replacingValue("l4-nat", with: "l4-dr", in: "    mode: l4-na", atColumn: 11) == nil)
        #expect(Agent.replacingValue("l4-nat", with: "l4-dr", in: "", atColumn: 1) == nil)
        #expect(Agent.replacingValue("l4-nat", with: "l4-dr", in: "x", atColumn: 0) == nil)
    }

    @Test func layer4FallbackStandsInWhileNoServerIsUsable() async throws {
        let config = Self.config().replacingOccurrences(of: "      - {name: core-2, address: 10.0.1.2}\n",
                                                        with: "      - {name: core-2, address: 10.0.1.2}\n    fallback: {address: 10.0.1.99}\n")
        let harness = try await AgentHarness(config: config)
        #expect(harness.ipvs.weight("10.0.0.40:104", "10.0.1.99:104") == nil)
        await harness.agent.healthChangedAndApplied(.init(service: "dicom", server: "core-1", healthy: false, reason: "refused"))
        #expect(harness.ipvs.weight("10.0.0.40:104", "10.0.1.99:104") == nil)
        _ = await harness.agent.handle(ControlRequest(command: .halt, service: "dicom", server: "core-2"))
        #expect(harness.ipvs.weight("10.0.0.40:104", "10.0.1.99:104") == 1)
        await harness.agent.healthChangedAndApplied(.init(service: "dicom", server: "core-1", healthy: true, reason: "ok"))
        #expect(harness.ipvs.weight("10.0.0.40:104", "10.0.1.99:104") == nil)
        #expect(harness.ipvs.weight("10.0.0.40:104", "10.0.1.1:104") == 100)
    }
}

/// One agent over fake effectors, with its config file and state directory in a temporary folder.
final class AgentHarness: @unchecked Sendable {
    let directory: String
    let configPath: String
    let ipvs = FakeIPVS()
    let sysctl = FakeSysctl()
    let links = FakeLinks()
    let firewall = FakeFirewall()
    let proxy = FakeProxy()
    let health = FakeHealth()
    let store: StateStore
    let agent: Agent

    init(config: String) async throws {
        directory = NSTemporaryDirectory() + "lb-agent-test-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        configPath = directory + "/lb.yaml"
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        let report = ConfigurationLoader.check(yaml: config, file: configPath)
        guard let configuration = report.configuration else { throw FakeError("start config rejected: \(report.diagnostics)") }
        store = StateStore(directory: directory + "/state")
        let ipvs = self.ipvs
        let effectors = Effectors(ipvs: { ipvs }, sysctl: sysctl, addresses: links, firewall: firewall, proxy: proxy, health: health)
        agent = Agent(configuration: configuration, configText: config, configPath: configPath, effectors: effectors,
                      state: store, logger: agentTestLogger)
        try await agent.start()
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func reload(_ config: String) async -> ControlResponse {
        do {
            try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        } catch {
            return ControlResponse(ok: false, message: "\(error)")
        }
        return await agent.handle(ControlRequest(command: .reload))
    }

    func run(_ step: AgentTableTests.Step) async -> Bool {
        switch step {
        case .health(let service, let server, let up):
            await agent.healthChangedAndApplied(.init(service: service, server: server, healthy: up, reason: up ? "2 checks passed" : "refused"))
            return true
        case .reload(let config):
            return await reload(config).ok
        case .command(let command, let service, let server):
            return await agent.handle(ControlRequest(command: command, service: service, server: server)).ok
        case .mode(let service, let mode):
            return await agent.handle(ControlRequest(command: .mode, service: service, mode: mode.rawValue)).ok
        case .failNetfilter(let fail):
            firewall.failApply = fail ? "iptables-restore: exit 4: Another app is currently holding the xtables lock" : nil
            return true
        case .drift:
            await agent.repairDrift()
            return true
        case .drainDuringReload(let service, let server, let config):
            do { try config.write(toFile: configPath, atomically: true, encoding: .utf8) } catch { return false }
            async let drained = agent.handle(ControlRequest(command: .drain, service: service, server: server))
            async let reloaded = agent.handle(ControlRequest(command: .reload))
            let results = await [drained, reloaded]
            return results.allSatisfy(\.ok)
        }
    }

    /// "service/server" → "health admin weight".
    func status() async -> [String: String] {
        let report = await agent.handle(ControlRequest(command: .status)).status ?? []
        var result: [String: String] = [:]
        for service in report {
            for server in service.servers {
                result["\(service.name)/\(server.name)"] = "\(server.health) \(server.admin.rawValue) \(server.weight)"
            }
        }
        return result
    }
}

import Logging
let agentTestLogger: Logger = {
    var logger = Logger(label: "lb-agent-test")
    logger.logLevel = .critical
    return logger
}()
