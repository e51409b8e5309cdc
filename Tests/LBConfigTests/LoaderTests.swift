import Foundation
import LBConfig
import Testing

@Suite("Loading valid configs")
struct LoaderTests {
    @Test func defaultsAreFilledIn() throws {
        let report = check(document(service()))
        let service = try #require(report.configuration?.virtualServices.first)
        #expect(service.transport == .tcp)
        #expect(service.scheduler == .roundRobin)
        #expect(service.persistence == .none)
        #expect(service.forwardedFor, "l7-http inserts X-Forwarded-For unless told not to")
        #expect(service.healthCheck == HealthCheck(probe: .connect), "a service without a check still gets a connect check")
        #expect(service.realServers.map(\.weight) == [100, 100])
        #expect(service.realServers.allSatisfy { $0.port == nil })
        #expect(service.realServers[0].port(forVIPPort: 80) == 80)
    }

    @Test func everyFieldOfTheContract() throws {
        let yaml = """
            virtual_services:
              - name: CoreServerDICOM-104
                vip: 2001:db8::10
                ports: [104, "10123-10124"]
                protocol: tcp
                mode: l7-http
                scheduler: weighted-leastconn
                persistence: {type: http-cookie, cookie: EISRV}
                health_check:
                  type: https-get
                  port: 443
                  path: /status
                  expect_status: [200, 204]
                  expect_body: OK
                  interval: 5s
                  timeout: 1500ms
                  rise: 3
                  fall: 4
                real_servers:
                  - {name: ei-core-1, address: 2001:db8::11, port: 11104, weight: 200}
                  - {address: 10.20.1.12}
                fallback: {address: 10.20.1.99, port: 8080}
                tls: {certificate: /etc/lb/ei.pem, key: /etc/lb/ei.key}
                forwarded_for: false
            """
        let report = check(yaml)
        #expect(report.diagnostics.isEmpty, "\(report.diagnostics)")
        let service = try #require(report.configuration?.virtualServices.first)
        #expect(service.address == IPAddress("2001:db8:0:0:0:0:0:10"))
        #expect(service.address.description == "2001:db8::10")
        #expect(service.ports == [PortRange(104), PortRange(lower: 10123, upper: 10124)])
        #expect(service.ports.allPorts == [104, 10123, 10124])
        #expect(service.scheduler == .weightedLeastConnections)
        #expect(service.scheduler.ipvsName == "wlc")
        #expect(service.persistence == .httpCookie(name: "EISRV"))
        #expect(service.healthCheck == HealthCheck(
            probe: .httpsGet(.init(path: "/status", expectStatus: [200, 204], expectBody: "OK")),
            port: 443, interval: .seconds(5), timeout: .milliseconds(1500), rise: 3, fall: 4))
        #expect(service.realServers == [
            RealServer(name: "ei-core-1", address: IPAddress("2001:db8::11")!, port: 11104, weight: 200),
            RealServer(name: "10.20.1.12", address: IPAddress("10.20.1.12")!),
        ])
        #expect(service.fallback == Endpoint(address: IPAddress("10.20.1.99")!, port: 8080))
        #expect(service.tls == TLSSettings(certificatePath: "/etc/lb/ei.pem", keyPath: "/etc/lb/ei.key"))
        #expect(!service.forwardedFor)
    }

    @Test func sniCertificates() throws {
        let yaml = document(service(ports: "[443]", extra: [
            "tls:", "  certificate: /etc/lb/ei.pem", "  key: /etc/lb/ei.key",
            "  sni_certificates:", "    - {certificate: /etc/lb/viewer.pem, key: /etc/lb/viewer.key}"]))
        let tls = try #require(check(yaml).configuration?.virtualServices.first?.tls)
        #expect(tls.sniCertificates == [.init(certificatePath: "/etc/lb/viewer.pem", keyPath: "/etc/lb/viewer.key")])
        expectError(document(service(extra: ["tls: {certificate: a, key: b, sni_certificates: [{certificate: c}]}"])),
                    "sni certificate is missing the required key \"key\"", at: "{certificate: c}")
    }

    @Test func protocolChecksAndDurations() throws {
        let yaml = """
            virtual_services:
              - name: dicom
                vip: 10.0.0.10
                ports: 104
                mode: l7-tcp
                persistence: {type: source-ip, timeout: 5m}
                health_check: {type: dicom-echo, calling_ae: LB, called_ae: EI-CORE}
                real_servers: [{address: 10.0.1.1}, {address: 10.0.1.2}]
              - name: hl7
                vip: 10.0.0.10
                ports: [2310]
                mode: l7-tcp
                health_check:
                  type: hl7-mllp
                  message: |
                    MSH|^~\\&|LB|LB|EI|EI|20260101||ADT^A01|1|P|2.5
                    EVN|A01|20260101
                real_servers: [{address: 10.0.1.1}]
              - name: ext
                vip: 10.0.0.10
                ports: [7443]
                mode: l4-nat
                health_check: {type: external, command: /usr/local/bin/check-core, interval: 10s}
                real_servers: [{address: 10.0.1.1}]
            """
        let report = check(yaml)
        #expect(report.isValid, "\(report.diagnostics)")
        let services = try #require(report.configuration?.virtualServices)
        #expect(services[0].ports == [PortRange(104)], "a single port needs no brackets")
        #expect(services[0].persistence == .sourceIP(timeout: .seconds(300)))
        #expect(services[0].healthCheck.probe == .dicomEcho(.init(callingAE: "LB", calledAE: "EI-CORE")))
        #expect(services[1].healthCheck.probe == .hl7MLLP(.init(message: "MSH|^~\\&|LB|LB|EI|EI|20260101||ADT^A01|1|P|2.5\rEVN|A01|20260101")),
                "segments are joined with carriage returns, as HL7 v2 wants")
        #expect(services[2].healthCheck.probe == .external(command: "/usr/local/bin/check-core"))
        #expect(services[2].healthCheck.timeout == .seconds(1))
    }

    @Test func equalFilesGiveEqualModels() {
        // Positions live in the source map, not the model: a reload of a reformatted file is no change.
        let compact = "virtual_services: [{name: a, vip: 10.0.0.1, ports: [80], mode: l4-nat, real_servers: [{address: 10.0.1.1}]}]"
        let spread = """
            # same service, another layout
            virtual_services:
              - name: a
                mode: l4-nat
                vip: 10.0.0.1
                ports:
                  - 80
                real_servers:
                  - address: 10.0.1.1
            """
        #expect(check(compact).configuration == check(spread).configuration)
        #expect(check(compact).configuration != nil)
    }

    @Test func ipAddressesAreCanonical() {
        #expect(IPAddress("10.020.1.1") == nil, "no octal-looking octets")
        #expect(IPAddress("::ffff:10.0.0.1")?.description == "::ffff:10.0.0.1")
        #expect(IPAddress("2001:DB8::1")?.description == "2001:db8::1")
        #expect(IPAddress("10.0.0.1")?.withPort(104) == "10.0.0.1:104")
        #expect(IPAddress("2001:db8::1")?.withPort(104) == "[2001:db8::1]:104")
    }

    /// lb writes IPv4 text itself (once per client connection, for X-Forwarded-For): it must be the C library's.
    @Test func ipv4TextIsTheCLibrarys() {
        // Every octet value in every position (the others 0, then 255), and a few whole addresses.
        var hosts: [UInt32] = [0x0A00_0001, 0x7F00_0001, 0xFFFF_FFFF, 0x0909_6464, 0xC0A8_6401]
        for shift: UInt32 in [0, 8, 16, 24] {
            for octet: UInt32 in 0...255 {
                hosts.append(octet << shift)
                hosts.append(octet << shift | (0xFFFF_FFFF & ~(0xFF << shift)))
            }
        }
        for host in hosts {
            var addr = in_addr(s_addr: host.bigEndian)
            var buffer = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
            _ = inet_ntop(AF_INET, &addr, &buffer, socklen_t(buffer.count))
            let expected = String(cString: buffer)
            #expect(IPAddress.v4(host).description == expected)
            #expect(IPAddress(expected) == .v4(host))
        }
    }

    @Test func unreadableFilesAreDistinctFromInvalidOnes() {
        #expect(throws: ConfigurationUnreadable.self) { try ConfigurationLoader.check(path: "/nonexistent/lb.yaml") }
        #expect(throws: ConfigurationUnreadable.self) { try ConfigurationLoader.check(path: "/") }
    }

    @Test func loadThrowsEveryError() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("lb-loader-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("bad.yaml").path
        try document(service(mode: "l7-tcp", extra: ["tls: {certificate: a, key: b}", "protocol: udp"])).write(toFile: file, atomically: true, encoding: .utf8)
        do {
            _ = try ConfigurationLoader.load(path: file)
            Issue.record("an invalid file must not load")
        } catch let error as ConfigurationError {
            #expect(error.diagnostics.errors.count == 2)
            #expect(error.description.contains("\(file):7:15: error: virtual service \"web\": protocol udp cannot be used with mode l7-tcp"))
        }
    }
}

