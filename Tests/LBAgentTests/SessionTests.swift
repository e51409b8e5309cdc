import Foundation
import LBConfig
import LBControl
import LBProxy
import LBRuntime
import LBTestSupport
import NIOPosix
import Testing
@testable import LBAgent

/// Persistence as a browser sees it: one cookie across a VIP's ports, and sessions that outlive a drain.
@Suite("Sessions: a cookie across a VIP's ports, drain keeps pinned sessions, halt moves them")
struct SessionTests {
    static func service(_ name: String, port: UInt16, backends: UInt16, persistence: String) -> String {
        """
          - name: \(name)
            vip: 127.0.0.1
            ports: [\(port)]
            mode: l7-http
            persistence: \(persistence)
            health_check: {type: none}
            real_servers:
              - {name: web-1, address: 127.0.0.1, port: \(backends + 1)}
              - {name: web-2, address: 127.0.0.1, port: \(backends + 2)}

        """
    }

    /// GET with the cookies of a jar; the jar takes the response's Set-Cookie. Returns the server that answered.
    static func browse(_ port: UInt16, jar: inout [String: String], from source: String? = nil) throws -> String {
        let cookies = jar.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")
        let response = try get(port, headers: cookies.isEmpty ? [] : ["Cookie: \(cookies)"], from: source)
        if let set = header("Set-Cookie", in: response), let pair = set.split(separator: ";").first {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { jar[parts[0]] = parts[1] }
        }
        return header("X-Backend", in: response) ?? "no answer: \(statusLine(response))"
    }

    @Test func oneCookieKeepsABrowserOnOneServerAcrossThePortsOfAVIP() async throws {
        let fixture = ProxyGenerationTests.Fixture()
        let base = fixture.base
        let backends = try (1...2).map { try HTTPBackend(name: "web-\($0)", port: base + UInt16($0), group: fixture.group) }
        let cookie = "{type: http-cookie, cookie: LBSRV}"
        try await fixture.start("virtual_services:\n" + Self.service("client-80", port: base, backends: base, persistence: cookie)
                                + Self.service("client-81", port: base + 5, backends: base, persistence: cookie)
                                + Self.service("client-8080", port: base + 6, backends: base, persistence: cookie))
        for _ in 0..<4 {
            var jar: [String: String] = [:]
            let first = try Self.browse(base, jar: &jar)
            #expect(jar["LBSRV"] != nil)
            for port in [base + 5, base + 6, base, base + 6, base + 5] {
                #expect(try Self.browse(port, jar: &jar) == first, "port \(port)")
            }
        }
        for backend in backends { try backend.stop() }
        await fixture.stop()
    }

