import LBConfig
import Testing
@testable import LBLinks

@Suite("VIP addresses (pure)")
struct VIPAddressTests {
    func vip(_ address: String, on interface: String = "eth0") -> VIPAddress {
        VIPAddress(interface: interface, address: IPAddress(address)!)
    }

    @Test func onlyAddressesLbAddedAreEverRemoved() {
        let plan = VIPAddressPlanner.plan(
            desired: [vip("10.0.0.40"), vip("10.0.0.41"), vip("10.0.0.42")],
            present: [vip("10.0.0.41"), vip("10.0.0.42"), vip("10.0.0.50"), vip("10.0.0.51"), vip("192.168.1.5")],
            owned: [vip("10.0.0.42"), vip("10.0.0.50"), vip("10.0.0.60")])
        #expect(plan.add == [vip("10.0.0.40")])
        #expect(plan.remove == [vip("10.0.0.50")], "10.0.0.51 and 192.168.1.5 were not lb's")
        #expect(plan.foreign == [vip("10.0.0.41")], "present before lb: used, never removed")
        #expect(plan.vanished == [vip("10.0.0.60")])
        // Converged: nothing to do.
        let again = VIPAddressPlanner.plan(desired: [vip("10.0.0.40")], present: [vip("10.0.0.40")], owned: [vip("10.0.0.40")])
        #expect(again.add.isEmpty && again.remove.isEmpty && again.foreign.isEmpty)
    }

    @Test func gratuitousARPLayout() {
        let packet = Announcement.gratuitousARP(mac: [2, 0, 0, 0, 0, 1], address: 0x0A00_0028)
        #expect(packet.count == 28)
        #expect(Array(packet[0..<8]) == [0, 1, 8, 0, 6, 4, 0, 1])
        #expect(Array(packet[8..<14]) == [2, 0, 0, 0, 0, 1])
        #expect(Array(packet[14..<18]) == [10, 0, 0, 40], "sender: the VIP")
        #expect(Array(packet[18..<24]) == [0, 0, 0, 0, 0, 0])
        #expect(Array(packet[24..<28]) == [10, 0, 0, 40], "target: the VIP too")
    }

    @Test func neighbourAdvertisementLayout() {
        let address = [UInt8](IPAddressBytes.v6("2001:db8::40"))
        let packet = Announcement.neighbourAdvertisement(mac: [2, 0, 0, 0, 0, 1], address: address)
        #expect(packet.count == 32)
        #expect(Array(packet[0..<8]) == [136, 0, 0, 0, 0x20, 0, 0, 0], "type 136, override flag")
        #expect(Array(packet[8..<24]) == address)
        #expect(Array(packet[24..<32]) == [2, 1, 2, 0, 0, 0, 0, 1])
    }
}

enum IPAddressBytes {
    static func v6(_ text: String) -> [UInt8] {
        if case .v6(let bytes)? = IPAddress(text) { return bytes }
        return []
    }
}
