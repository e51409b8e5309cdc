import LBConfig
import LBTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A change of a real server's health, as the agent receives it.
public struct HealthTransition: Sendable, Equatable {
    public var service: String
    public var server: String
    public var healthy: Bool
    public var reason: String

    public init(service: String, server: String, healthy: Bool, reason: String) {
        self.service = service
        self.server = server
        self.healthy = healthy
        self.reason = reason
    }
}

/// Checks every real server of the services it is given, on their own schedules, and reports each transition
/// (after `fall` failures in a row, or `rise` passes in a row) to the agent. Servers start as healthy, so a
/// freshly started lbd serves at once; the first failures take a server out within `fall` intervals.
public final class HealthMonitor: Sendable {
    private let group: EventLoopGroup
    private let logger: Logger
    private let onTransition: @Sendable (HealthTransition) -> Void
    /// Every probe's outcome and duration (service, server, seconds, passed), for metrics.
    private let onProbe: (@Sendable (String, String, Double, Bool) -> Void)?
    /// service name → its servers' scheduled checks and their rise/fall state.
    private let tasks = NIOLockedValueBox<[String: [ScheduledCheck]]>([:])

    private struct ScheduledCheck {
        var server: String
        var check: HealthCheck
        var target: ProbeTarget
        var task: RepeatedTask
        var state: NIOLockedValueBox<CheckState>
        /// Cleared when the check is stopped, so a probe still in flight reports nothing.
        var live: NIOLockedValueBox<Bool>
    }

    /// A server's check as it stood when its service's checks stopped: what a restart can carry over.
    public struct CarriedCheck: Sendable {
        public var check: HealthCheck
        public var target: ProbeTarget
        public var state: CheckState
    }

    /// For https-get; nil if OpenSSL could not build one (those checks then fail with the reason).
    private let tlsClient: TLSContext?

    public init(group: EventLoopGroup, logger: Logger,
                onProbe: (@Sendable (String, String, Double, Bool) -> Void)? = nil,
                onTransition: @escaping @Sendable (HealthTransition) -> Void) {
        self.group = group
        self.logger = logger
        self.onTransition = onTransition
        self.onProbe = onProbe
        self.tlsClient = try? TLSContext.client()
    }

    /// Starts checking the servers of `services`. `initial` (service → server → state) carries checks over from a
    /// reload: a server whose check and target are unchanged keeps its state and counters; one whose check changed
    /// starts from its last known health (not optimistically healthy); servers without an entry start as healthy.
    public func start(_ services: [VirtualService], carrying initial: [String: [String: CarriedCheck]] = [:]) {
        for service in services where service.healthCheck.probe != .none {
            let check = service.healthCheck
            // https-get speaks to the servers as the proxy does: with the service's (or the server's) backend_tls,
            // verifying their certificates; without backend_tls it only asks whether they answer over TLS.
            var contexts: [BackendTLS: Result<TLSContext, Error>] = [:]
            for server in service.realServers {
                var tls: (TLSContext, String?)? = tlsClient.map { ($0, nil) }
                var setupError: String?
                if case .httpsGet = check.probe, let setting = service.backendTLS(for: server) {
                    let made = contexts[setting] ?? Result {
                        try TLSContext.client(verify: setting.verify == .certificate, caFile: setting.caFile,
                                              certificate: setting.certificatePath, key: setting.keyPath)
                    }
                    contexts[setting] = made
                    switch made {
                    case .success(let context): tls = (context, setting.serverName)
                    case .failure(let error): tls = nil; setupError = "backend_tls: \(error)"
                    }
                }
                let port = check.port ?? server.port ?? service.ports.first?.lower ?? 0
                let target = ProbeTarget(address: server.address, port: port)
                var state = CheckState()
                if let carried = initial[service.name]?[server.name] {
                    state = carried.check == check && carried.target == target
                        ? carried.state : CheckState(healthy: carried.state.healthy, concluded: carried.state.concluded)
                }
                schedule(service: service.name, server: server.name, check: check, target: target, state: state, tls: tls,
                         setupError: setupError)
            }
        }
    }

