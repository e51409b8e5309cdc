import LBConfig
import Testing
@testable import LBIPVS

@Suite("IPVS planner (pure)")
struct IPVSPlannerTests {
    func services(_ yaml: String) throws -> [VirtualService] {
        let report = ConfigurationLoader.check(yaml: "virtual_services:\n" + yaml, file: "t.yaml")
        return try #require(report.configuration?.virtualServices)
    }

    let config = """
          - name: dicom-nat
            vip: 10.20.0.30
            ports: [104, 11112]
            mode: l4-nat
            scheduler: weighted-leastconn
            persistence: {type: source-ip, timeout: 600s}
            real_servers:
              - {name: core-1, address: 10.20.1.11, port: 11112, weight: 100}
              - {name: core-2, address: 10.20.1.12, port: 11112, weight: 50}
          - name: web-dr
            vip: 10.20.0.31
            ports: [80]
            mode: l4-dr
            real_servers: [{name: web-1, address: 10.20.2.21}]
          - name: proxied
            vip: 10.20.0.10
            ports: [8080]
            mode: l7-http
            real_servers: [{address: 10.20.1.11}]
        """

    @Test func desiredTableFollowsTheConfig() throws {
        let table = IPVSPlanner.desiredTable(for: try services(config))
        #expect(table.services.count == 3, "two ports of the NAT service and the DR one; the l7 service is not IPVS's")
        let nat = try #require(table.services.values.first { $0.service.port == 104 })
        #expect(nat.service.scheduler == "wlc")
        #expect(nat.service.persistenceTimeout == 600)
        #expect(nat.destinations.map(\.forwarding) == [.masquerade, .masquerade])
        #expect(nat.destinations.map(\.port) == [11112, 11112], "port translation in NAT")
        let dr = try #require(table.services.values.first { $0.service.port == 80 })
        #expect(dr.destinations == [IPVSDestination(address: IPAddress("10.20.2.21")!, port: 80, forwarding: .directRoute, weight: 100)])
        #expect(dr.service.persistenceTimeout == nil)
    }

    @Test func fromEmptyEverythingIsAdded() throws {
        let desired = IPVSPlanner.desiredTable(for: try services(config))
        let (operations, foreign) = IPVSPlanner.plan(from: IPVSTable(), to: desired, owned: [])
        #expect(operations.filter { if case .addService = $0 { return true } else { return false } }.count == 3)
        #expect(operations.count == 3 + 5)
        #expect(foreign.isEmpty)
    }

    @Test func aWeightChangeIsOneSetDest() throws {
        let all = try services(config)
        let actual = IPVSPlanner.desiredTable(for: all)
        let desired = IPVSPlanner.desiredTable(for: all, weights: ["web-dr": ["web-1": 0]])
        let (operations, _) = IPVSPlanner.plan(from: actual, to: desired, owned: Set(actual.services.keys))
        let dr = try #require(desired.services.values.first { $0.service.port == 80 })
        #expect(operations == [.updateDestination(dr.destinations[0], dr.service)])
        #expect(IPVSPlanner.plan(from: desired, to: desired, owned: []).operations.isEmpty, "converged: nothing to send")
    }

    @Test func foreignServicesAreLeftAloneAndReported() throws {
        let desired = IPVSPlanner.desiredTable(for: try services(config))
        let stranger = IPVSService(transport: .tcp, address: IPAddress("192.0.2.1")!, port: 25, scheduler: "rr")
        let ours = IPVSService(transport: .udp, address: IPAddress("10.20.0.99")!, port: 514, scheduler: "rr")
        var actual = desired
        actual.services[IPVSServiceKey(stranger)] = (stranger, [])
        actual.services[IPVSServiceKey(ours)] = (ours, [])
        let (operations, foreign) = IPVSPlanner.plan(from: actual, to: desired, owned: [IPVSServiceKey(ours)])
        #expect(operations == [.deleteService(ours)], "only what lb created is removed")
        #expect(foreign == [IPVSServiceKey(stranger)])
    }

    @Test func changedSettingsAndRemovedServersAreEdits() throws {
        let before = IPVSPlanner.desiredTable(for: try services(config))
        let after = IPVSPlanner.desiredTable(for: try services(config
            .replacingOccurrences(of: "weighted-leastconn", with: "roundrobin")
            .replacingOccurrences(of: "      - {name: core-2, address: 10.20.1.12, port: 11112, weight: 50}\n", with: "")))
        let (operations, _) = IPVSPlanner.plan(from: before, to: after, owned: Set(before.services.keys))
        #expect(operations.filter { if case .updateService = $0 { return true } else { return false } }.count == 2)
        #expect(operations.filter { if case .deleteDestination(let d, _) = $0 { return d.address == IPAddress("10.20.1.12") } else { return false } }.count == 2)
        #expect(operations.count == 4)
    }
}
