import ArgumentParser
import Foundation
import LBAgent
import LBConfig
import LBConfigFiles
import LBHealth
import LBHighAvailability
import LBIPVS
import LBProxy
import LBTLS
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
            REDIRECT on a VIP port, a SNAT for a real server of an l4-snat service, a DROP naming a VIP or its port; \
            iptables and native nftables rules alike; for transparent services, any rule or policy route using lb's \
            firewall mark 0x4c42 or routing table 19522). \
            Then it adds VIP addresses (announced with gratuitous ARP or unsolicited neighbour advertisements), \
            sets ip_forward and vs.conntrack where the modes need them, fills its own netfilter chains LB-SNAT and LB-TPROXY \
            (iptables-restore, one transaction per table; tried again up to 3 times while another program holds \
            the xtables lock), and programs the IPVS table, sending only the difference from \
            what the kernel holds. If a step fails, what this start added is taken back. \
            Health checks steer both paths: a failed real server leaves the proxy's pool, and in IPVS is drained \
            to weight 0 or removed (on_server_failure). The addresses and IPVS services lbd created are recorded \
            in the state directory; lbd never removes objects it did not create. \
            SIGTERM or SIGINT stops accepting new proxy connections and lets open ones finish for up to the drain \
            timeout; IPVS entries, VIP addresses and netfilter rules stay, so Layer 4 traffic keeps flowing. \
            Under systemd (Type=notify; NOTIFY_SOCKET set) lbd sends READY=1 once the kernel state is applied and \
            every listener is bound, RELOADING=1 and READY=1 around each reload (SIGHUP or lbctl reload), \
            STOPPING=1 on SIGTERM, and WATCHDOG=1 at half of WatchdogSec= while its agent answers. \
            Every operator action over the control socket (drain, halt, online, reload, mode) and every SIGHUP \
            reload is appended to STATE_DIR/audit.log as one JSON line (time, uid, user, command, targets, \
            result, error) and fsynced before the answer; an action that cannot be recorded is refused \
            (lbctl audit shows the trail). \
            With a high_availability section lbd is one node of a pair (--node names it): it runs keepalived \
            --vrrp --dont-fork as a supervised child (configuration in STATE_DIR/keepalived.conf, its FIFO and pid \
            files beside the control socket), leaves the VIP addresses to it, listens on every VIP with \
            IP_FREEBIND, runs the IPVS sync daemons in both roles, and exchanges its role and the operator \
            overrides with the peer lbd (UDP, HMAC-SHA-256). SIGTERM stops keepalived, which hands the VIPs to \
            the peer at once. \
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
    var metricsEndpoint: (host: String, port: Int)? { metricsAddress.flatMap(HTTPEndpoint.parseEndpoint) }

    @Option(name: .customLong("http"), help: ArgumentHelp(
        "Serve the read-only status page at http://ADDRESS:PORT/ (every VIP and real server, updating itself), with /status.json (as lbctl status --format json), /audit.json (the last ten operator actions) and /metrics; PORT alone means 127.0.0.1:PORT. Off unless given.",
        valueName: "address:port"))
    var httpAddress: String?

    var httpEndpoint: (host: String, port: Int)? { httpAddress.flatMap(HTTPEndpoint.parseEndpoint) }

    @Option(help: "The control socket lbctl talks to.")
    var socket: String = "/run/lb/lbd.sock"

    @Option(help: "A group whose members may use the control socket besides root (the socket becomes mode 0660).")
    var controlGroup: String?

    /// The numeric id of --control-group (checked in validate()).
    var controlGroupID: gid_t? { controlGroup.flatMap { getgrnam($0)?.pointee.gr_gid } }

    @Option(help: "This node's name in the config's high_availability.nodes; default the host name (as `hostname` prints it).")
    var node: String?

    /// gethostname(2): Foundation's host name may come from a reverse DNS lookup of an address.
    static var hostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    @Option(help: "Where lbd records the kernel objects it created (VIP addresses, IPVS services), so it never removes what it did not create, the operators' overrides, and the audit trail (audit.log).")
    var stateDir: String = "/var/lib/lb"

    func validate() throws {
        guard (1...256).contains(threads) else { throw ValidationError("--threads must be between 1 and 256") }
        guard (0...3600).contains(drainTimeout) else { throw ValidationError("--drain-timeout must be between 0 and 3600 seconds") }
        if metricsAddress != nil, metricsEndpoint == nil {
            throw ValidationError("--metrics wants ADDRESS:PORT with a literal address, e.g. 127.0.0.1:9780 or [::1]:9780")
        }
        if httpAddress != nil, httpEndpoint == nil {
            throw ValidationError("--http wants ADDRESS:PORT with a literal address (127.0.0.1:9780, [::1]:9780) or a PORT on 127.0.0.1")
        }
        if let http = httpEndpoint, let metrics = metricsEndpoint, http == metrics {
            throw ValidationError("--http \(httpAddress ?? "") already serves /metrics; drop --metrics or give it another port")
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
            report = try ConfigurationLoader.check(path: config, files: TLSFileChecker())
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
        // Under systemd (Type=notify) each stage is announced; by hand this does nothing.
        let notifier = SystemdNotifier()
        notifier.status("starting: applying \(configuration.virtualServices.count) virtual services")

        // The agent owns the runtime state and is the only one that acts on the machine, through these effectors.
        let cookieKey: [UInt8]
        do {
            if let pair = configuration.highAvailability {
                // Both nodes of a pair must name the real servers alike in persistence cookies, or a take-over
                // would re-pin every browser: the key comes from the shared peer secret.
                cookieKey = KeyedHash.hmacSHA256(key: try PeerChannel.readSecret(pair.peerSecretFile),
                                                 data: Array("lb persistence cookie key".utf8))
            } else {
                cookieKey = try state.cookieKey()
            }
        } catch {
            logger.critical("\(error); nothing started")
            throw ExitCode(1)
        }
        let relay = TransitionRelay()
        let engine = ProxyEngine(threads: threads, logger: logger, cookieKey: cookieKey) { service, server, reason in
            relay.agent?.observedFailure(service: service, server: server, reason: reason)
        }
        let probes = ProbeRelay()
        let health = HealthMonitor(group: engine.group, logger: logger, onProbe: { service, server, seconds, passed in
            probes.metrics?.recordCheck(service: service, server: server, seconds: seconds, passed: passed)
        }) { transition in
            relay.agent?.healthChanged(transition)
        }
        // A pair: keepalived's files in the state directory, its FIFO and pid files beside the control socket (/run/lb).
        let pair = KeepalivedPair(directory: stateDir, runtimeDirectory: (socket as NSString).deletingLastPathComponent, logger: logger)
        let effectors = Effectors(
            ipvs: { try IPVSClient() }, sysctl: ProcSysctl(), addresses: HostLinks(),
            firewall: HostNetfilter(logger: logger), proxy: ProxyEngineEffector(engine: engine), health: health, pair: pair)
        let agent = Agent(configuration: configuration, configText: try? String(contentsOfFile: config, encoding: .utf8),
                          configPath: config, effectors: effectors, state: state, logger: logger, node: node ?? Self.hostName)
        relay.agent = agent
        do {
            try await agent.start()
        } catch {
            logger.critical("\(error)")
            logger.critical("nothing started; the host was left as it was")
            await engine.shutdown(drainTimeout: .zero)
            throw ExitCode(1)
        }
        let audit = AuditLog(directory: stateDir)
        var endpoints: [(HTTPEndpoint, (host: String, port: Int))] = []
        if metricsEndpoint != nil || httpEndpoint != nil {
            let prometheus = PrometheusMetrics(agent: agent)
            probes.metrics = prometheus
            if let endpoint = metricsEndpoint {
                endpoints.append((HTTPEndpoint(content: .metricsOnly, agent: agent, metrics: prometheus, audit: audit, logger: logger), endpoint))
            }
            if let endpoint = httpEndpoint {
                endpoints.append((HTTPEndpoint(content: .statusPages, agent: agent, metrics: prometheus, audit: audit, logger: logger), endpoint))
            }
        }
        let actions = OperatorActions(agent: agent, audit: audit, notifier: notifier, logger: logger)
        let control = ControlServer(path: socket, allowedGroup: controlGroupID, logger: logger) { request, peer in
            await actions.handle(request, uid: peer.uid)
        }
        do {
            try await control.start(group: engine.group)
            for (endpoint, address) in endpoints {
                try await endpoint.start(host: address.host, port: address.port, group: engine.group)
            }
        } catch {
            for (endpoint, _) in endpoints { await endpoint.stop() }
            await control.stop()
            logger.critical("\(error); stopping (Layer 4 entries stay in the kernel)")
            await agent.stop(cleanUp: false)
            await engine.shutdown(drainTimeout: .zero)
            throw ExitCode(1)
        }
        // Ready only now: the kernel state is applied (agent.start) and the proxy, control and HTTP listeners are bound.
        notifier.ready(status: "serving \(configuration.virtualServices.count) virtual services")
        if let error = notifier.lastError { logger.warning("systemd was not told lbd is ready: \(error)") }
        // SIGHUP re-reads the config, like `lbctl reload`.
        let hangup = HangupSignal {
            Task { await actions.reloadFromSignal() }
        }
        // WatchdogSec=: a ping at half the interval, sent only after the agent's queue answers, so a stuck agent
        // (not merely a live process) is what systemd restarts.
        let watchdog = notifier.watchdogInterval.map { interval in
            Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval / 2)
                    if Task.isCancelled { break }
                    _ = await agent.snapshot()
                    notifier.watchdog()
                }
            }
        }
        // Drift: someone may change the kernel behind lbd's back (ipvsadm -C, ip addr del); it is repaired.
        let drift = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(reconcileInterval))
                if Task.isCancelled { break }
                await agent.repairDrift()
            }
        }

        let signal = await stop.wait()
        notifier.stopping()
        drift.cancel()
        watchdog?.cancel()
        _ = hangup
        logger.notice("received \(signal): stopping, draining connections", metadata: ["drain_timeout": "\(drainTimeout)s"])
        await control.stop()
        for (endpoint, _) in endpoints { await endpoint.stop() }
        await agent.stop(cleanUp: false)
        await engine.shutdown(drainTimeout: .seconds(drainTimeout))
        if cleanupOnStop { await agent.stop(cleanUp: true) }
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

/// The health monitor is made before the agent it reports to.
final class TransitionRelay: @unchecked Sendable {
    var agent: Agent?
}

/// Probe durations go to the metrics server, if there is one.
final class ProbeRelay: @unchecked Sendable {
    var metrics: PrometheusMetrics?
}
