import Foundation
import LBConfig
import Testing

/// One bad config per rule of lb.yaml(5): each must be rejected with its message, line and column.
@Suite("Validation rules")
struct ValidationRuleTests {
    @Test func baselineServiceIsValid() {
        let report = check(document(service()))
        #expect(report.isValid, "\(report.diagnostics)")
        #expect(report.diagnostics.isEmpty)
    }

    @Test func duplicateServiceNames() {
        let yaml = document(service(name: "dicom", ports: "[104]", mode: "l7-tcp"),
                            service(name: "dicom", ports: "[11112]", mode: "l7-tcp"))
        let found = expectError(yaml, "the name \"dicom\" is already used by the virtual service at line 2",
                                at: "dicom\n    vip: 10.0.0.10\n    ports: [11112]", service: "dicom")
        // Spelled out once: the second service's name is on line 9, after "  - name: ".
        #expect(found?.location.line == 9)
        #expect(found?.location.column == 11)
    }

    @Test func sameAddressPortAndProtocolTwice() {
        let yaml = document(service(name: "a", ports: "[80, 443]"),
                            service(name: "b", ports: "[8080, \"440-450\"]", mode: "l7-tcp"))
        expectError(yaml, "10.0.0.10:443/tcp is already served by virtual service \"a\" (line 2)",
                    at: "\"440-450\"", service: "b")
    }

    @Test func samePortOnAnotherProtocolOrAddressIsFine() {
        let yaml = document(service(name: "a", ports: "[53]", mode: "l4-nat"),
                            service(name: "b", ports: "[53]", mode: "l4-nat", extra: ["protocol: udp"]),
                            service(name: "c", vip: "10.0.0.11", ports: "[53]", mode: "l4-nat"))
        #expect(check(yaml).isValid, "\(check(yaml).diagnostics)")
    }

    @Test func invalidVIPAddress() {
        expectError(document(service(vip: "10.0.0.300")), "\"10.0.0.300\" is not an IPv4 or IPv6 address",
                    at: "10.0.0.300", service: "web")
        expectError(document(service(vip: "0.0.0.0")), "vip 0.0.0.0 is not a unicast host address", at: "0.0.0.0")
        expectError(document(service(vip: "ff02::1")), "is not a unicast host address", at: "ff02::1")
        // The IPv4 wildcard, multicast and broadcast addresses in IPv4-mapped form, and the rest of 0.0.0.0/8.
        for vip in ["\"::ffff:0.0.0.0\"", "\"::ffff:224.0.0.1\"", "\"::ffff:255.255.255.255\"", "0.1.2.3", "239.1.1.1", "255.255.255.255"] {
            expectError(document(service(vip: vip)), "is not a unicast host address", at: vip)
        }
        expectError(document(service(vip: "\"::ffff:10.0.0.10\"")), "vip ::ffff:10.0.0.10 is an IPv4-mapped IPv6 address",
                    at: "\"::ffff", service: "web")
    }

    @Test func invalidRealServerAddress() {
        let yaml = document(service(servers: ["{name: rs1, address: ei-core-1.example}"]))
        expectError(yaml, "\"ei-core-1.example\" is not an IPv4 or IPv6 address", at: "ei-core-1.example", service: "web")
    }

    @Test func invalidPorts() {
        expectError(document(service(ports: "[0]")), "port 0 is outside 1...65535", at: "0]")
        expectError(document(service(ports: "[70000]")), "port 70000 is outside 1...65535", at: "70000")
        expectError(document(service(ports: "[http]")), "\"http\" is not a port or a port range", at: "http]")
        expectError(document(service(ports: "[\"10124-10123\"]")), "port range \"10124-10123\" runs backwards", at: "\"10124")
        expectError(document(service(ports: "[80, 80]")), "port 80 is listed twice", at: "80]")
        expectError(document(service(ports: "[\"1-2000\"]")), "2000 ports in one virtual service", at: "[\"1-2000\"]")
        expectError(document(service(ports: "[]")), "\"ports\" is empty", at: "[]")
        expectError(document(service(servers: ["{name: rs1, address: 10.0.1.1, port: 65536}"])),
                    "\"port\" is 65536, outside 1...65535", at: "65536")
    }

