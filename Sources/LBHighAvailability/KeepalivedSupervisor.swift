import Foundation
import LBSystem
import Logging

/// Runs `keepalived --vrrp --dont-fork` for lbd as a supervised child: writes its configuration, restarts it with
/// backoff when it dies, reloads it (SIGHUP) when the configuration changes, stops it with lbd, and reports each
/// VRRP transition read from its notify FIFO. Everything blocking happens on two threads of its own.
public final class KeepalivedSupervisor: @unchecked Sendable {
    public let files: KeepalivedConfig.Files
    private let program: String
    private let logger: Logger
    private let onState: @Sendable (VRRPNotification.State) -> Void
    private let onStopped: @Sendable (String) -> Void
    private let condition = NSCondition()
    private var stopping = false
    private var pid: pid_t = 0

    /// Backoff after a crash: 1 s, doubling to 30 s; back to 1 s once keepalived has run for a minute.
    static let firstBackoff = 1.0, maximumBackoff = 30.0, stableAfter = 60.0

    public enum SetupError: Error, CustomStringConvertible {
        case notInstalled
        case cannotWrite(String, Error)
        case cannotMakeFIFO(String, Int32)
        public var description: String {
            switch self {
            case .notInstalled:
                return "keepalived is not installed (apt-get install keepalived): high_availability needs it for VRRP"
            case .cannotWrite(let path, let error): return "cannot write \(path): \(error)"
            case .cannotMakeFIFO(let path, let code): return "cannot make the FIFO \(path): \(String(cString: strerror(code)))"
            }
        }
    }

    public init(files: KeepalivedConfig.Files, logger: Logger, onState: @escaping @Sendable (VRRPNotification.State) -> Void,
                onStopped: @escaping @Sendable (String) -> Void) throws(SetupError) {
        self.program = try Self.program()
        self.files = files
        self.logger = logger
        self.onState = onState
        self.onStopped = onStopped
    }

    /// Writes the configuration and the standby flag, then starts keepalived and the FIFO reader.
    /// keepalived's path: on PATH, or in the sbin directories a root shell would search.
    public static func program() throws(SetupError) -> String {
        let candidates = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
            + ["/usr/sbin", "/usr/local/sbin", "/sbin"]
        guard let found = candidates.map({ $0 + "/keepalived" }).first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else { throw .notInstalled }
        return found
    }

