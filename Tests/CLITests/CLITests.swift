import Foundation
import LBTestSupport
import Testing

/// Runs the built `lbctl` and `lbd` as an operator would: exit status, standard output, standard error.
struct Run {
    var status: Int32
    var stdout: String
    var stderr: String
}

enum Binaries {
    /// The test bundle is built next to the package's executables.
    static let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func run(_ tool: String, _ arguments: [String]) throws -> Run {
        let process = Process()
        process.executableURL = directory.appendingPathComponent(tool)
        process.arguments = arguments
        process.currentDirectoryURL = repository
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Read before waiting so a large output cannot fill the pipe and stall the child.
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Run(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                   stderr: String(decoding: stderr, as: UTF8.self))
    }
}

extension Binaries {
    /// Runs a system tool (openssl) to prepare a test; returns its exit status.
    static func runTool(_ path: String, _ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }
}

/// A scratch directory removed when the test ends.
final class Scratch {
    let url: URL
    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("lb-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }

    func path(_ name: String) -> String { url.appendingPathComponent(name).path }

    func write(_ name: String, _ text: String) throws -> String {
        let path = url.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}

@Suite("lbctl config and lbd --check, as an operator runs them")
struct CLITests {
    static let agfa = "examples/agfa-enterprise-imaging.yaml"

    @Test func checkAcceptsTheAGFAExample() throws {
        let run = try Binaries.run("lbctl", ["config", "check", Self.agfa])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout == "\(Self.agfa): valid, 21 virtual services, 0 warnings\n")
        #expect(run.stderr.isEmpty)
    }

    @Test func showPrintsTheTwentyOneServices() throws {
        let run = try Binaries.run("lbctl", ["config", "show", Self.agfa])
        #expect(run.status == 0, "\(run.stderr)")
        let lines = run.stdout.split(separator: "\n")
        #expect(lines.count == 22, "a header and 21 rows")
        #expect(lines.first?.hasPrefix("NAME") == true)
        let rows = lines.dropFirst()
        #expect(rows.allSatisfy { $0.contains(" l7-http ") || $0.contains(" l7-tcp ") })
        let dicom = try #require(rows.first { $0.hasPrefix("CoreServerDICOM-104 ") })
        for column in ["10.20.0.10", "l7-tcp", "104", "leastconn", "none", "dicom-echo LB-CHECK->EI-CORE", "ei-core-1=10.20.1.11*100"] {
            #expect(dicom.contains(column), "\(column) in \(dicom)")
        }
    }

    @Test func showAndCheckSpeakJSON() throws {
        let show = try Binaries.run("lbctl", ["config", "show", "--format", "json", Self.agfa])
        #expect(show.status == 0)
        let services = try #require(try JSONSerialization.jsonObject(with: Data(show.stdout.utf8)) as? [[String: Any]])
        #expect(services.count == 21)
        #expect(services[0]["name"] as? String == "CoreServerClient-80")
        #expect(services[0]["persistence"] as? String == "http-cookie LBSRV")
        #expect((services[0]["real_servers"] as? [[String: Any]])?.count == 2)

        let check = try Binaries.run("lbctl", ["config", "check", "--format", "json", Self.agfa])
        let result = try #require(try JSONSerialization.jsonObject(with: Data(check.stdout.utf8)) as? [String: Any])
        #expect(result["valid"] as? Bool == true)
        #expect(result["virtual_services"] as? Int == 21)
    }

    /// One RIP:PORT behind an l7-http VIP and an l4-snat VIP: the guide's firewall-rule conflict.
    @Test func snatAndLayer7SharingARealServerIsRejected() throws {
        let scratch = try Scratch()
        let file = try scratch.write("conflict.yaml", """
            virtual_services:
              - name: CoreServerClient-8080
                vip: 10.20.0.10
                ports: [8080]
                mode: l7-http
                real_servers:
                  - {name: ei-core-1, address: 10.20.1.11}
              - name: Viewer-SNAT
                vip: 10.20.0.30
                ports: [8080]
                mode: l4-snat
                real_servers:
                  - {name: ei-core-1, address: 10.20.1.11}
            """)
        let run = try Binaries.run("lbctl", ["config", "check", file])
        #expect(run.status == 1)
        #expect(run.stderr.contains("\(file):13:9: error: virtual service \"Viewer-SNAT\": real server 10.20.1.11:8080 is used by this l4-snat virtual service and by the l7-http virtual service \"CoreServerClient-8080\" (line 2)"),
                "\(run.stderr)")
        #expect(run.stdout.contains("invalid, 1 error"))

        let json = try Binaries.run("lbctl", ["config", "check", "--format", "json", file])
        #expect(json.status == 1)
        let result = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let error = try #require((result["errors"] as? [[String: Any]])?.first)
        #expect(error["line"] as? Int == 13)
        #expect(error["column"] as? Int == 9)
        #expect(error["virtual_service"] as? String == "Viewer-SNAT")
    }