    @Test func portTranslationIsImpossibleInDirectRouting() {
        let yaml = document(service(name: "dicom-dr", ports: "[104]", mode: "l4-dr",
                                    servers: ["{name: pacs1, address: 10.0.1.1, port: 11112}"]))
        let found = expectError(yaml, "port translation is impossible in l4-dr: real server \"pacs1\" is given port 11112 but clients connect to port 104",
                                at: "11112", service: "dicom-dr")
        #expect(found?.hint?.contains("unchanged") == true, "the hint explains why")
        // The same port written out explicitly is not a translation.
        let same = document(service(ports: "[104]", mode: "l4-dr", servers: ["{name: pacs1, address: 10.0.1.1, port: 104}"]))
        #expect(check(same).isValid)
        // Translation is fine in NAT.
        let nat = document(service(ports: "[104]", mode: "l4-nat", servers: ["{name: pacs1, address: 10.0.1.1, port: 11112}"]))
        #expect(check(nat).isValid)
    }

    @Test func directRoutingFallbackCannotTranslateEither() {
        let yaml = document(service(ports: "[80]", mode: "l4-dr", extra: ["fallback: {address: 10.0.1.99, port: 8080}"]))
        expectError(yaml, "port translation is impossible in l4-dr: the fallback server is given port 8080", at: "8080")
    }

    @Test func cookiePersistenceNeedsHTTPMode() {
        let yaml = document(service(mode: "l7-tcp", extra: ["persistence: {type: http-cookie, cookie: SRV}"]))
        expectError(yaml, "http-cookie persistence needs mode l7-http, not l7-tcp", at: "http-cookie", service: "web")
        let l4 = document(service(mode: "l4-nat", extra: ["persistence: {type: http-cookie}"]))
        expectError(l4, "http-cookie persistence needs mode l7-http, not l4-nat", at: "http-cookie")
    }

    @Test func tlsNeedsHTTPMode() {
        let yaml = document(service(ports: "[443]", mode: "l7-tcp", extra: ["tls: {certificate: /etc/lb/a.pem, key: /etc/lb/a.key}"]))
        expectError(yaml, "tls (termination) needs mode l7-http, not l7-tcp", at: "tls:", service: "web")
    }

    @Test func udpNeedsLayer4() {
        let yaml = document(service(ports: "[514]", mode: "l7-tcp", extra: ["protocol: udp"]))
        expectError(yaml, "protocol udp cannot be used with mode l7-tcp", at: "udp", service: "web")
        #expect(check(document(service(ports: "[514]", mode: "l4-nat", extra: ["protocol: udp"]))).isValid)
    }

    @Test func realServersRequired() {
        expectError(document(service(servers: [])), "no real servers are listed", at: "[]", service: "web")
        let missing = "virtual_services:\n  - {name: web, vip: 10.0.0.10, ports: [80], mode: l7-http}\n"
        expectError(missing, "virtual service is missing the required key \"real_servers\"", at: "{name", service: "web")
    }

    @Test func healthCheckRanges() {
        func hc(_ body: String) -> String { document(service(extra: ["health_check: {type: http-get, \(body)}"])) }
        expectError(hc("rise: 0"), "\"rise\" is 0, outside 1...100", at: "0}")
        expectError(hc("fall: 101"), "\"fall\" is 101, outside 1...100", at: "101")
        expectError(hc("interval: 50ms"), "health check interval 50ms is out of range", at: "50ms")
        expectError(hc("interval: 2h"), "\"interval\" has an unknown unit \"h\"", at: "2h")
        expectError(hc("interval: 61m"), "health check interval 61m is out of range", at: "61m")
        expectError(hc("timeout: 5ms"), "health check timeout 5ms is too short", at: "5ms")
        expectError(hc("port: 0"), "\"port\" is 0, outside 1...65535", at: "0}")
    }

