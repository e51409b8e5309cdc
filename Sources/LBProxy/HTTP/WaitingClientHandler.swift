import NIOCore

/// A client connection that has sent nothing yet — a browser's speculative pre-connection, a port scan, a client
/// that connects long before it asks — holds only this handler and a place on its loop's `ConnectionClock`. The
/// request reader and `HTTPFrontHandler` (with their parser state and buffers) are added when the first bytes
/// arrive, and this handler then leaves the pipeline, so requests pay nothing for it.
///
/// The header timeout runs from the moment of connection, as it would in `HTTPFrontHandler`: its deadline is handed
/// on, so a client cannot restart the clock by sending one byte. A client silent until the header timeout gets the
/// same 408 and close; one silent for a shorter idle timeout is closed without an answer, as an idle connection is.
final class WaitingClientHandler: ChannelInboundHandler, RemovableChannelHandler, ClockedConnection {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let proxy: HTTPProxy
    private var context: ChannelHandlerContext?
    private var clock: ConnectionClock?
    private var headerDeadline = NIODeadline.now()
    /// At the header deadline the client gets a 408; at an earlier idle deadline it is closed without one.
    private var answerAtDeadline = true
    private var waiting = true

    var clockPosition: Int?

    init(proxy: HTTPProxy) {
        self.proxy = proxy
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let timeouts = proxy.runtime.clientTimeouts
        let now = NIODeadline.now()
        headerDeadline = now + timeouts.header
        answerAtDeadline = timeouts.header <= timeouts.idle
        let clock = ConnectionClock.forLoop(context.eventLoop)
        self.clock = clock
        clock.wake(self, at: now + min(timeouts.header, timeouts.idle))
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        clock?.remove(self)
        self.context = nil
    }

    func wake() {
        clock?.remove(self)
        guard waiting, let context else { return }
        waiting = false
        if answerAtDeadline {
            proxy.runtime.logger.info("closing slow client: request head not received in time",
                                      metadata: ["client": "\(context.channel.remoteAddress?.description ?? "?")"])
            // As HTTPFrontHandler answers a head that did not arrive in time; the close does not wait for the write
            // (a TLS handshake that stalled halfway would hold it forever, and the point is to free the socket).
            context.writeAndFlush(wrapInboundOut(ResponseBytes.requestTimeout(allocator: context.channel.allocator)),
                                  promise: nil)
        }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard waiting else {
            context.fireChannelRead(data)
            return
        }
        waiting = false
        let clock = self.clock ?? ConnectionClock.forLoop(context.eventLoop)
        do {
            try proxy.addHTTPHandlers(to: context.pipeline.syncOperations, after: self, headerDeadline: headerDeadline,
                                      clock: clock)
        } catch {
            proxy.runtime.logger.error("cannot set up an HTTP connection: \(error)")
            context.close(promise: nil)
            return
        }
        // Only now that the front handler is on the clock: the last connection to leave a clock stops it.
        clock.remove(self)
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard waiting else {
            context.fireErrorCaught(error)
            return
        }
        // Before any request (a failed TLS handshake): nothing to answer.
        waiting = false
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        clock?.remove(self)
        waiting = false
        context.fireChannelInactive()
    }
}