@Suite("Bundled examples")
struct ExampleTests {
    static let examples = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("examples")

    /// The guide's VIP table: name, mode, port, persistence, check (lb checks DICOM and HL7 in their own protocols
    /// where the guide, written for appliances without such checks, uses an HTTP GET or a connect).
    static let guideTable: [(String, ForwardingMode, UInt16, String, String)] = [
        ("CoreServerClient-80", .l7HTTP, 80, "http-cookie", "http-get"),
        ("CoreServerDICOM-104", .l7TCP, 104, "none", "dicom-echo"),
        ("CoreServerDICOM-110", .l7TCP, 110, "none", "dicom-echo"),
        ("CoreServer-443", .l7HTTP, 81, "http-cookie", "https-get"),
        ("CoreServerHL7-2310", .l7TCP, 2310, "none", "hl7-mllp"),
        ("CoreServerHL7-2311", .l7TCP, 2311, "none", "hl7-mllp"),
        ("CoreServerDICOM-2762", .l7TCP, 2762, "none", "dicom-echo"),
        ("CoreServerClient-4447", .l7TCP, 4447, "none", "http-get"),
        ("CoreServerClient-5222", .l7TCP, 5222, "none", "connect"),
        ("CoreServerClient-5223", .l7TCP, 5223, "none", "connect"),
        ("CoreServerClient-7443", .l7TCP, 7443, "none", "connect"),
        ("CoreServerARR-6514", .l7TCP, 6514, "none", "connect"),
        ("CoreServerClient-8080", .l7HTTP, 8080, "http-cookie", "http-get"),
        ("CoreServerClient-8443", .l7HTTP, 8443, "source-ip", "https-get"),
        ("CoreServerClient-9080", .l7HTTP, 9080, "source-ip", "connect"),  // the guide names no check
        ("CoreServerClient-9081", .l7HTTP, 9081, "source-ip", "http-get"),
        ("CoreServerClient-10080", .l7HTTP, 10080, "source-ip", "http-get"),
        ("CoreServerClient-10123", .l7TCP, 10123, "source-ip", "connect"),
        ("CoreServerClient-10124", .l7TCP, 10124, "source-ip", "connect"),
        ("WebServer-withXero", .l7TCP, 443, "none", "https-get"),
        ("WebServer-withoutXero", .l7HTTP, 80, "http-cookie", "https-get"),
    ]