    @Test func missingCertificateAndMismatchedKeyAreFoundBeforeAnythingStarts() throws {
        let scratch = try Scratch()
        let file = try scratch.write("tls.yaml", """
            virtual_services:
              - name: CoreServer-8443
                vip: 10.20.0.10
                ports: [8443]
                mode: l7-http
                tls: {certificate: /etc/lb/no-such-viewer.pem, key: /etc/lb/no-such-viewer.key}
                backend_tls: {ca_file: /etc/lb/no-such-ca.pem}
                real_servers: [{address: 10.20.1.11}]
            """)
        for (binary, arguments) in [("lbctl", ["config", "check", file]), ("lbd", ["--config", file, "--check"])] {
            let run = try Binaries.run(binary, arguments)
            #expect(run.status == 1, "\(binary)")
            #expect(run.stderr.contains("\(file):6:"), "\(binary): \(run.stderr)")
            #expect(run.stderr.contains("tls certificate /etc/lb/no-such-viewer.pem: no such file or directory"), "\(binary): \(run.stderr)")
            #expect(run.stderr.contains("tls key /etc/lb/no-such-viewer.key: no such file or directory"), "\(binary): \(run.stderr)")
            #expect(run.stderr.contains("\(file):7:"), "\(binary): \(run.stderr)")
            #expect(run.stderr.contains("backend_tls CA file /etc/lb/no-such-ca.pem: no such file or directory"), "\(binary): \(run.stderr)")
        }
        // A key that is not the certificate's: two self-signed pairs, crossed.
        for name in ["a", "b"] {
            let made = try Binaries.runTool("/usr/bin/openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                                                                 "-subj", "/CN=\(name)", "-keyout", scratch.path("\(name).key"),
                                                                 "-out", scratch.path("\(name).pem")])
            #expect(made == 0)
        }
        let crossed = try scratch.write("crossed.yaml", """
            virtual_services:
              - name: Viewer
                vip: 10.20.0.10
                ports: [443]
                mode: l7-http
                tls: {certificate: \(scratch.path("a.pem")), key: \(scratch.path("b.key"))}
                real_servers: [{address: 10.20.1.11}]
            """)
        let run = try Binaries.run("lbctl", ["config", "check", crossed])
        #expect(run.status == 1)
        #expect(run.stderr.contains("\(crossed):6:") && run.stderr.contains("does not match certificate"), "\(run.stderr)")
    }

    @Test func misspelledKeyIsRejectedWithItsLine() throws {
        let scratch = try Scratch()
        let file = try scratch.write("typo.yaml", """
            virtual_services:
              - name: CoreServerHL7-2310
                vip: 10.20.0.10
                ports: [2310]
                mode: l7-tcp
                helth_check: {type: connect}
                real_servers: [{address: 10.20.1.11}]
            """)
        let run = try Binaries.run("lbctl", ["config", "check", file])
        #expect(run.status == 1)
        #expect(run.stderr.contains("\(file):6:5: error: virtual service \"CoreServerHL7-2310\": unknown key \"helth_check\" in virtual service; did you mean \"health_check\"?"),
                "\(run.stderr)")
        #expect(run.stderr.contains("hint: keys allowed here:"))
        // show refuses the same file the same way, and prints no table.
        let show = try Binaries.run("lbctl", ["config", "show", file])
        #expect(show.status == 1)
        #expect(show.stdout.isEmpty)
        #expect(show.stderr.contains("helth_check"))
    }

    @Test func unreadableFileExitsTwo() throws {
        let run = try Binaries.run("lbctl", ["config", "check", "/nonexistent/lb.yaml"])
        #expect(run.status == 2)
        #expect(run.stderr == "lbctl: /nonexistent/lb.yaml: cannot read config file: no such file\n")
        let directory = try Binaries.run("lbctl", ["config", "show", "/"])
        #expect(directory.status == 2)
        #expect(directory.stderr.contains("it is a directory"))
    }

    @Test func warningsDoNotFailTheCheck() throws {
        let scratch = try Scratch()
        let file = try scratch.write("warn.yaml", """
            virtual_services:
              - name: single
                vip: 10.20.0.10
                ports: [9080]
                mode: l7-http
                persistence: {type: source-ip}
                real_servers: [{address: 10.20.1.11}]
            """)
        let run = try Binaries.run("lbctl", ["config", "check", file])
        #expect(run.status == 0)
        #expect(run.stderr.contains("\(file):6:18: warning: virtual service \"single\": source-ip persistence with a single real server has no effect"), "\(run.stderr)")
        #expect(run.stdout == "\(file): valid, 1 virtual service, 1 warning\n")
    }

    @Test func lbdCheckValidatesAndRejects() throws {
        let ok = try Binaries.run("lbd", ["--config", Self.agfa, "--check"])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.stdout == "\(Self.agfa): valid, 21 virtual services, 0 warnings\n")

        let scratch = try Scratch()
        let file = try scratch.write("bad.yaml", "virtual_services:\n  - {name: x, vip: 10.0.0.1, ports: [80], mode: l7-tcp, protocol: udp, real_servers: [{address: 10.0.1.1}]}\n")
        let bad = try Binaries.run("lbd", ["--config", file, "--check"])
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("\(file):2:67: error: virtual service \"x\": protocol udp cannot be used with mode l7-tcp"), "\(bad.stderr)")
        #expect(bad.stderr.contains("config rejected; nothing applied"))

        let missing = try Binaries.run("lbd", ["--config", "/nonexistent.yaml", "--check"])
        #expect(missing.status == 2)
    }

    /// lbd runs the Layer 7 services until SIGTERM, then drains and exits 0.
    @Test func lbdServesUntilSIGTERM() throws {
        let scratch = try Scratch()
        let port = Int(Ports.block())
        let file = try scratch.write("run.yaml", """
            virtual_services:
              - name: demo-tcp
                vip: 127.0.0.1
                ports: [\(port)]
                mode: l7-tcp
                health_check: {type: none}
                real_servers: [{address: 127.0.0.1, port: \(port + 1)}]
            """)
        let process = Process()
        process.executableURL = Binaries.directory.appendingPathComponent("lbd")
        process.arguments = ["--config", file, "--threads", "1", "--drain-timeout", "1", "--socket", scratch.url.path + "/lbd.sock", "--state-dir", scratch.url.path + "/state"]
        let err = Pipe()
        process.standardError = err
        try process.run()
        // Wait for the listener, then ask it to stop.
        var listening = false
        for _ in 0..<100 where !listening {
            Thread.sleep(forTimeInterval: 0.05)
            listening = (FileHandle(forReadingAtPath: "/proc/net/tcp")?.readDataToEndOfFile()).map { String(decoding: $0, as: UTF8.self) }?
                .contains(String(format: ":%04X 00000000:0000 0A", port)) ?? false
        }
        #expect(listening, "lbd listens on 127.0.0.1:\(port)")
        process.terminate()
        process.waitUntilExit()
        let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 0, "\(log)")
        #expect(log.contains("service=demo-tcp") && log.contains("listening"))
        #expect(log.contains("received SIGTERM"))
        #expect(log.contains("stopped"))
    }

    /// On a kernel without IPVS (this machine's), a config with Layer 4 services starts nothing and says why.
    /// Only meaningful on a kernel without IPVS (this machine's); with IPVS it is reported as skipped, not passed
    /// (the VM suites cover that case).
    @Test(.enabled(if: !FileManager.default.fileExists(atPath: "/proc/net/ip_vs"), "needs a kernel without IPVS"))
    func layer4WithoutIPVSStartsNothing() throws {
        let scratch = try Scratch()
        let port = Int(Ports.block())
        let file = try scratch.write("l4.yaml", """
            virtual_services:
              - name: proxied
                vip: 127.0.0.1
                ports: [\(port)]
                mode: l7-tcp
                real_servers: [{address: 127.0.0.1, port: \(port + 1)}]
              - name: kernel-nat
                vip: 10.99.0.1
                ports: [80]
                mode: l4-nat
                real_servers: [{address: 10.99.1.1}]
            """)
        let run = try Binaries.run("lbd", ["--config", file])
        #expect(run.status == 1)
        #expect(run.stderr.contains("Layer 4 services cannot be programmed: IPVS generic netlink family (is the ip_vs module available?)"), "\(run.stderr)")
        #expect(run.stderr.contains("nothing started"))
        #expect(!run.stderr.contains("listening"), "the Layer 7 service did not start either")
        #expect(run.stderr.contains("config loaded"), "lbd got as far as the kernel check (not refused for another reason)")
    }

    @Test func realServerSetupForDirectRouting() throws {
        let scratch = try Scratch()
        let file = try scratch.write("dr.yaml", """
            virtual_services:
              - name: Viewer-DR
                vip: 10.20.0.42
                ports: [443]
                mode: l4-dr
                real_servers: [{name: web-1, address: 10.20.1.21}]
              - name: Viewer-NAT
                vip: 10.20.0.43
                ports: [443]
                mode: l4-nat
                real_servers: [{name: web-1, address: 10.20.1.21}]
            """)
        let dr = try Binaries.run("lbctl", ["config", "real-servers", file, "Viewer-DR"])
        #expect(dr.status == 0)
        for line in ["sysctl -w net.ipv4.conf.all.arp_ignore=1", "sysctl -w net.ipv4.conf.all.arp_announce=2",
                     "ip addr add 10.20.0.42/32 dev lo"] {
            #expect(dr.stdout.contains(line + "\n"), "\(dr.stdout)")
        }
        #expect(!dr.stdout.contains("Viewer-NAT"))
        let all = try Binaries.run("lbctl", ["config", "real-servers", file])
        #expect(all.stdout.contains("default route"), "NAT explains the route back: \(all.stdout)")
        let unknown = try Binaries.run("lbctl", ["config", "real-servers", file, "Nope"])
        #expect(unknown.status == 1)
        #expect(unknown.stderr.contains("no virtual service named \"Nope\""))
    }

    @Test func helpAndUsageErrors() throws {
        let help = try Binaries.run("lbctl", ["config", "check", "--help"])
        #expect(help.status == 0)
        #expect(help.stdout.contains("file:line:column"))
        let usage = try Binaries.run("lbctl", ["config", "check"])
        #expect(usage.status == 64, "missing argument is a usage error")
        let badFormat = try Binaries.run("lbctl", ["config", "check", "--format", "xml", Self.agfa])
        #expect(badFormat.status == 64)
    }
}