    public func start(configuration text: String, standby: Bool) throws(SetupError) {
        try write(text, to: files.config)
        try setStandby(standby)
        let directory = (files.notifyFIFO as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        unlink(files.notifyFIFO)
        guard mkfifo(files.notifyFIFO, 0o600) == 0 else { throw .cannotMakeFIFO(files.notifyFIFO, errno) }
        let reader = Thread { [self] in readNotifications() }
        reader.name = "lb-keepalived-fifo"
        reader.start()
        let runner = Thread { [self] in supervise() }
        runner.name = "lb-keepalived"
        runner.start()
    }

    /// A changed VIP set or pair section: the new file, then SIGHUP (keepalived re-reads it without dropping the role).
    public func reload(configuration text: String) throws(SetupError) {
        try write(text, to: files.config)
        condition.lock()
        let running = pid
        condition.unlock()
        if running > 0 { kill(running, SIGHUP) }
        logger.notice("keepalived configuration reloaded", metadata: ["file": "\(files.config)"])
    }

    /// `lbctl ha standby` (true) and `lbctl ha resume` (false): keepalived watches this file (inotify).
    public func setStandby(_ on: Bool) throws(SetupError) {
        try write(on ? "1\n" : "0\n", to: files.standbyFile)
    }

    /// Stops keepalived (SIGTERM: it releases the addresses and sends a priority 0 advertisement, so the peer takes
    /// over at once) and waits for it, at most `timeout` seconds before SIGKILL.
    public func stop(timeout: Double = 5) {
        condition.lock()
        stopping = true
        let running = pid
        condition.broadcast()
        condition.unlock()
        guard running > 0 else { return }
        ConfinedProcess.signalGroup(running, SIGTERM)
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        while pid != 0 && Date() < deadline { _ = condition.wait(until: min(deadline, Date().addingTimeInterval(0.05))) }
        let left = pid
        condition.unlock()
        if left > 0 {
            logger.warning("keepalived did not stop within \(timeout) s; killed")
            ConfinedProcess.signalGroup(left, SIGKILL)
        }
    }

    private func write(_ text: String, to path: String) throws(SetupError) {
        do {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            throw .cannotWrite(path, error)
        }
    }

    private var arguments: [String] {
        ["--vrrp", "--dont-fork", "--log-console", "--no-syslog", "--log-detail", "--use-file", files.config,
         "--pid", files.pidFile, "--vrrp_pid", files.vrrpPidFile]
    }

    private func supervise() {
        var backoff = Self.firstBackoff
        while true {
            condition.lock()
            if stopping { condition.unlock(); return }
            condition.unlock()
            let began = Date()
            let started: ConfinedProcess.Started
            do {
                // dieWithParent: keepalived must not hold the VIPs for an lbd that is gone (this thread lives as
                // long as lbd runs keepalived).
                started = try ConfinedProcess.start(program, arguments, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"],
                                                    user: nil, dieWithParent: true)
            } catch {
                logger.error("keepalived could not be started: \(error)")
                onStopped("keepalived could not be started: \(error)")
                if !pause(backoff) { return }
                backoff = min(backoff * 2, Self.maximumBackoff)
                continue
            }
            condition.lock()
            pid = started.pid
            let stopRequested = stopping
            condition.unlock()
            // stop() may have come between the check above and the spawn: it saw no pid, so this side ends it.
            if stopRequested { ConfinedProcess.signalGroup(started.pid, SIGTERM) }
            logger.notice("keepalived started", metadata: ["pid": "\(started.pid)", "config": "\(files.config)"])
            forwardOutput(started.output)
            var status: Int32 = 0
            while waitpid(started.pid, &status, 0) < 0 && errno == EINTR {}
            let exit = (status & 0x7F) == 0 ? "exit \((status >> 8) & 0xFF)" : "signal \(status & 0x7F)"
            condition.lock()
            pid = 0
            let stopped = stopping
            condition.broadcast()
            condition.unlock()
            if stopped {
                logger.notice("keepalived stopped", metadata: ["status": "\(exit)"])
                return
            }
            if Date().timeIntervalSince(began) >= Self.stableAfter { backoff = Self.firstBackoff }
            logger.error("keepalived ended (\(exit)); starting it again in \(backoff) s")
            onStopped("keepalived ended (\(exit))")
            if !pause(backoff) { return }
            backoff = min(backoff * 2, Self.maximumBackoff)
        }
    }

    /// Waits `seconds` unless lbd stops meanwhile; false when it does.
    private func pause(_ seconds: Double) -> Bool {
        let until = Date().addingTimeInterval(seconds)
        condition.lock()
        defer { condition.unlock() }
        while !stopping && Date() < until { _ = condition.wait(until: until) }
        return !stopping
    }

    /// keepalived's own log lines into lbd's log, until its output closes.
    private func forwardOutput(_ descriptor: Int32) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var pending: [UInt8] = []
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            pending += buffer.prefix(count)
            while let newline = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                if !line.isEmpty { logger.info("keepalived: \(line)") }
            }
        }
        close(descriptor)
    }

    /// The FIFO is opened read-write, so it never reports end of file between keepalived's restarts. Polled with a
    /// timeout, so the thread ends once stop() was called.
    private func readNotifications() {
        let descriptor = open(files.notifyFIFO, O_RDWR | O_CLOEXEC | O_NONBLOCK)
        guard descriptor >= 0 else {
            logger.error("cannot open keepalived's notify FIFO \(files.notifyFIFO): \(String(cString: strerror(errno)))")
            return
        }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        var pending: [UInt8] = []
        while true {
            condition.lock()
            let stopped = stopping
            condition.unlock()
            if stopped { return }
            var ready = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, 500) > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            guard count > 0 else { return }
            pending += buffer.prefix(count)
            while let newline = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                if let notification = VRRPNotification(line: line), notification.instance == KeepalivedConfig.instanceName {
                    onState(notification.state)
                }
            }
        }
    }
}
