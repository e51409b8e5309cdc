import Foundation
import LBConfig
import LBControl
import LBHealth
import LBNetfilter
import LBProxy
import Logging

/// Reload and live mode switch: a new config is checked whole (file, host interfaces, host netfilter rules) before
/// anything changes, then applied as a difference in an order that keeps every VIP served: a service moving to the
/// kernel gets its IPVS entries before its proxy listener stops; one moving to the proxy gets its listener before its
/// IPVS entries go.
extension Agent {
    /// The periodic check of what lbd put in the kernel: IPVS from a fresh dump, VIP addresses. Each repair is logged.
    func repairDrift() {
        guard beginChange() else { return }  // a reload is doing it anyway
        defer { endChange() }
        let configuration = currentConfiguration
        do {
            if let operations = try currentKernel?.reconcile(), !operations.isEmpty {
                logger.warning("IPVS differed from the config; repaired", metadata: ["operations": "\(operations.count)"])
            }
            let added = try HostAddresses(services: configuration.virtualServices, state: state, logger: logger).apply()
            if !added.isEmpty { logger.warning("VIP addresses were missing; restored", metadata: ["addresses": "\(added)"]) }
            let firewall = HostFirewall(services: configuration.virtualServices, logger: logger)
            if configuration.virtualServices.contains(where: { $0.mode == .l4SNAT }), firewall.needsRepair() {
                try firewall.apply()
                logger.warning("netfilter chain \(NetfilterPlanner.snatChain) differed from the config; restored")
            }
        } catch {
            logger.error("drift check failed: \(error)")
        }
    }

    /// lbd --cleanup-on-stop: take out everything lbd put in the kernel (its IPVS services, its netfilter chain,
    /// the VIP addresses it added). Objects it did not create stay.
    func cleanUp() {
        do {
            try currentKernel?.removeAll()
            try HostFirewall(services: currentConfiguration.virtualServices, logger: logger).removeAll()
            try HostAddresses(services: [], state: state, logger: logger).apply()
            logger.notice("kernel state removed (--cleanup-on-stop)")
        } catch {
            logger.error("cleanup on stop incomplete: \(error)")
        }
    }

    /// SIGHUP and `lbctl reload`: re-read the config file.
    func reload() async -> ControlResponse {
        let report: ConfigurationReport
        do {
            report = try ConfigurationLoader.check(path: configPath)
        } catch {
            return ControlResponse(ok: false, message: "\(error); nothing changed")
        }
        guard let next = report.configuration else {
            let errors = report.diagnostics.filter { $0.severity == .error }.map(\.description).joined(separator: "\n")
            return ControlResponse(ok: false, message: "\(errors)\nconfig rejected; nothing changed")
        }
        for warning in report.diagnostics where warning.severity == .warning { logger.warning("\(warning)") }
        return await apply(next, what: "reload")
    }

    /// `lbctl mode VIP MODE`: the config file with one service's mode changed, applied, then written back (the
    /// previous file kept as FILE.bak) so a restart keeps it.
    func switchMode(of name: String, to mode: ForwardingMode) async -> ControlResponse {
        let text: String
        let report: ConfigurationReport
        do {
            text = try String(contentsOfFile: configPath, encoding: .utf8)
            report = try ConfigurationLoader.check(path: configPath)
        } catch {
            return ControlResponse(ok: false, message: "\(error); nothing changed")
        }
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
        var lines = text.components(separatedBy: "\n")
        guard location.line >= 1, location.line <= lines.count else {
            return ControlResponse(ok: false, message: "cannot find the mode of \(name) in \(configPath); nothing changed")
        }
        var line = lines[location.line - 1]
        let start = line.index(line.startIndex, offsetBy: min(location.column - 1, line.count))
        guard let range = line.range(of: old.rawValue, range: start..<line.endIndex) else {
            return ControlResponse(ok: false, message: "cannot find the mode of \(name) in \(configPath); nothing changed")
        }
        line.replaceSubrange(range, with: mode.rawValue)
        lines[location.line - 1] = line
        let newText = lines.joined(separator: "\n")
        let checked = ConfigurationLoader.check(yaml: newText, file: configPath)
        guard let next = checked.configuration else {
            let errors = checked.diagnostics.filter { $0.severity == .error }.map(\.description).joined(separator: "\n")
            return ControlResponse(ok: false, message: "\(name) cannot be \(mode.rawValue):\n\(errors)\nnothing changed")
        }
        let applied = await apply(next, what: "mode \(name) \(old.rawValue) → \(mode.rawValue)")
        guard applied.ok else { return applied }
        do {
            try writeConfig(newText)
        } catch {
            return ControlResponse(ok: false, message: "\(name) now runs as \(mode.rawValue), but the config file could not be updated: \(error); a restart would bring back \(old.rawValue)")
        }
        return ControlResponse(ok: true, message: "\(name): \(old.rawValue) → \(mode.rawValue); \(configPath) updated (previous in \(configPath).bak)")
    }