    private func schedule(service: String, server: String, check: HealthCheck, target: ProbeTarget, state initial: CheckState,
                          tls: (TLSContext, String?)?, setupError: String?) {
        let eventLoop = group.next()
        let state = NIOLockedValueBox(initial)
        let live = NIOLockedValueBox(true)
        let interval = TimeAmount(check.interval)
        // Spread the first checks over the interval so a large config does not probe everything at once.
        let delay = TimeAmount.milliseconds(Int64.random(in: 0..<max(1, check.interval.milliseconds)))
        let task = eventLoop.scheduleRepeatedAsyncTask(initialDelay: delay, delay: interval) { [self] _ in
            let started = NIODeadline.now()
            let probe = setupError.map { eventLoop.makeSucceededFuture(ProbeResult.fail($0)) }
                ?? Probe.run(check.probe, target: target, timeout: check.timeout, tls: tls, on: eventLoop)
            return probe.map { result in
                if let onProbe = self.onProbe {
                    var passed = false
                    if case .pass = result { passed = true }
                    onProbe(service, server, Double((NIODeadline.now() - started).nanoseconds) / 1e9, passed)
                }
                // A check stopped by a reload while its probe ran reports nothing: its state moved on without it.
                guard live.withLockedValue({ $0 }) else { return }
                if let transition = state.withLockedValue({ $0.record(result, rise: check.rise, fall: check.fall) }) {
                    let event = HealthTransition(service: service, server: server, healthy: transition.healthy, reason: transition.reason)
                    self.report(event, target: target)
                }
            }
        }
        tasks.withLockedValue {
            $0[service, default: []].append(ScheduledCheck(server: server, check: check, target: target, task: task, state: state, live: live))
        }
    }

    private func report(_ event: HealthTransition, target: ProbeTarget) {
        let metadata: Logger.Metadata = ["service": "\(event.service)", "server": "\(event.server)",
                                         "address": "\(target)", "reason": "\(event.reason)"]
        if event.healthy {
            logger.notice(event.reason == "first check passed" ? "real server checked: up" : "real server up", metadata: metadata)
        } else {
            logger.error("real server down", metadata: metadata)
        }
        onTransition(event)
    }

    public func stop() {
        let all = tasks.withLockedValue { tasks in
            defer { tasks = [:] }
            return tasks.values.flatMap { $0 }
        }
        for scheduled in all {
            scheduled.live.withLockedValue { $0 = false }
            scheduled.task.cancel()
        }
    }

    /// Passive detection took the server out: its check starts counting `rise` passes to bring it back.
    public func markDown(service: String, server: String) {
        let state = tasks.withLockedValue { $0[service]?.first { $0.server == server }?.state }
        state?.withLockedValue { $0.markDown() }
    }

    /// Stops checking one service (a reload removed or changed it); the others keep their schedules and state.
    /// Returns each server's check as it stood, for `start(_:carrying:)`.
    @discardableResult
    public func stop(service: String) -> [String: CarriedCheck] {
        let mine = tasks.withLockedValue { $0.removeValue(forKey: service) ?? [] }
        var carried: [String: CarriedCheck] = [:]
        for scheduled in mine {
            scheduled.live.withLockedValue { $0 = false }
            scheduled.task.cancel()
            carried[scheduled.server] = CarriedCheck(check: scheduled.check, target: scheduled.target,
                                                     state: scheduled.state.withLockedValue { $0 })
        }
        return carried
    }
}

/// Consecutive-result counting for one server: pure, so rise/fall behaviour is unit-tested.
public struct CheckState: Sendable, Equatable {
    public private(set) var healthy: Bool
    /// Whether a conclusion has been reported (the first pass, or a transition): until then the server is
    /// "checking".
    public private(set) var concluded: Bool
    private var passes = 0
    private var failures = 0

    /// A new check starts as healthy (a freshly started lbd serves at once); a check restarted with other settings
    /// starts from the health its predecessor had reached.
    public init(healthy: Bool = true, concluded: Bool = false) {
        self.healthy = healthy
        self.concluded = concluded
    }

    /// Passive detection found the server failing: down now, back after `rise` passes.
    public mutating func markDown() {
        healthy = false
        concluded = true
        passes = 0
        failures = 0
    }

    /// Returns the transition this result causes, if any.
    public mutating func record(_ result: ProbeResult, rise: Int, fall: Int) -> (healthy: Bool, reason: String)? {
        switch result {
        case .pass:
            failures = 0
            passes += 1
            if !healthy, passes >= rise {
                healthy = true
                concluded = true
                return (true, "\(passes) checks passed")
            }
            if !concluded {
                // The first pass of a server that starts as healthy: not a change, but the end of "checking".
                concluded = true
                return (true, "first check passed")
            }
        case .fail(let reason):
            passes = 0
            failures += 1
            if healthy, failures >= fall {
                healthy = false
                concluded = true
                return (false, "\(reason) (\(failures) checks failed in a row)")
            }
        }
        return nil
    }
}
