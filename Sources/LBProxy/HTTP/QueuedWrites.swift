import NIOCore

/// "Once what was written has gone to the socket": a close, or a shutdown of the output, fails what NIO still has
/// queued, so both the end of a response (`HTTPFrontHandler`) and a lingering close (`LingeringClose`) wait for it.
extension ChannelHandlerContext {
    /// NIO holds nothing queued: the flush handed everything written to the kernel, which delivers it before a FIN
    /// (the usual case for a response the socket takes whole, checked without a promise and its callback).
    var hasNoQueuedWrites: Bool {
        (try? channel.syncOptions?.getOption(.bufferedWritableBytes)) == 0
    }

    /// Runs `action` when an empty write queued behind everything written so far completes; `written` is false if
    /// it failed (the connection is gone).
    func afterQueuedWrites(_ action: @escaping (_ written: Bool) -> Void) {
        let written = eventLoop.makePromise(of: Void.self)
        writeAndFlush(NIOAny(channel.allocator.buffer(capacity: 0)), promise: written)
        written.futureResult.assumeIsolated().whenComplete { result in
            if case .failure = result { action(false) } else { action(true) }
        }
    }
}