    /// Atomic replacement: a temporary file, fsync, the old file hard-linked to .bak, rename.
    private func writeConfig(_ text: String) throws {
        let temporary = configPath + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw StateStoreError(path: temporary, reason: String(cString: strerror(errno))) }
        let data = Array(text.utf8)
        let written = write(fd, data, data.count)
        let synced = fsync(fd)
        close(fd)
        guard written == data.count, synced == 0 else { throw StateStoreError(path: temporary, reason: String(cString: strerror(errno))) }
        unlink(configPath + ".bak")
        _ = link(configPath, configPath + ".bak")
        guard rename(temporary, configPath) == 0 else { throw StateStoreError(path: configPath, reason: String(cString: strerror(errno))) }
    }

    /// Applies a checked configuration as a difference from the running one.
    func apply(_ next: Configuration, what: String) async -> ControlResponse {
        // One change at a time: wait for a drift check or another reload to finish (they take well under a minute).
        var waited = 0
        while !beginChange() {
            if waited >= 1200 { return ControlResponse(ok: false, message: "another reload or mode switch is still in progress; try again") }
            try? await Task.sleep(for: .milliseconds(50))
            waited += 1
        }
        defer { endChange() }
        let previous = currentConfiguration
        guard next != previous else { return ControlResponse(ok: true, message: "\(what): nothing changed") }

        // 1. Checks that change nothing.
        let addresses = HostAddresses(services: next.virtualServices, state: state, logger: logger)
        let firewall = HostFirewall(services: next.virtualServices, logger: logger)
        do {
            try addresses.preflight()
            let conflicts = try firewall.conflicts()
            if !conflicts.isEmpty {
                return ControlResponse(ok: false, message: conflicts.map(\.description).joined(separator: "\n") + "\nnothing changed")
            }
            if next.virtualServices.contains(where: { $0.mode.isLayer4 }), currentKernel == nil {
                setKernel(try KernelServices(configuration: previous, state: state, logger: logger))
            }
        } catch {
            return ControlResponse(ok: false, message: "\(error); nothing changed")
        }

        // 2. Apply: addresses, new proxy listeners (keeping those that move to the kernel), kernel, netfilter,
        //    then the proxy listeners that are no longer wanted.
        let oldByName = Dictionary(uniqueKeysWithValues: previous.virtualServices.map { ($0.name, $0) })
        let newByName = Dictionary(uniqueKeysWithValues: next.virtualServices.map { ($0.name, $0) })
        let movingToKernel = previous.virtualServices.filter { old in
            old.mode.isLayer7 && newByName[old.name].map { $0.mode.isLayer4 } == true
        }
        var step = "VIP addresses"
        do {
            try addresses.apply()
            step = "proxy listeners"
            try await engine.update(to: next.virtualServices.filter { $0.mode.isLayer7 } + movingToKernel)
            step = "IPVS"
            try currentKernel?.update(to: next)
            step = "netfilter"
            try firewall.apply()
            step = "proxy listeners"
            try await engine.update(to: next.virtualServices)
        } catch {
            logger.error("\(what) failed at \(step): \(error)")
            return ControlResponse(ok: false, message: "\(what) failed at \(step): \(error); the steps before it were applied, lbd still runs the previous config for the rest")
        }

        // 3. Health checks for new and changed services; overrides carried over to new pools.
        let changed = Set(next.virtualServices.filter { oldByName[$0.name] != $0 }.map(\.name))
        let gone = Set(previous.virtualServices.map(\.name)).subtracting(newByName.keys)
        for name in changed.union(gone) { health?.stop(service: name) }
        health?.start(next.virtualServices.filter { changed.contains($0.name) })
        setConfiguration(next, dropping: gone)
        let overrides = currentOverrides
        for name in changed {
            for (server, admin) in overrides[name] ?? [:] { engine.pool(for: name)?.setAdmin(server, admin) }
        }
        let summary = "\(what): \(changed.count) service(s) added or changed, \(gone.count) removed"
        logger.notice("\(summary)", metadata: ["changed": "\(changed.sorted())", "removed": "\(gone.sorted())"])
        return ControlResponse(ok: true, message: summary)
    }
}
