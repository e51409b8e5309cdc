import Foundation
import LBConfig
import NIOCore
import NIOPosix
import LBTestSupport
import Testing
@testable import LBHealth

#if canImport(Glibc)
import Glibc
#endif

/// External checks run real commands through the real spawner; each case asserts what the command itself saw.
@Suite("external checks are confined", .serialized)
struct ExternalCheckTests {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let target = ProbeTarget(address: IPAddress("127.0.0.1")!, port: 11112)

    func run(_ command: String, user: String = HealthCheck.defaultExternalUser, timeout: Duration = .seconds(5)) async throws
        -> (result: ProbeResult, took: Duration) {
        let started = ContinuousClock.now
        let result = try await Probe.run(.external(command: command, user: user), target: target, timeout: timeout,
                                         tls: nil, on: group.next()).get()
        return (result, ContinuousClock.now - started)
    }

    @Test func runsAsNobodyOrTheConfiguredUser() async throws {
        try #require(geteuid() == 0, "needs root to switch users")
        #expect(try await run("test \"$(id -u):$(id -G)\" = 65534:65534 || { id; exit 1; }").result == .pass)
        #expect(try await run("test \"$(id -un)\" = daemon || { id; exit 1; }", user: "daemon").result == .pass)
        let unknown = try await run("true", user: "no-such-user-lb").result
        #expect(unknown == .fail("user \"no-such-user-lb\" does not exist on this host"))
    }

    @Test func environmentIsPathAndLBOnly() async throws {
        setenv("LB_TEST_SECRET_TOKEN", "should-not-leak", 1)
        setenv("DATABASE_PASSWORD", "should-not-leak", 1)
        defer { unsetenv("LB_TEST_SECRET_TOKEN"); unsetenv("DATABASE_PASSWORD") }
        // dash adds PWD itself; everything else must come from lbd's list.
        let names = "env | cut -d= -f1 | grep -v '^PWD$' | sort | tr '\\n' ' '"
        let result = try await run("n=$(\(names)); test \"$n\" = 'LB_SERVER_ADDRESS LB_SERVER_PORT PATH ' || { echo \"$n\"; exit 1; }"
                                   + " && test \"$LB_SERVER_PORT\" = 11112 && test \"$(pwd)\" = /").result
        #expect(result == .pass)
    }

    /// lbd ignoring or blocking signals must not reach the check: `timeout` inside it has to work.
    @Test func signalDispositionsAreDefaultAndMaskEmpty() async throws {
        let previousTERM = signal(SIGTERM, SIG_IGN)
        var blocked = sigset_t(), previousMask = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &blocked, &previousMask)
        defer {
            signal(SIGTERM, previousTERM)
            pthread_sigmask(SIG_SETMASK, &previousMask, nil)
        }
        let masks = try await run("awk '/^(SigIgn|SigBlk)/ {print $2}' /proc/$$/status | sort -u | grep -qvx 0000000000000000 && { grep -E '^Sig(Ign|Blk)' /proc/$$/status; exit 1; }; exit 0").result
        #expect(masks == .pass)
        let timed = try await run("timeout 0.3 sleep 20", timeout: .seconds(5))
        #expect(timed.result == .fail("command exited 124"))
        // Without default dispositions `sleep 20` would outlive timeout(1): the check would end at its own 5 s limit
        // with another reason. The bound is loose because a loaded CI machine is slow to reap.
        #expect(timed.took < .seconds(5), "timeout(1) could not stop its child: \(timed.took)")
    }

    /// At the timeout the whole group goes: the command and what it started in the background.
    @Test func processGroupIsKilledAtTheTimeout() async throws {
        let (result, took) = try await run("sleep 30 & echo $!; trap '' TERM; wait; sleep 30", timeout: .milliseconds(300))
        guard case .fail(let reason) = result else {
            Issue.record("a hanging command passed")
            return
        }
        #expect(reason.hasPrefix("command did not finish within 300ms"), "\(reason)")
        // Without the KILL the command would run for 30 s; the bound is loose for a loaded CI machine.
        #expect(took < .seconds(10), "TERM ignored: KILL must follow within the grace period (\(took))")
        let pid = try #require(Int32(reason.split(separator: " ").last ?? ""))
        #expect(await eventually { kill(pid, 0) != 0 && errno == ESRCH }, "the background sleep \(pid) survived")
    }

    @Test func outputIsCappedAndNeverBlocksTheCommand() async throws {
        let (result, took) = try await run("head -c 5000000 /dev/zero | tr '\\0' a; echo; exit 3")
        guard case .fail(let reason) = result else {
            Issue.record("expected a failure")
            return
        }
        #expect(reason.hasPrefix("command exited 3: aaaa"))
        #expect(reason.count < 300)
        #expect(took < .seconds(4))
    }

    /// Many checks at once hold no thread while they wait: lbd's thread count barely moves while 64 run.
    @Test func checksDoNotHoldThreads() async throws {
        func threads() -> Int {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            return status.split(separator: "\n").first { $0.hasPrefix("Threads:") }
                .flatMap { Int($0.dropFirst("Threads:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
        }
        let before = threads()
        let loop = group.next()
        let checks = (0..<64).map { _ in
            // Long enough that all 64 are alive at once even when starting them is slow on a loaded machine.
            // (3 s was not always enough while the whole test suite ran alongside.)
            Probe.run(.external(command: "sleep 8", user: HealthCheck.defaultExternalUser), target: target,
                      timeout: .seconds(15), tls: nil, on: loop)
        }
        // All 64 commands running (children of this process): a thread per check would show now.
        func children() -> Int {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            return tasks.reduce(0) { count, task in
                let list = (try? String(contentsOfFile: "/proc/self/task/\(task)/children", encoding: .utf8)) ?? ""
                return count + list.split(separator: " ").count
            }
        }
        #expect(await eventually(timeout: .seconds(8)) { children() >= 64 }, "only \(children()) checks started")
        let during = threads()
        for check in checks { #expect(try await check.get() == .pass) }
        #expect(during - before < 16, "threads went from \(before) to \(during) with 64 checks running")
    }
}
