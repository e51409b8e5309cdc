import Foundation
import LBConfig
import LBHighAvailability
import LBRuntime
import Testing

func pairConfiguration(preempt: Bool = false, links: [String] = ["eth0", "eth1", "eth2"]) throws -> Configuration {
    let yaml = """
        virtual_services:
          - {name: PACS, vip: 10.20.0.40, ports: [104], mode: l4-nat, interface: \(links[1]),
             real_servers: [{name: core-1, address: 10.20.1.11}]}
          - {name: PACS-11, vip: 10.20.0.40, ports: [11112], mode: l4-nat, interface: \(links[1]),
             real_servers: [{name: core-1, address: 10.20.1.11}]}
          - {name: Viewer6, vip: "2001:db8::40", ports: [443], mode: l7-tcp,
             real_servers: [{name: web-1, address: "2001:db8:1::11"}]}
        high_availability:
          virtual_router_id: 51
          advert_interval: 500ms
          preempt: \(preempt)
          nodes:
            - {name: lb-1, address: 10.20.0.2, interface: \(links[0]), priority: 150}
            - {name: lb-2, address: 10.20.0.3, interface: \(links[0]), priority: 100}
          floating_addresses:
            - {address: 10.20.1.1/24, interface: \(links[2])}
          connection_sync: {interface: eth0}
          peer_secret_file: /etc/lb/peer.key
        """
    let report = ConfigurationLoader.check(yaml: yaml, file: "pair.yaml")
    return try #require(report.configuration, "\(report.diagnostics)")
}

@Suite("keepalived's configuration, rendered from high_availability")
struct KeepalivedConfigTests {
    let files = KeepalivedConfig.Files(directory: "/var/lib/lb", runtimeDirectory: "/run/lb")

    @Test func oneInstanceMovesEveryVIPAndFloatingAddress() throws {
        let text = try KeepalivedConfig.render(try pairConfiguration(), node: "lb-2", files: files)
        for line in ["router_id lb-2", "vrrp_version 3", "check_unicast_src", "notify_fifo /run/lb/keepalived.fifo", "state BACKUP",
                     "interface eth0", "virtual_router_id 51", "priority 100", "advert_int 0.5", "nopreempt",
                     "unicast_src_ip 10.20.0.3", "file /var/lib/lb/ha-standby", "lb_standby weight 0"] {
            #expect(text.contains(line), "missing \(line):\n\(text)")
        }
        #expect(text.contains("unicast_peer {\n        10.20.0.2\n    }"))
        // A VIP shared by two services appears once; the IPv6 VIP is moved without being advertised (VRRPv3 is one family).
        #expect(text.contains("virtual_ipaddress {\n        10.20.0.40/32 dev eth1\n        10.20.1.1/24 dev eth2\n    }"), "\(text)")
        #expect(text.contains("virtual_ipaddress_excluded {\n        2001:db8::40/128 dev eth0\n    }"), "\(text)")
        #expect(text.components(separatedBy: "vrrp_instance").count == 2, "exactly one instance")
    }

    @Test func preemptAndUnknownNode() throws {
        let text = try KeepalivedConfig.render(try pairConfiguration(preempt: true), node: "lb-1", files: files)
        #expect(!text.contains("nopreempt"))
        #expect(text.contains("priority 150") && text.contains("unicast_peer {\n        10.20.0.3"))
        #expect(throws: KeepalivedConfig.RenderError.unknownNode("lb-9", known: ["lb-1", "lb-2"])) {
            try KeepalivedConfig.render(try pairConfiguration(), node: "lb-9", files: files)
        }
    }

    /// The real keepalived reads the file without complaint (`keepalived --config-test`).
    @Test func keepalivedAcceptsIt() throws {
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/sbin/keepalived"),
                     "keepalived is missing: scripts/setup test installs it (apt-get install keepalived)")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("lb-keepalived-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let files = KeepalivedConfig.Files(directory: directory, runtimeDirectory: directory)
        // keepalived wants interfaces that exist and are not loopback: this host's first such link stands for all.
        let link = try #require(try FileManager.default.contentsOfDirectory(atPath: "/sys/class/net").sorted().first { $0 != "lo" },
                                "this host has no network interface besides lo")
        try KeepalivedConfig.render(try pairConfiguration(links: [link, link, link]), node: "lb-1", files: files)
            .write(toFile: files.config, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/keepalived")
        process.arguments = ["--config-test", "--use-file", files.config]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "keepalived --config-test: \(text)")
        // And a broken file is refused: the check can fail.
        try "vrrp_instance lb {\n    virtual_router_id 999\n}\n".write(toFile: files.config, atomically: true, encoding: .utf8)
        let broken = Process()
        broken.executableURL = process.executableURL
        broken.arguments = process.arguments
        broken.standardOutput = FileHandle.nullDevice
        broken.standardError = FileHandle.nullDevice
        try broken.run()
        broken.waitUntilExit()
        #expect(broken.terminationStatus != 0)
    }
}

