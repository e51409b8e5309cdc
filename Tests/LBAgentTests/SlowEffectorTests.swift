import Foundation
import LBConfig
import LBControl
import LBProxy
import LBTestSupport
import NIOPosix
import Testing
@testable import LBAgent

/// The agent's work (netlink, iptables, fsync) runs on its own queue: a kernel that takes a second per change must
/// not slow the proxy, whose event loops never wait for the agent.
@Suite("Agent: a slow effector does not stall the proxy")
struct SlowEffectorTests {
    @Test func layer7RequestsCompleteWhileIPVSTakesASecondPerChange() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let base = Ports.block()
        let web1 = try HTTPBackend(name: "web-1", port: base + 1, group: group)
        let web2 = try HTTPBackend(name: "web-2", port: base + 2, group: group)
        let yaml = """
            virtual_services:
              - name: dicom
                vip: 10.0.0.40
                ports: [104]
                mode: l4-nat
                health_check: {type: none}
                real_servers:
                  - {name: core-1, address: 10.0.1.1}
                  - {name: core-2, address: 10.0.1.2}
              - name: web
                vip: 127.0.0.1
                ports: [\(base)]
                mode: l7-http
                health_check: {type: none}
                real_servers:
                  - {name: web-1, address: 127.0.0.1, port: \(base + 1)}
                  - {name: web-2, address: 127.0.0.1, port: \(base + 2)}
            """
        let directory = NSTemporaryDirectory() + "lb-slow-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let configuration = try #require(ConfigurationLoader.check(yaml: yaml, file: "slow.yaml").configuration)
        let engine = ProxyEngine(threads: 2, logger: agentTestLogger)
        let ipvs = FakeIPVS()
        let effectors = Effectors(ipvs: { ipvs }, sysctl: FakeSysctl(), addresses: FakeLinks(), firewall: FakeFirewall(),
                                  proxy: ProxyEngineEffector(engine: engine), health: FakeHealth())
        let agent = Agent(configuration: configuration, configText: yaml, configPath: directory + "/lb.yaml",
                          effectors: effectors, state: StateStore(directory: directory), logger: agentTestLogger)
        try await agent.start()
        #expect(ipvs.weight("10.0.0.40:104", "10.0.1.2:104") == 100)

        ipvs.delay = .seconds(1)
        let began = ContinuousClock.now
        // Two Layer 4 changes queue up on the agent: two seconds of kernel work.
        agent.healthChanged(.init(service: "dicom", server: "core-1", healthy: false, reason: "refused"))
        let drain = Task { await agent.handle(ControlRequest(command: .drain, service: "dicom", server: "core-2")) }
        var latencies: [Duration] = []
        while ContinuousClock.now - began < .milliseconds(1800) {
            let sent = ContinuousClock.now
            let response = try get(base)
            latencies.append(ContinuousClock.now - sent)
            #expect(statusLine(response) == "HTTP/1.1 200 OK")
        }
        let drained = await drain.value
        let agentTook = ContinuousClock.now - began
        #expect(drained.ok)
        // The agent really was busy for the whole time (else this test would prove nothing).
        #expect(agentTook >= .seconds(2))
        #expect(ipvs.weight("10.0.0.40:104", "10.0.1.1:104") == 0)
        #expect(ipvs.weight("10.0.0.40:104", "10.0.1.2:104") == 0)
        #expect(latencies.count >= 20)
        // A proxy that waited for the agent would stall a request for the whole second of kernel work: none may
        // come near it. The typical request stays under 50 ms (the slowest is bounded loosely: the whole test suite
        // shares two cores with this test).
        let sorted = latencies.sorted()
        let median = sorted[sorted.count / 2], slowest = sorted.last ?? .zero
        #expect(median < .milliseconds(50), "median Layer 7 request \(median) of \(latencies.count)")
        #expect(slowest < .milliseconds(500), "slowest Layer 7 request \(slowest) of \(latencies.count)")

        await engine.shutdown(drainTimeout: .zero)
        try web1.stop()
        try web2.stop()
        try await group.shutdownGracefully()
    }
}