    @Test func drainKeepsPinnedSessionsAndHaltMovesThem() async throws {
        let fixture = ProxyGenerationTests.Fixture()
        let base = fixture.base
        let backends = try (1...2).map { try HTTPBackend(name: "web-\($0)", port: base + UInt16($0), group: fixture.group) }
        try await fixture.start("virtual_services:\n" + Self.service("viewer", port: base, backends: base,
                                                                       persistence: "{type: http-cookie, cookie: LBSRV}"))
        // A radiologist's browser pinned to one server.
        var radiologist: [String: String] = [:]
        let pinned = try Self.browse(base, jar: &radiologist)
        let other = pinned == "web-1" ? "web-2" : "web-1"
        let drained = await fixture.agent.handle(ControlRequest(command: .drain, service: "viewer", server: pinned))
        #expect(drained.ok)
        // The session stays where it is; new browsers go to the other server.
        for _ in 0..<5 { #expect(try Self.browse(base, jar: &radiologist) == pinned) }
        for _ in 0..<5 {
            var newcomer: [String: String] = [:]
            #expect(try Self.browse(base, jar: &newcomer) == other)
        }
        let status = await fixture.agent.handle(ControlRequest(command: .status, service: "viewer")).status?.first
        let row = try #require(status?.servers.first { $0.name == pinned })
        #expect(row.state == "drain")
        #expect(row.sessions == 1, "the drained server still holds the radiologist's session")
        #expect(row.weight == 0 && row.configuredWeight == 100)
        // Halt is the hard stop: the session moves.
        let halted = await fixture.agent.handle(ControlRequest(command: .halt, service: "viewer", server: pinned))
        #expect(halted.ok)
        #expect(try Self.browse(base, jar: &radiologist) == other)
        #expect(try Self.browse(base, jar: &radiologist) == other, "the replaced cookie now names the other server")
        for backend in backends { try backend.stop() }
        await fixture.stop()
    }

    @Test func aSharedCookieNameWithOtherServersIsWarnedAbout() throws {
        let yaml = "virtual_services:\n" + Self.service("a", port: 80, backends: 1000, persistence: "{type: http-cookie, cookie: LBSRV}")
            + Self.service("b", port: 81, backends: 2000, persistence: "{type: http-cookie, cookie: LBSRV}")
                .replacingOccurrences(of: "address: 127.0.0.1", with: "address: 127.0.0.2")
        let report = ConfigurationLoader.check(yaml: yaml, file: "shared.yaml")
        #expect(report.configuration != nil, "a warning, not an error")
        let warning = try #require(report.diagnostics.first { $0.severity == .warning && $0.message.contains("cookie") })
        #expect(warning.message.contains("\"a\" (line 2)"), "\(warning)")
        #expect(warning.location.line == 15, "\(warning)")
    }
}

/// Passive detection: real traffic that keeps failing against a server takes it out before its check would.
@Suite("Agent with the real proxy: observe")
struct ObserveTests {
    @Test func connectionFailuresInClientTrafficMarkAServerDown() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let base = Ports.block()
        let web2 = try HTTPBackend(name: "web-2", port: base + 2, group: group)
        // web-1 is not listening. Its active check runs only once a minute, so only client traffic can find it.
        let yaml = """
            virtual_services:
              - name: web
                vip: 127.0.0.1
                ports: [\(base)]
                mode: l7-http
                health_check: {type: connect, interval: 60s, timeout: 1s, observe: 2}
                real_servers:
                  - {name: web-1, address: 127.0.0.1, port: \(base + 1)}
                  - {name: web-2, address: 127.0.0.1, port: \(base + 2)}
            """
        let directory = NSTemporaryDirectory() + "lb-observe-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let configuration = try #require(ConfigurationLoader.check(yaml: yaml, file: "observe.yaml").configuration)
        let relay = ObserveRelay()
        let engine = ProxyEngine(threads: 1, logger: agentTestLogger) { service, server, reason in
            relay.agent?.observedFailure(service: service, server: server, reason: reason)
        }
        let health = FakeHealth()
        let effectors = Effectors(ipvs: { throw FakeError("no IPVS") }, sysctl: FakeSysctl(), addresses: FakeLinks(),
                                  firewall: FakeFirewall(), proxy: ProxyEngineEffector(engine: engine), health: health)
        let agent = Agent(configuration: configuration, configText: yaml, configPath: directory + "/lb.yaml",
                          effectors: effectors, state: StateStore(directory: directory), logger: agentTestLogger)
        relay.agent = agent
        try await agent.start()
        // Every request is answered (redispatch to web-2) while the failures against web-1 are counted.
        for _ in 0..<6 { #expect(header("X-Backend", in: try get(base)) == "web-2") }
        var down = false
        for _ in 0..<300 where !down {
            down = await agent.snapshot().health[ServerKey(service: "web", server: "web-1")]?.healthy == false
            if !down { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(down, "two failed connections in a row must mark web-1 down")
        let row = await agent.handle(ControlRequest(command: .status, service: "web")).status?.first?.servers.first { $0.name == "web-1" }
        #expect(row?.state == "down")
        #expect(row?.reason?.contains("observe") == true, "\(row?.reason ?? "")")
        #expect(health.markedDown == ["web/web-1"], "its check must now count rise passes to bring it back")
        await engine.shutdown(drainTimeout: .zero)
        try web2.stop()
        try await group.shutdownGracefully()
    }
}

final class ObserveRelay: @unchecked Sendable {
    var agent: Agent?
}
