import LBConfig
import LBRuntime
import Testing

/// The one membership rule and the runtime state it reads, as a table.
@Suite("Effective membership")
struct MembershipTests {
    static func service(onFailure: String = "drain", weights: [Int] = [100, 50], fallback: Bool = false) throws -> VirtualService {
        var yaml = """
            virtual_services:
              - name: dicom
                vip: 10.0.0.40
                ports: [104]
                mode: l4-nat
                on_server_failure: \(onFailure)
                health_check: {type: connect}
                real_servers:

            """
        for (index, weight) in weights.enumerated() {
            yaml += "      - {name: core-\(index + 1), address: 10.0.1.\(index + 1), weight: \(weight)}\n"
        }
        if fallback { yaml += "    fallback: {address: 10.0.1.99}\n" }
        let report = ConfigurationLoader.check(yaml: yaml, file: "test.yaml")
        guard let service = report.configuration?.virtualServices.first else {
            throw MembershipTestError(description: "\(report.diagnostics)")
        }
        return service
    }

    @Test(arguments: [
        // healthy, admin, on_server_failure → weight, present, reason
        (true, AdminState.online, "drain", 100, true, Membership.Reason.serving),
        (true, .drain, "drain", 0, true, .drain),
        (true, .halt, "drain", 0, false, .halt),
        (false, .online, "drain", 0, true, .down),
        (false, .online, "remove", 0, false, .down),
        (false, .drain, "drain", 0, true, .down),
        (false, .halt, "remove", 0, false, .halt),
    ])
    func rule(_ healthy: Bool, _ admin: AdminState, _ onFailure: String, _ weight: Int, _ present: Bool, _ reason: Membership.Reason) throws {
        let service = try Self.service(onFailure: onFailure)
        let membership = Membership.derive(server: service.realServers[0], in: service, healthy: healthy, admin: admin)
        #expect(membership == Membership(weight: weight, present: present, reason: reason))
        #expect(membership.acceptsNew == (weight > 0 && present))
    }

    @Test func zeroWeightTakesNothingNew() throws {
        let service = try Self.service(weights: [0, 10])
        let membership = RuntimeState(configuration: Configuration(virtualServices: [service])).membership(of: service)
        #expect(membership.servers.map(\.membership.reason) == [.zeroWeight, .serving])
        #expect(membership.servers.map(\.membership.acceptsNew) == [false, true])
    }

    @Test func fallbackStandsInWhenNoServerTakesNewConnections() throws {
        let service = try Self.service(fallback: true)
        var state = RuntimeState(configuration: Configuration(virtualServices: [service]))
        #expect(!state.membership(of: service).fallbackActive)
        state.setHealth(ServerKey(service: "dicom", server: "core-1"), HealthRecord(healthy: false))
        state.setAdmin(ServerKey(service: "dicom", server: "core-2"), .drain)
        #expect(state.membership(of: service).fallbackActive)
        state.setAdmin(ServerKey(service: "dicom", server: "core-2"), .online)
        #expect(!state.membership(of: service).fallbackActive)
    }

    @Test func recentTransitionsAreKeptInOrderAndBounded() throws {
        var state = RuntimeState(configuration: Configuration(virtualServices: [try Self.service()]))
        let core1 = ServerKey(service: "dicom", server: "core-1")
        let recorded = state.setHealth(ServerKey(service: "dicom", server: "gone"), HealthRecord(healthy: false))
        #expect(!recorded)
        #expect(state.recentTransitions.isEmpty, "a server outside the config leaves no transition")
        for index in 0..<(RuntimeState.transitionsKept + 5) {
            state.setHealth(core1, HealthRecord(healthy: index % 2 == 0, reason: "check \(index)"))
        }
        #expect(state.recentTransitions.count == RuntimeState.transitionsKept)
        #expect(state.recentTransitions.first?.record.reason == "check 5", "the oldest go first")
        #expect(state.recentTransitions.last?.record.reason == "check \(RuntimeState.transitionsKept + 4)")
        // History survives a reload, even of a server that the reload removes.
        state.reconfigure(to: Configuration(virtualServices: [try Self.service(weights: [100])]))
        state.setHealth(ServerKey(service: "dicom", server: "core-2"), HealthRecord(healthy: false))
        #expect(state.recentTransitions.count == RuntimeState.transitionsKept)
        #expect(state.recentTransitions.last?.key == core1)
    }

    @Test func reloadKeepsHealthAndOverridesOfServersThatStay() throws {
        let before = try Self.service(weights: [100, 50])
        var state = RuntimeState(configuration: Configuration(virtualServices: [before]))
        state.setHealth(ServerKey(service: "dicom", server: "core-1"), HealthRecord(healthy: false, reason: "refused"))
        state.setHealth(ServerKey(service: "dicom", server: "core-2"), HealthRecord(healthy: false, reason: "refused"))
        state.setAdmin(ServerKey(service: "dicom", server: "core-2"), .drain)
        // The reload changes weights, moves core-2 to another address and drops nothing else.
        var after = try Self.service(weights: [70, 50])
        after.realServers[1].address = IPAddress("10.0.1.22")!
        state.reconfigure(to: Configuration(virtualServices: [after]))
        #expect(state.health[ServerKey(service: "dicom", server: "core-1")] == HealthRecord(healthy: false, reason: "refused"))
        // Another address is another server: its health starts afresh; the operator's drain stays with the name.
        #expect(state.health[ServerKey(service: "dicom", server: "core-2")] == nil)
        #expect(state.admin(ServerKey(service: "dicom", server: "core-2")) == .drain)
        #expect(state.membership(of: after).servers.map(\.membership.reason) == [.down, .drain])
        // A transition for a server the config no longer has changes nothing.
        let recorded = state.setHealth(ServerKey(service: "gone", server: "core-1"), HealthRecord(healthy: true))
        #expect(!recorded)
    }
}

struct MembershipTestError: Error, CustomStringConvertible {
    let description: String
}
