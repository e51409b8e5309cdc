import NIOCore
import NIOHTTP1

/// The real-server end of an l7-http exchange: writes the request bytes `HTTPFrontHandler` made (`RequestBytes`)
/// straight to the socket, passes the response to the front handler, and reads from the real server only while the
/// client can take more. Responses of the simple form come from `RealServerResponseReader` by direct calls; the
/// rest, once that reader has handed the connection to NIO's parser, as response parts.
final class BackendHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The client currently served; nil while the connection idles in the keep-alive pool.
    weak var front: HTTPFrontHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var responseKeepAlive = true
    private(set) var isClosed = false
    /// The requests sent and not yet answered, which the readers of responses must know (a response to HEAD has no
    /// body whatever its Content-Length says).
    private let expected: ExpectedResponses
    /// The connection's wire bytes, when it is plain (this handler writes every byte, the reader below it reads
    /// every byte); nil when a `ByteCounter` below TLS counts them, for the fallback server (not counted), and once
    /// the connection is closed (a write then never reaches the socket).
    private var meter: ServerByteMeter?

    init(expected: ExpectedResponses, meter: ServerByteMeter?) {
        self.expected = expected
        self.meter = meter
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) {
        meter?.flush()
        self.context = nil
    }

    /// Bytes the reader below took from the socket (all of them, whatever it then does with them).
    func countReceived(_ count: Int) { meter?.received(count) }

    var isWritable: Bool { context?.channel.isWritable ?? false }
    var channel: Channel? { context?.channel }

    /// Starts a request: its head's bytes (`RequestBytes.forwarded`) and its method, for the response's reader.
    func writeHead(method: HTTPMethod, bytes: ByteBuffer) {
        expected.requestWritten(method)
        meter?.sent(bytes.readableBytes)
        context?.write(wrapOutboundOut(bytes), promise: nil)
        hasUnflushedWrites = true
    }

    /// More of the request: body bytes, framed as its head stated.
    func write(_ bytes: ByteBuffer) {
        meter?.sent(bytes.readableBytes)
        context?.write(wrapOutboundOut(bytes), promise: nil)
        hasUnflushedWrites = true
    }

    /// Only this handler writes to the real server, so a flush with nothing written since the last has nothing to
    /// send: the front flushes both when it starts a request and when the client's read ends, and the second is
    /// usually that (a flush costs a trip through the pipeline and the channel's checks).
    private var hasUnflushedWrites = false

    func flush() {
        guard hasUnflushedWrites else { return }
        hasUnflushedWrites = false
        meter?.flushIfDue()
        context?.flush()
    }

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

    /// A real-server connection's handlers: lb's reader of simple responses and this handler (NIO's parser goes in
    /// between at the first response that is not simple). Requests leave as the bytes lb wrote (no encoder
    /// between this handler and the socket); interim 1xx responses are passed up so they can reach the client. No
    /// outbound header validator: what lb writes was read by llhttp or lb's reader under the same rules, or is lb's
    /// own (see `HTTPProxy`).
    static func addClientCodec(to pipeline: ChannelPipeline.SynchronousOperations, meter: ServerByteMeter?) throws {
        let expected = ExpectedResponses()
        let backend = BackendHandler(expected: expected, meter: meter)
        try pipeline.addHandler(RealServerResponseReader(backend: backend, expected: expected), name: "response-reader")
        try pipeline.addHandler(backend, name: "backend")
    }

    /// A response head of the simple form from `RealServerResponseReader`; false if nobody is waiting for it (the
    /// connection is then closed).
    func receivedHead(_ head: SimpleResponseHead, fields: [FieldSpan], bytes: ByteBuffer) -> Bool {
        guard let front else { return closeOnUnsolicitedBytes() }
        responseKeepAlive = head.keepAlive
        front.responseHead(head, fields: fields, bytes: bytes)
        return true
    }

    /// Body bytes of a simple response, as they came (its Content-Length frames them).
    func receivedBody(_ body: ByteBuffer) -> Bool {
        guard let front else { return closeOnUnsolicitedBytes() }
        front.responseBody(body)
        return true
    }

    /// The simple response is complete.
    func receivedEnd() {
        front?.responseEnd(nil, backendReusable: responseKeepAlive && !isClosed)
    }

    /// Bytes from a server that owes nobody an answer (after the response it framed, or while the connection idles
    /// in the pool): a later request must never receive them as its response.
    private func closeOnUnsolicitedBytes() -> Bool {
        isClosed = true
        context?.close(promise: nil)
        return false
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard front != nil else {
            _ = closeOnUnsolicitedBytes()
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
        meter?.flushIfDue()
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
        meter?.flush()
        meter = nil
        front?.backendFailed(nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { failed(error) }

    /// The response cannot be read (a parser error, bytes after a response that no request awaits, a close in the
    /// middle of one): the front handler answers its client, and the connection closes.
    func failed(_ error: Error) {
        isClosed = true
        front?.backendFailed(error)
        context?.close(promise: nil)
    }
}

/// NIO's response parser, told the method of each request it will read an answer to (a response to HEAD has no
/// body), once `RealServerResponseReader` has handed the connection over. When to tell it is `ExpectedResponses`'
/// concern: a request written during a read only after that read.
package final class ResponseParserFeed {
    let parser: HTTPResponseDecoder

    package init(_ parser: HTTPResponseDecoder) { self.parser = parser }

    /// The handler that runs the parser on what the connection reads.
    package func makeHandler() -> ByteToMessageHandler<RealServerResponseDecoder> {
        ByteToMessageHandler(RealServerResponseDecoder(feed: self))
    }

    package func expectResponse(to method: HTTPMethod) { parser.write(data: .head(method.headForResponseParser)) }
}

/// NIO's response parser, without its watch on outbound writes. Handed to `ByteToMessageHandler` directly, the parser
/// makes that handler an outbound one that reads every write as a request part to learn its method; lb writes bytes,
/// and `BackendHandler.writeHead` tells the parser each request's method instead (`ExpectedResponses`,
/// `ResponseParserFeed`). Inbound, it is the parser itself.
package struct RealServerResponseDecoder: ByteToMessageDecoder {
    package typealias InboundOut = HTTPClientResponsePart
    let feed: ResponseParserFeed

    package func decoderAdded(context: ChannelHandlerContext) { feed.parser.decoderAdded(context: context) }
    package func decoderRemoved(context: ChannelHandlerContext) { feed.parser.decoderRemoved(context: context) }
    package func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        try feed.parser.decode(context: context, buffer: &buffer)
    }
    package func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try feed.parser.decodeLast(context: context, buffer: &buffer, seenEOF: seenEOF)
    }
    package func shouldReclaimBytes(buffer: ByteBuffer) -> Bool { feed.parser.shouldReclaimBytes(buffer: buffer) }
}
