import Foundation

/// The normalized, defaults-filled view of one virtual service that `lbctl config show` prints.
public struct ServiceSummary: Codable, Hashable, Sendable {
    public var name: String
    public var vip: String
    public var ports: [String]
    public var `protocol`: String
    public var mode: String
    public var scheduler: String
    public var persistence: String
    public var healthCheck: String
    public var realServers: [RealServerSummary]
    public var fallback: String?
    public var tls: Bool
    public var forwardedFor: Bool

    public struct RealServerSummary: Codable, Hashable, Sendable {
        public var name: String
        public var address: String
        /// nil: same as the port the client used.
        public var port: Int?
        public var weight: Int
    }

    enum CodingKeys: String, CodingKey {
        case name, vip, ports, `protocol`, mode, scheduler, persistence
        case healthCheck = "health_check", realServers = "real_servers", fallback, tls
        case forwardedFor = "forwarded_for"
    }

    public init(_ service: VirtualService) {
        name = service.name
        vip = service.address.description
        ports = service.ports.map(\.description)
        `protocol` = service.transport.rawValue
        mode = service.mode.rawValue
        scheduler = service.scheduler.rawValue
        persistence = Self.describe(service.persistence)
        healthCheck = Self.describe(service.healthCheck)
        realServers = service.realServers.map {
            RealServerSummary(name: $0.name, address: $0.address.description, port: $0.port.map(Int.init), weight: $0.weight)
        }
        fallback = service.fallback.map { fallback in
            fallback.port.map { fallback.address.withPort($0) } ?? fallback.address.description
        }
        tls = service.tls != nil
        forwardedFor = service.forwardedFor
    }

    static func describe(_ persistence: Persistence) -> String {
        switch persistence {
        case .none: return "none"
        case .sourceIP(let timeout): return "source-ip \(timeout.configText)"
        case .httpCookie(let name): return "http-cookie \(name)"
        }
    }

    static func describe(_ check: HealthCheck) -> String {
        var text: String
        switch check.probe {
        case .none: return "none"
        case .connect: text = "connect"
        case .httpGet(let http): text = "http-get \(http.path) \(http.expectStatus.map(String.init).joined(separator: ","))"
        case .httpsGet(let http): text = "https-get \(http.path) \(http.expectStatus.map(String.init).joined(separator: ","))"
        case .dicomEcho(let echo): text = "dicom-echo \(echo.callingAE)->\(echo.calledAE)"
        case .hl7MLLP: text = "hl7-mllp"
        case .external(let command, let user):
            text = "external \(command)" + (user == HealthCheck.defaultExternalUser ? "" : " (as \(user))")
        }
        if let port = check.port { text += " port \(port)" }
        return text + " every \(check.interval.configText)"
    }
}

/// Text and JSON renderings shared by lbctl and lbd.
public enum ConfigurationView {
    public static let tableHeader = ["NAME", "VIP", "MODE", "PROTO", "PORTS", "SCHEDULER", "PERSISTENCE", "HEALTH CHECK", "REAL SERVERS"]

    /// One row per virtual service, columns aligned, like the VIP table of a deployment guide.
    public static func table(_ configuration: Configuration) -> String {
        let rows = configuration.virtualServices.map(ServiceSummary.init).map { summary -> [String] in
            let servers = summary.realServers.map { server in
                let target = server.port.map { "\(server.address):\($0)" } ?? server.address
                return "\(server.name)=\(target)*\(server.weight)"
            }.joined(separator: " ")
            var persistence = summary.persistence
            if summary.tls { persistence += " (tls)" }
            return [summary.name, summary.vip, summary.mode, summary.protocol, summary.ports.joined(separator: ","),
                    summary.scheduler, persistence, summary.healthCheck,
                    servers + (summary.fallback.map { " fallback=\($0)" } ?? "")]
        }
        let table = alignedColumns([tableHeader] + rows)
        return configuration.highAvailability.map { table + "\n\n" + highAvailabilityText($0) } ?? table
    }

    /// The pair section, as `lbctl config show` prints it under the table.
    public static func highAvailabilityText(_ ha: HighAvailability) -> String {
        var lines = ["high availability: virtual_router_id \(ha.virtualRouterID), advert_interval \(ha.advertInterval.configText), "
                     + "preempt \(ha.preempt ? "yes" : "no"), peer_port \(ha.peerPort), peer_secret_file \(ha.peerSecretFile)"]
        lines += ha.nodes.map { "  node \($0.name): \($0.address) on \($0.interface), priority \($0.priority)" }
        lines += ha.floatingAddresses.map { "  floating address \($0.address)/\($0.prefixLength) on \($0.interface)" }
        lines.append("  connection sync: " + (ha.connectionSyncInterface.map { "IPVS sync daemons on \($0)" } ?? "off"))
        return lines.joined(separator: "\n")
    }

    static func alignedColumns(_ rows: [[String]]) -> String {
        guard let columns = rows.first?.count else { return "" }
        let widths = (0..<columns).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { column, cell in
                column == columns - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }

    public static func json<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(value) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}

/// `lbctl config check --format json`.
public struct CheckResult: Codable, Sendable {
    public var file: String
    public var valid: Bool
    public var virtualServices: Int
    public var errors: [DiagnosticRecord]
    public var warnings: [DiagnosticRecord]

    enum CodingKeys: String, CodingKey {
        case file, valid, errors, warnings
        case virtualServices = "virtual_services"
    }

    public init(_ report: ConfigurationReport) {
        file = report.file
        valid = report.isValid
        virtualServices = report.configuration?.virtualServices.count ?? 0
        errors = report.diagnostics.errors.map(DiagnosticRecord.init)
        warnings = report.diagnostics.warnings.map(DiagnosticRecord.init)
    }
}

public struct DiagnosticRecord: Codable, Sendable {
    public var file: String
    public var line: Int
    public var column: Int
    public var virtualService: String?
    public var message: String
    public var hint: String?

    enum CodingKeys: String, CodingKey {
        case file, line, column, message, hint
        case virtualService = "virtual_service"
    }

    public init(_ diagnostic: Diagnostic) {
        file = diagnostic.location.file
        line = diagnostic.location.line
        column = diagnostic.location.column
        virtualService = diagnostic.virtualService
        message = diagnostic.message
        hint = diagnostic.hint
    }
}

extension ConfigurationReport {
    /// `FILE: valid, 21 virtual services, 1 warning` / `FILE: invalid, 3 errors, 1 warning`.
    public var summaryLine: String {
        func count(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }
        let warnings = count(diagnostics.warnings.count, "warning")
        if let configuration, isValid {
            return "\(file): valid, \(count(configuration.virtualServices.count, "virtual service")), \(warnings)"
        }
        return "\(file): invalid, \(count(diagnostics.errors.count, "error")), \(warnings)"
    }
}
