import Yams

/// Turns the YAML document into the model: structure, types and per-field ranges.
/// Rules that relate several fields or several services are the `Validator`'s.
struct DocumentReader {
    var nodes: NodeReader

    init(file: String) { nodes = NodeReader(file: file) }

    static let topLevelKeys = ["virtual_services", "ipvs", "high_availability"]
    static let highAvailabilityKeys = [
        "virtual_router_id", "advert_interval", "preempt", "nodes", "floating_addresses", "connection_sync", "peer_port",
        "peer_secret_file",
    ]
    static let haNodeKeys = ["name", "address", "interface", "priority"]
    static let ipvsKeys = ["timeouts", "sync_daemon"]
    static let ipvsTimeoutKeys = ["tcp", "tcp_fin", "udp"]
    static let syncDaemonKeys = ["role", "interface", "sync_id"]
    static let serviceKeys = [
        "name", "vip", "ports", "protocol", "mode", "scheduler", "persistence", "health_check",
        "real_servers", "fallback", "tls", "forwarded_for", "timeouts", "limits", "interface", "on_server_failure",
        "transparent", "backend_tls",
    ]
    static let timeoutKeys = ["connect", "idle", "header", "body"]
    static let limitKeys = ["max_connections", "max_header_bytes", "max_headers"]
    static let persistenceKeys = ["type", "timeout", "cookie", "netmask"]
    static let healthCheckKeys = [
        "type", "port", "path", "expect_status", "expect_body", "interval", "timeout", "rise", "fall", "observe",
        "calling_ae", "called_ae", "message", "command", "user",
    ]
    static let realServerKeys = ["name", "address", "port", "weight", "backend_tls"]
    static let backendTLSKeys = ["verify", "ca_file", "server_name", "certificate", "key"]
    static let endpointKeys = ["address", "port"]
    static let tlsKeys = ["certificate", "key", "sni_certificates"]
    static let certificateKeys = ["certificate", "key"]

    /// Ports a single virtual service may span; beyond that each port would need its own listener or IPVS service.
    static let maximumPortsPerService = 1024

    /// Sections that had an error while being read; the validator does not pile further findings on them.
    private(set) var incompleteSections: Set<ConfigPath> = []

    /// Reads as much as can be understood. The result is only usable when no error was recorded: invalid optional
    /// values are read as absent and services missing a required key are left out, so that the validator can still
    /// report everything else in one pass.
    mutating func readDocument(_ root: Node?) -> Configuration? {
        guard let root else {
            nodes.error("the config file is empty", at: SourceLocation(file: nodes.file, line: 1, column: 1),
                        hint: "start with a \"virtual_services:\" list; see examples/ and lb.yaml(5)")
            return nil
        }
        guard let top = nodes.fields(of: root, at: .root, what: "the config file", allowed: Self.topLevelKeys),
              let list = nodes.require("virtual_services", in: top, what: "the config file",
                                       hint: "list the virtual services under \"virtual_services:\"")
        else { return nil }
        guard let items = nodes.sequence(list, key: "virtual_services") else { return nil }
        if items.isEmpty {
            nodes.error("\"virtual_services\" is empty", at: list, hint: "declare at least one virtual service")
        }
        var services: [VirtualService] = []
        for (index, item) in items.enumerated() {
            if let service = readService(item, at: .virtualService(index)) { services.append(service) }
        }
        let ipvs = top["ipvs"].flatMap { readIPVS($0) } ?? IPVSSettings()
        let highAvailability = section(.root / "high_availability") { reader in
            top["high_availability"].flatMap { reader.readHighAvailability($0) }
        }
        return Configuration(virtualServices: services, ipvs: ipvs, highAvailability: highAvailability)
    }

    // MARK: IPVS settings

