import ArgumentParser
import Foundation
import LBConfig

@main
struct LBCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lbctl",
        abstract: "Operate the lb load balancer: inspect configs and, through lbd, its virtual services.",
        discussion: """
            The config commands work on a file directly and need neither root nor a running lbd; later \
            versions add commands that talk to a running lbd over its control socket. \
            Exit status: 0 success; 1 the config is invalid; 2 the config file cannot be read; 64 bad usage.
            """,
        version: LBVersion.current,
        subcommands: [ConfigCommand.self]
    )
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
        return try ConfigurationLoader.check(path: file)
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