@Suite("keepalived's notify FIFO lines")
struct VRRPNotificationTests {
    @Test func instanceLines() {
        #expect(VRRPNotification(line: "INSTANCE \"lb\" MASTER 150") == .init(line: "INSTANCE \"lb\" MASTER 150"))
        let master = VRRPNotification(line: "INSTANCE \"lb\" MASTER 150")
        #expect(master?.instance == "lb" && master?.state == .master && master?.priority == 150)
        #expect(VRRPNotification(line: "INSTANCE \"lb\" FAULT 0")?.state == .fault)
        #expect(VRRPNotification(line: "GROUP \"g\" MASTER") == nil)
        #expect(VRRPNotification(line: "INSTANCE lb MASTER 150") == nil)
        #expect(VRRPNotification(line: "INSTANCE \"lb\" DANCING 1") == nil)
        #expect(VRRPNotification(line: "") == nil)
    }
}

@Suite("The pair's peer messages")
struct PeerMessageTests {
    let secret = Array("correct horse battery staple, 32+".utf8)
    func message(at time: Int64, nonce: String = "00112233445566778899aabbccddeeff", node: String = "lb-1") -> PeerMessage {
        PeerMessage(node: node, sentAt: time, nonce: nonce, role: .master, configDigest: "abc",
                    overrides: [.init(service: "PACS", server: "core-1", change: .init(admin: .drain, at: time - 5, node: "lb-1"))])
    }

    @Test func authenticFreshMessageOpens() throws {
        var verifier = PeerVerifier(secret: secret, peer: "lb-1")
        let opened = try verifier.open(message(at: 1_000_000).sealed(secret: secret), now: 1_000_100)
        #expect(opened == message(at: 1_000_000))
    }

    @Test func forgedAlteredReplayedStaleAndMisaddressedAreRefused() throws {
        var verifier = PeerVerifier(secret: secret, peer: "lb-1")
        let sealed = message(at: 1_000_000).sealed(secret: secret)
        #expect(throws: PeerVerifier.Refusal.badMAC) {
            try verifier.open(message(at: 1_000_000).sealed(secret: Array("another secret of the same length!".utf8)), now: 1_000_000)
        }
        var altered = sealed
        altered[altered.count - 3] ^= 0x01
        #expect(throws: PeerVerifier.Refusal.badMAC) { try verifier.open(altered, now: 1_000_000) }
        #expect(throws: PeerVerifier.Refusal.short(10)) { try verifier.open(Array(sealed.prefix(10)), now: 1_000_000) }
        _ = try verifier.open(sealed, now: 1_000_000)
        #expect(throws: PeerVerifier.Refusal.replayed(nonce: "00112233445566778899aabbccddeeff")) {
            try verifier.open(sealed, now: 1_000_500)
        }
        #expect(throws: PeerVerifier.Refusal.stale(skewMilliseconds: -40_000)) {
            try verifier.open(message(at: 1_000_000, nonce: "ff").sealed(secret: secret), now: 1_040_000)
        }
        #expect(throws: PeerVerifier.Refusal.wrongSender("lb-2")) {
            try verifier.open(message(at: 1_000_000, nonce: "ee", node: "lb-2").sealed(secret: secret), now: 1_000_000)
        }
    }

    @Test func aMessageOlderThanTheNewestAcceptedIsRefused() throws {
        var verifier = PeerVerifier(secret: secret, peer: "lb-1")
        _ = try verifier.open(message(at: 1_000_500, nonce: "a").sealed(secret: secret), now: 1_000_600)
        #expect(throws: PeerVerifier.Refusal.older(byMilliseconds: 500)) {
            try verifier.open(message(at: 1_000_000, nonce: "b").sealed(secret: secret), now: 1_000_600)
        }
        _ = try verifier.open(message(at: 1_000_700, nonce: "c").sealed(secret: secret), now: 1_000_700)
    }

    @Test func newestChangeWins() {
        let older = OverrideChange(admin: .drain, at: 100, node: "lb-1")
        let newer = OverrideChange(admin: .online, at: 200, node: "lb-2")
        #expect(newer.supersedes(older) && !older.supersedes(newer) && older.supersedes(nil))
        // A tie is broken the same way on both nodes.
        let tieA = OverrideChange(admin: .drain, at: 100, node: "lb-1"), tieB = OverrideChange(admin: .halt, at: 100, node: "lb-2")
        #expect(tieB.supersedes(tieA) && !tieA.supersedes(tieB))
    }
}
