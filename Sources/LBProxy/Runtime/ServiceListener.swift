import LBConfig
import Logging
import NIOCore
import NIOPosix

/// A listening socket of the proxy (one VIP address and port). It stays open for as long as some Layer 7 service
/// serves that address and port — across reloads and l7-http ↔ l7-tcp switches — so no connection waiting in its
/// accept queue is ever reset; what changes is the generation in its slot, which each new connection reads.
final class Binding: Sendable {
    let address: IPAddress
    let port: UInt16
    let slot: ServiceSlot
    private let channel: Channel

    private init(address: IPAddress, port: UInt16, slot: ServiceSlot, channel: Channel) {
        self.address = address
        self.port = port
        self.slot = slot
        self.channel = channel
    }

    struct Key: Hashable, Comparable, CustomStringConvertible {
        var address: IPAddress
        var port: UInt16
        var description: String { address.withPort(port) }
        static func < (lhs: Key, rhs: Key) -> Bool { (lhs.address, lhs.port) < (rhs.address, rhs.port) }
    }

    var key: Key { Key(address: address, port: port) }

    static func bind(_ key: Key, serving runtime: ServiceRuntime, group: EventLoopGroup, freeBind: Bool = false) async throws -> Binding {
        let slot = ServiceSlot(runtime)
        // IP_FREEBIND at the IP level also serves IPv6 sockets (Linux passes SOL_IP options of AF_INET6 TCP sockets on).
        let freeBindOption = ChannelOptions.Types.SocketOption(level: .init(rawValue: Int32(IPPROTO_IP)),
                                                               name: .init(rawValue: Int32(IP_FREEBIND)))
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(freeBindOption, value: freeBind ? 1 : 0)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Accepted sockets inherit TCP_NODELAY from the listening socket (Linux), so no client needs its own
            // setsockopt: a response head or an HL7 acknowledgement leaves at once, not after the delayed ACK.
            // (NIO sets it on a listening socket by default; said here because lb relies on it. `.tcpOption`, at
            // IPPROTO_TCP: `.socketOption(.tcp_nodelay)` would be SOL_SOCKET's option 1, SO_DEBUG.)
            .serverChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            // lb sets up each accepted client itself (`ClientAcceptor`), ahead of NIO's own accept handler; out of
            // descriptors, accepting pauses for a moment rather than spin on accept(2).
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        ClientAcceptor(slot: slot),
                        AcceptLimits.pauseHandler(service: runtime.service.name, logger: runtime.logger),
                    ])
                }
            }
        do {
            let channel = try await bootstrap.bind(host: key.address.description, port: Int(key.port)).get()
            return Binding(address: key.address, port: key.port, slot: slot, channel: channel)
        } catch {
            throw ProxyError.bindFailed(service: runtime.service.name, address: key.description, reason: "\(error)")
        }
    }

    /// Closes the listening socket; established connections carry on.
    func close() async {
        try? await channel.close()
    }
}

extension VirtualService {
    /// The proxy's listening sockets for this service.
    var bindingKeys: [Binding.Key] { ports.allPorts.map { Binding.Key(address: address, port: $0) } }
}

extension IPAddress {
    /// The address of a NIO socket address, if it is IPv4 or IPv6: read from the socket address's bytes, as
    /// `IPAddress(text)` would read its text (an IPv4-mapped IPv6 address stays IPv6), without making the text
    /// first: once per client connection.
    init?(_ address: SocketAddress?) {
        switch address {
        case .v4(let v4):
            self = .v4(UInt32(bigEndian: v4.address.sin_addr.s_addr))
        case .v6(let v6):
            var bytes = v6.address.sin6_addr
            self = .v6(withUnsafeBytes(of: &bytes) { Array($0) })
        case .unixDomainSocket, .none:
            return nil
        }
    }
}

/// Closes a connection that has been silent in both directions for the idle timeout.
final class IdleCloser: ChannelInboundHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