    @Test func timeoutMustBeShorterThanInterval() {
        let yaml = document(service(extra: ["health_check:", "  type: http-get", "  interval: 3s", "  timeout: 5s"]))
        expectError(yaml, "health check timeout 5s must be shorter than the interval 3s", at: "5s", service: "web")
        let equal = document(service(extra: ["health_check: {type: connect, interval: 1s, timeout: 1s}"]))
        expectError(equal, "health check timeout 1s must be shorter than the interval 1s", at: "1s}")
    }

    @Test func shortIntervalGetsAProportionateDefaultTimeout() throws {
        let report = check(document(service(extra: ["health_check: {type: connect, interval: 500ms}"])))
        let check = try #require(report.configuration?.virtualServices.first?.healthCheck)
        #expect(check.timeout == .milliseconds(250))
    }

    @Test func durationsNeedAUnit() {
        let yaml = document(service(extra: ["persistence: {type: source-ip, timeout: 300}"]))
        let found = expectError(yaml, "\"timeout\" needs a unit: \"300\" could mean milliseconds or seconds", at: "300")
        #expect(found?.hint?.contains("2s") == true)
    }

    @Test func weightsOutOfRange() {
        let yaml = document(service(servers: ["{name: rs1, address: 10.0.1.1, weight: 65536}"]))
        expectError(yaml, "\"weight\" is 65536, outside 0...65535", at: "65536", service: "web")
        let negative = document(service(servers: ["{name: rs1, address: 10.0.1.1, weight: -1}"]))
        expectError(negative, "\"weight\" is -1, outside 0...65535", at: "-1")
        #expect(check(document(service(servers: ["{name: a, address: 10.0.1.1, weight: 0}", "{name: b, address: 10.0.1.2, weight: 65535}"]))).isValid)
    }

    /// The guide's netfilter rule: one RIP:PORT cannot sit behind a Layer 7 VIP and an l4-snat VIP.
    @Test func layer7AndSNATMustNotShareARealServerPort() {
        let yaml = document(
            service(name: "CoreServerClient-8080", ports: "[8080]", mode: "l7-http",
                    servers: ["{name: core1, address: 10.20.1.11}"]),
            service(name: "Viewer-SNAT", vip: "10.20.0.30", ports: "[80]", mode: "l4-snat",
                    servers: ["{name: core1, address: 10.20.1.11, port: 8080}"]))
        let found = expectError(yaml,
                                "real server 10.20.1.11:8080 is used by this l4-snat virtual service and by the l7-http virtual service \"CoreServerClient-8080\" (line 2)",
                                at: "{name: core1, address: 10.20.1.11, port: 8080}", service: "Viewer-SNAT")
        #expect(found?.description.contains("Viewer-SNAT") == true && found?.description.contains("CoreServerClient-8080") == true)
    }

    @Test func snatConflictSeesDefaultedPortsAndFallbacks() {
        // The L7 side reaches 10.0.1.1:104 through its fallback, the SNAT side through the defaulted port.
        let yaml = document(
            service(name: "l7", ports: "[11112]", mode: "l7-tcp", extra: ["fallback: {address: 10.0.1.1, port: 104}"]),
            service(name: "snat", vip: "10.0.0.20", ports: "[104]", mode: "l4-snat",
                    servers: ["{name: pacs, address: 10.0.1.1}"]))
        expectError(yaml, "real server 10.0.1.1:104 is used by this l4-snat virtual service and by the l7-tcp virtual service \"l7\"",
                    at: "{name: pacs", service: "snat")
        // Another port on the same host is no conflict, nor is a UDP SNAT service.
        let fine = document(
            service(name: "l7", ports: "[11112]", mode: "l7-tcp", servers: ["{name: pacs, address: 10.0.1.1}"]),
            service(name: "snat", vip: "10.0.0.20", ports: "[104]", mode: "l4-snat", servers: ["{name: pacs, address: 10.0.1.1}"]),
            service(name: "snat-udp", vip: "10.0.0.21", ports: "[11112]", mode: "l4-snat", extra: ["protocol: udp"],
                    servers: ["{name: pacs, address: 10.0.1.1}"]))
        #expect(check(fine).isValid, "\(check(fine).diagnostics)")
    }