    @Test func agfaExampleMatchesTheGuide() throws {
        let report = try ConfigurationLoader.check(path: Self.examples.appendingPathComponent("agfa-enterprise-imaging.yaml").path)
        #expect(report.diagnostics.isEmpty, "\(report.diagnostics)")
        let services = try #require(report.configuration?.virtualServices)
        #expect(services.count == 21)
        for (service, row) in zip(services, Self.guideTable) {
            #expect(service.name == row.0)
            #expect(service.mode == row.1, "\(service.name)")
            #expect(service.ports == [PortRange(row.2)], "\(service.name)")
            #expect(service.persistence.typeName == row.3, "\(service.name)")
            #expect(service.healthCheck.probe.typeName == row.4, "\(service.name)")
            #expect(service.realServers.count == 2, "\(service.name)")
        }
        // Port 80 appears twice in the guide: the two services need distinct addresses.
        let port80 = services.filter { $0.ports.allPorts.contains(80) }
        #expect(Set(port80.map(\.address)).count == port80.count)
    }

    @Test func quickstartExampleIsOnLoopback() throws {
        let report = try ConfigurationLoader.check(path: Self.examples.appendingPathComponent("quickstart.yaml").path)
        #expect(report.diagnostics.isEmpty, "\(report.diagnostics)")
        let services = try #require(report.configuration?.virtualServices)
        #expect(Set(services.map(\.mode)) == [.l7HTTP, .l7TCP])
        #expect(services.allSatisfy { $0.address == IPAddress("127.0.0.1") && $0.ports.allPorts.allSatisfy { $0 > 1024 } })
        #expect(services.first { $0.mode == .l7HTTP }?.persistence == .httpCookie(name: "LBSRV"))
    }
}