    private mutating func readIPVS(_ node: Node) -> IPVSSettings? {
        guard let fields = nodes.fields(of: node, at: .root / "ipvs", what: "ipvs", allowed: Self.ipvsKeys) else { return nil }
        var settings = IPVSSettings()
        if let timeoutsNode = fields["timeouts"],
           let timeouts = nodes.fields(of: timeoutsNode, at: .root / "ipvs" / "timeouts", what: "ipvs timeouts",
                                       allowed: Self.ipvsTimeoutKeys) {
            func read(_ key: String) -> Duration? {
                guard let node = timeouts[key], let value = nodes.duration(node, key: key) else { return nil }
                // The kernel keeps these in whole seconds; zero would mean "unchanged" on the wire.
                guard value >= .seconds(1), value <= .seconds(7 * 86_400), value.isWholeSeconds else {
                    nodes.error("ipvs timeout \(key) \(value.configText) is out of range", at: node,
                                hint: "use whole seconds from 1s to 7 days (10080m)")
                    return nil
                }
                return value
            }
            settings.tcpTimeout = read("tcp")
            settings.tcpFinTimeout = read("tcp_fin")
            settings.udpTimeout = read("udp")
        }
        if let daemonNode = fields["sync_daemon"],
           let daemon = nodes.fields(of: daemonNode, at: .root / "ipvs" / "sync_daemon", what: "ipvs sync_daemon",
                                     allowed: Self.syncDaemonKeys) {
            let role = nodes.require("role", in: daemon, what: "sync_daemon", hint: "add `role: master` or `role: backup`")
                .flatMap { nodes.choice($0, key: "role", as: IPVSSettings.SyncDaemon.Role.self) }
            let interface = nodes.require("interface", in: daemon, what: "sync_daemon",
                                          hint: "add `interface:` naming the link the peer load balancer is reached on")
                .flatMap { readInterface($0) }
            let syncID = daemon["sync_id"].flatMap { nodes.integer($0, key: "sync_id", range: 0...255) } ?? 0
            if let role, let interface { settings.syncDaemon = .init(role: role, interface: interface, syncID: syncID) }
        }
        return settings
    }

    // MARK: High availability

    private mutating func readHighAvailability(_ node: Node) -> HighAvailability? {
        let path = ConfigPath.root / "high_availability"
        guard let fields = nodes.fields(of: node, at: path, what: "high_availability", allowed: Self.highAvailabilityKeys)
        else { return nil }
        let routerID = nodes.require("virtual_router_id", in: fields, what: "high_availability",
                                     hint: "add `virtual_router_id: 51` (1-255, the same on both nodes, unique on the link)")
            .flatMap { nodes.integer($0, key: "virtual_router_id", range: 1...255) }
        var advertInterval = Duration.seconds(1)
        if let intervalNode = fields["advert_interval"], let value = nodes.duration(intervalNode, key: "advert_interval") {
            // VRRPv3 carries the interval in centiseconds (12 bits): 10 ms to 40.95 s.
            if value < .milliseconds(10) || value > .seconds(40) || value.components.attoseconds % 10_000_000_000_000_000 != 0 {
                nodes.error("advert_interval \(value.configText) is out of range", at: intervalNode,
                            hint: "use 10ms to 40s in steps of 10ms; 1s is usual")
            } else {
                advertInterval = value
            }
        }
        let preempt = fields["preempt"].flatMap { nodes.bool($0, key: "preempt") } ?? false
        var haNodes: [HighAvailability.Node] = []
        if let listNode = nodes.require("nodes", in: fields, what: "high_availability",
                                        hint: "list the two lbd nodes under `nodes:` with name, address, interface and priority"),
           let items = nodes.sequence(listNode, key: "nodes") {
            if items.count != 2 {
                nodes.error("high_availability needs exactly two nodes, found \(items.count)", at: listNode,
                            hint: "a pair: list this node and its peer, each with name, address, interface and priority")
            }
            for (index, item) in items.enumerated() {
                guard let node = nodes.fields(of: item, at: path / "nodes" / index, what: "node", allowed: Self.haNodeKeys)
                else { continue }
                let name = nodes.require("name", in: node, what: "node", hint: "add `name:`, the name given to `lbd --node` (default: the host name)")
                    .flatMap { nodes.name($0, key: "name") }
                let address = nodes.require("address", in: node, what: "node", hint: "add `address:`, the node's own address on its VRRP link")
                    .flatMap { nodes.address($0, key: "address") }
                let interface = nodes.require("interface", in: node, what: "node", hint: "add `interface:`, the link VRRP speaks on")
                    .flatMap { readInterface($0) }
                let priority = nodes.require("priority", in: node, what: "node", hint: "add `priority:` (1-254; the higher one is master first)")
                    .flatMap { nodes.integer($0, key: "priority", range: 1...254) }
                if let name, let address, let interface, let priority {
                    haNodes.append(.init(name: name, address: address, interface: interface, priority: priority))
                }
            }
        }
        var floating: [HighAvailability.FloatingAddress] = []
        if let listNode = fields["floating_addresses"], let items = nodes.sequence(listNode, key: "floating_addresses") {
            for (index, item) in items.enumerated() {
                guard let entry = nodes.fields(of: item, at: path / "floating_addresses" / index, what: "floating address",
                                               allowed: ["address", "interface"]) else { continue }
                let interface = nodes.require("interface", in: entry, what: "floating address", hint: "add `interface:`, the link the address lives on")
                    .flatMap { readInterface($0) }
                guard let addressNode = nodes.require("address", in: entry, what: "floating address",
                                                      hint: "add `address: 10.20.1.1/24` (with its prefix length)"),
                      let text = nodes.scalarText(addressNode, key: "address") else { continue }
                let parts = text.split(separator: "/", omittingEmptySubsequences: false)
                guard let address = IPAddress(String(parts[0])), !address.isUnspecified, !address.isMulticastOrBroadcast,
                      parts.count <= 2 else {
                    nodes.error("\"\(text)\" is not an address with a prefix length", at: addressNode,
                                hint: "write it like 10.20.1.1/24 or 2001:db8:1::1/64")
                    continue
                }
                let maximum = address.family == .ipv4 ? 32 : 128
                let prefix = parts.count == 2 ? Int(parts[1]) : maximum
                guard let prefix, (1...maximum).contains(prefix) else {
                    nodes.error("prefix length in \"\(text)\" must be 1-\(maximum)", at: addressNode,
                                hint: "write it like 10.20.1.1/24")
                    continue
                }
                if let interface { floating.append(.init(address: address, prefixLength: prefix, interface: interface)) }
            }
        }
        var syncInterface: String?
        if let syncNode = fields["connection_sync"],
           let sync = nodes.fields(of: syncNode, at: path / "connection_sync", what: "connection_sync", allowed: ["interface"]) {
            syncInterface = nodes.require("interface", in: sync, what: "connection_sync",
                                          hint: "add `interface:`, the link between the two nodes")
                .flatMap { readInterface($0) }
        }
        let peerPort = fields["peer_port"].flatMap { nodes.integer($0, key: "peer_port", range: 1...65535) }
            .map { UInt16($0) } ?? HighAvailability.defaultPeerPort
        let secretNode = nodes.require("peer_secret_file", in: fields, what: "high_availability",
                                       hint: "add `peer_secret_file: /etc/lb/peer.key` (the same random secret on both nodes, e.g. `openssl rand -hex 32`)")
        var secretFile = secretNode.flatMap { nodes.string($0, key: "peer_secret_file") }
        if let secretNode, let file = secretFile, !file.hasPrefix("/") {
            nodes.error("peer_secret_file \"\(file)\" is not an absolute path", at: secretNode,
                        hint: "write the full path, e.g. /etc/lb/peer.key")
            secretFile = nil
        }
        guard let routerID, let secretFile, haNodes.count == 2 else { return nil }
        return HighAvailability(virtualRouterID: routerID, advertInterval: advertInterval, preempt: preempt, nodes: haNodes,
                                floatingAddresses: floating, connectionSyncInterface: syncInterface, peerPort: peerPort,
                                peerSecretFile: secretFile)
    }

