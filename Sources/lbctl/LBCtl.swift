import ArgumentParser
import Foundation
import LBConfig
import LBConfigFiles
import LBControl

@main
struct LBCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lbctl",
        abstract: "Operate the lb load balancer: inspect configs and, through lbd, its virtual services.",
        discussion: """
            The config commands work on a file directly and need neither root nor a running lbd. \
            status, drain, halt, online, reload, mode, audit and ha talk to a running lbd over its control socket (root, or a member of \
            lbd's --control-group). \
            Exit status: 0 success; 1 the config is invalid, or lbd refused the request; 2 the config file cannot \
            be read, or lbd cannot be reached; 64 bad usage.
            """,
        version: LBVersion.current,
        subcommands: [ConfigCommand.self, Status.self, Drain.self, Halt.self, Online.self, Reload.self, Mode.self, Audit.self,
                      HA.self]
    )

    // Also accepted before the command name (`lbctl --socket PATH status`).
    @OptionGroup var socket: SocketOption
}

/// Where lbd listens; shared by the commands that talk to it.
struct SocketOption: ParsableArguments {
    @Option(help: "lbd's control socket.")
    var socket: String = ControlProtocol.defaultSocketPath
}

/// Sends a request; prints lbd's refusal and exits 1, or an unreachable lbd and exits 2.
func ask(_ request: ControlRequest, _ socket: SocketOption) throws -> ControlResponse {
    let response: ControlResponse
    do {
        response = try ControlClient.send(request, socketPath: socket.socket)
    } catch {
        printToStandardError("lbctl: \(error)")
        throw ExitCode(2)
    }
    guard response.ok else {
        printToStandardError("lbctl: \(response.message ?? "lbd refused the request")")
        throw ExitCode(1)
    }
    return response
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the virtual services and their real servers: health, operator state, weight, connections.",
        discussion: "On a node of a pair the first lines give this node's role (MASTER, BACKUP, FAULT), the peer and whether it is reachable, the last role transition and its cause, and whether both nodes run the same virtual services. STATE is what a real server does now: checking (no check result yet), up, down, drain or halt. WEIGHT is the one in effect, followed by the configured one when they differ (0/100 while a server is down or drained). SESSIONS counts the clients pinned to a server (persistence cookie or source-IP entry) seen in the last ten minutes: a draining server keeps serving them, and it may be patched once ACTIVE and SESSIONS are 0. CHECK is what the health check probes; REASON and SINCE tell why and when its last transition happened. For Layer 4 services the connection figures are the kernel's IPVS counters for the first VIP port."
    )

    @OptionGroup var socket: SocketOption

    @Argument(help: "Only this virtual service.")
    var service: String?

    @Option(help: "Output format: text or json.")
    var format: OutputFormat = .text

    func run() throws {
        let response = try ask(ControlRequest(command: .status, service: service), socket)
        let services = response.status ?? []
        if format == .json {
            print(String(decoding: StatusJSON.encode(services), as: UTF8.self))
            return
        }
        if services.isEmpty, let service {
            printToStandardError("lbctl: no virtual service named \"\(service)\"")
            throw ExitCode(1)
        }
        if let pair = response.pair { print(Self.pairLines(pair) + "\n") }
        var rows = [["SERVICE / SERVER", "MODE / ADDRESS", "PORTS", "STATE", "HEALTH", "ADMIN", "WEIGHT", "ACTIVE", "TOTAL",
                     "SESSIONS", "CHECK", "SINCE", "REASON"]]
        for entry in services {
            rows.append([entry.name, entry.mode + " " + entry.vip, entry.ports + "/" + entry.transport, entry.state,
                         "", "", "", "", "", "", "", "", ""])
            for server in entry.servers {
                let weight = server.weight == server.configuredWeight ? "\(server.weight)" : "\(server.weight)/\(server.configuredWeight)"
                rows.append(["  " + server.name, server.address, "", server.state, server.health, server.admin.rawValue,
                             weight, "\(server.activeConnections)", "\(server.totalConnections)", "\(server.sessions)", server.check,
                             server.since ?? "", server.reason ?? ""])
            }
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            var line = zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
            while line.hasSuffix(" ") { line.removeLast() }
            print(line)
        }
    }
}

