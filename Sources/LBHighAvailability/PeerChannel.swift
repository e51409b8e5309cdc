import Foundation
import LBTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The lbd-to-lbd channel of a pair: UDP datagrams on `peer_port`, each sealed with HMAC-SHA-256 under the shared
/// secret. Whatever fails verification is refused and logged, and changes nothing.
public final class PeerChannel: Sendable {
    /// The socket; replaced when the kernel closed it (a link that went down makes sends fail, and NIO closes a
    /// datagram channel on such errors).
    private let channel: NIOLockedValueBox<Channel>
    private let open: @Sendable () throws -> Channel
    private let local: String
    private let port: Int
    private let peer: SocketAddress
    private let secret: [UInt8]
    private let logger: Logger

    public enum SetupError: Error, CustomStringConvertible {
        case secret(String, String)
        case bind(String, Error)
        public var description: String {
            switch self {
            case .secret(let path, let why): return "peer_secret_file \(path): \(why)"
            case .bind(let address, let error): return "cannot listen for the peer on \(address): \(error)"
            }
        }
    }

    /// The secret: the file's bytes less surrounding white space, at least 16 of them.
    public static func readSecret(_ path: String) throws(SetupError) -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .secret(path, "cannot be read (create it on both nodes with the same content, e.g. `openssl rand -hex 32 > \(path); chmod 600 \(path)`)")
        }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.utf8.count >= 16 else { throw .secret(path, "holds \(text.utf8.count) bytes; use at least 16 (e.g. `openssl rand -hex 32`)") }
        return Array(text.utf8)
    }

    /// The largest UDP payload over IPv4.
    public static let largestMessage = 65_507

    /// Listens on `local`:`port` and delivers each verified message from `peer` to `onMessage`. Refusals are
    /// counted here and reported at most once a second (the last one, its sender, how many since the last report),
    /// so a flood of forged datagrams costs the agent nothing.
    public init(local: String, peer: String, port: Int, secret: [UInt8], peerName: String, group: EventLoopGroup, logger: Logger,
                onMessage: @escaping @Sendable (PeerMessage) -> Void,
                onRefusal: @escaping @Sendable (PeerVerifier.Refusal, String, Int) -> Void) throws(SetupError) {
        let verifier = NIOLockedValueBox(PeerVerifier(secret: secret, peer: peerName))
        let refusals = NIOLockedValueBox((count: 0, reported: Int64(0)))
        let open: @Sendable () throws -> Channel = {
            // No SO_REUSEADDR: on Linux it would let any local user bind the same UDP port and take the messages.
            // Messages carry every override: the whole datagram is read (NIO's default buffer holds 2 KiB).
            try DatagramBootstrap(group: group)
                .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: PeerChannel.largestMessage))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(Receiver { datagram, sender in
                            let now = Int64(Date().timeIntervalSince1970 * 1000)
                            let result = verifier.withLockedValue { verifier -> Result<PeerMessage, PeerVerifier.Refusal> in
                                do throws(PeerVerifier.Refusal) { return .success(try verifier.open(datagram, now: now)) } catch { return .failure(error) }
                            }
                            switch result {
                            case .success(let message): onMessage(message)
                            case .failure(let refusal):
                                let due = refusals.withLockedValue { tally -> Int? in
                                    tally.count += 1
                                    guard now - tally.reported >= 1000 else { return nil }
                                    defer { tally = (0, now) }
                                    return tally.count
                                }
                                if let due { onRefusal(refusal, sender, due) }
                            }
                        })
                    }
                }
                .bind(host: local, port: port).wait()
        }
        do {
            self.channel = NIOLockedValueBox(try open())
            self.peer = try SocketAddress(ipAddress: peer, port: port)
        } catch {
            throw .bind("\(local):\(port)", error)
        }
        self.open = open
        self.local = local
        self.port = port
        self.secret = secret
        self.logger = logger
    }

    /// Sends one message; a socket the kernel closed is opened again first (called from the agent's queue).
    /// A message too large for one datagram is not sent (logged): the peer then sees this node as silent.
    public func send(_ message: PeerMessage) {
        var current = channel.withLockedValue { $0 }
        if !current.isActive {
            do {
                current = try open()
                channel.withLockedValue { $0 = current }
                logger.notice("peer channel opened again", metadata: ["address": "\(local):\(port)"])
            } catch {
                return  // the link is still down: the next heartbeat tries again
            }
        }
        let bytes = message.sealed(secret: secret)
        guard bytes.count <= Self.largestMessage else {
            logger.error("peer message of \(bytes.count) bytes is larger than a datagram; not sent (too many overrides to replicate)")
            return
        }
        current.writeAndFlush(AddressedEnvelope(remoteAddress: peer, data: current.allocator.buffer(bytes: bytes)), promise: nil)
    }

    public func close() {
        try? channel.withLockedValue { $0 }.close().wait()
    }

    private final class Receiver: ChannelInboundHandler {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let deliver: (([UInt8], String) -> Void)
        init(_ deliver: @escaping ([UInt8], String) -> Void) { self.deliver = deliver }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var envelope = unwrapInboundIn(data)
            let bytes = envelope.data.readBytes(length: envelope.data.readableBytes) ?? []
            deliver(bytes, "\(envelope.remoteAddress)")
        }
        // A peer that is down answers with ICMP port unreachable: not an error of this channel.
        func errorCaught(context: ChannelHandlerContext, error: Error) {}
    }
}
