import Foundation
import LBConfig
import LBConfigFiles
import LBControl
import LBHealth
import LBIPVS
import LBLinks
import LBRuntime
import Logging

/// Start, reload, live mode switch, drift repair and clean-up. A change is checked whole first (file, interfaces,
/// host netfilter rules), then applied step by step in an order that keeps every VIP served: addresses and IPVS
/// services are added first and removed last; a service moving to the kernel gets its IPVS entries before its proxy
/// listener closes,
/// one moving to the proxy gets its listener before its IPVS entries go. If a step fails, the steps before it are
/// undone in reverse order, so the kernel, the proxy, the state file and the config in force are as they were.
extension Agent {
    /// The first apply: the machine made to match the config. Throws (having taken back what it did) if it cannot.
    public func start() async throws {
        let result: Result<Void, Error> = await onQueue {
            Result { try self.startNow() }
        }
        try result.get()
    }

    private func startNow() throws {
        let services = state.configuration.virtualServices
        let saved = try store.load()
        // With their times: a node of a pair compares them with the peer's (newest wins), and a single node keeps
        // them so that it can become one.
        state.restoreOverrideChanges(saved.overrideChanges)
        for (key, admin) in state.restoreOverrides(saved.overrides).sorted(by: { $0.key < $1.key }) {
            logger.notice("operator override restored", metadata: ["service": "\(key.service)", "server": "\(key.server)", "state": "\(admin.rawValue)"])
        }
        // 1. Checks that change nothing.
        if services.contains(where: { $0.mode.isLayer4 }) {
            do {
                kernel = try KernelServices(kernel: effectors.ipvs(), sysctl: effectors.sysctl, state: store, logger: logger)
            } catch {
                throw PreflightError("Layer 4 services cannot be programmed: \(error)")
            }
        }
        try addresses.preflight(services)
        try checkPair(state.configuration)
        let conflicts = try effectors.firewall.conflicts(for: services)
        if !conflicts.isEmpty {
            for conflict in conflicts { logger.error("\(conflict)") }
            throw PreflightError("\(conflicts.count) host netfilter rule(s) clash with the config")
        }
        // 2. Addresses, kernel settings, lb's chains, IPVS, proxy listeners; undone in reverse if one fails.
        var undo = UndoList()
        let ipvsBefore = try kernel?.table()
        let ownedBefore = kernel?.owned ?? []
        do {
            let added = try addresses.apply(state.configuration.servicesWithVIPsAddedByLB)
            undo.add { self.addresses.rollBack(added) }
            if let kernel {
                let changed = try kernel.applySysctls(for: services)
                undo.add { kernel.restoreSysctls(changed) }
                try kernel.applySettings(of: state.configuration)
            }
            // lb's chains and the transparent policy route before anything takes traffic that needs them.
            try effectors.firewall.apply(services)
            if let kernel, let ipvsBefore {
                undo.add { try? kernel.restore(ipvsBefore, ownedBefore: ownedBefore) }
                try kernel.apply(desiredIPVSTable())
            }
            try effectors.proxy.update(to: services, membership: state.memberships, freeBind: state.configuration.highAvailability != nil)
            // Last: keepalived may make this node master only once it serves every VIP.
            try startPairNow()
        } catch {
            undo.run()
            throw error
        }
        effectors.health.start(services, carrying: [:])
    }

    /// SIGHUP and `lbctl reload`: re-read the config file.
    func reloadNow() -> ControlResponse {
        let text: String
        do {
            text = try String(contentsOfFile: configPath, encoding: .utf8)
        } catch {
            return ControlResponse(ok: false, message: "\(configPath): \(error.localizedDescription); nothing changed")
        }
        let report = ConfigurationLoader.check(yaml: text, file: configPath, files: TLSFileChecker())
        guard let next = report.configuration else {
            let errors = report.diagnostics.filter { $0.severity == .error }.map(\.description).joined(separator: "\n")
            return ControlResponse(ok: false, message: "\(errors)\nconfig rejected; nothing changed")
        }
        for warning in report.diagnostics where warning.severity == .warning { logger.warning("\(warning)") }
        let response = applyNow(next, what: "reload")
        if response.ok { loadedConfigText = text }
        return response
    }