extension Status {
    /// The pair's part of `lbctl status`: role, peer, last transition, whether the configs match.
    static func pairLines(_ pair: PairReport) -> String {
        var lines = ["pair: this node \(pair.node) is \(pair.role.uppercased())" + (pair.standby ? " (standby: lbctl ha resume to undo)" : "")]
        let heard = pair.peerLastHeardSecondsAgo.map { String(format: "last heard %.1f s ago", $0) } ?? "never heard"
        lines.append("  peer \(pair.peer) (\(pair.peerAddress)): " + (pair.peerReachable ? "reachable, \(pair.peerRole ?? "?")" : "UNREACHABLE") + ", \(heard)")
        lines.append("  last transition: " + (pair.lastTransition.map { "\($0) at \(pair.lastTransitionTime ?? "?")" } ?? "none yet")
                     + " (\(pair.transitions) in all)")
        switch pair.configsMatch {
        case true?: lines.append("  configs: the same virtual services on both nodes")
        case false?: lines.append("  WARNING: the peer runs other virtual services than this node; copy lb.yaml to both and reload")
        case nil: lines.append("  configs: not compared yet (peer not heard)")
        }
        if pair.refusedPeerMessages > 0 { lines.append("  refused peer messages: \(pair.refusedPeerMessages) (see lbd's log)") }
        return lines.joined(separator: "\n")
    }
}

/// `lbctl ha standby` and `lbctl ha resume`.
struct HA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ha",
        abstract: "Hand a pair's master role to the peer for maintenance of this node, and undo it.",
        subcommands: [Standby.self, Resume.self])

    struct Standby: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "This node gives up the master role at once (the peer takes every VIP) and keeps out of it.",
            discussion: "Kept across lbd restarts until `lbctl ha resume`. IPVS, listeners and health checks stay up, so the node is ready to take over again.")
        @OptionGroup var socket: SocketOption
        func run() throws { print(try ask(ControlRequest(command: .haStandby), socket).message ?? "done") }
    }

    struct Resume: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Lift the standby: this node is backup again, ready to take over if the peer fails.",
            discussion: "It does not take the master role back by itself unless high_availability.preempt is true.")
        @OptionGroup var socket: SocketOption
        func run() throws { print(try ask(ControlRequest(command: .haResume), socket).message ?? "done") }
    }
}

/// drain, halt and online share their arguments: VIP and server, or --server alone for every VIP.
struct ServerSelection: ParsableArguments {
    @Argument(help: "The virtual service (its name in the config).")
    var service: String?

    @Argument(help: "The real server (its name in the config).")
    var server: String?

    @Option(name: .customLong("server"), help: "This real server in every virtual service that has it (node maintenance).")
    var everywhere: String?

    func validate() throws {
        if everywhere != nil, service != nil {
            throw ValidationError("name either VIP and SERVER, or --server SERVER alone")
        }
        if everywhere == nil, server == nil {
            throw ValidationError("name the virtual service and the real server, or use --server SERVER")
        }
    }

    /// Sends the command for this selection and prints lbd's answer.
    func send(_ command: ControlRequest.Command, _ socket: SocketOption) throws {
        let request = everywhere != nil
            ? ControlRequest(command: command, server: everywhere)
            : ControlRequest(command: command, service: service, server: server)
        print(try ask(request, socket).message ?? "done")
    }
}

struct Drain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Drain a real server: no new connections; established ones finish (IPVS: weight 0).",
        discussion: "Kept across lbd restarts until `lbctl online`. Example: lbctl drain CoreServerDICOM-104 ei-core-2; lbctl drain --server ei-core-2")
    @OptionGroup var socket: SocketOption
    @OptionGroup var selection: ServerSelection
    func run() throws { try selection.send(.drain, socket) }
}

