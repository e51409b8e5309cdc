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
    /// service name → its servers' scheduled checks.
    private let tasks = NIOLockedValueBox<[String: [RepeatedTask]]>([:])
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

    public func start(_ services: [VirtualService]) {
        for service in services where service.healthCheck.probe != .none {
            let check = service.healthCheck
            for server in service.realServers {
                let port = check.port ?? server.port ?? service.ports.first?.lower ?? 0
                let target = ProbeTarget(address: server.address, port: port)
                schedule(service: service.name, server: server.name, check: check, target: target)
            }
        }
    }

    private func schedule(service: String, server: String, check: HealthCheck, target: ProbeTarget) {
        let eventLoop = group.next()
        let state = NIOLockedValueBox(CheckState())
        let interval = TimeAmount(check.interval)
        // Spread the first checks over the interval so a large config does not probe everything at once.
        let delay = TimeAmount.milliseconds(Int64.random(in: 0..<max(1, check.interval.milliseconds)))
        let task = eventLoop.scheduleRepeatedAsyncTask(initialDelay: delay, delay: interval) { [self] _ in
            let started = NIODeadline.now()
            return Probe.run(check.probe, target: target, timeout: check.timeout, tls: self.tlsClient, on: eventLoop).map { result in
                if let onProbe = self.onProbe {
                    var passed = false
                    if case .pass = result { passed = true }
                    onProbe(service, server, Double((NIODeadline.now() - started).nanoseconds) / 1e9, passed)
                }
                if let transition = state.withLockedValue({ $0.record(result, rise: check.rise, fall: check.fall) }) {
                    let event = HealthTransition(service: service, server: server, healthy: transition.healthy, reason: transition.reason)
                    self.report(event, target: target)
                }
            }
        }
        tasks.withLockedValue { $0[service, default: []].append(task) }
    }

    private func report(_ event: HealthTransition, target: ProbeTarget) {
        let metadata: Logger.Metadata = ["service": "\(event.service)", "server": "\(event.server)",
                                         "address": "\(target)", "reason": "\(event.reason)"]
        if event.healthy {
            logger.notice("real server up", metadata: metadata)
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
        for task in all { task.cancel() }
    }

    /// Stops checking one service (a reload removed or changed it); the others keep their schedules and state.
    public func stop(service: String) {
        let mine = tasks.withLockedValue { $0.removeValue(forKey: service) ?? [] }
        for task in mine { task.cancel() }
    }
}

/// Consecutive-result counting for one server: pure, so rise/fall behaviour is unit-tested.
public struct CheckState: Sendable {
    public private(set) var healthy = true
    private var passes = 0
    private var failures = 0

    public init() {}

    /// Returns the transition this result causes, if any.
    public mutating func record(_ result: ProbeResult, rise: Int, fall: Int) -> (healthy: Bool, reason: String)? {
        switch result {
        case .pass:
            failures = 0
            passes += 1
            if !healthy, passes >= rise {
                healthy = true
                return (true, "\(passes) checks passed")
            }
        case .fail(let reason):
            passes = 0
            failures += 1
            if healthy, failures >= fall {
                healthy = false
                return (false, "\(reason) (\(failures) checks failed in a row)")
            }
        }
        return nil
    }
}