    @Test func unknownKeysAreErrorsWithSuggestions() {
        let yaml = document(service(extra: ["helth_check: {type: connect}"]))
        let found = expectError(yaml, "unknown key \"helth_check\" in virtual service; did you mean \"health_check\"?",
                                at: "helth_check", service: "web")
        #expect(found?.hint?.contains("health_check") == true)
        expectError(document(service(extra: ["health_check: {type: connect, intervall: 2s}"])),
                    "unknown key \"intervall\" in health_check; did you mean \"interval\"?", at: "intervall")
        expectError(document(service(servers: ["{name: rs1, adress: 10.0.1.1}"])),
                    "unknown key \"adress\" in real server; did you mean \"address\"?", at: "adress")
        expectError("virtual_service:\n  - name: x\n", "unknown key \"virtual_service\" in the config file; did you mean \"virtual_services\"?",
                    at: "virtual_service")
    }

    @Test func misspelledValuesAreErrorsWithSuggestions() {
        expectError(document(service(mode: "l7-htp")), "\"l7-htp\" is not a valid mode; did you mean \"l7-http\"?", at: "l7-htp")
        expectError(document(service(extra: ["scheduler: round-robin"])), "did you mean \"roundrobin\"?", at: "round-robin")
    }

    @Test func checkKeysMustMatchTheCheckType() {
        expectError(document(service(extra: ["health_check: {type: connect, path: /status}"])),
                    "\"path\" does not apply to health check type connect", at: "path")
        expectError(document(service(extra: ["health_check: {type: none, interval: 2s}"])),
                    "\"interval\" does not apply when the health check type is none", at: "interval")
        expectError(document(service(extra: ["persistence: {type: none, timeout: 30s}"])),
                    "\"timeout\" does not apply to persistence type none", at: "timeout")
    }

    @Test func protocolCheckSettings() {
        expectError(document(service(extra: ["health_check: {type: dicom-echo, called_ae: THIS-TITLE-IS-TOO-LONG}"])),
                    "\"THIS-TITLE-IS-TOO-LONG\" is not a valid DICOM AE title", at: "THIS-TITLE")
        expectError(document(service(extra: ["health_check: {type: hl7-mllp, message: \"PID|1\"}"])),
                    "must start with an MSH segment", at: "\"PID|1\"")
        expectError(document(service(extra: ["health_check: {type: external}"])),
                    "external health_check is missing the required key \"command\"", at: "{type: external}")
        expectError(document(service(extra: ["health_check: {type: http-get, expect_status: [200, 999]}"])),
                    "\"expect_status\" is 999, outside 100...599", at: "999")
        expectError(document(service(extra: ["health_check: {type: http-get, path: status}"])),
                    "health check path \"status\" must start with /", at: "status}")
    }

    @Test func forwardedForNeedsHTTPMode() {
        expectError(document(service(mode: "l7-tcp", extra: ["forwarded_for: true"])),
                    "forwarded_for needs mode l7-http, not l7-tcp", at: "forwarded_for")
    }

    @Test func maglevIsLayer4Only() {
        expectError(document(service(mode: "l7-tcp", extra: ["scheduler: maglev"])),
                    "the maglev scheduler is available for Layer 4 modes only", at: "maglev")
        #expect(check(document(service(mode: "l4-nat", extra: ["scheduler: maglev"]))).isValid)
    }

    @Test func layer4CannotMixAddressFamilies() {
        let yaml = document(service(mode: "l4-nat", servers: ["{name: rs1, address: 2001:db8::11}"]))
        expectError(yaml, "real server 2001:db8::11 is ipv6 but the VIP 10.0.0.10 is ipv4", at: "2001:db8::11")
        // The proxy can bridge families.
        #expect(check(document(service(mode: "l7-http", servers: ["{name: rs1, address: 2001:db8::11}"]))).isValid)
    }