struct Halt: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take a real server out now: the proxy closes its connections, IPVS removes the destination.",
        discussion: "Kept across lbd restarts until `lbctl online`.")
    @OptionGroup var socket: SocketOption
    @OptionGroup var selection: ServerSelection
    func run() throws { try selection.send(.halt, socket) }
}

struct Online: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Put a drained or halted real server back (it takes traffic again while its health check passes).")
    @OptionGroup var socket: SocketOption
    @OptionGroup var selection: ServerSelection
    func run() throws { try selection.send(.online, socket) }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// Exit codes shared by the config commands, documented in lbctl(8).
enum ConfigExit {
    static let invalid = ExitCode(1)
    static let unreadable = ExitCode(2)
}

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Validate or print a config file, offline.",
        subcommands: [Check.self, Show.self, RealServers.self]
    )

    struct RealServers: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "real-servers",
            abstract: "Print what the real servers of each virtual service need (e.g. the VIP on loopback and ARP settings for l4-dr).",
            discussion: "Covers every service of the file, or only the one named. An invalid file prints its errors and exits 1."
        )

        @Argument(help: "The config file (YAML, see lb.yaml(5)).")
        var file: String

        @Argument(help: "Only this virtual service.")
        var service: String?

        func run() throws {
            let report = try loadReport(file, format: .text)
            guard let configuration = report.configuration else {
                printDiagnostics(report)
                throw ConfigExit.invalid
            }
            let services = configuration.virtualServices.filter { service == nil || $0.name == service }
            guard !services.isEmpty else {
                printToStandardError("lbctl: no virtual service named \"\(service ?? "")\" in \(file)")
                throw ConfigExit.invalid
            }
            print(services.map(RealServerSetup.text(for:)).joined(separator: "\n\n"))
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a config file and report every error and warning with file:line:column.",
            discussion: "Exits 0 when the file is valid (warnings allowed), 1 when it has errors, 2 when it cannot be read."
        )

        @Argument(help: "The config file (YAML, see lb.yaml(5)).")
        var file: String

        @Option(help: "Output format: text (diagnostics on standard error) or json (one document on standard output).")
        var format: OutputFormat = .text

        func run() throws {
            let report = try loadReport(file, format: format)
            switch format {
            case .json:
                print(ConfigurationView.json(CheckResult(report)))
            case .text:
                printDiagnostics(report)
                print(report.summaryLine)
            }
            if !report.isValid { throw ConfigExit.invalid }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the normalized virtual service table of a config file (defaults filled in).",
            discussion: "An invalid file prints its errors instead and exits 1."
        )

        @Argument(help: "The config file (YAML, see lb.yaml(5)).")
        var file: String

        @Option(help: "Output format: text (an aligned table) or json.")
        var format: OutputFormat = .text

        func run() throws {
            let report = try loadReport(file, format: format)
            guard let configuration = report.configuration else {
                if format == .json { print(ConfigurationView.json(CheckResult(report))) } else { printDiagnostics(report) }
                throw ConfigExit.invalid
            }
            switch format {
            case .json:
                print(ConfigurationView.json(configuration.virtualServices.map(ServiceSummary.init)))
            case .text:
                print(ConfigurationView.table(configuration))
                printDiagnostics(report)
            }
        }
    }
}

/// Reads the file; an unreadable one is reported here and becomes exit status 2.
private func loadReport(_ file: String, format: OutputFormat) throws -> ConfigurationReport {
    do {
        return try ConfigurationLoader.check(path: file, files: TLSFileChecker())
    } catch let error as ConfigurationUnreadable {
        if format == .json {
            print(ConfigurationView.json(["file": error.path, "error": error.reason]))
        } else {
            printToStandardError("lbctl: \(error)")
        }
        throw ConfigExit.unreadable
    }
}

private func printDiagnostics(_ report: ConfigurationReport) {
    for diagnostic in report.diagnostics {
        printToStandardError(diagnostic.description)
    }
}

func printToStandardError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make lbd re-read its config file and apply only the differences.",
        discussion: "An invalid file changes nothing: its errors are printed here with file:line:column and lbctl exits 1. Same as sending lbd SIGHUP, which reports to lbd's log instead.")
    @OptionGroup var socket: SocketOption
    func run() throws {
        print(try ask(ControlRequest(command: .reload), socket).message ?? "reloaded")
    }
}

