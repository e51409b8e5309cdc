import Foundation
import LBConfig
import LBControl
import LBProxy
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
