import CSpawn
import Glibc

/// Runs one of lbd's own helper programs (iptables-restore, ip) with arguments (no shell), feeds it `input`, and
/// collects its exit status and output. Operator-written commands (external checks) go through `ConfinedProcess`.
/// posix_spawn rather than Foundation's Process: it works the same in the minimal IPVS test VM and needs no run loop.
public enum Subprocess {
    public struct Result: Sendable {
        public var status: Int32
        public var output: String
        public var errorOutput: String
        public var succeeded: Bool { status == 0 }
    }

    public struct LaunchError: Error, CustomStringConvertible, Sendable {
        public var program: String
        public var errno: Int32
        public var description: String { "cannot run \(program): \(String(cString: strerror(errno)))" }
    }

    /// `environment` entries are added to this process's environment. A `timeout` (seconds) kills the program
    /// (SIGKILL) when it runs longer; the result then has status 124, like timeout(1).
    public static func run(_ program: String, _ arguments: [String], input: String = "",
                           environment: [String: String] = [:], timeout: Double? = nil) throws -> Result {
        var stdinPipe: [Int32] = [0, 0], stdoutPipe: [Int32] = [0, 0], stderrPipe: [Int32] = [0, 0]
        // Close-on-exec, so other programs started meanwhile do not inherit these ends (dup2 clears it for the child).
        for index in 0..<3 {
            var ends: [Int32] = [0, 0]
            guard pipe(&ends) == 0 else { throw LaunchError(program: program, errno: errno) }
            _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
            switch index {
            case 0: stdinPipe = ends
            case 1: stdoutPipe = ends
            default: stderrPipe = ends
            }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdinPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, stdoutPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, stderrPipe[1], 2)
        // And nothing else of lbd's: SwiftNIO opens its sockets without close-on-exec, so a program started while
        // lbd closes a listener or a connection would hold it open for as long as it runs (a removed service still
        // accepting connections nobody serves; a client waiting for a FIN). The descriptors above are 0–2 by now.
        lb_spawn_actions_close_from(&actions, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group, so a timeout kills what it started too. An empty signal mask and default
        // dispositions: lbd runs these from Dispatch threads, which block every signal, and a blocked mask survives
        // exec — iptables-restore's `--wait` timeout is a SIGALRM, and never fired (it waited for the lock forever).
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t(), everySignal = sigset_t()
        sigemptyset(&noSignals)
        sigfillset(&everySignal)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &everySignal)

        var environmentLines: [String] = []
        var entry = environ
        while let line = entry.pointee {
            let text = String(cString: line)
            if let name = text.split(separator: "=", maxSplits: 1).first, environment[String(name)] != nil {} else {
                environmentLines.append(text)
            }
            entry += 1
        }
        environmentLines += environment.map { "\($0.key)=\($0.value)" }.sorted()

        var pid: pid_t = 0
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        let envp = environmentLines.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        let status = posix_spawnp(&pid, program, &actions, &attributes, argv, envp)
        close(stdinPipe[0]); close(stdoutPipe[1]); close(stderrPipe[1])
        guard status == 0 else {
            close(stdinPipe[1]); close(stdoutPipe[0]); close(stderrPipe[0])
            throw LaunchError(program: program, errno: status)
        }

        // Feed stdin and drain stdout/stderr together with poll, so a large output cannot deadlock the pipes.
        var pendingInput = Array(input.utf8)[...]
        if pendingInput.isEmpty { close(stdinPipe[1]); stdinPipe[1] = -1 }
        var output: [UInt8] = [], errorOutput: [UInt8] = []
        var open = (stdout: true, stderr: true)
        let deadline = timeout.map { monotonicNow() + $0 }
        var timedOut = false
        var buffer = [UInt8](repeating: 0, count: 65536)
        while open.stdout || open.stderr {
            var fds: [pollfd] = []
            if open.stdout { fds.append(pollfd(fd: stdoutPipe[0], events: Int16(POLLIN), revents: 0)) }
            if open.stderr { fds.append(pollfd(fd: stderrPipe[0], events: Int16(POLLIN), revents: 0)) }
            if stdinPipe[1] >= 0 { fds.append(pollfd(fd: stdinPipe[1], events: Int16(POLLOUT), revents: 0)) }
            var wait: Int32 = -1
            if let deadline {
                let left = deadline - monotonicNow()
                if left <= 0 { timedOut = true; kill(-pid, SIGKILL); break }
                wait = Int32(min(left * 1000, 1000)) + 1
            }
            if poll(&fds, nfds_t(fds.count), wait) < 0 && errno != EINTR { break }
            for fd in fds where fd.revents != 0 {
                if fd.fd == stdinPipe[1] {
                    let written = pendingInput.withUnsafeBytes { write(fd.fd, $0.baseAddress, $0.count) }
                    if written > 0 { pendingInput = pendingInput.dropFirst(written) }
                    if written < 0 || pendingInput.isEmpty { close(stdinPipe[1]); stdinPipe[1] = -1 }
                    continue
                }
                let count = read(fd.fd, &buffer, buffer.count)
                if count > 0 {
                    if fd.fd == stdoutPipe[0] { output += buffer[0..<count] } else { errorOutput += buffer[0..<count] }
                } else if count == 0 || errno != EINTR {
                    if fd.fd == stdoutPipe[0] { open.stdout = false } else { open.stderr = false }
                }
            }
        }
        if stdinPipe[1] >= 0 { close(stdinPipe[1]) }
        close(stdoutPipe[0]); close(stderrPipe[0])
        var waitStatus: Int32 = 0
        while waitpid(pid, &waitStatus, 0) < 0 && errno == EINTR {}
        let exitStatus: Int32 = timedOut ? 124
            : (waitStatus & 0x7F) == 0 ? (waitStatus >> 8) & 0xFF : 128 + (waitStatus & 0x7F)
        return Result(status: exitStatus, output: String(decoding: output, as: UTF8.self),
                      errorOutput: String(decoding: errorOutput, as: UTF8.self))
    }

    static func monotonicNow() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}
