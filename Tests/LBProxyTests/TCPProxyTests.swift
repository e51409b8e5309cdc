import Foundation
import LBConfig
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import LBTestSupport
import Testing
@testable import LBProxy

final class TCPFixture: @unchecked Sendable {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let base = Ports.block()
    var vipPort: UInt16 { base }
    var backends: [EchoBackend] = []
    let engine: ProxyEngine

    init(extra: [String] = []) async throws {
        backends = [try EchoBackend(name: "dicom-1", port: base + 1, group: group),
                    try EchoBackend(name: "dicom-2", port: base + 2, group: group)]
        var yaml = """
              - name: dicom
                vip: 127.0.0.1
                ports: [\(base)]
                mode: l7-tcp
                health_check: {type: none}
                real_servers:
                  - {name: dicom-1, address: 127.0.0.1, port: \(base + 1)}
                  - {name: dicom-2, address: 127.0.0.1, port: \(base + 2)}

            """
        for line in extra { yaml += "    \(line)\n" }
        engine = ProxyEngine(threads: 2, logger: testLogger)
        try await engine.start([try makeService(yaml)])
    }

    func stop() async {
        await engine.shutdown(drainTimeout: .seconds(1))
        for backend in backends { try? backend.stop() }
        try? await group.shutdownGracefully()
    }
}

@Suite("l7-tcp proxy, real sockets on loopback", .serialized)
struct TCPProxyTests {
    @Test func halfCloseDeliversTheWholeReply() async throws {
        let fixture = try await TCPFixture()
        let client = try RawClient(port: fixture.vipPort)
        client.send("ASSOCIATE\n")
        client.send("DATA\n")
        client.shutdownWrite()
        // After our FIN the server still echoes, says bye and closes: all of it must arrive.
        let reply = client.readAllText()
        #expect(reply.hasPrefix("hello from dicom-"))
        #expect(reply.hasSuffix("ASSOCIATE\nDATA\nbye\n"), "\(reply)")
        await fixture.stop()
    }

    @Test func roundRobinAndPortTranslation() async throws {
        let fixture = try await TCPFixture()
        var greetings: [String] = []
        for _ in 0..<4 {
            let client = try RawClient(port: fixture.vipPort)
            client.shutdownWrite()
            greetings.append(String(client.readAllText().split(separator: "\n").first ?? ""))
        }
        #expect(greetings == ["hello from dicom-1", "hello from dicom-2", "hello from dicom-1", "hello from dicom-2"])
        await fixture.stop()
    }

    @Test func sourceIPStickiness() async throws {
        let fixture = try await TCPFixture(extra: ["persistence: {type: source-ip, timeout: 30s}"])
        for source in ["127.0.0.20", "127.0.0.21"] {
            var seen: Set<String> = []
            for _ in 0..<4 {
                let client = try RawClient(port: fixture.vipPort, from: source)
                client.shutdownWrite()
                seen.insert(String(client.readAllText().split(separator: "\n").first ?? ""))
            }
            #expect(seen.count == 1, "\(source) stayed on one server")
        }
        await fixture.stop()
    }