    /// A network interface name as the kernel accepts it.
    private mutating func readInterface(_ node: Node) -> String? {
        guard let name = nodes.string(node, key: "interface") else { return nil }
        guard !name.isEmpty, name.utf8.count < 16, name != ".", name != "..",
              !name.contains(where: { $0 == "/" || $0 == ":" || $0.isWhitespace })
        else {
            nodes.error("\"\(name)\" is not a network interface name", at: node,
                        hint: "use the name `ip link` shows, e.g. eth0 or ens192 (at most 15 characters)")
            return nil
        }
        return name
    }

    /// Runs `read` and remembers `path` as incomplete if it recorded an error.
    private mutating func section<T>(_ path: ConfigPath, _ read: (inout DocumentReader) -> T) -> T {
        let before = nodes.diagnostics.count
        let value = read(&self)
        if nodes.diagnostics.count > before { incompleteSections.insert(path) }
        return value
    }

    // MARK: Virtual service

    private mutating func readService(_ node: Node, at path: ConfigPath) -> VirtualService? {
        // Name the service before anything else is read, so every diagnostic about it carries the name.
        nodes.currentService = node.mapping?["name"]?.scalar?.string
        defer { nodes.currentService = nil }
        guard let fields = nodes.fields(of: node, at: path, what: "virtual service", allowed: Self.serviceKeys) else {
            return nil
        }
        let name = nodes.require("name", in: fields, what: "virtual service", hint: "add `name: SomeName`")
            .flatMap { nodes.name($0, key: "name") }
        let address = nodes.require("vip", in: fields, what: "virtual service", hint: "add `vip: ADDRESS`, the address clients connect to")
            .flatMap { nodes.address($0, key: "vip") }
        let ports = nodes.require("ports", in: fields, what: "virtual service", hint: "add `ports: [PORT]`")
            .flatMap { readPorts($0, at: path / "ports") }
        let transport = fields["protocol"].flatMap { nodes.choice($0, key: "protocol", as: TransportProtocol.self) } ?? .tcp
        let mode = nodes.require("mode", in: fields, what: "virtual service",
                                 hint: "add `mode:` with one of \(ForwardingMode.allCases.map(\.rawValue).joined(separator: ", "))")
            .flatMap { nodes.choice($0, key: "mode", as: ForwardingMode.self) }
        let scheduler = fields["scheduler"].flatMap { nodes.choice($0, key: "scheduler", as: Scheduler.self) } ?? .roundRobin
        let persistence = section(path / "persistence") { reader in
            fields["persistence"].flatMap { reader.readPersistence($0, at: path / "persistence") }
        } ?? Persistence.none
        let healthCheck = section(path / "health_check") { reader in
            fields["health_check"].flatMap { reader.readHealthCheck($0, at: path / "health_check") }
        } ?? HealthCheck(probe: .connect)
        let realServers = section(path / "real_servers") { reader in
            reader.nodes.require("real_servers", in: fields, what: "virtual service",
                                 hint: "list the servers that do the work under `real_servers:`")
                .flatMap { reader.readRealServers($0, at: path / "real_servers") }
        }
        let fallback = fields["fallback"].flatMap { readEndpoint($0, at: path / "fallback", what: "fallback") }
        let tls = fields["tls"].flatMap { readTLS($0, at: path / "tls") }
        let backendTLS = fields["backend_tls"].flatMap { readBackendTLS($0, at: path / "backend_tls") }
        let forwardedFor = fields["forwarded_for"].flatMap { nodes.bool($0, key: "forwarded_for") } ?? (mode == .l7HTTP)
        let timeouts = fields["timeouts"].flatMap { readTimeouts($0, at: path / "timeouts") } ?? .default
        let limits = fields["limits"].flatMap { readLimits($0, at: path / "limits") } ?? .default
        let interface = fields["interface"].flatMap { readInterface($0) }
        let onServerFailure = fields["on_server_failure"].flatMap {
            nodes.choice($0, key: "on_server_failure", as: ServerFailureAction.self)
        } ?? .drain
        let persistenceNetmask = (fields["persistence"]?.mapping?["netmask"]).flatMap { readNetmask($0) }
        let transparent = fields["transparent"].flatMap { nodes.bool($0, key: "transparent") } ?? false

        // Without these the service cannot be reasoned about at all; their errors are already recorded.
        guard let name, let address, let ports, let mode, let realServers else { return nil }
        return VirtualService(
            name: name, address: address, ports: ports, transport: transport, mode: mode, scheduler: scheduler,
            persistence: persistence, healthCheck: healthCheck, realServers: realServers,
            fallback: fallback, tls: tls, forwardedFor: forwardedFor, timeouts: timeouts, limits: limits,
            interface: interface, onServerFailure: onServerFailure, persistenceNetmask: persistenceNetmask,
            transparent: transparent, backendTLS: backendTLS)
    }

