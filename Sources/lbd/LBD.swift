import ArgumentParser
import Foundation
import LBConfig
import LBHealth
import LBNetfilter
import LBProxy
import Logging

@main
struct LBD: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lbd",
        abstract: "The lb agent: makes this machine serve the virtual services of a config file.",
        discussion: """
            lbd reads a declarative config (lb.yaml(5)) and makes the machine match it: Layer 4 services \
            (l4-dr, l4-nat, l4-snat) are programmed into the kernel's IPVS over generic netlink, Layer 7 services \
            (l7-http, l7-tcp) are served by lbd's own proxy. \
            On start lbd first checks, changing nothing: the config is valid, IPVS is available if a Layer 4 \
            service needs it, every `interface:` exists, and no host netfilter rule clashes with a VIP (a DNAT or \
            REDIRECT on a VIP port, a SNAT for a real server of an l4-snat service, a DROP naming a VIP or its port). \
            Then it adds VIP addresses (announced with gratuitous ARP or unsolicited neighbour advertisements), \
            sets ip_forward and vs.conntrack where the modes need them, fills its own netfilter chain LB-SNAT \
            (iptables-restore, one transaction), and programs the IPVS table, sending only the difference from \
            what the kernel holds. If a step fails, what this start added is taken back. \
            Health checks steer both paths: a failed real server leaves the proxy's pool, and in IPVS is drained \
            to weight 0 or removed (on_server_failure). The addresses and IPVS services lbd created are recorded \
            in the state directory; lbd never removes objects it did not create. \
            SIGTERM or SIGINT stops accepting new proxy connections and lets open ones finish for up to the drain \
            timeout; IPVS entries, VIP addresses and netfilter rules stay, so Layer 4 traffic keeps flowing. \
            Exit status: 0 success; 1 the config is invalid or the host cannot take it (nothing applied); \
            2 the config file cannot be read; 64 bad usage.
            """,
        version: LBVersion.current
    )

    @Option(name: .shortAndLong, help: "The config file (lb.yaml(5)); default /etc/lb/lb.yaml.")
    var config: String = "/etc/lb/lb.yaml"

    @Flag(help: "Validate the config, print findings and exit.")
    var check = false

    @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    @Option(help: "Event loop threads for the Layer 7 proxy; default one per core.")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    @Option(help: "Seconds that open connections may take to finish after SIGTERM before they are closed.")
    var drainTimeout: Int = 30

    @Flag(help: "On SIGTERM also remove what lbd put in the kernel (its IPVS services, netfilter chain, VIP addresses); by default they stay so Layer 4 traffic flows across a restart.")
    var cleanupOnStop = false

    @Option(help: "Seconds between checks that the kernel still holds what lbd put there (repaired if not).")
    var reconcileInterval: Int = 10

    @Option(name: .customLong("metrics"), help: "Serve Prometheus metrics at http://ADDRESS:PORT/metrics (e.g. 127.0.0.1:9780); off unless given.")
    var metricsAddress: String?

    /// --metrics split into host and port; IPv6 as [::1]:9780.
    var metricsEndpoint: (String, Int)? {
        guard let metricsAddress, let colon = metricsAddress.lastIndex(of: ":"),
              let port = Int(metricsAddress[metricsAddress.index(after: colon)...]), (1...65535).contains(port)
        else { return nil }
        let host = metricsAddress[..<colon].trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        guard IPAddress(host) != nil else { return nil }
        return (host, port)
    }

    @Option(help: "The control socket lbctl talks to.")
    var socket: String = "/run/lb/lbd.sock"

    @Option(help: "A group whose members may use the control socket besides root (the socket becomes mode 0660).")
    var controlGroup: String?

    /// The numeric id of --control-group (checked in validate()).
    var controlGroupID: gid_t? { controlGroup.flatMap { getgrnam($0)?.pointee.gr_gid } }

    @Option(help: "Where lbd records the kernel objects it created (VIP addresses, IPVS services), so it never removes what it did not create.")
    var stateDir: String = "/var/lib/lb"

    func validate() throws {
        guard (1...256).contains(threads) else { throw ValidationError("--threads must be between 1 and 256") }
        guard (0...3600).contains(drainTimeout) else { throw ValidationError("--drain-timeout must be between 0 and 3600 seconds") }
        if metricsAddress != nil, metricsEndpoint == nil {
            throw ValidationError("--metrics wants ADDRESS:PORT with a literal address, e.g. 127.0.0.1:9780 or [::1]:9780")
        }
        guard (1...3600).contains(reconcileInterval) else { throw ValidationError("--reconcile-interval must be between 1 and 3600 seconds") }
        if let problem = ControlServer.pathProblem(socket) { throw ValidationError(problem) }
        if let controlGroup, getgrnam(controlGroup) == nil {
            throw ValidationError("no group named \"\(controlGroup)\" (see /etc/group)")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown log level \"\(logLevel)\"; use trace, debug, info, notice, warning, error or critical")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "lbd")

        let report: ConfigurationReport
        do {
            report = try ConfigurationLoader.check(path: config)
        } catch {
            logger.critical("\(error)")
            throw ExitCode(2)
        }
        for diagnostic in report.diagnostics {
            if diagnostic.severity == .error { logger.error("\(diagnostic)") } else { logger.warning("\(diagnostic)") }
        }
        guard let configuration = report.configuration else {
            logger.critical("config rejected; nothing applied", metadata: ["config": "\(config)", "errors": "\(report.diagnostics.errors.count)"])
            throw ExitCode(1)
        }
        if check {
            print(report.summaryLine)
            return
        }
        logger.info("config loaded", metadata: ["config": "\(config)", "virtual_services": "\(configuration.virtualServices.count)"])
        raiseDescriptorLimit(logger: logger)
        let state = StateStore(directory: stateDir)
        let stop = StopSignal()
        let kernel: KernelServices?
        do {
            kernel = try applyHost(configuration, state: state, logger: logger)
        } catch {
            logger.critical("\(error)")
            logger.critical("nothing started; the host was left as it was")
            throw ExitCode(1)
        }

        let engine = ProxyEngine(threads: threads, logger: logger)
        do {
            try await engine.start(configuration.virtualServices)
        } catch {
            logger.critical("\(error); nothing started")
            await engine.shutdown(drainTimeout: .zero)
            throw ExitCode(1)
        }
        // The agent is the only place that knows both paths: health transitions and lbctl's requests go through it.
        let agent = Agent(configuration: configuration, configPath: config, engine: engine, kernel: kernel, state: state,
                          logger: logger)
        let metrics = metricsAddress == nil ? nil : MetricsServer(agent: agent, logger: logger)
        let health = HealthMonitor(group: engine.group, logger: logger, onProbe: { service, server, seconds, passed in
            metrics?.recordCheck(service: service, server: server, seconds: seconds, passed: passed)
        }) { transition in
            agent.healthChanged(service: transition.service, server: transition.server, healthy: transition.healthy)
        }
        agent.health = health
        let control = ControlServer(path: socket, allowedGroup: controlGroupID, logger: logger) { request in
            await agent.handle(request)
        }
        do {
            try agent.restoreOverrides()
            try await control.start(group: engine.group)
            if let metrics, let (host, port) = metricsEndpoint {
                try await metrics.start(host: host, port: port, group: engine.group)
            }
        } catch {
            logger.critical("\(error); stopping (Layer 4 entries stay in the kernel)")
            await engine.shutdown(drainTimeout: .zero)
            throw ExitCode(1)
        }
        health.start(configuration.virtualServices)
        // SIGHUP re-reads the config, like `lbctl reload`.
        let hangup = HangupSignal {
            Task {
                let result = await agent.reload()
                if result.ok { logger.notice("SIGHUP: \(result.message ?? "reloaded")") }
                else { logger.error("SIGHUP: \(result.message ?? "reload failed")") }
            }
        }
        // Drift: someone may change the kernel behind lbd's back (ipvsadm -C, ip addr del); it is repaired.
        let drift = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(reconcileInterval))
                if Task.isCancelled { break }
                agent.repairDrift()
            }
        }

        let signal = await stop.wait()
        drift.cancel()
        _ = hangup
        logger.notice("received \(signal): stopping, draining connections", metadata: ["drain_timeout": "\(drainTimeout)s"])
        await control.stop()
        await metrics?.stop()
        health.stop()
        await engine.shutdown(drainTimeout: .seconds(drainTimeout))
        if cleanupOnStop { agent.cleanUp() }
        logger.notice("stopped")
    }
}