    @Test func realServersMustBeDistinct() {
        expectError(document(service(servers: ["{name: rs1, address: 10.0.1.1}", "{name: rs1, address: 10.0.1.2}"])),
                    "real server name \"rs1\" is already used at line 7", at: "rs1, address: 10.0.1.2")
        expectError(document(service(servers: ["{name: a, address: 10.0.1.1, port: 81}", "{name: b, address: 10.0.1.1, port: 81}"])),
                    "real server 10.0.1.1:81 is listed twice (also at line 7)", at: "{name: b")
    }

    @Test func invalidNames() {
        expectError(document(service(name: "\"core server\"")), "\"core server\" is not a valid name", at: "\"core server\"")
    }

    @Test func missingRequiredKeys() {
        expectError("virtual_services:\n  - {name: web, ports: [80], mode: l7-http, real_servers: [{address: 10.0.1.1}]}\n",
                    "virtual service is missing the required key \"vip\"", at: "{name", service: "web")
        expectError("virtual_services:\n  - {name: web, vip: 10.0.0.1, ports: [80], real_servers: [{address: 10.0.1.1}]}\n",
                    "virtual service is missing the required key \"mode\"", at: "{name")
    }

    @Test func yamlSyntaxAndShapeErrors() {
        expectError("virtual_services:\n  - name: web\n    vip: [10.0.0.1\n", "YAML syntax", at: nil)
        expectError("virtual_services:\n  - name: a\n    name: b\n", "key \"name\" appears twice in the same mapping", at: "name: a")
        expectError("", "the config file is empty", at: "")
        expectError("virtual_services: 3\n", "\"virtual_services\" must be a list", at: "3")
        expectError("virtual_services:\n  - just-a-string\n", "virtual service must be a mapping", at: "just-a-string")
    }

    @Test func allErrorsAreReportedAtOnce() {
        let yaml = document(
            service(name: "a", mode: "l7-tcp", extra: ["persistence: {type: http-cookie}", "tls: {certificate: c, key: k}"],
                    servers: ["{name: rs1, address: 10.0.1.1, weight: 99999}"]),
            service(name: "b", vip: "not-an-ip"),
            service(name: "a", vip: "10.0.0.11", ports: "[104]", mode: "l4-dr", servers: ["{name: rs1, address: 10.0.1.1, port: 11112}"]))
        let report = check(yaml)
        let messages = report.diagnostics.errors.map(\.message)
        #expect(messages.contains { $0.contains("http-cookie persistence needs mode l7-http") })
        #expect(messages.contains { $0.contains("tls (termination) needs mode l7-http") })
        #expect(messages.contains { $0.contains("\"weight\" is 99999") })
        #expect(messages.contains { $0.contains("\"not-an-ip\" is not an IPv4 or IPv6 address") })
        #expect(messages.contains { $0.contains("the name \"a\" is already used") })
        #expect(messages.contains { $0.contains("port translation is impossible in l4-dr") })
        // Sorted in file order, so the operator can work top to bottom.
        let lines = report.diagnostics.map(\.location.line)
        #expect(lines == lines.sorted())
    }

    // MARK: Warnings: legal but risky

    @Test func sourceIPPersistenceWithOneServerWarns() {
        let yaml = document(service(extra: ["persistence: {type: source-ip}"], servers: ["{name: rs1, address: 10.0.1.1}"]))
        expectWarning(yaml, "source-ip persistence with a single real server has no effect", at: "{type: source-ip}", service: "web")
        #expect(check(yaml).isValid, "warnings do not reject a config")
    }

    @Test func directRoutingVIPSharedWithLayer7Warns() {
        let yaml = document(service(name: "web", ports: "[80]", mode: "l7-http"),
                            service(name: "dicom-dr", ports: "[104]", mode: "l4-dr"))
        expectWarning(yaml, "VIP 10.0.0.10 is used for l4-dr and by the l7-http virtual service \"web\"",
                      at: "10.0.0.10\n    ports: [104]", service: "dicom-dr")
    }

    @Test func missingHealthCheckAndZeroWeightsWarn() {
        expectWarning(document(service(extra: ["health_check: {type: none}"])),
                      "no health check: a failed real server keeps receiving clients", at: "{type: none}")
        expectWarning(document(service(servers: ["{name: a, address: 10.0.1.1, weight: 0}"])),
                      "every real server has weight 0", at: "- {name: a, address: 10.0.1.1, weight: 0}")
    }
}

