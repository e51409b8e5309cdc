import NIOCore

/// A client connection that has sent nothing yet — a browser's speculative pre-connection, a port scan, a client
/// that connects long before it asks — holds only this handler and one timer. The HTTP decoder and
/// `HTTPFrontHandler` (with their parser state, buffers and timers) are added when the first bytes arrive, and
/// this handler then leaves the pipeline, so requests pay nothing for it.
///
/// The header timeout runs from the moment of connection, as it would in `HTTPFrontHandler`: its deadline is handed
/// on, so a client cannot restart the clock by sending one byte. A client silent until the header timeout gets the
/// same 408 and close; one silent for a shorter idle timeout is closed without an answer, as an idle connection is.
final class WaitingClientHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let proxy: HTTPProxy
    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    private var timerDeadline = NIODeadline.now()
    private var headerDeadline = NIODeadline.now()
    private var waiting = true
    /// The handler this one's timer was handed to with the first bytes: a new connection schedules one timer, not
    /// one here and another there.
    private weak var front: HTTPFrontHandler?

    init(proxy: HTTPProxy) {
        self.proxy = proxy
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let timeouts = proxy.service.timeouts
        // One reading of the clock for both: a timer due even a nanosecond after the header deadline would be
        // cancelled and scheduled again by HTTPFrontHandler, which wants to wake no later than that deadline.
        let now = NIODeadline.now()
        headerDeadline = now + TimeAmount(timeouts.header)
        let answer = timeouts.header <= timeouts.idle
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timerDeadline = now + TimeAmount(min(timeouts.header, timeouts.idle))
        timer = context.eventLoop.scheduleTask(deadline: timerDeadline) {
            loopBound.value.expired(answer: answer)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    private func expired(answer: Bool) {
        timer = nil
        if let front {
            front.wake()
            return
        }
        guard waiting, let context else { return }
        waiting = false
        if answer {
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
        let handedOver = timer.map { (timer: $0, at: timerDeadline) }
        timer = nil
        do {
            front = try proxy.addHTTPHandlers(to: context.pipeline.syncOperations, after: self,
                                              headerDeadline: headerDeadline, timer: handedOver)
        } catch {
            handedOver?.timer.cancel()
            proxy.runtime.logger.error("cannot set up an HTTP connection: \(error)")
            context.close(promise: nil)
            return
        }
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
        timer?.cancel()
        timer = nil
        waiting = false
        context.fireChannelInactive()
    }
}