    /// 16 MiB each way through one connection, checked byte for byte: backpressure keeps memory bounded and
    /// nothing is lost or reordered.
    @Test func largeTransferIsByteExact() async throws {
        let fixture = try await TCPFixture()
        let client = try RawClient(port: fixture.vipPort)
        let chunk = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let chunks = 256
        // A thread of its own: blocking reads must not sit on Swift's small cooperative pool.
        let received = NIOLockedValueBox<[UInt8]>([])
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            // A generous silence limit: under a loaded CI machine the debug build can pause for seconds.
            let bytes = client.readAll(timeout: 60)
            received.withLockedValue { $0 = bytes }
            done.signal()
        }
        var sent = 0
        for _ in 0..<chunks { sent += client.send(chunk) }
        client.shutdownWrite()
        done.wait()
        let receivedBytes = received.withLockedValue { $0 }
        #expect(sent == chunk.count * chunks, "the proxy accepted only \(sent) bytes")
        #expect(receivedBytes.starts(with: Array("hello from dicom-".utf8)),
                "VIP port \(fixture.vipPort), local port \(client.localPort), first bytes: \(String(decoding: receivedBytes.prefix(40), as: UTF8.self))")
        let greetingLength = "hello from dicom-1\n".utf8.count
        let payload = receivedBytes.dropFirst(greetingLength).dropLast("bye\n".utf8.count)
        #expect(payload.count == chunk.count * chunks, "the read ended with: \(client.lastReadEnd)")
        var offset = payload.startIndex
        var matches = payload.count == chunk.count * chunks
        while matches, offset < payload.endIndex {
            matches = payload[offset..<offset + chunk.count].elementsEqual(chunk)
            offset += chunk.count
        }
        #expect(matches, "every chunk arrives intact and in order")
        await fixture.stop()
    }

    @Test func deadServerIsSkippedAndAllDownClosesAtOnce() async throws {
        let fixture = try await TCPFixture()
        try fixture.backends[0].stop()
        // A process forked meanwhile (another test's check) holds a copy of the listening socket until it execs: the
        // port is closed for good only once connecting to it is refused.
        #expect(await eventually(timeout: .seconds(5)) { !acceptsConnections(port: fixture.backends[0].port) })
        for _ in 0..<4 {
            let client = try RawClient(port: fixture.vipPort)
            client.shutdownWrite()
            #expect(client.readAllText().hasPrefix("hello from dicom-2"))
        }
        try fixture.backends[1].stop()
        #expect(await eventually(timeout: .seconds(5)) { !acceptsConnections(port: fixture.backends[1].port) })
        let client = try RawClient(port: fixture.vipPort)
        let started = ContinuousClock.now
        #expect(client.readAllText().isEmpty)
        #expect(ContinuousClock.now - started < .seconds(2), "closed at once, not left hanging")
        await fixture.stop()
    }

    /// With every server down in the pool, no server is chosen and the client is closed while it is being set up,
    /// before its registration: the registration then fails quietly, and later clients are served once a server is
    /// back.
    @Test func aClientRefusedBeforeItIsRegisteredIsClosedAndTheNextIsServed() async throws {
        let fixture = try await TCPFixture()
        let pool = try #require(fixture.engine.pool(for: "dicom"))
        pool.setHealthy("dicom-1", false)
        pool.setHealthy("dicom-2", false)
        for _ in 0..<3 {
            let client = try RawClient(port: fixture.vipPort)
            let started = ContinuousClock.now
            #expect(client.readAllText().isEmpty)
            #expect(client.lastReadEnd == "end of stream", "closed by lb, not by the read timeout")
            #expect(ContinuousClock.now - started < .seconds(2), "closed at once, not left hanging")
        }
        #expect(await eventually { fixture.engine.clientChannels(of: "dicom").isEmpty })
        pool.setHealthy("dicom-2", true)
        let client = try RawClient(port: fixture.vipPort)
        client.shutdownWrite()
        #expect(client.readAllText().hasPrefix("hello from dicom-2"))
        await fixture.stop()
    }

    @Test func idleTimeoutClosesSilentConnections() async throws {
        let fixture = try await TCPFixture(extra: ["timeouts: {idle: 1s}"])
        let client = try RawClient(port: fixture.vipPort)
        let started = ContinuousClock.now
        let reply = client.readAllText()
        #expect(reply.hasPrefix("hello from"))
        let elapsed = ContinuousClock.now - started
        #expect(elapsed >= .milliseconds(900) && elapsed < .seconds(4), "\(elapsed)")
        await fixture.stop()
    }

    /// A client that sends and half-closes before its real server is connected (nc -N): its bytes and its end of
    /// input are held until the join, then delivered; the server's answer and its own end come back. The first
    /// server's accept queue is full, so connecting to it hangs until the 300 ms connect timeout and lb moves on:
    /// the client's data and FIN are long in by then.
    @Test func earlyDataAndHalfCloseReachTheServer() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let base = Ports.block()
        let stuck = try FullBacklogListener(port: base + 1)
        let backend = try EchoBackend(name: "dicom-2", port: base + 2, group: group)
        let engine = ProxyEngine(threads: 2, logger: testLogger)
        try await engine.start([try makeService("""
              - name: dicom
                vip: 127.0.0.1
                ports: [\(base)]
                mode: l7-tcp
                health_check: {type: none}
                timeouts: {connect: 300ms}
                real_servers:
                  - {name: stuck, address: 127.0.0.1, port: \(base + 1)}
                  - {name: dicom-2, address: 127.0.0.1, port: \(base + 2)}
            """)])
        for round in 0..<6 {
            let client = try RawClient(port: base)
            client.send("ping \(round)\n")
            client.shutdownWrite()
            let reply = client.readAllText()
            #expect(reply == "hello from dicom-2\nping \(round)\nbye\n", "round \(round): \(reply) (read ended: \(client.lastReadEnd))")
        }
        await engine.shutdown(drainTimeout: .seconds(1))
        try backend.stop()
        _ = stuck
        try await group.shutdownGracefully()
    }

    @Test func gracefulStopLetsOpenConnectionsFinish() async throws {
        let fixture = try await TCPFixture()
        let client = try RawClient(port: fixture.vipPort)
        client.send("before\n")
        // The connection is joined through to a real server once the server's greeting and the echo are back.
        let first = client.read(until: "before\n")
        #expect(first.hasPrefix("hello from dicom-") && first.hasSuffix("before\n"), "\(first)")
        #expect(fixture.engine.activeConnections == 1)
        let stopping = Task { await fixture.engine.shutdown(drainTimeout: .seconds(5)) }
        // New connections are refused while the open one still works.
        #expect(await eventually(timeout: .seconds(5)) { !acceptsConnections(port: fixture.vipPort) })
        client.send("after\n")
        client.shutdownWrite()
        let reply = client.readAllText()
        #expect(reply == "after\nbye\n", "\(reply) (read ended: \(client.lastReadEnd))")
        await stopping.value
        for backend in fixture.backends { try? backend.stop() }
        try? await fixture.group.shutdownGracefully()
    }
}