@Suite("Proxy timeouts and limits")
struct ProxySettingsTests {
    @Test func readAndDefaulted() throws {
        let yaml = document(service(extra: ["timeouts: {connect: 2s, idle: 30m, header: 5s, body: 1m}",
                                            "limits: {max_connections: 500, max_header_bytes: 16384, max_headers: 50}"]))
        let configured = try #require(check(yaml).configuration?.virtualServices.first)
        #expect(configured.timeouts == ProxyTimeouts(connect: .seconds(2), idle: .seconds(1800), header: .seconds(5), body: .seconds(60)))
        #expect(configured.limits == ProxyLimits(maxConnections: 500, maxHeaderBytes: 16384, maxHeaders: 50))
        let plain = try #require(check(document(service())).configuration?.virtualServices.first)
        #expect(plain.timeouts == .default && plain.limits == .default)
        #expect(plain.limits.maxHeaderBytes == 32 * 1024)
    }

    @Test func rangesAndModes() {
        expectError(document(service(extra: ["timeouts: {connect: 5m}"])), "connect timeout 5m is out of range", at: "5m")
        expectError(document(service(extra: ["limits: {max_header_bytes: 100}"])), "\"max_header_bytes\" is 100, outside 1024...1048576", at: "100}")
        expectError(document(service(mode: "l4-nat", extra: ["timeouts: {idle: 5m}"])),
                    "timeouts apply to lbd's proxy, not to mode l4-nat", at: "timeouts")
        expectError(document(service(mode: "l7-tcp", extra: ["timeouts: {idle: 5m, header: 5s}"])),
                    "the header timeout applies to HTTP requests, not to mode l7-tcp", at: "header")
        expectError(document(service(mode: "l7-tcp", extra: ["limits: {max_headers: 20}"])),
                    "max_headers applies to HTTP requests, not to mode l7-tcp", at: "max_headers")
        expectError(document(service(extra: ["timeouts: {conect: 5s}"])), "did you mean \"connect\"?", at: "conect")
    }

    @Test func layer4KernelSettings() throws {
        let yaml = document(service(mode: "l4-snat", extra: [
            "interface: eth1", "on_server_failure: remove",
            "persistence: {type: source-ip, timeout: 600s, netmask: 255.255.255.0}",
        ])) + "ipvs:\n  timeouts: {tcp: 15m, tcp_fin: 2m, udp: 5m}\n  sync_daemon: {role: master, interface: eth2, sync_id: 7}\n"
        let report = check(yaml)
        #expect(report.isValid, "\(report.diagnostics)")
        let configuration = try #require(report.configuration)
        let vip = try #require(configuration.virtualServices.first)
        #expect(vip.interface == "eth1")
        #expect(vip.onServerFailure == .remove)
        #expect(vip.persistenceNetmask == IPAddress("255.255.255.0"))
        #expect(configuration.ipvs.tcpTimeout == .seconds(900))
        #expect(configuration.ipvs.syncDaemon == .init(role: .master, interface: "eth2", syncID: 7))
        // Defaults: drain, the kernel's own timeouts, no sync daemon, the address left to others.
        let plain = try #require(check(document(service(mode: "l4-nat"))).configuration)
        #expect(plain.virtualServices.first?.onServerFailure == .drain)
        #expect(plain.virtualServices.first?.interface == nil)
        #expect(plain.ipvs == IPVSSettings())
    }