    /// A contiguous IPv4 netmask such as 255.255.255.0.
    private mutating func readNetmask(_ node: Node) -> IPAddress? {
        guard let mask = nodes.address(node, key: "netmask") else { return nil }
        guard case .v4(let bits) = mask, (~bits &+ 1) & ~bits == 0 else {
            nodes.error("netmask \(mask) is not a contiguous IPv4 netmask", at: node,
                        hint: "write it like 255.255.255.0 (clients of one /24 share a real server)")
            return nil
        }
        return mask
    }

    // MARK: Proxy timeouts and limits

    private mutating func readTimeouts(_ node: Node, at path: ConfigPath) -> ProxyTimeouts? {
        guard let fields = nodes.fields(of: node, at: path, what: "timeouts", allowed: Self.timeoutKeys) else { return nil }
        var timeouts = ProxyTimeouts.default
        func read(_ key: String, range: ClosedRange<Duration>, into value: inout Duration) {
            guard let node = fields[key], let duration = nodes.duration(node, key: key) else { return }
            guard range.contains(duration) else {
                nodes.error("\(key) timeout \(duration.configText) is out of range", at: node,
                            hint: "use \(range.lowerBound.configText) to \(range.upperBound.configText)")
                return
            }
            value = duration
        }
        read("connect", range: .milliseconds(10) ... .seconds(60), into: &timeouts.connect)
        read("idle", range: .seconds(1) ... .seconds(86_400), into: &timeouts.idle)
        read("header", range: .milliseconds(100) ... .seconds(600), into: &timeouts.header)
        read("body", range: .milliseconds(100) ... .seconds(3600), into: &timeouts.body)
        return timeouts
    }

