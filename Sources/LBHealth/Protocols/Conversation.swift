import NIOCore

/// A health check that speaks a protocol: bytes to open with, then a reaction to what the server sends.
/// Pure (no I/O), so each protocol is unit-tested byte by byte.
package protocol ProbeConversation: Sendable {
    var opening: [UInt8] { get }
    /// Consumes what it can of `input` (bytes received so far, not yet consumed).
    mutating func receive(_ input: inout [UInt8]) -> ConversationStep
}

package enum ConversationStep: Equatable {
    case needMore
    case send([UInt8])
    case finish(ProbeResult, send: [UInt8] = [])
}

/// Drives a conversation on a channel and completes `promise` with its result (an early close is a failure).
final class ConversationHandler<C: ProbeConversation>: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var conversation: C
    private let promise: EventLoopPromise<ProbeResult>
    private var input: [UInt8] = []
    private var finished = false
    private let limit = 1 << 20

    init(_ conversation: C, promise: EventLoopPromise<ProbeResult>) {
        self.conversation = conversation
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !finished else { return }
        input += unwrapInboundIn(data).readableBytesView
        guard input.count <= limit else { return finish(.fail("answer larger than 1 MiB"), context: context) }
        while !finished {
            switch conversation.receive(&input) {
            case .needMore: return
            case .send(let bytes):
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: bytes)), promise: nil)
            case .finish(let result, let bytes):
                if !bytes.isEmpty { context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: bytes)), promise: nil) }
                finish(result, context: context)
            }
        }
    }

    private func finish(_ result: ProbeResult, context: ChannelHandlerContext) {
        finished = true
        promise.succeed(result)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !finished { finished = true; promise.succeed(.fail("the server closed the connection mid-check")) }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !finished { finished = true; promise.fail(error) }
        context.close(promise: nil)
    }
}