    /// `lbctl mode VIP MODE`: the config file with one service's mode changed, applied, then written back (the
    /// previous file kept as FILE.bak) so a restart keeps it.
    func switchModeNow(of name: String, to mode: ForwardingMode) -> ControlResponse {
        let text: String
        do {
            text = try String(contentsOfFile: configPath, encoding: .utf8)
        } catch {
            return ControlResponse(ok: false, message: "\(configPath): \(error.localizedDescription); nothing changed")
        }
        if let loadedConfigText, text != loadedConfigText {
            return ControlResponse(ok: false, message: "\(configPath) has changed on disk since lbd loaded it; apply that edit first (lbctl reload) or undo it; nothing changed")
        }
        let report = ConfigurationLoader.check(yaml: text, file: configPath, files: TLSFileChecker())
        guard let current = report.configuration,
              let index = current.virtualServices.firstIndex(where: { $0.name == name })
        else {
            return ControlResponse(ok: false, message: report.configuration == nil
                                   ? "the config file on disk is invalid; fix it (lbctl config check) first; nothing changed"
                                   : "no virtual service named \"\(name)\"")
        }
        let old = current.virtualServices[index].mode
        guard old != mode else { return ControlResponse(ok: true, message: "\(name) is already \(mode.rawValue)") }
        // Edit the file where `mode:` is written, so comments and layout stay as the operator wrote them.
        let location = report.sourceMap.location(of: ConfigPath.virtualService(index) / "mode")
        var lines = text.sourceLines.map(String.init)
        guard location.line >= 1, location.line <= lines.count else {
            return ControlResponse(ok: false, message: "cannot find the mode of \(name) in \(configPath); nothing changed")
        }
        // The loader's column counts Unicode scalars (as libyaml does), so the edit does too: a name with a
        // combining accent earlier on a flow-style line must not move it onto another occurrence of the mode.
        guard let edited = Self.replacingValue(old.rawValue, with: mode.rawValue, in: lines[location.line - 1],
                                               atColumn: location.column) else {
            return ControlResponse(ok: false, message: "cannot find the mode of \(name) in \(configPath); nothing changed")
        }
        lines[location.line - 1] = edited
        let newText = lines.joined(separator: "\n")
        let checked = ConfigurationLoader.check(yaml: newText, file: configPath, files: TLSFileChecker())
        guard let next = checked.configuration else {
            let errors = checked.diagnostics.filter { $0.severity == .error }.map(\.description).joined(separator: "\n")
            return ControlResponse(ok: false, message: "\(name) cannot be \(mode.rawValue):\n\(errors)\nnothing changed")
        }
        // The edited file must say exactly what was asked, or it is not written.
        guard next.virtualServices.indices.contains(index), next.virtualServices[index].name == name,
              next.virtualServices[index].mode == mode
        else {
            return ControlResponse(ok: false, message: "cannot find the mode of \(name) in \(configPath); nothing changed")
        }
        let previous = state.configuration
        let applied = applyNow(next, what: "mode \(name) \(old.rawValue) → \(mode.rawValue)")
        guard applied.ok else { return applied }
        do {
            try AtomicFile.write(Array(newText.utf8), to: configPath, defaultMode: 0o640, keepingPrevious: configPath + ".bak")
        } catch {
            // The file and the running state must agree: the switch is taken back.
            let back = applyNow(previous, what: "mode \(name) back to \(old.rawValue)")
            return ControlResponse(ok: false, message: "the config file could not be updated (\(error)); "
                                   + (back.ok ? "\(name) is back on \(old.rawValue); nothing changed"
                                              : "and going back to \(old.rawValue) failed too: \(back.message ?? "")"))
        }
        loadedConfigText = newText
        return ControlResponse(ok: true, message: "\(name): \(old.rawValue) → \(mode.rawValue); \(configPath) updated (previous in \(configPath).bak)")
    }

    /// `line` with the scalar `value` written at `column` (1-based, in Unicode scalars; the value may open with a
    /// quote) replaced by `replacement`; nil if the value is not there.
    static func replacingValue(_ value: String, with replacement: String, in line: String, atColumn column: Int) -> String? {
        var scalars = Array(line.unicodeScalars)
        var start = column - 1
        guard start >= 0, start < scalars.count else { return nil }
        if scalars[start] == "\"" || scalars[start] == "'" { start += 1 }
        let wanted = Array(value.unicodeScalars)
        guard start + wanted.count <= scalars.count, Array(scalars[start..<start + wanted.count]) == wanted else { return nil }
        scalars.replaceSubrange(start..<start + wanted.count, with: replacement.unicodeScalars)
        var edited = String.UnicodeScalarView()
        edited.append(contentsOf: scalars)
        return String(edited)
    }