/// SIGHUP: re-read the config.
final class HangupSignal: @unchecked Sendable {
    private let source: DispatchSourceSignal

    init(_ handler: @escaping @Sendable () -> Void) {
        signal(SIGHUP, SIG_IGN)
        source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: DispatchQueue(label: "lbd.sighup"))
        source.setEventHandler(handler: handler)
        source.resume()
    }
}

/// SIGTERM or SIGINT, the two ways an operator or systemd asks lbd to stop. Installed before anything starts,
/// so a stop request that arrives during start-up is not lost (nor fatal).
final class StopSignal: @unchecked Sendable {
    private let queue = DispatchQueue(label: "lbd.signals")
    private var sources: [DispatchSourceSignal] = []
    private let lock = NSLock()
    private var received: String?
    private var waiter: CheckedContinuation<String, Never>?

    init() {
        for (number, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT")] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { [weak self] in self?.deliver(name) }
            source.resume()
            sources.append(source)
        }
    }

    private func deliver(_ name: String) {
        lock.lock()
        guard received == nil else { lock.unlock(); return }
        received = name
        let waiter = self.waiter
        self.waiter = nil
        lock.unlock()
        waiter?.resume(returning: name)
    }

    func wait() async -> String {
        await withCheckedContinuation { continuation in
            lock.lock()
            if let received {
                lock.unlock()
                continuation.resume(returning: received)
            } else {
                waiter = continuation
                lock.unlock()
            }
        }
    }
}

