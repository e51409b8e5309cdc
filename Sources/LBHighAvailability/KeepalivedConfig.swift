import LBConfig

/// keepalived's configuration for one node of a pair, rendered from lb.yaml's `high_availability` section.
/// VRRP is keepalived's job: lbd writes this file, runs `keepalived --vrrp`, and learns the role from its FIFO.
public enum KeepalivedConfig {
    /// The one VRRP instance: every VIP and floating address moves with it.
    public static let instanceName = "lb"

    /// Where keepalived's files of this node live (lbd's state directory; /run-like places for the FIFO).
    public struct Files: Sendable, Equatable {
        public var config: String
        public var notifyFIFO: String
        /// Holds 0, or 1 while `lbctl ha standby` is in force: keepalived then puts the instance in FAULT, which
        /// hands the master role to the peer at once (priority 0 advertisement).
        public var standbyFile: String
        public var pidFile: String
        public var vrrpPidFile: String

        public init(directory: String, runtimeDirectory: String) {
            config = directory + "/keepalived.conf"
            standbyFile = directory + "/ha-standby"
            pidFile = runtimeDirectory + "/keepalived.pid"
            vrrpPidFile = runtimeDirectory + "/keepalived-vrrp.pid"
            notifyFIFO = runtimeDirectory + "/keepalived.fifo"
        }
    }

    public enum RenderError: Error, CustomStringConvertible, Equatable {
        case unknownNode(String, known: [String])
        public var description: String {
            switch self {
            case .unknownNode(let name, let known):
                return "this node is \"\(name)\", which high_availability.nodes does not list (it has \(known.joined(separator: ", "))); "
                    + "start lbd with --node NAME"
            }
        }
    }

    /// The addresses keepalived moves, with their interfaces: every VIP (on its `interface:`, else on the node's
    /// VRRP link) and every floating address. VRRPv3 advertises one family per instance; addresses of the other
    /// family go in `virtual_ipaddress_excluded`, which moves them all the same without advertising them.
    public static func addresses(_ configuration: Configuration, node: HighAvailability.Node)
        -> (advertised: [String], excluded: [String])
    {
        let ha = configuration.highAvailability
        var lines: [(family: IPAddress.Family, text: String)] = []
        var seen = Set<IPAddress>()
        for service in configuration.virtualServices where seen.insert(service.address).inserted {
            let length = service.address.family == .ipv4 ? 32 : 128
            lines.append((service.address.family, "\(service.address)/\(length) dev \(service.interface ?? node.interface)"))
        }
        for floating in ha?.floatingAddresses ?? [] where seen.insert(floating.address).inserted {
            lines.append((floating.address.family, "\(floating.address)/\(floating.prefixLength) dev \(floating.interface)"))
        }
        let family = node.address.family
        return (lines.filter { $0.family == family }.map(\.text), lines.filter { $0.family != family }.map(\.text))
    }

    public static func render(_ configuration: Configuration, node name: String, files: Files) throws(RenderError) -> String {
        guard let ha = configuration.highAvailability else { return "" }
        guard let node = ha.node(named: name), let peer = ha.peer(of: name) else {
            throw .unknownNode(name, known: ha.nodes.map(\.name))
        }
        let (advertised, excluded) = addresses(configuration, node: node)
        let interval = Double(ha.advertInterval.components.seconds)
            + Double(ha.advertInterval.components.attoseconds) / 1e18
        func block(_ name: String, _ lines: [String]) -> [String] {
            lines.isEmpty ? [] : ["    \(name) {"] + lines.map { "        " + $0 } + ["    }"]
        }
        var text: [String] = [
            "# Written by lbd from the high_availability section of its config; lbd rewrites it on every start",
            "# and reload. Do not edit: change lb.yaml instead.",
            "global_defs {",
            "    router_id \(node.name)",
            "    vrrp_version 3",
            "    notify_fifo \(files.notifyFIFO)",
            "    # Gratuitous ARP (and unsolicited NA) at once on becoming master, and again 5 s later.",
            "    vrrp_garp_master_delay 5",
            "    vrrp_garp_master_repeat 3",
            "}",
            "vrrp_track_file lb_standby {",
            "    file \(files.standbyFile)",
            "}",
            "vrrp_instance \(instanceName) {",
            // Both nodes start as backup: the election (priority, then address) picks the master.
            "    state BACKUP",
            "    interface \(node.interface)",
            "    virtual_router_id \(ha.virtualRouterID)",
            "    priority \(node.priority)",
            "    advert_int \(interval == interval.rounded() ? String(Int(interval)) : String(interval))",
        ]
        if !ha.preempt { text.append("    nopreempt") }
        text += [
            "    unicast_src_ip \(node.address)",
            // Adverts from the peer's address only (VRRPv3 has no authentication of its own).
            "    check_unicast_src",
            "    unicast_peer {",
            "        \(peer.address)",
            "    }",
        ]
        text += block("virtual_ipaddress", advertised)
        text += block("virtual_ipaddress_excluded", excluded)
        text += [
            "    track_file {",
            "        lb_standby weight 0",
            "    }",
            "}",
        ]
        return text.joined(separator: "\n") + "\n"
    }
}

/// A line of keepalived's notify FIFO: `INSTANCE "lb" MASTER 150`.
public struct VRRPNotification: Equatable, Sendable {
    public enum State: String, Sendable { case master = "MASTER", backup = "BACKUP", fault = "FAULT", stop = "STOP" }
    public var instance: String
    public var state: State
    public var priority: Int

    /// nil for lines about other things (groups, the checker's real servers) or that are malformed.
    public init?(line: String) {
        let words = line.split(separator: " ", omittingEmptySubsequences: true)
        guard words.count >= 3, words[0] == "INSTANCE", let state = State(rawValue: String(words[2])) else { return nil }
        let quoted = words[1]
        guard quoted.count >= 2, quoted.hasPrefix("\""), quoted.hasSuffix("\"") else { return nil }
        instance = String(quoted.dropFirst().dropLast())
        self.state = state
        priority = words.count > 3 ? Int(words[3]) ?? 0 : 0
    }
}