    private mutating func readLimits(_ node: Node, at path: ConfigPath) -> ProxyLimits? {
        guard let fields = nodes.fields(of: node, at: path, what: "limits", allowed: Self.limitKeys) else { return nil }
        var limits = ProxyLimits.default
        if let node = fields["max_connections"], let value = nodes.integer(node, key: "max_connections", range: 1...1_000_000) {
            limits.maxConnections = value
        }
        if let node = fields["max_header_bytes"], let value = nodes.integer(node, key: "max_header_bytes", range: 1024...1_048_576) {
            limits.maxHeaderBytes = value
        }
        if let node = fields["max_headers"], let value = nodes.integer(node, key: "max_headers", range: 8...10_000) {
            limits.maxHeaders = value
        }
        return limits
    }

    /// The valid ranges; nil when none is usable.
    private mutating func readPorts(_ node: Node, at path: ConfigPath) -> [PortRange]? {
        guard let items = nodes.sequence(node, key: "ports", singleValueAllowed: true) else { return nil }
        guard !items.isEmpty else {
            nodes.error("\"ports\" is empty", at: node, hint: "list at least one port, e.g. ports: [104]")
            return nil
        }
        var ranges: [PortRange] = []
        for (index, item) in items.enumerated() {
            nodes.record(item, at: path / index)
            guard let text = nodes.scalarText(item, key: "ports"), let range = parsePortRange(text, node: item) else { continue }
            if let earlier = ranges.first(where: { $0.overlaps(range) }) {
                nodes.error("port \(range) is listed twice (overlaps \(earlier))", at: item, hint: "list each port once")
                continue
            }
            ranges.append(range)
        }
        let total = ranges.reduce(0) { $0 + $1.count }
        if total > Self.maximumPortsPerService {
            nodes.error("\(total) ports in one virtual service is more than the \(Self.maximumPortsPerService) supported",
                        at: node, hint: "split the service or narrow the ranges; each port is its own listener or IPVS service")
        }
        return ranges.isEmpty ? nil : ranges
    }

    private mutating func parsePortRange(_ text: String, node: Node) -> PortRange? {
        let hint = "a port is a number from 1 to 65535; a range is written \"LOW-HIGH\", e.g. \"10123-10124\""
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        let numbers = parts.map { Int($0.trimmingWhitespace()) }
        guard (1...2).contains(parts.count), numbers.allSatisfy({ $0 != nil }) else {
            nodes.error("\"\(text)\" is not a port or a port range", at: node, hint: hint)
            return nil
        }
        let values = numbers.compactMap { $0 }
        guard values.allSatisfy({ (1...65535).contains($0) }) else {
            nodes.error("port \(text) is outside 1...65535", at: node, hint: hint)
            return nil
        }
        let lower = values[0], upper = values.count == 2 ? values[1] : values[0]
        guard lower <= upper else {
            nodes.error("port range \"\(text)\" runs backwards", at: node, hint: "write the lower port first: \"\(upper)-\(lower)\"")
            return nil
        }
        return PortRange(lower: UInt16(lower), upper: UInt16(upper))
    }

    // MARK: Persistence

    private mutating func readPersistence(_ node: Node, at path: ConfigPath) -> Persistence? {
        guard let fields = nodes.fields(of: node, at: path, what: "persistence", allowed: Self.persistenceKeys),
              let typeNode = nodes.require("type", in: fields, what: "persistence",
                                           hint: "add `type:` with none, source-ip or http-cookie")
        else { return nil }
        guard let type = nodes.choice(typeNode, key: "persistence type", as: PersistenceType.self) else { return nil }
        switch type {
        case .none:
            rejectKeys(["timeout", "cookie", "netmask"], in: fields, because: "persistence type none")
            return Persistence.none
        case .sourceIP:
            rejectKeys(["cookie"], in: fields, because: "persistence type source-ip")
            guard let timeoutNode = fields["timeout"] else { return .sourceIP(timeout: Persistence.defaultSourceIPTimeout) }
            guard let timeout = nodes.duration(timeoutNode, key: "timeout") else { return nil }
            // IPVS keeps persistence in whole seconds; a week covers any clinical session.
            guard timeout >= .seconds(1), timeout <= .seconds(7 * 86_400), timeout.isWholeSeconds else {
                nodes.error("persistence timeout \(timeout.configText) is out of range", at: timeoutNode,
                            hint: "use whole seconds from 1s to 7 days (10080m)")
                return nil
            }
            return .sourceIP(timeout: timeout)
        case .httpCookie:
            rejectKeys(["timeout", "netmask"], in: fields, because: "persistence type http-cookie")
            guard let cookieNode = fields["cookie"] else { return .httpCookie(name: Persistence.defaultCookieName) }
            guard let cookie = nodes.string(cookieNode, key: "cookie") else { return nil }
            guard cookie.allSatisfy(\.isHTTPTokenCharacter) else {
                nodes.error("\"\(cookie)\" is not a valid cookie name", at: cookieNode,
                            hint: "use letters, digits and -_.!#$%&'*+^`|~ only (an HTTP token), e.g. LBSRV")
                return nil
            }
            return .httpCookie(name: cookie)
        }
    }