@Suite("Schedulers and pool (pure)")
struct SchedulerTests {
    func pick(_ algorithm: Scheduler, _ candidates: [Candidate], times: Int, key: [UInt8] = [1, 2, 3, 4]) -> [Int] {
        var state = SchedulerState(algorithm)
        return (0..<times).compactMap { _ in state.choose(from: candidates, clientKey: key)?.index }
    }

    @Test func weightedRoundRobinIsSmoothAndProportional() {
        let picks = pick(.weightedRoundRobin, [Candidate(index: 0, weight: 5, activeConnections: 0),
                                               Candidate(index: 1, weight: 1, activeConnections: 0),
                                               Candidate(index: 2, weight: 1, activeConnections: 0)], times: 7)
        #expect(picks == [0, 0, 1, 0, 2, 0, 0], "nginx's smooth order for weights 5,1,1")
    }

    @Test func leastConnectionsPrefersTheIdleAndRotatesTies() {
        let busy = [Candidate(index: 0, weight: 1, activeConnections: 3), Candidate(index: 1, weight: 1, activeConnections: 1)]
        #expect(pick(.leastConnections, busy, times: 1) == [1])
        let idle = [Candidate(index: 0, weight: 1, activeConnections: 0), Candidate(index: 1, weight: 1, activeConnections: 0)]
        #expect(pick(.leastConnections, idle, times: 4) == [0, 1, 0, 1])
        let weighted = [Candidate(index: 0, weight: 100, activeConnections: 4), Candidate(index: 1, weight: 10, activeConnections: 1)]
        #expect(pick(.weightedLeastConnections, weighted, times: 1) == [0], "4/100 < 1/10")
    }

