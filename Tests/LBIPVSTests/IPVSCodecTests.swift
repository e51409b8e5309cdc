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

    @Test func requestFramingAndAcknowledgements() throws {
        let frame = NetlinkFrame.request(family: 0x23, command: .setDestination, sequence: 0x4000_0001,
                                         attributes: IPVSCodec.message(service: IPVSCodec.serviceKey(service)))
        // nlmsghdr: total length, type = family id, flags REQUEST|ACK, sequence, port 0; genlmsghdr: command 6, version 1.
        #expect(Array(frame[0..<4]) == withUnsafeBytes(of: UInt32(frame.count).littleEndian, Array.init))
        #expect(Array(frame[4..<8]) == [0x23, 0, 5, 0])
        #expect(Array(frame[8..<16]) == [1, 0, 0, 0x40, 0, 0, 0, 0])
        #expect(Array(frame[16..<20]) == [6, 1, 0, 0])

        // Two NLMSG_ERROR answers in one datagram: success for one request, EEXIST (with the request echoed) for the next.
        func ack(_ sequence: UInt32, errno: Int32, echo: [UInt8]) -> [UInt8] {
            let payload = withUnsafeBytes(of: (-errno).littleEndian, Array.init) + echo
            return withUnsafeBytes(of: UInt32(16 + payload.count).littleEndian, Array.init) + [2, 0, 0, 0]
                + withUnsafeBytes(of: sequence.littleEndian, Array.init) + [0, 0, 0, 0] + payload
        }
        let header = Array(frame[0..<16])
        var second = header
        second[8] = 2
        let datagram = ack(0x4000_0001, errno: 0, echo: header) + ack(0x4000_0002, errno: EEXIST, echo: second + Array(frame[16...]))
        let acks = NetlinkFrame.acknowledgements(in: datagram[...])
        #expect(acks.map(\.sequence) == [0x4000_0001, 0x4000_0002])
        #expect(acks.map(\.errno) == [0, EEXIST])
        #expect(NetlinkFrame.acknowledgements(in: datagram.dropLast(5)).count == 1, "a truncated message is not read")
    }

    @Test func firewallMarkServicesAreKeyedByMarkAndFamily() throws {
        let mark = IPVSService.firewallMark(7, family: .ipv6, scheduler: "rr")
        let fields = try #require(NetlinkAttributes.parse(IPVSCodec.serviceKey(mark).bytes[...]))
        #expect(fields.map(\.type) == [1, 5], "family and fwmark only")
        #expect(IPVSCodec.decodeService(IPVSCodec.message(service: IPVSCodec.service(mark)).bytes[...]) == mark)
        #expect(mark.description == "fwmark 7/ipv6")
        #expect(mark.persistenceNetmask == 128, "IPv6 persistence granularity is a prefix length")
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

    /// The rest of the netlink surface: firewall-mark and IPv6 services, persistence netmask, timeouts, counters,
    /// the sync daemon, and a batch the kernel refuses in part.
    @Test func kernelSettingsFwmarkIPv6AndPartialRefusal() throws {
        let client = try IPVSClient()
        try client.flush()
        let info = try client.info()
        #expect(info.versionText == "1.2.1", "\(info)")
        #expect(info.connectionTableSize > 0)

        let mark = IPVSService.firewallMark(7, family: .ipv4, scheduler: "rr", persistenceTimeout: 60)
        var masked = IPVSService(transport: .tcp, address: IPAddress("10.0.0.2")!, port: 2762, scheduler: "sh",
                                 persistenceTimeout: 120, persistenceNetmask: UInt32(0xFFFF_FF00).bigEndian)
        let v6 = IPVSService(transport: .udp, address: IPAddress("2001:db8::10")!, port: 2310, scheduler: "wrr")
        let bounded = IPVSDestination(address: IPAddress("10.0.1.11")!, port: 2762, forwarding: .masquerade, weight: 5,
                                      upperThreshold: 200, lowerThreshold: 150)
        try client.apply([.addService(mark), .addService(masked), .addService(v6),
                          .addDestination(IPVSDestination(address: IPAddress("10.0.1.11")!, port: 0, forwarding: .directRoute, weight: 5), mark),
                          .addDestination(bounded, masked)])
        #expect(try client.destinations(of: masked).map(\.0) == [bounded], "connection thresholds read back")
        #expect(try run("/usr/sbin/ipvsadm", ["-Ln", "--thresholds"]).range(of: #"-> 10\.0\.1\.11:2762 +200 +150 "#, options: .regularExpression) != nil)
        #expect(Set(try client.services()) == [mark, masked, v6])
        let listing = try run("/usr/sbin/ipvsadm", ["-Ln"])
        #expect(listing.contains("FWM  7 rr persistent 60"), "\(listing)")
        #expect(listing.contains("TCP  10.0.0.2:2762 sh persistent 120 mask 255.255.255.0"), "\(listing)")
        #expect(listing.contains("UDP  [2001:db8::10]:2310 wrr"), "\(listing)")
        masked.scheduler = "rr"
        try client.update(masked)
        #expect(try run("/usr/sbin/ipvsadm", ["-Ln"]).contains("TCP  10.0.0.2:2762 rr persistent 120 mask 255.255.255.0"))

        // Timeouts, as ipvsadm -l --timeout reads them back.
        try client.setTimeouts(IPVSTimeouts(tcp: 7200, tcpFin: 60, udp: 120))
        #expect(try client.timeouts() == IPVSTimeouts(tcp: 7200, tcpFin: 60, udp: 120))
        #expect(try run("/usr/sbin/ipvsadm", ["-Ln", "--timeout"]).contains("Timeout (tcp tcpfin udp): 7200 60 120"))

        // The sync daemon starts and stops (master on the dummy link).
        let daemon = IPVSSyncDaemon(role: .master, interface: "lbt0", syncID: 9)
        try client.startSyncDaemon(daemon)
        #expect(try client.syncDaemons() == [daemon])
        #expect(try run("/usr/sbin/ipvsadm", ["-Ln", "--daemon"]).contains("master sync daemon (mcast=lbt0, syncid=9,"))
        try client.stopSyncDaemon(daemon)
        #expect(try client.syncDaemons().isEmpty)

        try client.zeroCounters()
        try client.zeroCounters(of: masked)

        // A batch with one refusal in the middle: the rest of it is applied and the report says which failed.
        let fresh = IPVSService(transport: .tcp, address: IPAddress("10.0.0.3")!, port: 80, scheduler: "rr")
        let batch: [IPVSOperation] = [.addService(fresh), .addService(masked),
                                      .addDestination(IPVSDestination(address: IPAddress("10.0.1.12")!, port: 80, forwarding: .masquerade, weight: 1), fresh)]
        do {
            try client.apply(batch)
            Issue.record("adding an existing service must be refused")
        } catch let error as IPVSApplyError {
            #expect(error.applied == [batch[0], batch[2]])
            #expect(error.failures.map(\.operation) == [batch[1]])
            #expect(error.failures.first?.error.description == "service 10.0.0.2:2762/tcp: File exists")
            #expect(error.description.hasSuffix("2 change(s) applied, 1 refused, 0 not attempted"))
        }
        #expect(try client.destinations(of: fresh).count == 1)
        try client.flush()
        try client.setTimeouts(IPVSTimeouts(tcp: 900, tcpFin: 120, udp: 300))
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

@Suite("IPVS codec: found by fuzzing")
struct IPVSFuzzRegressionTests {
    /// scripts/fuzz netlink-reply: an acknowledgement whose error field is Int32.min trapped (negation overflow).
    @Test func acknowledgementWithTheSmallestErrorDoesNotTrap() throws {
        let datagram = try #require(Data(base64Encoded: "JAAAAAIAAAAHAAAAAAAFAAAAAIAAAAAAAAfvAAAAAAAA////FAAAAB4AAAAA/////wDv////AAAA"))
        let acknowledgements = NetlinkFrame.acknowledgements(in: [UInt8](datagram)[...])
        #expect(acknowledgements.count == 1)
        #expect(acknowledgements.first?.errno == Int32.max)
    }
}