    private enum PersistenceType: String, CaseIterable {
        case none, sourceIP = "source-ip", httpCookie = "http-cookie"
    }

    /// Keys that belong to another variant are errors: they would otherwise be silently ignored.
    private mutating func rejectKeys(_ keys: [String], in fields: NodeReader.Fields, because context: String) {
        for key in keys {
            if let keyNode = fields.keyNode(key) {
                nodes.error("\"\(key)\" does not apply to \(context)", at: keyNode,
                            hint: "remove \"\(key)\" or change the type")
            }
        }
    }

    // MARK: Health check

    private mutating func readHealthCheck(_ node: Node, at path: ConfigPath) -> HealthCheck? {
        guard let fields = nodes.fields(of: node, at: path, what: "health_check", allowed: Self.healthCheckKeys),
              let typeNode = nodes.require("type", in: fields, what: "health_check",
                                           hint: "add `type:` with one of \(ProbeType.allCases.map(\.rawValue).joined(separator: ", "))")
        else { return nil }
        guard let type = nodes.choice(typeNode, key: "health_check type", as: ProbeType.self) else { return nil }

        let ownKeys: Set<String> = Set(type.specificKeys)
        let foreignKeys = ProbeType.allCases.flatMap(\.specificKeys).filter { !ownKeys.contains($0) }
        for key in Set(foreignKeys).sorted() {
            guard let keyNode = fields.keyNode(key) else { continue }
            nodes.error("\"\(key)\" does not apply to health check type \(type.rawValue)", at: keyNode,
                        hint: "remove it, or use a check type it belongs to: "
                            + ProbeType.allCases.filter { $0.specificKeys.contains(key) }.map(\.rawValue).joined(separator: ", "))
        }
        if type == .none {
            for key in ["port", "interval", "timeout", "rise", "fall", "observe"] {
                guard let keyNode = fields.keyNode(key) else { continue }
                nodes.error("\"\(key)\" does not apply when the health check type is none", at: keyNode,
                            hint: key == "observe" ? "observe needs an active check to bring a server back; choose a check type"
                                                   : "remove it, or choose a check type")
            }
        }

        let port = fields["port"].flatMap { nodes.port($0, key: "port") }
        var interval = fields["interval"].flatMap { nodes.duration($0, key: "interval") } ?? HealthCheck.defaultInterval
        var explicitTimeout = fields["timeout"].flatMap { nodes.duration($0, key: "timeout") }
        let rise = fields["rise"].flatMap { nodes.integer($0, key: "rise", range: 1...100) } ?? HealthCheck.defaultRise
        let fall = fields["fall"].flatMap { nodes.integer($0, key: "fall", range: 1...100) } ?? HealthCheck.defaultFall
        let observe = fields["observe"].flatMap {
            nodes.integer($0, key: "observe", range: 0...100, hint: "0 is off; 3 marks a server down after 3 failed connections in a row")
        } ?? 0

        if interval < .milliseconds(100) || interval > .seconds(3600), let node = fields["interval"] {
            nodes.error("health check interval \(interval.configText) is out of range", at: node,
                        hint: "use 100ms to 60m; short intervals load the real servers, long ones delay failover")
            interval = HealthCheck.defaultInterval
        }
        if let timeout = explicitTimeout, timeout < .milliseconds(10), let node = fields["timeout"] {
            nodes.error("health check timeout \(timeout.configText) is too short", at: node,
                        hint: "use at least 10ms, and less than the interval")
            explicitTimeout = nil
        }

        guard let probe = readProbe(type, fields: fields, at: path) else { return nil }
        // Without an explicit timeout a short interval gets half of itself, so checks never overlap.
        let timeout = explicitTimeout ?? min(HealthCheck.defaultTimeout, interval / 2)
        return HealthCheck(probe: probe, port: port, interval: interval, timeout: timeout, rise: rise, fall: fall,
                           observe: observe)
    }

    private enum ProbeType: String, CaseIterable {
        case httpGet = "http-get", httpsGet = "https-get", connect, dicomEcho = "dicom-echo",
             hl7MLLP = "hl7-mllp", external, none

        var specificKeys: [String] {
            switch self {
            case .httpGet, .httpsGet: return ["path", "expect_status", "expect_body"]
            case .dicomEcho: return ["calling_ae", "called_ae"]
            case .hl7MLLP: return ["message"]
            case .external: return ["command", "user"]
            case .connect, .none: return []
            }
        }
    }