    @Test func sourceHashIsStableAndMovesOnlyTheLostServersClients() {
        let three = (0..<3).map { Candidate(index: $0, weight: 1, activeConnections: 0) }
        let two = [three[0], three[2]]
        var moved = 0
        for client in 0..<300 {
            let key: [UInt8] = [10, 0, UInt8(client / 256), UInt8(client % 256)]
            let before = pick(.sourceHash, three, times: 2, key: key)
            #expect(before[0] == before[1])
            let after = pick(.sourceHash, two, times: 1, key: key)[0]
            if before[0] != 1 { #expect(after == before[0], "clients of surviving servers stay put") } else { moved += 1 }
        }
        #expect((60...140).contains(moved), "about a third of clients were on the lost server: \(moved)")
    }

    @Test func poolSkipsUnhealthyAndZeroWeight() throws {
        let service = try makeService("""
              - name: p
                vip: 10.0.0.1
                ports: [80]
                mode: l7-tcp
                real_servers:
                  - {name: a, address: 10.0.1.1}
                  - {name: b, address: 10.0.1.2, port: 8080, weight: 0}
                  - {name: c, address: 10.0.1.3}
            """)
        let pool = RealServerPool(service: service)
        pool.setHealthy("a", false)
        for _ in 0..<3 {
            let selection = try #require(pool.select(client: nil, port: 80))
            #expect(selection.name == "c")
            #expect(selection.port == 80)
            pool.release(selection)
        }
        pool.setHealthy("c", false)
        #expect(pool.select(client: nil, port: 80) == nil)
    }
}

/// A listening socket that never accepts, its accept queue filled: the kernel drops further SYNs, so a connect to
/// it hangs (as to a server that is overloaded or gone from the network).
final class FullBacklogListener {
    private var descriptors: [Int32] = []

    init(port: UInt16) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        descriptors.append(listener)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(listener, 0) == 0 else { throw TestFailure("cannot listen on \(port)") }
        // listen(0) queues one connection; a few more are dropped at the SYN (those clients keep retrying).
        for _ in 0..<3 {
            let filler = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            descriptors.append(filler)
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(filler, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
    }

    deinit { descriptors.forEach { close($0) } }
}

@Suite("Listening on a VIP this host does not hold (a pair's standby)")
struct FreeBindTests {
    @Test func standbyListensOnlyWithFreeBind() async throws {
        let port = Ports.block()
        // 192.0.2.0/24 (TEST-NET-1) is on no interface of this host.
        let service = try makeService("""
              - name: standby
                vip: 192.0.2.77
                ports: [\(port)]
                mode: l7-tcp
                health_check: {type: none}
                real_servers:
                  - {name: one, address: 127.0.0.1, port: \(port + 1)}

            """)
        let single = ProxyEngine(threads: 1, logger: testLogger)
        await #expect(throws: ProxyError.self, "a single node must say that the VIP is not on this host") {
            try await single.start([service])
        }
        await single.shutdown(drainTimeout: .seconds(1))
        let standby = ProxyEngine(threads: 1, logger: testLogger)
        try await standby.start([service], freeBind: true)
        // Read to the end: a String(contentsOfFile:) of a /proc file can stop at its first page.
        let listening = String(decoding: FileHandle(forReadingAtPath: "/proc/net/tcp")?.readDataToEndOfFile() ?? Data(), as: UTF8.self)
        // 192.0.2.77 little-endian hex, as /proc/net/tcp prints local addresses; state 0A = LISTEN.
        let local = String(format: "4D0200C0:%04X 00000000:0000 0A", port)
        #expect(listening.contains(local), "no listening socket on 192.0.2.77:\(port)")
        await standby.shutdown(drainTimeout: .seconds(1))
    }
}
