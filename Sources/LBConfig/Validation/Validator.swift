/// Rules that relate several fields of a service, or several services, once every value has been read.
///
/// Pure: model and source map in, diagnostics out.
public struct Validator {
    public let configuration: Configuration
    public let sourceMap: SourceMap
    /// Sections whose reading already failed: rules about them stay silent rather than add a second, derived error.
    public let incompleteSections: Set<ConfigPath>
    private var diagnostics: [Diagnostic] = []

    public init(configuration: Configuration, sourceMap: SourceMap, incompleteSections: Set<ConfigPath> = []) {
        self.configuration = configuration
        self.sourceMap = sourceMap
        self.incompleteSections = incompleteSections
    }

    public static func validate(_ configuration: Configuration, sourceMap: SourceMap,
                                incompleteSections: Set<ConfigPath> = []) -> [Diagnostic] {
        var validator = Validator(configuration: configuration, sourceMap: sourceMap, incompleteSections: incompleteSections)
        for (index, service) in configuration.virtualServices.enumerated() {
            validator.checkService(service, at: .virtualService(index))
        }
        validator.checkUniqueNames()
        validator.checkUniqueListeners()
        validator.checkLayer7AndSNATShareNoRealServer()
        validator.checkDirectRoutingVIPsNotProxied()
        validator.checkSharedPersistenceCookies()
        validator.checkHighAvailability()
        return validator.diagnostics
    }

    // MARK: One service

