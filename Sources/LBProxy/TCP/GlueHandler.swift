import NIOCore

/// Joins two channels on the same event loop into one byte pipe, in both directions.
///
/// Backpressure: a side reads only while its partner can accept writes, so a slow reader slows the writer instead
/// of filling lbd's memory. Half-close: end of input on one side becomes a write shutdown on the other, which is
/// what lets a client send its last bytes and still read the whole reply.
final class GlueHandler: ChannelDuplexHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var inputClosed = false
    private var outputClosed = false

    private init() {}

    static func matchedPair() -> (GlueHandler, GlueHandler) {
        let first = GlueHandler(), second = GlueHandler()
        first.partner = second
        second.partner = first
        return (first, second)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    // MARK: Calls from the partner

    private func partnerWrite(_ data: NIOAny) {
        context?.write(data, promise: nil)
    }

    private func partnerFlush() {
        context?.flush()
    }

    /// The partner's peer finished sending: finish sending to ours (after what is still queued), keep reading its reply.
    private func partnerInputEnded() {
        guard let context, !outputClosed else { return }
        outputClosed = true
        // Writes complete in order, so once this empty write is done everything before it has reached the socket;
        // only then shut the output down (NIO would escalate to a full close, dropping queued bytes, otherwise).
        let channel = context.channel
        channel.writeAndFlush(ByteBuffer()).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
        }
        closeIfBothDirectionsDone()
    }

    /// The partner's connection ended without an orderly end of input (reset, error, or closed by lb): what it
    /// already delivered still goes out to our peer (a study's last megabytes must not be dropped because the other
    /// side hung up first), then the connection closes. A peer that stops reading is cut by the idle timeout.
    private func partnerClosed() {
        guard let channel = context?.channel else { return }
        outputClosed = true
        channel.writeAndFlush(ByteBuffer()).whenComplete { _ in channel.close(promise: nil) }
    }

    private var partnerWritable: Bool {
        context?.channel.isWritable ?? false
    }

    private func partnerBecameWritable() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }

    private func closeIfBothDirectionsDone() {
        guard inputClosed && outputClosed, let channel = context?.channel else { return }
        channel.writeAndFlush(ByteBuffer()).whenComplete { _ in channel.close(promise: nil) }
    }

    // MARK: Channel events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        partner?.partnerWrite(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // After an orderly end of input the partner is already finishing its writes and will close itself;
        // closing it now would drop the bytes still queued for its peer. Otherwise (a reset) close it at once.
        if !inputClosed { partner?.partnerClosed() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            inputClosed = true
            partner?.partnerInputEnded()
            closeIfBothDirectionsDone()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Resets and the like: both connections end; the other peer sees a close, as with a direct connection.
        partner?.partnerClosed()
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
    }

    func read(context: ChannelHandlerContext) {
        if partner?.partnerWritable ?? false {
            context.read()
        } else {
            pendingRead = true
        }
    }
}