struct Mode: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Switch one virtual service to another forwarding mode, live, and write the change to the config file.",
        discussion: """
            The new config is checked whole first (the RIP:PORT rule, host netfilter rules, direct routing's \
            port rule); then the new path comes up before the old one goes: moving to a Layer 4 mode, the IPVS \
            entries are in the kernel before the proxy stops listening; moving to Layer 7, the proxy listens before \
            the IPVS entries go. Other services are untouched. The config file is rewritten in place (only the mode \
            value changes; the previous file is kept as FILE.bak), so a restart keeps the new mode.
            """)
    @OptionGroup var socket: SocketOption

    @Argument(help: "The virtual service.")
    var service: String

    @Argument(help: "l4-dr, l4-nat, l4-snat, l7-http or l7-tcp.")
    var mode: String

    func validate() throws {
        guard ForwardingMode(rawValue: mode) != nil else {
            throw ValidationError("unknown mode \"\(mode)\"; use one of: \(ForwardingMode.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        print(try ask(ControlRequest(command: .mode, service: service, mode: mode), socket).message ?? "done")
    }
}

struct Audit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the audit trail: every drain, halt, online, reload and mode, who asked and how it ended.",
        discussion: """
            lbd appends one JSON line per operator action to STATE_DIR/audit.log (time in UTC, uid and user name \
            of the caller as the kernel reports them on the control socket, command, targets, result, error) and \
            fsyncs it before answering; an action whose line cannot be written is refused. A reload by SIGHUP is \
            recorded with user SIGHUP and no uid. Example: lbctl audit --since 2026-11-27; lbctl audit --since 8h
            """)
    @OptionGroup var socket: SocketOption

    @Option(help: "Only entries from this time on: an ISO 8601 date or time (2026-11-27, 2026-11-27T08:00:00Z; without a zone, local time), or an age (90m, 8h, 7d).")
    var since: String?

    @Option(help: "Output format: text (a table) or json (the entries as lbd recorded them).")
    var format: OutputFormat = .text

    func validate() throws {
        if let since, AuditSince.parse(since, now: Date()) == nil {
            throw ValidationError("--since \"\(since)\": use 2026-11-27, 2026-11-27T08:00:00Z or an age such as 90m, 8h, 7d")
        }
    }

    func run() throws {
        let sinceTime = since.flatMap { AuditSince.parse($0, now: Date()) }.map(AuditTime.format)
        let response = try ask(ControlRequest(command: .audit, since: sinceTime), socket)
        if let note = response.message { printToStandardError("lbctl: \(note)") }
        let entries = response.audit ?? []
        if format == .json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: (try? encoder.encode(entries)) ?? Data(), as: UTF8.self))
            return
        }
        var rows = [["TIME", "USER", "UID", "COMMAND", "TARGETS", "RESULT"]]
        for entry in entries {
            rows.append([entry.time, entry.user, entry.uid.map(String.init) ?? "-", entry.command, entry.targets.summary,
                         entry.result + (entry.error.map { ": " + $0.replacingOccurrences(of: "\n", with: " ") } ?? "")])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            var line = zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
            while line.hasSuffix(" ") { line.removeLast() }
            print(line)
        }
    }
}

/// --since: an ISO 8601 time (a zone, or local time without one), a date (its local midnight), or an age.
enum AuditSince {
    static func parse(_ text: String, now: Date) -> Date? {
        if let date = AuditTime.parse(text) { return date }
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        if let unit = text.last.flatMap({ units[$0] }), let count = Double(text.dropLast()), count >= 0 {
            return now.addingTimeInterval(-count * unit)
        }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone.current
        for pattern in ["yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd'T'HH:mm", "yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd HH:mm", "yyyy-MM-dd"] {
            formatter.dateFormat = pattern
            if let date = formatter.date(from: text) { return date }
        }
        return nil
    }
}