    private mutating func checkService(_ service: VirtualService, at path: ConfigPath) {
        let name = service.name
        let mode = service.mode.rawValue

        if service.mode.isLayer7, service.transport == .udp {
            error(name, at: path / "protocol", "protocol udp cannot be used with mode \(mode)",
                  hint: "lbd's proxy handles TCP only; use l4-nat, l4-snat or l4-dr for UDP services")
        }
        if case .httpCookie = service.persistence, service.mode != .l7HTTP {
            error(name, at: path / "persistence" / "type", "http-cookie persistence needs mode l7-http, not \(mode)",
                  hint: "only the HTTP proxy sees cookies; use source-ip persistence, or switch the service to l7-http")
        }
        if service.backendTLS != nil || service.realServers.contains(where: { $0.backendTLS != nil }), service.mode.isLayer4 {
            error(name, key: service.backendTLS != nil ? path / "backend_tls" : path / "real_servers",
                  "backend_tls needs a Layer 7 mode (l7-http or l7-tcp), not \(mode)",
                  hint: "in \(mode) mode the kernel forwards the client's own TLS untouched; remove backend_tls")
        }
        for (settings, at) in [(service.backendTLS, path / "backend_tls")]
            + service.realServers.enumerated().map({ ($0.element.backendTLS, path / "real_servers" / $0.offset / "backend_tls") }) {
            guard let settings, (settings.certificatePath == nil) != (settings.keyPath == nil) else { continue }
            error(name, key: at, "backend_tls needs both certificate and key for a client certificate, or neither",
                  hint: settings.keyPath == nil ? "add `key: /path/to/client-key.pem`" : "add `certificate: /path/to/client-chain.pem`")
        }
        if service.tls != nil, service.mode != .l7HTTP {
            error(name, key: path / "tls", "tls (termination) needs mode l7-http, not \(mode)",
                  hint: "remove the tls section; in \(mode) mode encrypted traffic passes through to the real servers untouched")
        }
        if service.forwardedFor, service.mode != .l7HTTP, sourceMap.contains(path / "forwarded_for") {
            error(name, key: path / "forwarded_for", "forwarded_for needs mode l7-http, not \(mode)",
                  hint: "only the HTTP proxy can add headers; remove forwarded_for")
        }
        if service.mode.isLayer4 {
            for key in ["timeouts", "limits"] where sourceMap.contains(path / key) {
                error(name, key: path / key, "\(key) apply to lbd's proxy, not to mode \(mode)",
                      hint: "remove \(key); the kernel's IPVS keeps its own connection timeouts")
            }
        } else if service.mode == .l7TCP {
            for key in ["header", "body"] where sourceMap.contains(path / "timeouts" / key) {
                error(name, key: path / "timeouts" / key, "the \(key) timeout applies to HTTP requests, not to mode l7-tcp",
                      hint: "remove it; use the idle timeout to bound silent TCP connections")
            }
            for key in ["max_header_bytes", "max_headers"] where sourceMap.contains(path / "limits" / key) {
                error(name, key: path / "limits" / key, "\(key) applies to HTTP requests, not to mode l7-tcp",
                      hint: "remove it; l7-tcp does not parse the stream")
            }
        }
        if service.transparent, service.mode.isLayer4 {
            error(name, key: path / "transparent", "transparent applies to Layer 7 modes, not to \(mode)",
                  hint: "remove it; \(mode == "l4-snat" ? "use l4-nat or l4-dr if the real servers must see client addresses" : "in \(mode) the real servers already see the client's address")")
        }
        if service.transparent, service.address.family != .ipv4 {
            error(name, key: path / "transparent", "transparent is available for IPv4 VIPs only",
                  hint: "remove it, or use forwarded_for (l7-http) to pass the client address")
        }
        if service.mode.isLayer7, sourceMap.contains(path / "on_server_failure") {
            error(name, key: path / "on_server_failure", "on_server_failure applies to Layer 4 modes, not to \(mode)",
                  hint: "remove it; lbd's proxy always drains a failed server: no new connections, open ones finish")
        }
        if service.persistenceNetmask != nil, service.mode.isLayer7 || service.address.family != .ipv4 {
            error(name, key: path / "persistence" / "netmask",
                  "a persistence netmask needs a Layer 4 mode and an IPv4 VIP",
                  hint: "remove netmask; lbd's proxy keeps each client address on its own")
        }
        if service.scheduler == .maglev, service.mode.isLayer7 {
            error(name, at: path / "scheduler", "the maglev scheduler is available for Layer 4 modes only",
                  hint: "use source-hash for a hash-based choice in \(mode), or a Layer 4 mode")
        }
        if service.realServers.isEmpty, !incompleteSections.contains(path / "real_servers") {
            error(name, at: path / "real_servers", "no real servers are listed",
                  hint: "list at least one server under real_servers; a service with none can only refuse clients")
        }
        let check = service.healthCheck
        if check.probe != .none, check.timeout >= check.interval, !incompleteSections.contains(path / "health_check") {
            error(name, at: path / "health_check" / "timeout",
                  "health check timeout \(check.timeout.configText) must be shorter than the interval \(check.interval.configText)",
                  hint: "a check must finish before the next one starts; lower timeout or raise interval")
        }
        checkRealServers(service, at: path)
        checkWarnings(service, at: path)
    }

    private mutating func checkRealServers(_ service: VirtualService, at path: ConfigPath) {
        var names: [String: Int] = [:]
        var endpoints: [String: Int] = [:]
        for (index, server) in service.realServers.enumerated() {
            let serverPath = path / "real_servers" / index
            if let first = names[server.name] {
                error(service.name, at: serverPath / "name",
                      "real server name \"\(server.name)\" is already used at line \(line(path / "real_servers" / first))",
                      hint: "give each real server of a service its own name; lbctl drain/halt address servers by name")
            }
            names[server.name] = names[server.name] ?? index
            let endpoint = server.port.map { server.address.withPort($0) } ?? server.address.description
            if let first = endpoints[endpoint] {
                error(service.name, at: serverPath, "real server \(endpoint) is listed twice (also at line \(line(path / "real_servers" / first)))",
                      hint: "list each address and port once; use weight to send it a larger share")
            }
            endpoints[endpoint] = endpoints[endpoint] ?? index

            if service.mode.isLayer4, server.address.family != service.address.family {
                error(service.name, at: serverPath / "address",
                      "real server \(server.address) is \(server.address.family.rawValue) but the VIP \(service.address) is \(service.address.family.rawValue)",
                      hint: "IPVS forwards within one address family; use a real server address of the VIP's family, or an l7 mode")
            }
            if service.mode == .l4DirectRouting, let port = server.port {
                checkNoTranslationInDR(service, port: port, at: serverPath / "port", what: "real server \"\(server.name)\"")
            }
        }
        if let fallback = service.fallback {
            if service.mode.isLayer4, fallback.address.family != service.address.family {
                error(service.name, at: path / "fallback" / "address",
                      "fallback \(fallback.address) is \(fallback.address.family.rawValue) but the VIP is \(service.address.family.rawValue)",
                      hint: "IPVS forwards within one address family; use a fallback of the VIP's family")
            }
            if service.mode == .l4DirectRouting, let port = fallback.port {
                checkNoTranslationInDR(service, port: port, at: path / "fallback" / "port", what: "the fallback server")
            }
        }
    }

    /// Direct routing only rewrites the Ethernet destination: the packet still says VIP:port when it arrives.
    private mutating func checkNoTranslationInDR(_ service: VirtualService, port: UInt16, at path: ConfigPath, what: String) {
        let vipPorts = service.ports.allPorts
        guard vipPorts != [port] else { return }
        error(service.name, at: path,
              "port translation is impossible in l4-dr: \(what) is given port \(port) but clients connect to port \(service.ports.summary)",
              hint: "in direct routing the real server receives the client's packet unchanged (addressed to the VIP and its port), so it must listen on the same port; remove `port` or use l4-nat, l4-snat or an l7 mode to translate ports")
    }

    private mutating func checkWarnings(_ service: VirtualService, at path: ConfigPath) {
        if case .sourceIP = service.persistence, service.realServers.count == 1 {
            warning(service.name, at: path / "persistence",
                    "source-ip persistence with a single real server has no effect",
                    hint: "fine while there is one server; add the others, or use persistence type none")
        }
        if service.healthCheck.probe == .none {
            warning(service.name, at: path / "health_check",
                    "no health check: a failed real server keeps receiving clients",
                    hint: "add a health check (connect, http-get, dicom-echo, ...) so failures are routed around")
        }
        if !service.realServers.isEmpty, service.realServers.allSatisfy({ $0.weight == 0 }) {
            warning(service.name, at: path / "real_servers",
                    "every real server has weight 0, so no new connection will be accepted",
                    hint: "give at least one server a positive weight")
        }
    }

    // MARK: Across services

    /// The pair's own addresses, its VIPs and the IPVS settings must not contradict one another.
    private mutating func checkHighAvailability() {
        let path = ConfigPath.root / "high_availability"
        guard let ha = configuration.highAvailability, !incompleteSections.contains(path) else { return }
        func haError(_ at: ConfigPath, _ message: String, hint: String) {
            diagnostics.append(Diagnostic(.error, at: sourceMap.location(of: at), message, hint: hint))
        }
        let (first, second) = (ha.nodes[0], ha.nodes[1])
        if first.name == second.name {
            haError(path / "nodes" / 1 / "name", "both nodes are named \"\(first.name)\"",
                    hint: "give each node its own name; `lbd --node NAME` picks this node's entry")
        }
        if first.address == second.address {
            haError(path / "nodes" / 1 / "address", "both nodes have the address \(first.address)",
                    hint: "each node's own (not floating) address on the VRRP link")
        } else if first.address.family != second.address.family {
            haError(path / "nodes" / 1 / "address", "the nodes' addresses \(first.address) and \(second.address) are of different families",
                    hint: "VRRP speaks over one family: give both nodes IPv4 (or both IPv6) addresses")
        }
        if configuration.ipvs.syncDaemon != nil {
            haError(.root / "ipvs" / "sync_daemon", "ipvs.sync_daemon cannot be set together with high_availability",
                    hint: "remove ipvs.sync_daemon; high_availability.connection_sync runs the sync daemons on both nodes")
        }
        let nodeAddresses = Set(ha.nodes.map(\.address))
        for (index, service) in configuration.virtualServices.enumerated() where nodeAddresses.contains(service.address) {
            error(service.name, at: .virtualService(index) / "vip", "the VIP \(service.address) is a node's own address",
                  hint: "a VIP must move between the nodes; use an address that no node owns")
        }
        let vips = Set(configuration.virtualServices.map(\.address))
        for (index, floating) in ha.floatingAddresses.enumerated()
        where nodeAddresses.contains(floating.address) || vips.contains(floating.address) {
            haError(path / "floating_addresses" / index / "address",
                    "floating address \(floating.address) is also \(vips.contains(floating.address) ? "a VIP" : "a node's own address")",
                    hint: "list each address once: VIPs move with the pair already")
        }
    }

    private mutating func checkUniqueNames() {
        var seen: [String: Int] = [:]
        for (index, service) in configuration.virtualServices.enumerated() {
            if let first = seen[service.name] {
                error(service.name, at: .virtualService(index) / "name",
                      "the name \"\(service.name)\" is already used by the virtual service at line \(line(.virtualService(first) / "name"))",
                      hint: "give each virtual service a unique name; lbctl, the logs and the metrics refer to services by name")
            } else {
                seen[service.name] = index
            }
        }
    }

    /// An address, port and protocol can be answered by one virtual service only.
    ///
    /// n log n: the port ranges of each address and protocol are sorted and swept once, so only ranges that really
    /// overlap are compared. Each clashing range is reported against the earliest service that also serves it.
    private mutating func checkUniqueListeners() {
        struct Listener: Hashable { let address: IPAddress; let transport: TransportProtocol }
        struct Claim { let service: Int; let rangeIndex: Int; let range: PortRange }
        var claims: [Listener: [Claim]] = [:]
        for (index, service) in configuration.virtualServices.enumerated() {
            for (rangeIndex, range) in service.ports.enumerated() {
                claims[Listener(address: service.address, transport: service.transport), default: []]
                    .append(Claim(service: index, rangeIndex: rangeIndex, range: range))
            }
        }
        // For each (service, range): the earliest other service with an overlapping range, and that range.
        var earliest: [Int: [Int: Claim]] = [:]
        for var group in claims.values where group.count > 1 {
            group.sort { ($0.range.lower, $0.service) < ($1.range.lower, $1.service) }
            var active: [Claim] = []
            for claim in group {
                active.removeAll { $0.range.upper < claim.range.lower }
                for other in active where other.service != claim.service {
                    let (later, earlier) = other.service < claim.service ? (claim, other) : (other, claim)
                    let known = earliest[later.service]?[later.rangeIndex]
                    if known.map({ (earlier.service, earlier.rangeIndex) < ($0.service, $0.rangeIndex) }) ?? true {
                        earliest[later.service, default: [:]][later.rangeIndex] = earlier
                    }
                }
                active.append(claim)
            }
        }
        for index in earliest.keys.sorted() {
            let service = configuration.virtualServices[index]
            for (rangeIndex, other) in earliest[index]!.sorted(by: { $0.key < $1.key }) {
                let range = service.ports[rangeIndex]
                let shared = max(range.lower, other.range.lower)
                let otherService = configuration.virtualServices[other.service]
                error(service.name, at: .virtualService(index) / "ports" / rangeIndex,
                      "\(service.address.withPort(shared))/\(service.transport.rawValue) is already served by virtual service \"\(otherService.name)\" (line \(line(.virtualService(other.service) / "name")))",
                      hint: "an address, port and protocol belong to one virtual service; give one of them another VIP address or port")
            }
        }
    }

    /// The guide's netfilter rule: l4-snat's source-NAT rules match every packet to its RIP:PORT, the proxy's too.
    private mutating func checkLayer7AndSNATShareNoRealServer() {
        let services = configuration.virtualServices.enumerated()
        // The proxy speaks TCP only, so a UDP SNAT service's rules cannot catch its connections.
        let snat = services.filter { $0.element.mode == .l4SNAT && $0.element.transport == .tcp }
        guard !snat.isEmpty else { return }
        // Which Layer 7 services send to an address: looked up, not scanned, per SNAT server.
        var layer7ByAddress: [IPAddress: [Int]] = [:]
        for (index, service) in services where service.mode.isLayer7 {
            let targets = service.realServers.map(\.address) + (service.fallback.map { [$0.address] } ?? [])
            for address in Set(targets) { layer7ByAddress[address, default: []].append(index) }
        }
        guard !layer7ByAddress.isEmpty else { return }
        for (snatIndex, snatService) in snat {
            var reported: Set<String> = []
            for (serverIndex, server) in snatService.realServers.enumerated() {
                guard let candidates = layer7ByAddress[server.address] else { continue }
                for port in Set(snatService.ports.allPorts.map(server.port(forVIPPort:))).sorted() {
                    for l7Index in candidates {
                        let l7Service = configuration.virtualServices[l7Index]
                        guard l7Service.reaches(server.address, port: port) else { continue }
                        let endpoint = server.address.withPort(port)
                        guard reported.insert("\(endpoint)|\(l7Service.name)").inserted else { continue }
                        error(snatService.name, at: .virtualService(snatIndex) / "real_servers" / serverIndex,
                              "real server \(endpoint) is used by this l4-snat virtual service and by the \(l7Service.mode.rawValue) virtual service \"\(l7Service.name)\" (line \(line(.virtualService(l7Index) / "name")))",
                              hint: "the source-NAT rules l4-snat installs for \(endpoint) would also rewrite the proxy's own connections to it; have the real server listen on a different port for one of the two services, or put both services in the same mode")
                    }
                }
            }
        }
    }

    /// A DR VIP is also configured on the real servers; proxying on the same address invites ARP and routing surprises.
    private mutating func checkDirectRoutingVIPsNotProxied() {
        var firstProxied: [IPAddress: VirtualService] = [:]
        for service in configuration.virtualServices where service.mode.isLayer7 && firstProxied[service.address] == nil {
            firstProxied[service.address] = service
        }
        for (index, service) in configuration.virtualServices.enumerated() where service.mode == .l4DirectRouting {
            guard let proxied = firstProxied[service.address] else { continue }
            warning(service.name, at: .virtualService(index) / "vip",
                    "VIP \(service.address) is used for l4-dr and by the \(proxied.mode.rawValue) virtual service \"\(proxied.name)\"",
                    hint: "direct routing puts the VIP on the real servers too; give the Layer 7 service its own address unless you have planned ARP suppression for both")
        }
    }

    /// A browser sends a cookie to every port of a host (RFC 6265), so l7-http services of one VIP that use the same
    /// cookie name share it: lbd gives a server the same id in each of them, which keeps the browser on one server
    /// — as long as they have the same servers. Where the sets differ, the cookie of one names a server the other
    /// does not have, and the browser is moved at each switch between them. Linear: one pass, a dictionary.
    private mutating func checkSharedPersistenceCookies() {
        struct Key: Hashable { var vip: IPAddress; var cookie: String }
        var first: [Key: (index: Int, servers: Set<String>)] = [:]
        for (index, service) in configuration.virtualServices.enumerated() where service.mode == .l7HTTP {
            guard case .httpCookie(let cookie) = service.persistence else { continue }
            let servers = Set(service.realServers.map { "\($0.name)|\($0.address)" })
            let key = Key(vip: service.address, cookie: cookie)
            guard let earlier = first[key] else {
                first[key] = (index, servers)
                continue
            }
            guard earlier.servers != servers else { continue }
            let other = configuration.virtualServices[earlier.index].name
            warning(service.name, at: .virtualService(index) / "persistence",
                    "cookie \"\(cookie)\" is also used by \"\(other)\" (line \(line(.virtualService(earlier.index)))) on VIP \(service.address), but their real servers differ: a browser moving between them loses its server",
                    hint: "give both services the same real servers (same names and addresses), or give one its own cookie name")
        }
    }

    // MARK: Reporting

    private func line(_ path: ConfigPath) -> Int { sourceMap.location(of: path).line }

    private mutating func error(_ service: String, at path: ConfigPath, _ message: String, hint: String) {
        diagnostics.append(Diagnostic(.error, at: sourceMap.location(of: path), service: service, message, hint: hint))
    }

    /// Points at the key itself (`tls:`), for findings about a whole section rather than its value.
    private mutating func error(_ service: String, key path: ConfigPath, _ message: String, hint: String) {
        diagnostics.append(Diagnostic(.error, at: sourceMap.keyLocation(of: path), service: service, message, hint: hint))
    }

    private mutating func warning(_ service: String, at path: ConfigPath, _ message: String, hint: String) {
        diagnostics.append(Diagnostic(.warning, at: sourceMap.location(of: path), service: service, message, hint: hint))
    }
}

extension VirtualService {
    /// Whether this service sends traffic to `address:port` (a real server or its fallback).
    func reaches(_ address: IPAddress, port: UInt16) -> Bool {
        let vipPorts = ports.allPorts
        let targets = realServers.map { ($0.address, $0.port) } + (fallback.map { [($0.address, $0.port)] } ?? [])
        return targets.contains { target in
            target.0 == address && (target.1.map { $0 == port } ?? vipPorts.contains(port))
        }
    }
}
