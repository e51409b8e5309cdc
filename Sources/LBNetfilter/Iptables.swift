import Foundation
import LBConfig
import LBSystem

/// A netfilter command that failed, with what it said.
public struct NetfilterError: Error, CustomStringConvertible, Sendable {
    public var command: String
    public var message: String
    /// The command's exit status, when it ran and failed.
    public var status: Int32?
    public var description: String { "\(command): \(message)" }
    public init(command: String, message: String, status: Int32? = nil) {
        self.command = command
        self.message = message
        self.status = status
    }
}

/// The effector: reads the host's rules with iptables-save and applies lb's chains with `iptables-restore --noflush`
/// (one transaction per table: all of a chain or none of it). IPv6 services go through ip6tables.
public struct Iptables: Sendable {
    public var family: IPAddress.Family

    public init(family: IPAddress.Family) { self.family = family }

    var save: String { family == .ipv4 ? "iptables-save" : "ip6tables-save" }
    var restore: String { family == .ipv4 ? "iptables-restore" : "ip6tables-restore" }

    /// Every table's rules, as the conflict scan and the planner read them.
    public func listing() throws -> (rules: [HostRule], text: String) {
        let result = try runChecked(save, [])
        return (IptablesListing.parse(result.output), result.output)
    }

    /// Whether lb's chain exists in the nat table (it can exist empty, which a rule listing does not show).
    public func chainExists(_ chain: String, inListing text: String, table wanted: String = "nat") -> Bool {
        var table = ""
        for line in text.split(separator: "\n") {
            if line.hasPrefix("*") { table = String(line.dropFirst()) }
            if table == wanted, line.hasPrefix(":\(chain) ") { return true }
        }
        return false
    }

    /// How often a restore is tried when iptables reports a resource problem (exit 4: the xtables lock still held
    /// after `--wait`, or the kernel busy), and the pause between tries. `HostFirewall` lists and plans again before
    /// each try: the legacy variant commits table by table, so a failed restore may have gone through in part.
    public static let restoreAttempts = 3
    static let retryPause = 0.5

    /// Applies a restore file atomically per table, leaving every chain it does not name alone.
    public func apply(_ restoreInput: String) throws {
        // --wait: firewalld, docker or kube-proxy may hold the xtables lock for a moment; wait for it (bounded)
        // rather than fail a start or reload at once. Runs on the agent's own queue, never on an event loop, so the
        // wait holds up only the change being made.
        _ = try runChecked(restore, ["--noflush", "--wait", "10"], input: restoreInput)
    }

    /// Whether `error` is a resource problem worth another try after a pause (the xtables lock held, the kernel
    /// busy for a moment). iptables-nft also exits 4 when the kernel refuses to delete a chain that a rule still
    /// refers to ("Device or resource busy"): that stays so until the operator acts, so it is not tried again.
    public static func isResourceProblem(_ error: Error) -> Bool {
        guard let error = error as? NetfilterError, error.status == resourceProblem else { return false }
        return !error.message.contains("Device or resource busy")
    }

    /// iptables' exit status for a resource problem (xtables.h: RESOURCE_PROBLEM).
    static let resourceProblem: Int32 = 4

    private func runChecked(_ program: String, _ arguments: [String], input: String = "") throws -> Subprocess.Result {
        let command = ([program] + arguments).joined(separator: " ")
        let result: Subprocess.Result
        do {
            result = try Subprocess.run(program, arguments, input: input, timeout: 30)
        } catch {
            throw NetfilterError(command: command, message: "\(error) (install the iptables package)")
        }
        guard result.succeeded else {
            let said = (result.errorOutput + result.output).split(separator: "\n").joined(separator: "; ")
            throw NetfilterError(command: command, message: "exit \(result.status): \(said)", status: result.status)
        }
        return result
    }
}
