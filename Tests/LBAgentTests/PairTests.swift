import Foundation
import LBConfig
import LBControl
@testable import LBAgent
import LBHighAvailability
import LBRuntime
import Testing

/// The agent's side of a pair, against fakes: keepalived's role followed, overrides replicated newest first,
/// standby kept across restarts, keepalived reloaded when the VIP set changes.
@Suite("A node of a pair")
struct PairTests {
    static func yaml(extraVIP: Bool = false) -> String {
        var text = """
            virtual_services:
              - name: PACS
                vip: 10.0.0.40
                ports: [104]
                mode: l4-nat
                health_check: {type: none}
                real_servers:
                  - {name: core-1, address: 10.0.1.11}
                  - {name: core-2, address: 10.0.1.12}

            """
        if extraVIP {
            text += """
                  - name: HL7
                    vip: 10.0.0.42
                    ports: [2575]
                    mode: l4-nat
                    health_check: {type: none}
                    real_servers:
                      - {name: core-1, address: 10.0.1.11}

                """
        }
        return text + """
            high_availability:
              virtual_router_id: 51
              nodes:
                - {name: lb-1, address: 10.0.0.2, interface: eth0, priority: 250}
                - {name: lb-2, address: 10.0.0.3, interface: eth0, priority: 200}
              peer_secret_file: /etc/lb/peer.key
            """
    }

    final class Node {
        let directory = NSTemporaryDirectory() + "lb-pair-\(UUID().uuidString)"
        let pair = FakePair()
        let ipvs = FakeIPVS()
        let links = FakeLinks()
        let proxy = FakeProxy()
        var agent: Agent!

        init(name: String = "lb-1", yaml: String = PairTests.yaml()) async throws {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try yaml.write(toFile: directory + "/lb.yaml", atomically: true, encoding: .utf8)
            pair.ipvs = ipvs
            try await start(name: name, yaml: yaml)
        }

        func start(name: String, yaml: String) async throws {
            let configuration = try #require(ConfigurationLoader.check(yaml: yaml, file: "pair.yaml").configuration)
            let ipvs = self.ipvs
            let effectors = Effectors(ipvs: { ipvs }, sysctl: FakeSysctl(), addresses: links, firewall: FakeFirewall(),
                                      proxy: proxy, health: FakeHealth(), pair: pair)
            agent = Agent(configuration: configuration, configText: yaml, configPath: directory + "/lb.yaml",
                          effectors: effectors, state: StateStore(directory: directory), logger: agentTestLogger, node: name)
            try await agent.start()
        }

        deinit { try? FileManager.default.removeItem(atPath: directory) }
    }

    @Test func keepalivedStartsLastWithTheVIPsAndLBAddsNoAddress() async throws {
        let node = try await Node()
        let config = try #require(node.pair.started)
        #expect(config.contains("virtual_ipaddress {\n        10.0.0.40/32 dev eth0\n    }"), "\(config)")
        #expect(config.contains("priority 250") && config.contains("unicast_peer {\n        10.0.0.3"))
        #expect(node.links.addresses.isEmpty, "keepalived owns the VIP addresses in a pair")
        #expect(node.proxy.freeBind, "the standby's listeners bind VIPs it does not hold yet")
        #expect(node.pair.ipvsAtStart?.services.count == 1, "keepalived starts once IPVS serves the VIP")
    }

    @Test func anUnknownNodeNameChangesNothing() async throws {
        let directory = NSTemporaryDirectory() + "lb-pair-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let configuration = try #require(ConfigurationLoader.check(yaml: Self.yaml(), file: "pair.yaml").configuration)
        let pair = FakePair(), ipvs = FakeIPVS()
        let effectors = Effectors(ipvs: { ipvs }, sysctl: FakeSysctl(), addresses: FakeLinks(), firewall: FakeFirewall(),
                                  proxy: FakeProxy(), health: FakeHealth(), pair: pair)
        let agent = Agent(configuration: configuration, configText: nil, configPath: directory + "/lb.yaml",
                          effectors: effectors, state: StateStore(directory: directory), logger: agentTestLogger, node: "lb-9")
        await #expect(throws: PreflightError.self) { try await agent.start() }
        #expect(pair.started == nil)
        #expect(ipvs.current.services.isEmpty, "nothing applied")
    }

    @Test func roleFollowsKeepalivedWithACause() async throws {
        let node = try await Node()
        #expect(await node.agent.pairStatus()?.role == "starting")
        await node.agent.pairEventHandled(.vrrp(.backup))
        await node.agent.pairEventHandled(.vrrp(.master))
        let report = try #require(await node.agent.pairStatus())
        #expect(report.role == "master")
        #expect(report.transitions == 2)
        #expect(report.lastTransition == "backup → master: peer lb-2 silent", "\(report.lastTransition ?? "")")
        #expect(node.pair.sent.last?.role == .master, "the peer hears of the new role at once")
        let status = await node.agent.handle(ControlRequest(command: .status))
        #expect(status.pair?.role == "master")
    }

