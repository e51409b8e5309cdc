import NIOCore

/// First handler of a listening channel: each accepted client connection is set up (admitted or refused, its
/// handlers added) and registered with its event loop in one synchronous step.
///
/// Why not NIO's `ServerBootstrap` child initializer: NIO passes each accepted connection through a chain of futures
/// (options, initializer, a check of the listening channel, a task on the child's loop, registration, activation),
/// about twenty allocations per connection, and closes a connection whose chain completes after its listening socket
/// closed. Here the connection's handlers are in place before it is registered, exactly as NIO's chain leaves them,
/// and registration is what NIO itself does for a socket that is already connected (`registerAlreadyConfigured0`:
/// register, then active, then the first read). The connection never reaches NIO's accept handler.
final class ClientAcceptor: ChannelInboundHandler {
    typealias InboundIn = Channel

    private let slot: ServiceSlot

    init(slot: ServiceSlot) {
        self.slot = slot
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let client = unwrapInboundIn(data)
        // A client accepted for another event loop (--threads above 1) is set up on its own loop.
        if client.eventLoop.inEventLoop {
            Self.start(client, slot: slot)
        } else {
            client.eventLoop.execute { [slot] in Self.start(client, slot: slot) }
        }
    }

    private static func start(_ client: Channel, slot: ServiceSlot) {
        do {
            try slot.current.initialize(client: client, slot: slot)
        } catch {
            // Refused (the connection limit) or its handlers could not be added: the socket is closed unregistered,
            // as NIO closes an accepted connection whose initializer failed.
            client.close(promise: nil)
            return
        }
        client._channelCore.registerAlreadyConfigured0(promise: nil)
    }
}