extension LBD {
    /// Brings the host's kernel in line with the config, in an order that never exposes a half-built service:
    /// first every check that changes nothing (IPVS present, interfaces exist, no clashing netfilter rules), then
    /// VIP addresses, kernel settings, lb's netfilter chain, and the IPVS table last. If a step fails, what this
    /// start added is taken back.
    func applyHost(_ configuration: Configuration, state: StateStore, logger: Logger) throws -> KernelServices? {
        let services = configuration.virtualServices
        let layer4 = services.contains { $0.mode.isLayer4 }
        var kernel: KernelServices?
        if layer4 {
            do {
                kernel = try KernelServices(configuration: configuration, state: state, logger: logger)
            } catch {
                throw PreflightError("Layer 4 services cannot be programmed: \(error)")
            }
            // A server drained or halted before a restart stays so.
            kernel?.restoreAdmin(try state.load().overrides)
        }
        let addresses = HostAddresses(services: services, state: state, logger: logger)
        try addresses.preflight()
        let firewall = HostFirewall(services: services, logger: logger)
        let conflicts = try firewall.conflicts()
        if !conflicts.isEmpty {
            for conflict in conflicts { logger.error("\(conflict)") }
            throw PreflightError("\(conflicts.count) host netfilter rule(s) clash with the config")
        }

        let added = try addresses.apply()
        do {
            if let kernel {
                try kernel.applySysctls()
                try kernel.applyIPVSSettings()
            }
            try firewall.apply()
            try kernel?.reconcileOrRollBack()
        } catch {
            addresses.rollBack(added)
            throw error
        }
        return kernel
    }
}