    private mutating func readProbe(_ type: ProbeType, fields: NodeReader.Fields, at path: ConfigPath) -> HealthCheck.Probe? {
        switch type {
        case .none: return HealthCheck.Probe.none
        case .connect: return .connect
        case .httpGet, .httpsGet:
            let http = readHTTPProbe(fields, at: path)
            return type == .httpGet ? .httpGet(http) : .httpsGet(http)
        case .dicomEcho:
            let calling = fields["calling_ae"].map { readAETitle($0, key: "calling_ae") }
                ?? HealthCheck.DICOMEchoProbe.defaultCallingAE
            let called = fields["called_ae"].map { readAETitle($0, key: "called_ae") }
                ?? HealthCheck.DICOMEchoProbe.defaultCalledAE
            guard let calling, let called else { return nil }
            return .dicomEcho(.init(callingAE: calling, calledAE: called))
        case .hl7MLLP:
            guard let node = fields["message"] else { return .hl7MLLP(.init()) }
            guard let text = nodes.string(node, key: "message") else { return nil }
            // YAML block scalars end segments with \n; HL7 v2 separates segments with \r.
            let message = text.trimmingWhitespace().split(whereSeparator: { $0 == "\n" || $0 == "\r" }).joined(separator: "\r")
            guard message.hasPrefix("MSH|"), message.count >= 8 else {
                nodes.error("the HL7 check message must start with an MSH segment (\"MSH|^~\\&|...\")", at: node,
                            hint: "write one segment per line; the first is MSH, with the field separator right after it")
                return nil
            }
            return .hl7MLLP(.init(message: message))
        case .external:
            guard let node = nodes.require("command", in: fields, what: "external health_check",
                                           hint: "add `command: /path/to/script`; it runs with the real server's address and port in its environment")
            else { return nil }
            guard let command = nodes.string(node, key: "command") else { return nil }
            // A NUL would end the command where /bin/sh reads it (C strings), silently running less than written.
            guard !command.isEmpty, !command.utf8.contains(0) else {
                nodes.error(command.isEmpty ? "the external check command is empty" : "the external check command contains a NUL byte",
                            at: node, hint: "write the command line without control characters")
                return nil
            }
            var user = HealthCheck.defaultExternalUser
            if let userNode = fields["user"] {
                guard let name = nodes.string(userNode, key: "user") else { return nil }
                let valid = !name.isEmpty && name.count <= 32 && name.first != "-"
                    && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }
                guard valid, name != "root" else {
                    nodes.error(name == "root" ? "external checks do not run as root" : "\"\(name)\" is not a user name",
                                at: userNode, hint: "name an unprivileged system user, e.g. `user: nobody` (the default)")
                    return nil
                }
                user = name
            }
            return .external(command: command, user: user)
        }
    }

    private mutating func readHTTPProbe(_ fields: NodeReader.Fields, at path: ConfigPath) -> HealthCheck.HTTPProbe {
        var probe = HealthCheck.HTTPProbe()
        if let node = fields["path"], let text = nodes.string(node, key: "path") {
            let printable = !text.contains { $0.isWhitespace || ($0.asciiValue.map { $0 < 0x20 || $0 == 0x7F } ?? false) }
            if text.hasPrefix("/"), printable {
                probe.path = text
            } else {
                nodes.error("health check path \"\(text)\" must start with / and contain no spaces or control characters",
                            at: node, hint: "write the request path, e.g. /status (percent-encode spaces)")
            }
        }
        if let node = fields["expect_status"], let items = nodes.sequence(node, key: "expect_status", singleValueAllowed: true) {
            let codes = items.compactMap {
                nodes.integer($0, key: "expect_status", range: 100...599, hint: "HTTP status codes run from 100 to 599")
            }
            if items.isEmpty {
                nodes.error("\"expect_status\" is empty", at: node, hint: "list the accepted codes, e.g. [200]")
            } else if codes.count == items.count {
                probe.expectStatus = codes
            }
        }
        if let node = fields["expect_body"] {
            probe.expectBody = nodes.string(node, key: "expect_body")
        }
        return probe
    }

    /// DICOM AE titles (PS3.5 "AE" VR): 1–16 characters of the default repertoire, no backslash, not only spaces.
    private mutating func readAETitle(_ node: Node, key: String) -> String? {
        guard let text = nodes.string(node, key: key) else { return nil }
        let printable = text.unicodeScalars.allSatisfy { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F && $0 != "\\" }
        guard text.count <= 16, printable else {
            nodes.error("\"\(text)\" is not a valid DICOM AE title", at: node,
                        hint: "an AE title has 1 to 16 printable ASCII characters and no backslash, e.g. LB-CHECK")
            return nil
        }
        return text.trimmingWhitespace()
    }

    // MARK: Real servers, fallback, TLS

    private mutating func readRealServers(_ node: Node, at path: ConfigPath) -> [RealServer]? {
        guard let items = nodes.sequence(node, key: "real_servers") else { return nil }
        return items.enumerated().compactMap { index, item in readRealServer(item, at: path / index) }
    }

    private mutating func readRealServer(_ node: Node, at path: ConfigPath) -> RealServer? {
        guard let fields = nodes.fields(of: node, at: path, what: "real server", allowed: Self.realServerKeys) else {
            return nil
        }
        let address = nodes.require("address", in: fields, what: "real server", hint: "add `address: IP`")
            .flatMap { nodes.address($0, key: "address") }
        let port = fields["port"].flatMap { nodes.port($0, key: "port") }
        let weight = fields["weight"].flatMap {
            nodes.integer($0, key: "weight", range: 0...65535,
                          hint: "weights run from 0 (takes no new connections) to 65535")
        } ?? RealServer.defaultWeight
        let name = fields["name"].flatMap { nodes.name($0, key: "name") }
        let backendTLS = fields["backend_tls"].flatMap { readBackendTLS($0, at: path / "backend_tls") }
        guard let address else { return nil }
        // Unnamed servers are named after where they live, so lbctl can still address them.
        let resolvedName = name ?? (port.map { address.withPort($0) } ?? address.description)
        return RealServer(name: resolvedName, address: address, port: port, weight: weight, backendTLS: backendTLS)
    }

    private mutating func readEndpoint(_ node: Node, at path: ConfigPath, what: String) -> Endpoint? {
        guard let fields = nodes.fields(of: node, at: path, what: what, allowed: Self.endpointKeys) else { return nil }
        let address = nodes.require("address", in: fields, what: what, hint: "add `address: IP`")
            .flatMap { nodes.address($0, key: "address") }
        let port = fields["port"].flatMap { nodes.port($0, key: "port") }
        guard let address else { return nil }
        return Endpoint(address: address, port: port)
    }

    private mutating func readTLS(_ node: Node, at path: ConfigPath) -> TLSSettings? {
        guard let fields = nodes.fields(of: node, at: path, what: "tls", allowed: Self.tlsKeys) else { return nil }
        let certificate = nodes.require("certificate", in: fields, what: "tls", hint: "add `certificate: /path/to/chain.pem`")
            .flatMap { nodes.filePath($0, key: "certificate") }
        let key = nodes.require("key", in: fields, what: "tls", hint: "add `key: /path/to/key.pem`")
            .flatMap { nodes.filePath($0, key: "key") }
        var extra: [TLSSettings.CertificatePair] = []
        if let list = fields["sni_certificates"], let items = nodes.sequence(list, key: "sni_certificates") {
            for (index, item) in items.enumerated() {
                guard let pair = nodes.fields(of: item, at: path / "sni_certificates" / index, what: "sni certificate",
                                              allowed: Self.certificateKeys) else { continue }
                let certificate = nodes.require("certificate", in: pair, what: "sni certificate", hint: "add `certificate: /path/to/chain.pem`")
                    .flatMap { nodes.filePath($0, key: "certificate") }
                let key = nodes.require("key", in: pair, what: "sni certificate", hint: "add `key: /path/to/key.pem`")
                    .flatMap { nodes.filePath($0, key: "key") }
                if let certificate, let key { extra.append(.init(certificatePath: certificate, keyPath: key)) }
            }
        }
        guard let certificate, let key else { return nil }
        return TLSSettings(certificatePath: certificate, keyPath: key, sniCertificates: extra)
    }

    private mutating func readBackendTLS(_ node: Node, at path: ConfigPath) -> BackendTLS? {
        guard let fields = nodes.fields(of: node, at: path, what: "backend_tls", allowed: Self.backendTLSKeys) else { return nil }
        let verify = fields["verify"].flatMap { nodes.choice($0, key: "verify", as: BackendTLS.Verify.self) } ?? .certificate
        let caFile = fields["ca_file"].flatMap { nodes.filePath($0, key: "ca_file") }
        let serverName = fields["server_name"].flatMap { nodes.string($0, key: "server_name") }
        let certificate = fields["certificate"].flatMap { nodes.filePath($0, key: "certificate") }
        let key = fields["key"].flatMap { nodes.filePath($0, key: "key") }
        return BackendTLS(verify: verify, caFile: caFile, serverName: serverName, certificatePath: certificate, keyPath: key)
    }
}

extension Character {
    /// RFC 9110 token characters, the grammar of a cookie name.
    var isHTTPTokenCharacter: Bool {
        guard let ascii = asciiValue, ascii > 0x20, ascii < 0x7F else { return false }
        return isLetter || isNumber || "!#$%&'*+-.^_`|~".contains(self)
    }

}