    @Test func layer4KernelSettingsRejected() {
        expectError(document(service(extra: ["on_server_failure: remove"])),
                    "on_server_failure applies to Layer 4 modes, not to l7-http", at: "on_server_failure")
        expectError(document(service(mode: "l4-nat", extra: ["on_server_failure: delete"])),
                    "\"delete\" is not a valid on_server_failure", at: "delete")
        expectError(document(service(mode: "l4-nat", extra: ["interface: eth0:1"])),
                    "\"eth0:1\" is not a network interface name", at: "eth0:1")
        expectError(document(service(mode: "l4-nat", extra: ["persistence: {type: source-ip, netmask: 255.0.255.0}"])),
                    "netmask 255.0.255.0 is not a contiguous IPv4 netmask", at: "255.0.255.0")
        expectError(document(service(mode: "l7-tcp", extra: ["persistence: {type: source-ip, netmask: 255.255.0.0}"])),
                    "a persistence netmask needs a Layer 4 mode and an IPv4 VIP", at: "netmask")
        expectError(document(service(mode: "l4-nat")) + "ipvs:\n  timeouts: {tcp: 0s}\n",
                    "ipvs timeout tcp 0s is out of range", at: "0s")
        expectError(document(service(mode: "l4-nat")) + "ipvs:\n  sync_daemon: {role: primary, interface: eth2}\n",
                    "\"primary\" is not a valid role", at: "primary")
    }

    @Test func transparencyIsForLayer7IPv4() throws {
        let ok = check(document(service(mode: "l7-tcp", extra: ["transparent: true"])))
        #expect(ok.isValid, "\(ok.diagnostics)")
        #expect(ok.configuration?.virtualServices.first?.transparent == true)
        expectError(document(service(mode: "l4-snat", extra: ["transparent: true"])),
                    "transparent applies to Layer 7 modes, not to l4-snat", at: "transparent")
        expectError(document(service(vip: "2001:db8::10", mode: "l7-tcp", extra: ["transparent: true"],
                                     servers: ["{name: rs1, address: \"2001:db8::11\"}"])),
                    "transparent is available for IPv4 VIPs only", at: "transparent")
    }
}

@Suite("External check rules")
struct ExternalCheckRuleTests {
    @Test func nulInCommandIsRefusedWithItsLine() {
        let yaml = document(service(extra: ["health_check: {type: external, command: \"check\\0 --all\"}"]))
        expectError(yaml, "the external check command contains a NUL byte", at: "\"check", service: "web")
    }

    @Test func userIsAnUnprivilegedName() {
        expectError(document(service(extra: ["health_check: {type: external, command: true, user: root}"])),
                    "external checks do not run as root", at: "root}", service: "web")
        expectError(document(service(extra: ["health_check: {type: external, command: true, user: \"a b\"}"])),
                    "\"a b\" is not a user name", at: "\"a b\"", service: "web")
        let report = check(document(service(extra: ["health_check: {type: external, command: true, user: lbcheck}"])))
        #expect(report.configuration?.virtualServices.first?.healthCheck.probe == .external(command: "true", user: "lbcheck"))
        let defaulted = check(document(service(extra: ["health_check: {type: external, command: true}"])))
        #expect(defaulted.configuration?.virtualServices.first?.healthCheck.probe == .external(command: "true", user: "nobody"))
    }
}

@Suite("Found by fuzzing")
struct FuzzRegressionTests {
    /// scripts/fuzz config: a syntax error at the end of a file without a final newline was placed on a line past
    /// the end of the file.
    @Test func syntaxErrorAtTheEndPointsInsideTheFile() throws {
        let base64 = "IyBBIHNtYWxuIGNvbmZpZyBvbiBsb29wYmFjayBmb3IgdHJ5aW5nIGxiIG9uIG9uZSBtYWNoaW5lIChubyByb290LCBubyByZWFsIG5ldHdvcmsgbmVlZGVkKS4K/////////////////////////////3ZpcnR1YWxfc2VydmljZXM6CiAgIyBXZWI6IEhUVFAgbW9kZSwgZWFjaCBicm93c2VyIHBpbm5lZCB0byBvbmUgc2VydmVyIGJ5IGEgY29va2llLgogIC0gbmFtZTogZGVtby13ZWIKICAgIHZpcDojIEEgcyBtMQ=="
        let data = try #require(Data(base64Encoded: base64))
        let text = String(decoding: data, as: UTF8.self)
        let report = ConfigurationLoader.check(yaml: text, file: "fuzz.yaml")
        let lines = text.sourceLines.count
        #expect(!report.isValid)
        #expect(report.diagnostics.allSatisfy { (1...lines).contains($0.location.line) }, "\(report.diagnostics)")
    }

