import NIOCore
import NIOHTTP1

/// Reads a client connection's requests for `HTTPFrontHandler`. Heads of the simple form (`SimpleRequestHead`) and
/// their Content-Length bodies it reads itself and hands to the front handler by direct calls: no String, header
/// list or head object is built, and the head is forwarded by copying its lines. At the first head that is not of
/// that form, NIO's llhttp-based parser goes in after it and reads the rest of the connection, handing the front
/// handler its parts as before; this reader then only passes bytes on.
///
/// It never answers a client itself: whatever it does not accept is left to NIO's parser, which reads, refuses or
/// forwards it exactly as it did every request before this reader existed.
final class ClientRequestReader: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private enum Mode {
        /// At the start of a request: waiting for its head, or for the front handler to finish the one before.
        case head
        /// Passing on this many more body bytes of the current request.
        case body(remaining: Int)
        /// NIO's parser reads everything from here on.
        case parser
    }

    private var mode = Mode.head
    private var scanner: RequestHeadScanner
    /// Bytes read and not yet passed on: part of a head, or a next request waiting for the current one to finish.
    private var unread = ByteBuffer()
    private let front: HTTPFrontHandler
    private let parserLimits: NIOHTTPDecoderLimitConfiguration
    private var context: ChannelHandlerContext?

    init(front: HTTPFrontHandler, limits: NIOHTTPDecoderLimitConfiguration) {
        self.front = front
        parserLimits = limits
        // NIO limits each field (and the target) and their total; a head within the smaller limit is within both.
        scanner = RequestHeadScanner(maxHeadBytes: min(limits.maxHeaderListSize, limits.maxHeaderFieldSize),
                                     maxFields: limits.maxHeaderFieldCount)
    }

    /// NIO's request parser as lb configures it.
    static func parser(limits: NIOHTTPDecoderLimitConfiguration) -> ByteToMessageHandler<HTTPRequestDecoder> {
        ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop,
                                                limitConfiguration: limits))
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Whether NIO's parser reads this connection (for tests).
    var handedToParser: Bool {
        if case .parser = mode { return true }
        return false
    }

    /// The capacity of the buffer holding what was read and not passed on (for tests).
    var heldCapacity: Int { unread.capacity }

    /// Bytes were read from the client and not yet passed on.
    var hasUnreadBytes: Bool { unread.readableBytes > 0 }

    /// A next request is held until the front handler has finished the current one.
    var holdsNextRequest: Bool {
        guard case .head = mode else { return false }
        return unread.readableBytes > 0 && !front.isReadyForRequest
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .parser = mode {
            context.fireChannelRead(data)
            return
        }
        unread.appendAsUnread(unwrapInboundIn(data))
        readUnread(context: context)
    }

    /// The front handler can take the next request (the response before it is complete).
    func frontIsReady() {
        guard let context, case .head = mode else { return }
        readUnread(context: context)
    }

    private func readUnread(context: ChannelHandlerContext) {
        while unread.readableBytes > 0 {
            switch mode {
            case .parser:
                return
            case .body(let remaining):
                let count = min(remaining, unread.readableBytes)
                guard let part = unread.readSlice(length: count) else { return }
                mode = count == remaining ? .head : .body(remaining: remaining - count)
                front.requestBody(part)
                if count == remaining { front.requestEnd() }
            case .head:
                guard front.isReadyForRequest else { return }
                switch scanner.scan(unread) {
                case .incomplete:
                    return
                case .notSimple:
                    handOverToParser(context: context)
                    return
                case .simple(let head):
                    scanner.nextHead()
                    guard front.startRequest(head, fields: scanner.fields, bytes: unread) else {
                        // Cannot happen while the front handler is ready; a body must never reach another exchange.
                        context.close(promise: nil)
                        return
                    }
                    unread.moveReaderIndex(forwardBy: head.size)
                    if let length = head.contentLength, length > 0 {
                        mode = .body(remaining: length)
                    } else {
                        front.requestEnd()
                    }
                }
            }
        }
        // All passed on: the storage goes with the last bytes (the front handler may still hold some of them).
        unread = ByteBuffer()
    }

    /// From here on NIO's parser reads the connection, starting with what is unread.
    private func handOverToParser(context: ChannelHandlerContext) {
        do {
            try context.pipeline.syncOperations.addHandler(Self.parser(limits: parserLimits), name: "parser", position: .after(self))
        } catch {
            context.close(promise: nil)
            return
        }
        mode = .parser
        let rest = unread
        unread = ByteBuffer()
        context.fireChannelRead(wrapInboundOut(rest))
    }
}
