import Foundation
import LBConfig
import LBHealth
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import LBTestSupport
import Testing

@Suite("Health checks")
struct HealthCheckTests {
    @Test func riseAndFallCountConsecutiveResults() {
        var state = CheckState()
        #expect(state.record(.fail("refused"), rise: 2, fall: 3) == nil)
        #expect(state.record(.fail("refused"), rise: 2, fall: 3) == nil)
        #expect(!state.concluded)
        let first = state.record(.pass, rise: 2, fall: 3)
        #expect(first?.healthy == true && first?.reason == "first check passed", "the first pass ends checking")
        #expect(state.concluded)
        #expect(state.record(.fail("refused"), rise: 2, fall: 3) == nil)
        #expect(state.record(.fail("refused"), rise: 2, fall: 3) == nil)
        let down = state.record(.fail("connection refused"), rise: 2, fall: 3)
        #expect(down?.healthy == false)
        #expect(down?.reason == "connection refused (3 checks failed in a row)")
        #expect(state.record(.pass, rise: 2, fall: 3) == nil)
        #expect(state.record(.pass, rise: 2, fall: 3)?.healthy == true)
        #expect(state.record(.pass, rise: 2, fall: 3) == nil, "a pass of a healthy server is no event")
    }

    /// A real backend, checked by http-get with status and body expectations, stopped and restarted.
    @Test func httpGetCheckFollowsARealServer() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let base = Ports.block()
        let backend = try HTTPBackend(name: "core-1", port: base + 1, group: group)
        let service = try makeService("""
              - name: core
                vip: 127.0.0.1
                ports: [\(base)]
                mode: l7-http
                health_check: {type: http-get, path: /status, expect_status: [200], expect_body: core-1, interval: 200ms, timeout: 100ms, rise: 2, fall: 2}
                real_servers:
                  - {name: core-1, address: 127.0.0.1, port: \(base + 1)}
                  - {name: wrong-body, address: 127.0.0.1, port: \(base + 2)}
            """)
        let other = try HTTPBackend(name: "core-2", port: base + 2, group: group)
        let transitions = NIOLockedValueBox<[HealthTransition]>([])
        let monitor = HealthMonitor(group: group, logger: testLogger) { event in transitions.withLockedValue { $0.append(event) } }
        monitor.start([service])

        func waitFor(_ predicate: @escaping ([HealthTransition]) -> Bool) async throws -> Bool {
            try await eventually(transitions, predicate)
        }
        // The server answering with another body fails the body expectation.
        #expect(try await waitFor { $0.contains { $0.server == "wrong-body" && !$0.healthy } })
        let bodyFailure = transitions.withLockedValue { $0.first { $0.server == "wrong-body" } }
        #expect(bodyFailure?.reason.contains("response body does not contain \"core-1\"") == true)

        try backend.stop()
        #expect(try await waitFor { $0.contains { $0.server == "core-1" && !$0.healthy } })
        let refused = transitions.withLockedValue { $0.first { $0.server == "core-1" && !$0.healthy } }
        #expect(refused?.reason.contains("connection refused") == true, "\(refused?.reason ?? "")")

        try backend.start()
        // Back up: a healthy transition after the down one (the first pass at start does not count).
        #expect(try await waitFor { events in
            guard let down = events.firstIndex(where: { $0.server == "core-1" && !$0.healthy }) else { return false }
            return events[(down + 1)...].contains { $0.server == "core-1" && $0.healthy && $0.reason != "first check passed" }
        })
        monitor.stop()
        try backend.stop()
        try other.stop()
        try await group.shutdownGracefully()
    }

    @Test func unexpectedStatusAndTimeoutAreReasons() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let base = Ports.block()
        let backend = try HTTPBackend(name: "core", port: base + 1, group: group)
        let service = try makeService("""
              - name: s
                vip: 127.0.0.1
                ports: [\(base)]
                mode: l7-http
                health_check: {type: http-get, expect_status: [204], interval: 200ms, timeout: 100ms, fall: 1}
                real_servers: [{name: a, address: 127.0.0.1, port: \(base + 1)}]
            """)
        let transitions = NIOLockedValueBox<[HealthTransition]>([])
        let monitor = HealthMonitor(group: group, logger: testLogger) { event in transitions.withLockedValue { $0.append(event) } }
        monitor.start([service])
        _ = try await eventually(transitions) { !$0.isEmpty }
        #expect(transitions.withLockedValue { $0.first?.reason } == "HTTP status 200, expected 204 (1 checks failed in a row)")
        monitor.stop()
        try backend.stop()
        try await group.shutdownGracefully()
    }
}

/// Waits up to five seconds for the recorded transitions to satisfy `predicate`.
func eventually(_ transitions: NIOLockedValueBox<[HealthTransition]>,
                _ predicate: ([HealthTransition]) -> Bool) async throws -> Bool {
    for _ in 0..<50 {
        if predicate(transitions.withLockedValue { $0 }) { return true }
        try await Task.sleep(for: .milliseconds(100))
    }
    return false
}
