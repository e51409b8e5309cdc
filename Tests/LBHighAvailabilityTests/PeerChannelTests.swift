import Foundation
import LBHighAvailability
import LBRuntime
import LBTestSupport
import NIOConcurrencyHelpers
import NIOPosix
import Testing

/// The real peer channel, two ends on loopback (127.0.0.1 and 127.0.0.2 share the port, as two nodes would).
@Suite("The peer channel on real sockets", .serialized)
struct PeerChannelTests {
    let secret = Array("a shared secret of more than sixteen bytes".utf8)

    final class Inbox: @unchecked Sendable {
        let messages = NIOLockedValueBox<[PeerMessage]>([])
        let refusals = NIOLockedValueBox<[(PeerVerifier.Refusal, Int)]>([])
    }

    func wait(_ seconds: Double = 5, until condition: () -> Bool) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() && Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
    }

    @Test func aMessageWithManyOverridesArrivesWhole() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let port = Int(Ports.block())
        let inbox = Inbox()
        let one = try PeerChannel(local: "127.0.0.1", peer: "127.0.0.2", port: port, secret: secret, peerName: "lb-2",
                                  group: group, logger: testLogger, onMessage: { _ in }, onRefusal: { _, _, _ in })
        let two = try PeerChannel(local: "127.0.0.2", peer: "127.0.0.1", port: port, secret: secret, peerName: "lb-1",
                                  group: group, logger: testLogger,
                                  onMessage: { message in inbox.messages.withLockedValue { $0.append(message) } },
                                  onRefusal: { refusal, _, count in inbox.refusals.withLockedValue { $0.append((refusal, count)) } })
        // 300 overrides: about 30 KB, far past NIO's default 2 KiB receive buffer.
        let overrides = (0..<300).map { index in
            PeerMessage.Entry(service: "CoreServerDICOM-\(index)", server: "ei-core-\(index % 7)",
                              change: OverrideChange(admin: .drain, at: 1_000 + Int64(index), node: "lb-1"))
        }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let message = PeerMessage(node: "lb-1", sentAt: now, nonce: "big", role: .master, configDigest: "d", overrides: overrides)
        #expect(message.sealed(secret: secret).count > 20_000)
        one.send(message)
        try await wait { !inbox.messages.withLockedValue { $0 }.isEmpty }
        #expect(inbox.messages.withLockedValue { $0 } == [message])
        #expect(inbox.refusals.withLockedValue { $0 }.isEmpty)
        one.close(); two.close()
        try await group.shutdownGracefully()
    }

    @Test func aFloodOfForgedDatagramsIsReportedOnceASecond() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let port = Int(Ports.block())
        let inbox = Inbox()
        let two = try PeerChannel(local: "127.0.0.2", peer: "127.0.0.1", port: port, secret: secret, peerName: "lb-1",
                                  group: group, logger: testLogger,
                                  onMessage: { message in inbox.messages.withLockedValue { $0.append(message) } },
                                  onRefusal: { refusal, _, count in inbox.refusals.withLockedValue { $0.append((refusal, count)) } })
        let forger = try PeerChannel(local: "127.0.0.1", peer: "127.0.0.2", port: port, secret: Array("not the secret, but as long".utf8),
                                     peerName: "lb-2", group: group, logger: testLogger, onMessage: { _ in }, onRefusal: { _, _, _ in })
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        for index in 0..<100 {
            forger.send(PeerMessage(node: "lb-1", sentAt: now, nonce: "\(index)", role: .master, configDigest: "d", overrides: []))
        }
        try await wait { !inbox.refusals.withLockedValue { $0 }.isEmpty }
        let first = inbox.refusals.withLockedValue { $0 }
        #expect(first.count == 1 && first.first?.0 == .badMAC && first.first?.1 == 1, "the first refusal is reported at once")
        // The rest of the flood is counted, not reported, until a refusal comes a second after the last report.
        try await Task.sleep(for: .milliseconds(1_100))
        #expect(inbox.refusals.withLockedValue { $0 }.count == 1, "99 more refusals, no more reports")
        forger.send(PeerMessage(node: "lb-1", sentAt: now, nonce: "last", role: .master, configDigest: "d", overrides: []))
        try await wait { inbox.refusals.withLockedValue { $0 }.count == 2 }
        #expect(inbox.refusals.withLockedValue { $0 }.last?.1 == 100, "the second report counts the 99 and itself")
        #expect(inbox.messages.withLockedValue { $0 }.isEmpty, "nothing forged gets through")
        two.close(); forger.close()
        try await group.shutdownGracefully()
    }
}
