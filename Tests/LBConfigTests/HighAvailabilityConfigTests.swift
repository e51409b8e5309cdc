import LBConfig
import Testing

@Suite("The high_availability section")
struct HighAvailabilityConfigTests {
    static let services = """
        virtual_services:
          - name: PACS
            vip: 10.20.0.40
            ports: [104]
            mode: l4-nat
            real_servers:
              - {name: core-1, address: 10.20.1.11}

        """

    static func pair(_ body: String = """
          virtual_router_id: 51
          advert_interval: 500ms
          preempt: true
          nodes:
            - {name: lb-1, address: 10.20.0.2, interface: eth0, priority: 150}
            - {name: lb-2, address: 10.20.0.3, interface: eth0, priority: 100}
          floating_addresses:
            - {address: 10.20.1.1/24, interface: eth1}
          connection_sync: {interface: eth0}
          peer_port: 9988
          peer_secret_file: /etc/lb/peer.key
        """) -> String {
        services + "high_availability:\n" + body + "\n"
    }

    @Test func everyFieldIsRead() throws {
        let report = check(Self.pair())
        #expect(report.diagnostics.isEmpty, "\(report.diagnostics)")
        let ha = try #require(report.configuration?.highAvailability)
        #expect(ha.virtualRouterID == 51)
        #expect(ha.advertInterval == .milliseconds(500))
        #expect(ha.preempt)
        #expect(ha.nodes.map(\.name) == ["lb-1", "lb-2"])
        #expect(ha.nodes[1] == .init(name: "lb-2", address: IPAddress("10.20.0.3")!, interface: "eth0", priority: 100))
        #expect(ha.floatingAddresses == [.init(address: IPAddress("10.20.1.1")!, prefixLength: 24, interface: "eth1")])
        #expect(ha.connectionSyncInterface == "eth0")
        #expect(ha.peerPort == 9988)
        #expect(ha.peerSecretFile == "/etc/lb/peer.key")
        #expect(ha.peer(of: "lb-1")?.name == "lb-2")
        let shown = ConfigurationView.table(try #require(report.configuration))
        #expect(shown.contains("high availability: virtual_router_id 51, advert_interval 500ms, preempt yes"))
        #expect(shown.contains("node lb-2: 10.20.0.3 on eth0, priority 100"))
        #expect(shown.contains("floating address 10.20.1.1/24 on eth1"))
    }

    @Test func defaults() throws {
        let yaml = Self.services + """
            high_availability:
              virtual_router_id: 7
              nodes:
                - {name: a, address: 10.20.0.2, interface: eth0, priority: 150}
                - {name: b, address: 10.20.0.3, interface: eth0, priority: 100}
              peer_secret_file: /etc/lb/peer.key
            """
        let ha = try #require(check(yaml).configuration?.highAvailability)
        #expect(ha.advertInterval == .seconds(1))
        #expect(!ha.preempt, "a recovered node does not take the master role back by itself")
        #expect(ha.connectionSyncInterface == nil)
        #expect(ha.peerPort == 9977)
        #expect(ha.floatingAddresses.isEmpty)
    }

    @Test func mistakesAreReportedWhereTheyAre() {
        let base = Self.services + """
            high_availability:
              virtual_router_id: 51
              nodes:
                - {name: lb-1, address: 10.20.0.2, interface: eth0, priority: 150}
                - {name: lb-2, address: 10.20.0.3, interface: eth0, priority: 100}
              peer_secret_file: /etc/lb/peer.key
            """
        expectError(base.replacingOccurrences(of: "virtual_router_id: 51", with: "virtual_router_id: 300"),
                    "virtual_router_id", at: "300")
        expectError(base.replacingOccurrences(of: "    - {name: lb-2, address: 10.20.0.3, interface: eth0, priority: 100}\n", with: ""),
                    "exactly two nodes, found 1", at: "- {name: lb-1")
        expectError(base.replacingOccurrences(of: "name: lb-2", with: "name: lb-1"), "both nodes are named \"lb-1\"", at: "lb-1, address: 10.20.0.3")
        expectError(base.replacingOccurrences(of: "10.20.0.3", with: "10.20.0.2"), "both nodes have the address", at: "10.20.0.2, interface: eth0, priority: 100")
        expectError(base.replacingOccurrences(of: "10.20.0.3", with: "2001:db8::3"), "different families", at: "2001:db8::3")
        expectError(base.replacingOccurrences(of: "10.20.0.3", with: "10.20.0.40"), "the VIP 10.20.0.40 is a node's own address", at: "10.20.0.40")
        expectError(base.replacingOccurrences(of: "peer_secret_file: /etc/lb/peer.key", with: "peer_secret_file: peer.key"),
                    "is not an absolute path", at: "peer.key")
        expectError(base.replacingOccurrences(of: "  peer_secret_file: /etc/lb/peer.key", with: ""), "peer_secret_file", at: nil)
        expectError(base.replacingOccurrences(of: "priority: 100}", with: "priority: 100, weight: 3}"), "weight", at: nil)
        expectError(base + "\n  advert_interval: 5ms", "advert_interval 5ms is out of range", at: "5ms")
        expectError(base + "\n  floating_addresses: [{address: 10.20.1.1/33, interface: eth1}]", "prefix length", at: "10.20.1.1/33")
        expectError(base + "\n  floating_addresses: [{address: 10.20.0.40/24, interface: eth1}]", "is also a VIP", at: "10.20.0.40/24")
        expectError(base + "\nipvs:\n  sync_daemon: {role: master, interface: eth0}", "cannot be set together with high_availability", at: "{role: master")
    }
}