    /// scripts/fuzz config (a CI run): a lone carriage return inside a comment made libyaml count one line more than
    /// the file has; every later line number was off by one.
    @Test func lineBreaksThatEditorsDoNotShowAreRefusedWhereTheyAre() throws {
        let base64 = "IyBBIHNtYWxuIGNvbmZgZyBvbiBsb29wYmFjayBmb3IgdHJ5aW5nIGxiIG9uIG9uZSBtYWNoaW5lIChubyByb290LCBubyByZWFydmljZXM6CiAgIyBXZWI6IA1IVFRQMQ=="
        let fuzzed = String(decoding: try #require(Data(base64Encoded: base64)), as: UTF8.self)
        let report = ConfigurationLoader.check(yaml: fuzzed, file: "fuzz.yaml")
        #expect(!report.isValid)
        #expect(report.diagnostics.map(\.location.line) == [2], "\(report.diagnostics)")
        #expect(report.diagnostics.first?.message.contains("carriage return") == true)

        let valid = document(service())
        for (separator, name) in [("\r", "carriage return"), ("\u{2028}", "U+2028"), ("\u{85}", "U+0085")] {
            let text = valid.replacingOccurrences(of: "real_servers:", with: "real_servers: # a\(separator)b")
            let diagnostic = try #require(check(text).diagnostics.first)
            #expect(diagnostic.message.contains(name))
            let expected = try #require(position(of: "# a", in: text))
            #expect(diagnostic.location.line == expected.line)
            #expect(diagnostic.location.column == expected.column + 3)
        }
        // Windows line ends are ordinary line ends.
        let windows = valid.replacingOccurrences(of: "\n", with: "\r\n")
        #expect(check(windows).isValid, "\(check(windows).diagnostics)")
    }

    /// scripts/fuzz config (a CI run): Swift reads CR LF as one Character, so `split(separator: "\n")` counted a
    /// Windows file as one line. The loader then moved every syntax error past line 1 to the end of line 1, and the
    /// fuzz target called a right line number "outside the file". Lines are counted at line feeds now.
    @Test func aWindowsFileNumbersItsLinesAsAnEditorDoes() throws {
        let unix = "virtual_services:\n  - name: web\n    vip: 10.0.0.1\n    ports: [80, 443\n    mode: l7-http\n"
        let windows = unix.replacingOccurrences(of: "\n", with: "\r\n")
        let unixError = try #require(check(unix).diagnostics.errors.first)
        let windowsError = try #require(check(windows).diagnostics.errors.first)
        #expect(unixError.location.line > 1)
        #expect(windowsError.location.line == unixError.location.line, "\(windowsError)")
        #expect(windowsError.location.column == unixError.location.column, "\(windowsError)")
        #expect(windows.sourceLines.count == unix.sourceLines.count)
        #expect(windows.sourceLines.joined(separator: "\n") == windows)

        // The input that CI's fuzz run stopped on: a lone CR on line 5 of a file that also has CR LF line ends.
        let base64 = "aSB8IAAAAG1jOiANClRUIyBBIHNtYWxuIGNvbmZgAAAAAAAAACBwYmFjayBmb3Igio2GlpGY35NuZSAobm8gcm9vdCwgbm8gcmVhcnYjIEFHRkEgSGVhbHRoQ2FyZSBFbnRlcnByaXNlIEltYWdpbmcgYmVoaW5kIGxiOiB0aCB5b3MAAAAAbWM6IA0KVFR1cnMuCiMKIyAgIDEwLjIwAAAAAC4wLjEwICAgdGhlY29yIGUgc2VydmUgVw1IMg=="
        let fuzzed = String(decoding: try #require(Data(base64Encoded: base64)), as: UTF8.self)
        let report = ConfigurationLoader.check(yaml: fuzzed, file: "fuzz.yaml")
        #expect(fuzzed.sourceLines.count == 5)
        #expect(report.diagnostics.map(\.location.line) == [5], "\(report.diagnostics)")
        #expect(report.diagnostics.first?.message.contains("carriage return") == true)
    }
}