    @Test func overridesTravelBothWaysAndTheNewestWins() async throws {
        let node = try await Node()
        let drained = await node.agent.handle(ControlRequest(command: .drain, service: "PACS", server: "core-2"))
        #expect(drained.ok)
        let sent = try #require(node.pair.sent.last)
        #expect(sent.overrides.map(\.service) == ["PACS"] && sent.overrides.first?.change.admin == .drain)
        #expect(sent.overrides.first?.change.node == "lb-1")
        let drainedAt = try #require(sent.overrides.first?.change.at)
        // An older change from the peer loses; a newer one wins and reaches IPVS.
        func message(_ admin: AdminState, at time: Int64) -> PeerMessage {
            PeerMessage(node: "lb-2", sentAt: time, nonce: UUID().uuidString, role: .backup, configDigest: "x",
                        overrides: [.init(service: "PACS", server: "core-2", change: .init(admin: admin, at: time, node: "lb-2"))])
        }
        await node.agent.pairEventHandled(.peerMessage(message(.online, at: drainedAt - 1)))
        #expect(await node.agent.snapshot().admin(ServerKey(service: "PACS", server: "core-2")) == .drain)
        await node.agent.pairEventHandled(.peerMessage(message(.halt, at: drainedAt + 1)))
        #expect(await node.agent.snapshot().admin(ServerKey(service: "PACS", server: "core-2")) == .halt)
        let service = try #require(node.ipvs.current.services.values.first)
        #expect(service.destinations.count == 1, "a halted server leaves IPVS")
        // Kept across a restart, with its time: a node that returns does not undo the newer change.
        let saved = try StateStore(directory: node.directory).load()
        #expect(saved.overrideChanges["PACS"]?["core-2"]?.at == drainedAt + 1)
        let report = try #require(await node.agent.pairStatus())
        #expect(report.configsMatch == false, "the peer's digest differs from this node's")
        // After a restart the recorded time still decides: the peer's older change loses again.
        await node.agent.stop(cleanUp: false)
        try await node.start(name: "lb-1", yaml: PairTests.yaml())
        await node.agent.pairEventHandled(.peerMessage(message(.online, at: drainedAt)))
        #expect(await node.agent.snapshot().admin(ServerKey(service: "PACS", server: "core-2")) == .halt)
        // A local change after a newer one from the peer (whose clock may run ahead) is still the newest.
        await node.agent.pairEventHandled(.peerMessage(message(.drain, at: drainedAt + 60_000)))
        #expect(await node.agent.handle(ControlRequest(command: .online, service: "PACS", server: "core-2")).ok)
        let online = try #require(node.pair.sent.last?.overrides.first?.change)
        #expect(online.admin == .online && online.at > drainedAt + 60_000)
    }

    @Test func aReloadThatAddsOrRemovesThePairIsRefused() async throws {
        let node = try await Node()
        let single = PairTests.yaml().components(separatedBy: "high_availability:")[0]
        try single.write(toFile: node.directory + "/lb.yaml", atomically: true, encoding: .utf8)
        let answer = await node.agent.handle(ControlRequest(command: .reload))
        #expect(!answer.ok && answer.message?.contains("removing high_availability needs lbd to restart") == true, "\(answer.message ?? "")")
        let moved = PairTests.yaml().replacingOccurrences(of: "peer_secret_file: /etc/lb/peer.key", with: "peer_secret_file: /etc/lb/other.key")
        try moved.write(toFile: node.directory + "/lb.yaml", atomically: true, encoding: .utf8)
        let second = await node.agent.handle(ControlRequest(command: .reload))
        #expect(!second.ok && second.message?.contains("needs lbd to restart") == true)
        #expect(!node.pair.stopped && node.pair.reloads.isEmpty, "nothing changed")
    }

    @Test func standbyIsKeptAcrossARestart() async throws {
        let node = try await Node()
        let answer = await node.agent.handle(ControlRequest(command: .haStandby))
        #expect(answer.ok, "\(answer.message ?? "")")
        #expect(node.pair.standby == [false, true])
        #expect(await node.agent.pairStatus()?.standby == true)
        await node.agent.stop(cleanUp: false)
        #expect(node.pair.stopped)
        try await node.start(name: "lb-1", yaml: PairTests.yaml())
        #expect(node.pair.standby.last == true, "keepalived starts in standby again")
        let resumed = await node.agent.handle(ControlRequest(command: .haResume))
        #expect(resumed.ok && node.pair.standby.last == false)
        #expect(try StateStore(directory: node.directory).load().pairStandby == false)
    }

    @Test func aReloadThatChangesTheVIPsReloadsKeepalived() async throws {
        let node = try await Node()
        try PairTests.yaml(extraVIP: true).write(toFile: node.directory + "/lb.yaml", atomically: true, encoding: .utf8)
        let answer = await node.agent.handle(ControlRequest(command: .reload))
        #expect(answer.ok, "\(answer.message ?? "")")
        let reloaded = try #require(node.pair.reloads.last)
        #expect(reloaded.contains("10.0.0.42/32 dev eth0"))
        // A reload that leaves the VIPs alone does not touch keepalived.
        let count = node.pair.reloads.count
        let again = PairTests.yaml(extraVIP: true).replacingOccurrences(of: "address: 10.0.1.12}", with: "address: 10.0.1.13}")
        try again.write(toFile: node.directory + "/lb.yaml", atomically: true, encoding: .utf8)
        #expect(await node.agent.handle(ControlRequest(command: .reload)).ok)
        #expect(node.pair.reloads.count == count)
    }
}
