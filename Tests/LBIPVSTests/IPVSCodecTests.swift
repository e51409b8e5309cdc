import Foundation
import LBConfig
import Testing
@testable import LBIPVS

/// Message encoding against the layout of <linux/ip_vs.h>, without a kernel.
@Suite("IPVS netlink codec")
struct IPVSCodecTests {
    let service = IPVSService(transport: .tcp, address: IPAddress("10.20.0.10")!, port: 104, scheduler: "wlc",
                              persistenceTimeout: 300)

    @Test func attributesAreLengthTypePaddedPayload() {
        var attributes = NetlinkAttributes()
        attributes.put(6, string: "rr")  // "rr\0" = 3 bytes, padded to 4
        #expect(attributes.bytes == [7, 0, 6, 0, 0x72, 0x72, 0, 0])
        attributes.put(4, be16: 104)
        #expect(Array(attributes.bytes[8...]) == [6, 0, 4, 0, 0, 104, 0, 0])
    }

    @Test func serviceKeyLayout() throws {
        let key = IPVSCodec.serviceKey(service).bytes
        // family AF_INET (u16), protocol TCP (u16), 16-byte address, port in network order.
        #expect(Array(key[0..<8]) == [6, 0, 1, 0, 2, 0, 0, 0])
        #expect(Array(key[8..<16]) == [6, 0, 2, 0, 6, 0, 0, 0])
        #expect(Array(key[16..<20]) == [20, 0, 3, 0])
        #expect(Array(key[20..<24]) == [10, 20, 0, 10])
        #expect(key[24..<36].allSatisfy { $0 == 0 })
        #expect(Array(key[36..<44]) == [6, 0, 4, 0, 0, 104, 0, 0])
    }

    @Test func persistenceSetsTheFlagAndMask() throws {
        let fields = try #require(NetlinkAttributes.parse(IPVSCodec.service(service).bytes[...]))
        let flags = try #require(fields.first { $0.type == 7 }?.payload)
        #expect(Array(flags) == [1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF], "IP_VS_SVC_F_PERSISTENT, mask all")
        let timeout = try #require(fields.first { $0.type == 8 }?.payload)
        #expect(Array(timeout) == [0x2C, 0x01, 0, 0])
        let scheduler = try #require(fields.first { $0.type == 6 }?.payload)
        #expect(Array(scheduler) == Array("wlc".utf8) + [0])
    }

    @Test func serviceAndDestinationRoundTrip() throws {
        let message = IPVSCodec.message(service: IPVSCodec.service(service))
        #expect(IPVSCodec.decodeService(message.bytes[...]) == service)

        let v6 = IPVSService(transport: .udp, address: IPAddress("2001:db8::10")!, port: 2762, scheduler: "sh")
        #expect(IPVSCodec.decodeService(IPVSCodec.message(service: IPVSCodec.service(v6)).bytes[...]) == v6)

        let destination = IPVSDestination(address: IPAddress("10.20.1.11")!, port: 11112, forwarding: .masquerade, weight: 100)
        let encoded = IPVSCodec.message(destination: IPVSCodec.destination(destination))
        let decoded = try #require(IPVSCodec.decodeDestination(encoded.bytes[...], serviceFamily: 2))
        #expect(decoded.0 == destination)
    }

    @Test func truncatedInputIsRejectedNotTrusted() {
        let bytes = IPVSCodec.message(service: IPVSCodec.service(service)).bytes
        #expect(NetlinkAttributes.parse(bytes.dropLast(3)) == nil || IPVSCodec.decodeService(bytes.dropLast(3)) == nil)
        #expect(NetlinkAttributes.parse([200, 0, 1, 0][...]) == nil)
    }
}

