import NIOCore
import NIOHTTP1

/// The real-server end of an l7-http exchange: passes response parts to the client's `HTTPFrontHandler` and reads
/// from the real server only while the client can take more.
final class BackendHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    /// The client currently served; nil while the connection idles in the keep-alive pool.
    weak var front: HTTPFrontHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var responseKeepAlive = true
    private(set) var isClosed = false

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    var isWritable: Bool { context?.channel.isWritable ?? false }
    var channel: Channel? { context?.channel }

    func write(_ part: HTTPClientRequestPart) {
        context?.write(wrapOutboundOut(part), promise: nil)
    }

    func flush() { context?.flush() }

    /// Closes on the front's request; the front is detached first, so the close is not reported back as a failure.
    func close() {
        isClosed = true
        front = nil
        context?.close(promise: nil)
    }

    func resumeReading() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }

    /// The HTTP/1.1 client codec for a real-server connection. lb writes each request's framing itself (NIO's
    /// encoder would otherwise frame some methods only on an exact `chunked` value and drop others' length), and
    /// interim 1xx responses are passed up so they can reach the client. No outbound header validator: what lb
    /// writes was read by llhttp under the same rules, or is lb's own (see `HTTPProxy`).
    static func addClientCodec(to pipeline: ChannelPipeline.SynchronousOperations) throws {
        try pipeline.addHandler(makeRealServerRequestEncoder())
        try pipeline.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes,
                                                                         informationalResponseStrategy: .forward)))
        try pipeline.addHandler(BackendHandler())
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard front != nil else {
            // Bytes from a server that owes nobody an answer (after the response it framed, or while the connection
            // idles in the pool): a later request must never receive them as its response.
            isClosed = true
            context.close(promise: nil)
            return
        }
        switch unwrapInboundIn(data) {
        case .head(let head):
            if !(100..<200).contains(head.status.code) { responseKeepAlive = head.isKeepAlive }
            front?.responseHead(head)
        case .body(let body):
            front?.responseBody(body)
        case .end(let trailers):
            front?.responseEnd(trailers, backendReusable: responseKeepAlive && !isClosed)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        front?.responseFlush()
    }

    func read(context: ChannelHandlerContext) {
        if let front, !front.clientWritable {
            pendingRead = true
        } else {
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { front?.backendBecameWritable() }
    }

    /// The server sent its FIN (the channel allows half-closure, as l7-tcp needs). The parser has already ended a
    /// response that was delimited by the close. Anything still waiting for this server gets its answer now (502,
    /// or a safe retry), and an idle pooled connection is closed rather than left in CLOSE-WAIT.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case ChannelEvent.inputClosed = event else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        isClosed = true
        let front = self.front
        self.front = nil
        front?.backendFailed(nil)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        isClosed = true
        front?.backendFailed(nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        isClosed = true
        front?.backendFailed(error)
        context.close(promise: nil)
    }
}