    /// Applies a checked configuration as a difference from the one in force.
    func applyNow(_ next: Configuration, what: String) -> ControlResponse {
        let previousState = state
        let previous = previousState.configuration
        guard next != previous else { return ControlResponse(ok: true, message: "\(what): nothing changed") }

        // 1. Checks that change nothing.
        if let reason = Self.pairChangeNeedingRestart(from: previous, to: next) {
            return ControlResponse(ok: false, message: "\(what): \(reason); nothing changed")
        }
        do {
            try addresses.preflight(next.virtualServices)
            try checkPair(next)
            let conflicts = try effectors.firewall.conflicts(for: next.virtualServices)
            if !conflicts.isEmpty {
                return ControlResponse(ok: false, message: conflicts.map(\.description).joined(separator: "\n") + "\nnothing changed")
            }
            if next.virtualServices.contains(where: { $0.mode.isLayer4 }), kernel == nil {
                kernel = try KernelServices(kernel: effectors.ipvs(), sysctl: effectors.sysctl, state: store, logger: logger)
            }
        } catch {
            return ControlResponse(ok: false, message: "\(error); nothing changed")
        }

        // 2. The new state: health and overrides carried to the servers that are still there.
        var nextState = previousState
        nextState.reconfigure(to: next)
        let nextMembership = nextState.memberships
        let previousMembership = previousState.memberships
        let newByName = Dictionary(uniqueKeysWithValues: next.virtualServices.map { ($0.name, $0) })
        let movingToKernel = previous.virtualServices.filter { old in
            old.mode.isLayer7 && newByName[old.name].map { $0.mode.isLayer4 } == true
        }
        let both = next.virtualServices + previous.virtualServices.filter { newByName[$0.name] == nil }

        // 3. Apply, remembering how to take each step back.
        var undo = UndoList()
        var step = "VIP addresses"
        let ipvsBefore: IPVSTable?
        do {
            ipvsBefore = try kernel?.table()
        } catch {
            return ControlResponse(ok: false, message: "\(what): IPVS cannot be read: \(error); nothing changed")
        }
        let ownedBefore = kernel?.owned ?? []
        // lb's chains serve the old and the new services until the end (a service switching mode keeps its rules
        // while its old path still carries traffic).
        let firewallBoth = next.virtualServices + previous.virtualServices.filter { old in
            newByName[old.name].map { $0.mode != old.mode || $0.transparent != old.transparent } ?? true
        }
        do {
            let added = try addresses.apply(next.highAvailability == nil ? both : [], removing: false)
            undo.add { self.addresses.rollBack(added) }
            if let kernel {
                step = "kernel settings"
                let changed = try kernel.applySysctls(for: next.virtualServices)
                undo.add { kernel.restoreSysctls(changed) }
                try kernel.applySettings(of: next)
            }
            step = "netfilter"
            do {
                try effectors.firewall.apply(firewallBoth)
            } catch {
                // Each table's restore is one transaction, but IPv4 may have gone through before IPv6 failed.
                try? effectors.firewall.apply(previous.virtualServices)
                throw error
            }
            undo.add { try self.effectors.firewall.apply(previous.virtualServices) }
            step = "proxy listeners"
            try effectors.proxy.update(to: next.virtualServices.filter { $0.mode.isLayer7 } + movingToKernel,
                                       membership: nextMembership.merging(previousMembership) { new, _ in new },
                                       freeBind: next.highAvailability != nil)
            undo.add {
                try self.effectors.proxy.update(to: previous.virtualServices, membership: previousMembership,
                                                freeBind: previous.highAvailability != nil)
            }
            if let kernel {
                step = "IPVS"
                if let ipvsBefore { undo.add { try kernel.restore(ipvsBefore, ownedBefore: ownedBefore) } }
                // Additions and edits now; the services the config drops stay until every other step is done,
                // so a failure never deletes a service (and the connections it carries).
                var keeping = desiredIPVSTable(for: nextState)
                for (key, entry) in ipvsBefore?.services ?? [:] where ownedBefore.contains(key) && keeping.services[key] == nil {
                    keeping.services[key] = entry
                }
                try kernel.apply(keeping)
            }
            step = "proxy listeners"
            try effectors.proxy.update(to: next.virtualServices, membership: nextMembership, freeBind: next.highAvailability != nil)
            if let kernel {
                step = "IPVS"
                try kernel.apply(desiredIPVSTable(for: nextState))
            }
            if firewallBoth.count != next.virtualServices.count {
                // Narrowed to the new services only when old ones were kept above (else the chains hold them already).
                step = "netfilter"
                try effectors.firewall.apply(next.virtualServices)
            }
            step = "VIP addresses"
            try addresses.apply(next.servicesWithVIPsAddedByLB, removing: true)
        } catch {
            logger.error("\(what) failed at \(step): \(error); taking back the steps before it")
            let failures = undo.run()
            for failure in failures { logger.error("\(what): roll-back step failed: \(failure)") }
            // Nothing else of the change was made in memory: the state in force is the previous one.
            return ControlResponse(ok: false, message: "\(what) failed at \(step): \(error); "
                                   + (failures.isEmpty ? "rolled back, nothing changed"
                                                       : "roll-back incomplete (\(failures.joined(separator: "; "))); the previous config stays in force and the drift check repairs the rest"))
        }

        // 4. In force: the new state; checks restarted for new and changed services, carrying each server's check
        //    state where the server is the same; overrides of removed servers forgotten.
        state = nextState
        reconfigurePair(from: previous)
        let oldByName = Dictionary(uniqueKeysWithValues: previous.virtualServices.map { ($0.name, $0) })
        let changed = next.virtualServices.filter { oldByName[$0.name] != $0 }
        let gone = previous.virtualServices.filter { newByName[$0.name] == nil }
        var carried: [String: [String: HealthMonitor.CarriedCheck]] = [:]
        for service in changed + gone {
            let stopped = effectors.health.stop(service: service.name)
            guard let old = oldByName[service.name], let new = newByName[service.name] else { continue }
            for server in new.realServers {
                guard let before = old.realServers.first(where: { $0.name == server.name }),
                      before.address == server.address, before.port == server.port,
                      let check = stopped[server.name] else { continue }
                carried[service.name, default: [:]][server.name] = check
            }
        }
        effectors.health.start(changed, carrying: carried)
        do {
            try saveOverrides()
        } catch {
            logger.error("overrides not saved: \(error)")
        }
        let summary = "\(what): \(changed.count) service(s) added or changed, \(gone.count) removed"
        logger.notice("\(summary)", metadata: ["changed": "\(changed.map(\.name).sorted())", "removed": "\(gone.map(\.name).sorted())"])
        return ControlResponse(ok: true, message: summary)
    }