/// Against the real kernel: runs only inside scripts/ipvs-vm (LB_IPVS_KERNEL=1), where it must pass.
@Suite("IPVS through netlink, real kernel", .serialized, .enabled(if: ProcessInfo.processInfo.environment["LB_IPVS_KERNEL"] == "1"))
struct IPVSKernelTests {
    // Runs inside the VM only; see Tests/integration/ipvs-netlink-kernel.sh.
    @Test func programAndDumpMatchIpvsadm() throws {
        let client = try IPVSClient()
        try client.flush()
        let service = IPVSService(transport: .tcp, address: IPAddress("10.0.0.1")!, port: 104, scheduler: "wlc",
                                  persistenceTimeout: 300)
        try client.add(service)
        let first = IPVSDestination(address: IPAddress("10.0.1.11")!, port: 11112, forwarding: .masquerade, weight: 100)
        let second = IPVSDestination(address: IPAddress("10.0.1.12")!, port: 11112, forwarding: .masquerade, weight: 50)
        try client.add(first, to: service)
        try client.add(second, to: service)

        #expect(try client.services() == [service])
        #expect(try client.destinations(of: service).map(\.0).sorted { $0.weight > $1.weight } == [first, second])

        // The reference tool sees exactly the same.
        let listing = try run("/usr/sbin/ipvsadm", ["-Ln"])
        #expect(listing.contains("TCP  10.0.0.1:104 wlc persistent 300"), "\(listing)")
        #expect(listing.range(of: #"-> 10\.0\.1\.11:11112 +Masq +100 "#, options: .regularExpression) != nil, "\(listing)")
        #expect(listing.range(of: #"-> 10\.0\.1\.12:11112 +Masq +50 "#, options: .regularExpression) != nil, "\(listing)")

        // A weight change is one SET_DEST.
        var drained = second
        drained.weight = 0
        try client.update(drained, in: service)
        #expect(try run("/usr/sbin/ipvsadm", ["-Ln"]).range(of: #"-> 10\.0\.1\.12:11112 +Masq +0 "#, options: .regularExpression) != nil)

        // The kernel's refusal comes back typed, naming the object.
        do {
            try client.add(service)
            Issue.record("adding a service twice must fail")
        } catch let error as IPVSError {
            #expect(error.errno == EEXIST)
            #expect(error.description == "service 10.0.0.1:104/tcp: File exists")
        }
        try client.delete(service)
        #expect(try client.services().isEmpty)
    }

    /// The planner's table, applied through netlink, is what a dump and ipvsadm then show; a weight change is one
    /// operation; a plan that fails part-way says what was applied, and planning again converges.
    @Test func planAppliedAndDumpedConverges() throws {
        let client = try IPVSClient()
        try client.flush()
        let report = ConfigurationLoader.check(yaml: """
            virtual_services:
              - name: dicom-nat
                vip: 10.0.0.30
                ports: [104, 11112]
                mode: l4-nat
                scheduler: weighted-leastconn
                persistence: {type: source-ip, timeout: 600s}
                real_servers:
                  - {name: core-1, address: 10.0.1.11, port: 11112, weight: 100}
                  - {name: core-2, address: 10.0.1.12, port: 11112, weight: 50}
              - name: web-dr
                vip: 10.0.0.31
                ports: [80]
                mode: l4-dr
                real_servers: [{name: web-1, address: 10.0.1.21}]
            """, file: "kernel.yaml")
        let services = try #require(report.configuration?.virtualServices)
        let desired = IPVSPlanner.desiredTable(for: services)
        try client.apply(IPVSPlanner.plan(from: try client.table(), to: desired, owned: []).operations)
        #expect(try client.table() == desired)
        let listing = try run("/usr/sbin/ipvsadm", ["-Ln"])
        #expect(listing.contains("TCP  10.0.0.30:104 wlc persistent 600"))
        #expect(listing.contains("TCP  10.0.0.31:80 rr"))
        #expect(listing.range(of: #"-> 10\.0\.1\.21:80 +Route +100 "#, options: .regularExpression) != nil, "\(listing)")

        // Drain web-1: one SET_DEST, and the kernel agrees.
        let drained = IPVSPlanner.desiredTable(for: services, weights: ["web-dr": ["web-1": 0]])
        let change = IPVSPlanner.plan(from: try client.table(), to: drained, owned: Set(desired.services.keys)).operations
        #expect(change.count == 1)
        try client.apply(change)
        #expect(try client.table() == drained)

        // Someone deletes a destination behind lb's back: the next plan repairs exactly that.
        _ = try run("/usr/sbin/ipvsadm", ["-d", "-t", "10.0.0.30:104", "-r", "10.0.1.12:11112"])
        let repair = IPVSPlanner.plan(from: try client.table(), to: drained, owned: Set(desired.services.keys)).operations
        #expect(repair.count == 1)
        try client.apply(repair)
        #expect(try client.table() == drained)
        try client.flush()
    }

    /// popen rather than Foundation's Process: the latter needs CFRunLoop machinery the minimal VM lacks.
    func run(_ tool: String, _ arguments: [String]) throws -> String {
        guard let pipe = popen(([tool] + arguments).joined(separator: " "), "r") else { return "" }
        defer { pclose(pipe) }
        var output = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&buffer, 1, buffer.count, pipe)
            if count <= 0 { break }
            output += buffer[0..<count]
        }
        return String(decoding: output, as: UTF8.self)
    }
}
