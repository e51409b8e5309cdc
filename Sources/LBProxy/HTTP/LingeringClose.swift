import NIOCore

/// Ends a client connection that lb closes while the client may still be sending: a request body the real server
/// answered before it was complete, a request lb refused, requests sent behind the one that ends the connection.
///
/// Closing a socket with input it has not read makes Linux send a reset instead of a FIN and drop what it has not
/// sent yet; bytes arriving after the close are answered with a reset too. A client that gets a reset may discard
/// the response it has not read yet (Windows does), so it would see a broken connection instead of lb's answer.
/// As nginx's lingering close: once the response has gone to the socket, lb shuts down its sending side (the client
/// sees the response end; a TLS client gets close_notify), then reads and discards what the client still sends
/// until the client closes, `quietLimit` passes without a byte, or `totalLimit` passes in all.
///
/// While the answer is still being written, the client is read too and what it sends discarded: a client that sends
/// its whole upload before it reads (many do) would otherwise never take the answer. The connection's own timeouts
/// hold until the sending side is shut down (a slow reader of a long answer is not cut off; one that stops reading
/// is closed at the idle timeout); the limits below count from the shutdown.
///
/// Goes into the pipeline just before the request reader (after TLS), so nothing it discards reaches a parser.
final class LingeringClose: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    static let quietLimit = TimeAmount.seconds(5)
    static let totalLimit = TimeAmount.seconds(30)

    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    /// Set once the sending side is shut down: the limits count from then.
    private var lingerEnds: NIODeadline?
    private var lastRead = NIODeadline.now()

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // The handlers after this one may be holding reads back (a request waiting behind the last one).
        context.read()
        shutDownOutputOnceWritten(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        self.context = nil
    }

    /// Shutting the output down while bytes are queued would fail them: it waits for the last write.
    private func shutDownOutputOnceWritten(context: ChannelHandlerContext) {
        guard context.hasNoQueuedWrites else {
            context.afterQueuedWrites { [self] written in
                guard let context = self.context else { return }
                if written { shutDownOutput(context: context) } else { context.close(promise: nil) }
            }
            return
        }
        shutDownOutput(context: context)
    }

    private func shutDownOutput(context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        lingerEnds = now + Self.totalLimit
        lastRead = now
        scheduleCheck(at: now + Self.quietLimit, context: context)
        let closed = context.eventLoop.makePromise(of: Void.self)
        context.close(mode: .output, promise: closed)
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        closed.futureResult.whenFailure { _ in
            // The output could not be shut down on its own: close the whole connection.
            bound.value.context?.close(promise: nil)
        }
    }

    private func scheduleCheck(at deadline: NIODeadline, context: ChannelHandlerContext) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) { bound.value.check() }
    }

    private func check() {
        guard let context, let lingerEnds else { return }
        let now = NIODeadline.now()
        let quietEnds = lastRead + Self.quietLimit
        if now >= lingerEnds || now >= quietEnds {
            context.close(promise: nil)
            return
        }
        scheduleCheck(at: min(quietEnds, lingerEnds), context: context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Discarded.
        if lingerEnds != nil { lastRead = .now() }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.read()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // The client reset the connection or broke TLS while lb discarded its bytes: the connection ends.
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }
}
