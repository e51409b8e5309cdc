import NIOCore
import NIOHTTP1

/// The requests sent on a real-server connection and not yet answered, oldest first, as the reader of its responses
/// must know them: lb's own (`RealServerResponseReader`), then, once it has handed over, NIO's (`ResponseParserFeed`).
/// A request written during a read (by either reader) is expected only after that read: what the read still holds
/// was sent before it, and is never its answer (the reader finds no request for it and fails, a 502), as with NIO's
/// own write-observing codec.
final class ExpectedResponses {
    private var methods: [HTTPMethod] = []
    private var writtenDuringRead: [HTTPMethod] = []
    private var reading = false
    private var feed: ResponseParserFeed?

    func requestWritten(_ method: HTTPMethod) {
        if reading {
            writtenDuringRead.append(method)
        } else if let feed {
            feed.expectResponse(to: method)
        } else {
            methods.append(method)
        }
    }

    /// Runs `body` (the reading of what the server sent, by either reader), then expects the requests written
    /// meanwhile.
    func read(_ body: () -> Void) {
        let outer = reading
        reading = true
        body()
        reading = outer
        guard !outer, !writtenDuringRead.isEmpty else { return }
        let written = writtenDuringRead
        writtenDuringRead.removeAll(keepingCapacity: true)
        for method in written { requestWritten(method) }
    }

    /// The method of the request the next response answers, or nil if no request awaits one.
    var next: HTTPMethod? { methods.first }

    /// The next response was read.
    func answered() { methods.removeFirst() }

    /// NIO's parser reads from here on: it expects every request still unanswered (and, after the current read,
    /// those written during it).
    func handOver(to feed: ResponseParserFeed) {
        self.feed = feed
        for method in methods { feed.expectResponse(to: method) }
        methods.removeAll()
    }
}

/// Reads a real server's responses for `BackendHandler`. Heads of the simple form (`SimpleResponseHead`) and their
/// Content-Length bodies it reads itself and hands on by direct calls: no String, header list or head object is
/// built, and the head is forwarded by copying its lines. At the first head that is not of that form (an interim
/// response, a chunked or close-delimited body, anything unusual), NIO's llhttp-based parser goes in after it and
/// reads the rest of the connection as it always did; this reader then only passes bytes on.
///
/// It never refuses a response itself: whatever it does not accept is left to NIO's parser. Only bytes that answer
/// no request (which NIO's parser refuses too) and a close in the middle of a response end the exchange here.
final class RealServerResponseReader: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private enum Mode {
        /// At the start of a response.
        case head
        /// Passing on this many more body bytes of the current response.
        case body(remaining: Int)
        /// NIO's parser reads everything from here on.
        case parser
        /// The connection failed or is closing: nothing more is read.
        case closed
    }

    /// Why the reader ended an exchange (NIO's parser fails the same responses).
    enum Failure: Error, CustomStringConvertible {
        case unsolicitedResponse
        case closedInsideResponse
        /// NIO's parser could not be put in (the connection is closing): the response was begun, so the request
        /// must not be sent again, as it would be after a plain close.
        case handOverFailed(Error)
        var description: String {
            switch self {
            case .unsolicitedResponse: "the real server sent bytes that answer no request"
            case .closedInsideResponse: "the real server closed the connection inside a response"
            case .handOverFailed(let error): "the response parser could not be added: \(error)"
            }
        }
    }

    private var mode = Mode.head
    private var scanner: ResponseHeadScanner
    /// Bytes read and not yet passed on: part of a head.
    private var unread = ByteBuffer()
    private let backend: BackendHandler
    private let expected: ExpectedResponses

    init(backend: BackendHandler, expected: ExpectedResponses) {
        self.backend = backend
        self.expected = expected
        // NIO's response parser limits each field and their total; a head within the smaller limit is within both.
        let limits = NIOHTTPDecoderLimitConfiguration()
        scanner = ResponseHeadScanner(maxHeadBytes: min(limits.maxHeaderListSize, limits.maxHeaderFieldSize),
                                      maxFields: limits.maxHeaderFieldCount)
    }

    /// Whether NIO's parser reads this connection (for tests).
    var handedToParser: Bool {
        if case .parser = mode { return true }
        return false
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        backend.countReceived(unwrapInboundIn(data).readableBytes)
        switch mode {
        case .parser:
            expected.read { context.fireChannelRead(data) }
            return
        case .closed:
            return
        case .head, .body:
            break
        }
        unread.appendAsUnread(unwrapInboundIn(data))  // only an unfinished head is ever held
        expected.read { readUnread(context: context) }
    }

    private func readUnread(context: ChannelHandlerContext) {
        while unread.readableBytes > 0 {
            switch mode {
            case .parser, .closed:
                unread = ByteBuffer()
                return
            case .body(let remaining):
                let count = min(remaining, unread.readableBytes)
                guard let part = unread.readSlice(length: count) else { return }
                mode = count == remaining ? .head : .body(remaining: remaining - count)
                guard backend.receivedBody(part) else { mode = .closed; continue }
                if count == remaining { backend.receivedEnd() }
            case .head:
                guard let method = expected.next else {
                    mode = .closed
                    backend.failed(Failure.unsolicitedResponse)
                    continue
                }
                switch scanner.scan(unread, requestMethod: method) {
                case .incomplete:
                    return
                case .notSimple:
                    handOverToParser(context: context)
                    return
                case .simple(let head):
                    scanner.nextHead()
                    expected.answered()
                    guard backend.receivedHead(head, fields: scanner.fields, bytes: unread) else { mode = .closed; continue }
                    unread.moveReaderIndex(forwardBy: head.size)
                    if head.bodyLength > 0 {
                        mode = .body(remaining: head.bodyLength)
                    } else {
                        backend.receivedEnd()
                    }
                }
            }
        }
        // All passed on: the storage goes with the last bytes (the front handler may still hold some of them).
        unread = ByteBuffer()
    }

    /// The server closed its side: inside a response, that response can never be complete (NIO's parser fails
    /// the same way); between responses, `BackendHandler` handles the close as always.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            switch mode {
            case .body:
                mode = .closed
                backend.failed(Failure.closedInsideResponse)
            case .head where unread.readableBytes > 0:
                mode = .closed
                backend.failed(Failure.closedInsideResponse)
            case .head, .parser, .closed:
                break
            }
        }
        // NIO's parser reads to the close here (a response delimited by it).
        expected.read { context.fireUserInboundEventTriggered(event) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        expected.read { context.fireChannelInactive() }  // NIO's parser reads what is left here too
    }

    /// From here on NIO's parser reads the connection, starting with what is unread.
    private func handOverToParser(context: ChannelHandlerContext) {
        let feed = ResponseParserFeed(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes,
                                                          informationalResponseStrategy: .forward))
        do {
            try context.pipeline.syncOperations.addHandler(feed.makeHandler(), name: "parser", position: .after(self))
        } catch {
            mode = .closed
            backend.failed(Failure.handOverFailed(error))
            return
        }
        mode = .parser
        expected.handOver(to: feed)
        let rest = unread
        unread = ByteBuffer()
        context.fireChannelRead(wrapInboundOut(rest))
    }
}
