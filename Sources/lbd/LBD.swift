import ArgumentParser
import Foundation
import LBConfig
import Logging

@main
struct LBD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lbd",
        abstract: "The lb agent: makes this machine serve the virtual services of a config file.",
        discussion: """
            lbd reads a declarative config (lb.yaml(5)) and makes the machine match it: Layer 4 services are \
            programmed into the kernel's IPVS, Layer 7 services are served by lbd's own proxy. \
            This version validates the config and logs the services it would run; the data paths arrive in \
            later versions. An invalid config is rejected whole and nothing is applied. \
            Exit status: 0 success; 1 the config is invalid; 2 the config file cannot be read; 64 bad usage.
            """,
        version: LBVersion.current
    )

    @Option(name: .shortAndLong, help: "The config file (lb.yaml(5)); default /etc/lb/lb.yaml.")
    var config: String = "/etc/lb/lb.yaml"

    @Flag(help: "Validate the config, print findings and exit.")
    var check = false

    @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown log level \"\(logLevel)\"; use trace, debug, info, notice, warning, error or critical")
        }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "lbd")

        let report: ConfigurationReport
        do {
            report = try ConfigurationLoader.check(path: config)
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
        for service in configuration.virtualServices {
            let summary = ServiceSummary(service)
            let path = service.mode.isLayer4 ? "IPVS (kernel)" : "proxy (lbd)"
            logger.info("would run \(summary.name) on \(summary.vip) \(summary.protocol) \(summary.ports.joined(separator: ",")) via \(path)",
                        metadata: ["mode": "\(summary.mode)", "real_servers": "\(summary.realServers.count)",
                                   "health_check": "\(summary.healthCheck)"])
        }
        logger.notice("this version only validates; no service was started")
    }
}
