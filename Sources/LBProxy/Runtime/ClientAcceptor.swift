import NIOCore

/// First handler of a listening channel: each accepted client connection is set up (admitted or refused, its
/// handlers added) on its own event loop in one synchronous step, then registered by NIO's own code for accepted
/// connections.
///
/// Why not NIO's `ServerBootstrap` child initializer: NIO passes each accepted connection through a chain of futures
/// (options, initializer, a check of the listening channel), about ten allocations per connection, and closes a
/// connection whose chain completes after its listening socket closed. The connection never reaches NIO's accept
/// handler; it goes straight to what the listening channel does with a connection nothing else took
/// (`channelRead0`): a task on the connection's loop registers it, makes it active and starts reading, or closes it
/// if any of that fails. That task is queued after the set-up (the same loop runs them in order), so the connection
/// is registered with its handlers in place, as NIO's chain leaves it.
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
            Self.setUp(client, slot: slot)
        } else {
            client.eventLoop.execute { [slot] in Self.setUp(client, slot: slot) }
        }
        context.channel._channelCore.channelRead0(data)
    }

    private static func setUp(_ client: Channel, slot: ServiceSlot) {
        do {
            try slot.current.initialize(client: client, slot: slot)
        } catch {
            // Refused (the connection limit) or its handlers could not be added: closed before it is registered, as
            // NIO closes an accepted connection whose initializer failed (its registration then fails quietly).
            client.close(promise: nil)
        }
    }
}
