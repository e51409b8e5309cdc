import Foundation
import LBAgent
import LBControl
import Logging

/// What lbd adds around the agent for each control request and SIGHUP, without the agent knowing: the audit
/// trail of operator actions, the `lbctl audit` command it answers itself, and systemd's RELOADING=1 / READY=1
/// around a reload.
final class OperatorActions: Sendable {
    private let agent: Agent
    private let audit: AuditLog
    private let notifier: SystemdNotifier
    private let logger: Logger

    init(agent: Agent, audit: AuditLog, notifier: SystemdNotifier, logger: Logger) {
        self.agent = agent
        self.audit = audit
        self.notifier = notifier
        self.logger = logger
    }

    /// A request from the control socket, from the caller the kernel named (SO_PEERCRED).
    func handle(_ request: ControlRequest, uid: UInt32) async -> ControlResponse {
        if request.command == .audit { return auditResponse(since: request.since) }
        guard request.command.isOperatorAction else { return await agent.handle(request) }
        // The trail is opened first: an action that could not be recorded is not applied.
        let pending: AuditLog.Pending
        do {
            pending = try audit.open()
        } catch {
            logger.error("\(error); \(request.command.rawValue) refused")
            return ControlResponse(ok: false, message: "\(error); nothing changed")
        }
        let response = await perform(request)
        let entry = Self.entry(for: request, uid: uid, user: Self.userName(uid), response: response)
        do {
            try audit.append(entry, to: pending)
        } catch {
            logger.critical("\(error); the \(request.command.rawValue) by uid \(uid) was applied but is not in the trail")
            var response = response
            response.message = (response.message ?? request.command.rawValue) + "\nwarning: not recorded: \(error)"
            return response
        }
        return response
    }

    /// SIGHUP: the same reload as `lbctl reload`, recorded with no uid (the kernel does not say who sent it here).
    func reloadFromSignal() async {
        let response = await perform(ControlRequest(command: .reload))
        if response.ok { logger.notice("SIGHUP: \(response.message ?? "reloaded")") }
        else { logger.error("SIGHUP: \(response.message ?? "reload failed")") }
        do {
            try audit.record(Self.entry(for: ControlRequest(command: .reload), uid: nil, user: "SIGHUP", response: response))
        } catch {
            logger.critical("\(error); the SIGHUP reload is not in the trail")
        }
    }

    /// Runs the action on the agent; a reload is announced to systemd while it runs.
    private func perform(_ request: ControlRequest) async -> ControlResponse {
        guard request.command == .reload else { return await agent.handle(request) }
        notifier.reloading()
        let response = await agent.handle(request)
        // READY=1 whatever the outcome: a refused reload changed nothing, and lbd serves the config still in force.
        notifier.ready(status: response.ok ? "reloaded" : "reload refused; serving the previous config")
        return response
    }

    private func auditResponse(since: String?) -> ControlResponse {
        var sinceDate: Date?
        if let since {
            guard let date = AuditTime.parse(since) else {
                return ControlResponse(ok: false, message: "--since \(since): not an ISO 8601 time such as 2026-11-27T08:00:00Z")
            }
            sinceDate = date
        }
        do {
            let (entries, unreadable) = try audit.entries(since: sinceDate)
            return ControlResponse(ok: true, message: unreadable == 0 ? nil : "\(audit.path): \(unreadable) unreadable line(s) skipped",
                                   audit: entries)
        } catch {
            return ControlResponse(ok: false, message: "\(error)")
        }
    }

    static func entry(for request: ControlRequest, uid: UInt32?, user: String, response: ControlResponse) -> AuditEntry {
        AuditEntry(time: AuditTime.format(Date()), uid: uid, user: user, command: request.command.rawValue,
                   targets: AuditTargets(service: request.service, server: request.server, mode: request.mode),
                   result: response.ok ? "ok" : "failed", error: response.ok ? nil : response.message)
    }

    /// The account name of a uid now, or "uid N" when it has none (a deleted account keeps its number).
    static func userName(_ uid: UInt32) -> String {
        guard let account = getpwuid(uid), let name = account.pointee.pw_name else { return "uid \(uid)" }
        return String(cString: name)
    }
}
