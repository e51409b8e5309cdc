import Foundation
import LBConfig
import LBControl
import LBProxy
import LBTestSupport
import NIOPosix
import Testing
@testable import LBAgent

/// The agent with the real proxy on loopback: what a reload does to connections and pools.
@Suite("Agent with the real proxy: reloads, halts and pool instances")
struct ProxyGenerationTests {
    /// An agent over the real proxy (and fakes for the kernel), its config in a temporary file.
    final class Fixture: @unchecked Sendable {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let base = Ports.block()
        let directory = NSTemporaryDirectory() + "lb-generation-\(UUID().uuidString)"
        let engine = ProxyEngine(threads: 2, logger: agentTestLogger)
        var agent: Agent!
        var configPath: String { directory + "/lb.yaml" }

        func start(_ yaml: String) async throws {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try yaml.write(toFile: configPath, atomically: true, encoding: .utf8)
            let configuration = try #require(ConfigurationLoader.check(yaml: yaml, file: configPath).configuration)
            let effectors = Effectors(ipvs: { throw FakeError("no IPVS here") }, sysctl: FakeSysctl(), addresses: FakeLinks(),
                                      firewall: FakeFirewall(), proxy: ProxyEngineEffector(engine: engine), health: FakeHealth())
            agent = Agent(configuration: configuration, configText: yaml, configPath: configPath, effectors: effectors,
                          state: StateStore(directory: directory + "/state"), logger: agentTestLogger)
            try await agent.start()
        }

        func reload(_ yaml: String) async throws -> ControlResponse {
            try yaml.write(toFile: configPath, atomically: true, encoding: .utf8)
            return await agent.handle(ControlRequest(command: .reload))
        }

        func stop() async {
            await engine.shutdown(drainTimeout: .zero)
            try? await group.shutdownGracefully()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    static func service(_ name: String, mode: String, port: UInt16, servers: [(String, UInt16, Int)]) -> String {
        var yaml = """
              - name: \(name)
                vip: 127.0.0.1
                ports: [\(port)]
                mode: \(mode)
                health_check: {type: none}
                real_servers:

            """
        for (server, serverPort, weight) in servers {
            yaml += "          - {name: \(server), address: 127.0.0.1, port: \(serverPort), weight: \(weight)}\n"
        }
        return yaml
    }

    @Test func haltAfterReloadClosesTheConnectionOpenedBeforeIt() async throws {
        let fixture = Fixture()
        let port = fixture.base
        let backend = try EchoBackend(name: "core-1", port: port + 1, group: fixture.group)
        try await fixture.start("virtual_services:\n" + Self.service("dicom", mode: "l7-tcp", port: port, servers: [("core-1", port + 1, 100)]))
        let client = try RawClient(port: port)
        #expect(String(decoding: client.readSome(), as: UTF8.self) == "hello from core-1\n")
        // The reload changes the service: a new generation with its own pool; the client stays on the old one.
        let reloaded = try await fixture.reload("virtual_services:\n" + Self.service("dicom", mode: "l7-tcp", port: port, servers: [("core-1", port + 1, 50)]))
        #expect(reloaded.ok)
        client.send("still here\n")
        #expect(String(decoding: client.readSome(), as: UTF8.self) == "still here\n")
        let halted = await fixture.agent.handle(ControlRequest(command: .halt, service: "dicom", server: "core-1"))
        #expect(halted.ok)
        // Closed by lbd: the read ends with end of stream, not with the client's own timeout.
        let rest = client.readAll(timeout: 5)
        #expect(rest.isEmpty)
        #expect(client.lastReadEnd == "end of stream")
        try backend.stop()
        await fixture.stop()
    }

    @Test func aRemovedServerGetsNoRequestOnNewOrReusedConnections() async throws {
        let fixture = Fixture()
        let port = fixture.base
        let backends = try (1...3).map { try HTTPBackend(name: "web-\($0)", port: port + UInt16($0), group: fixture.group) }
        try await fixture.start("virtual_services:\n" + Self.service("web", mode: "l7-http", port: port,
                                                                       servers: [("web-1", port + 1, 100), ("web-2", port + 2, 100)]))
        // A keep-alive client warms both servers' idle connections.
        let client = try RawClient(port: port)
        var before: Set<String> = []
        for _ in 0..<6 {
            client.send("GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            before.insert(header("X-Backend", in: client.readResponse()) ?? "?")
        }
        #expect(before == ["web-1", "web-2"])
        let totalBefore = await fixture.agent.handle(ControlRequest(command: .status, service: "web")).status?.first?
            .servers.first { $0.name == "web-1" }?.totalConnections ?? 0
        #expect(totalBefore >= 1)
        // web-2 removed, and the others reordered (web-3 first): old index 1 is now web-1.
        let reloaded = try await fixture.reload("virtual_services:\n" + Self.service("web", mode: "l7-http", port: port,
                                                                                       servers: [("web-3", port + 3, 100), ("web-1", port + 1, 100)]))
        #expect(reloaded.ok)
        var after: [String] = []
        for _ in 0..<10 {
            client.send("GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            after.append(header("X-Backend", in: client.readResponse()) ?? "?")
            after.append(header("X-Backend", in: try get(port)) ?? "?")
        }
        #expect(!after.contains("web-2"), "\(after)")
        // web-1 is the same server in the new generation: its counters went on from where they were.
        let totalAfter = await fixture.agent.handle(ControlRequest(command: .status, service: "web")).status?.first?
            .servers.first { $0.name == "web-1" }?.totalConnections ?? 0
        #expect(totalAfter >= totalBefore + after.filter { $0 == "web-1" }.count, "\(totalBefore) → \(totalAfter)")
        #expect(Set(after) == ["web-1", "web-3"], "\(after)")
        for backend in backends { try backend.stop() }
        await fixture.stop()
    }
}

extension RawClient {
    /// What one read returns (up to 64 KiB), waiting at most 5 s.
    func readSome() -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count < 0 && errno == EINTR { continue }
            return count > 0 ? Array(buffer[0..<count]) : []
        }
    }
}