    /// The periodic check, from the state in force: IPVS from a fresh dump, VIP addresses, lb's netfilter chains.
    func repairDriftNow() {
        let services = state.configuration.virtualServices
        var repaired = false
        defer {
            driftCounts.checks += 1
            if repaired { driftCounts.repairs += 1 }
        }
        do {
            if let kernel {
                let operations = try kernel.repair(desiredIPVSTable())
                if !operations.isEmpty {
                    repaired = true
                    logger.warning("IPVS differed from the config; repaired", metadata: ["operations": "\(operations.count)"])
                }
            }
            let added = try addresses.apply(state.configuration.servicesWithVIPsAddedByLB)
            if !added.isEmpty {
                repaired = true
                logger.warning("VIP addresses were missing; restored", metadata: ["addresses": "\(added)"])
            }
            if effectors.firewall.needsRepair(for: services) {
                try effectors.firewall.apply(services)
                repaired = true
                logger.warning("netfilter chains or the transparent policy route differed from the config; restored")
            }
        } catch {
            logger.error("drift check failed: \(error)")
        }
    }

    /// Stops the health checks; with `cleanUp` (lbd --cleanup-on-stop) also takes out everything lbd put in the
    /// kernel (its IPVS services, its netfilter chains, the VIP addresses it added). Objects it did not create stay.
    public func stop(cleanUp: Bool) async {
        await onQueue {
            self.effectors.health.stopAll()
            self.stopPairNow()
            guard cleanUp else { return }
            do {
                try self.kernel?.removeAll(self.desiredIPVSTable())
                try self.effectors.firewall.apply([])
                try self.addresses.apply([])
                self.logger.notice("kernel state removed (--cleanup-on-stop)")
            } catch {
                self.logger.error("cleanup on stop incomplete: \(error)")
            }
        }
    }
}

/// The undo actions of a change's completed steps, run newest first.
struct UndoList {
    private var actions: [() throws -> Void] = []

    mutating func add(_ action: @escaping () throws -> Void) { actions.append(action) }

    /// Runs every action, newest first; returns the errors of those that failed.
    @discardableResult
    func run() -> [String] {
        var failures: [String] = []
        for action in actions.reversed() {
            do { try action() } catch { failures.append("\(error)") }
        }
        return failures
    }
}
