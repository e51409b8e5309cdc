import LBConfig
import Logging
import NIOCore

/// l7-tcp: one real-server connection per client connection, bytes pumped both ways unchanged.
struct TCPProxy: Sendable {
    let service: VirtualService
    let connector: BackendConnector
    let logger: Logger

    /// Ends at once; the real server is connected afterwards, so a client still connecting when lbd stops, or when
    /// a mode switch or reload closes the listener, carries on. The client is not read until the two connections are
    /// joined — except at its end of input, which NIO reads whatever autoRead says: a client that sends and
    /// half-closes at once has both held by `EarlyClientInput` until the join.
    func initialize(client channel: Channel) throws {
        let client = IPAddress(channel.remoteAddress)
        let port = UInt16(channel.localAddress?.port ?? 0)
        let idle = TimeAmount(service.timeouts.idle)
        let pool = connector.pool
        let early = EarlyClientInput()
        try channel.syncOptions?.setOption(.autoRead, value: false)
        try channel.pipeline.syncOperations.addHandler(early, name: "early-input")
        connector.connect(client: client, port: port, on: channel.eventLoop, countsWireBytes: false) { backend, _ in
            backend.eventLoop.makeSucceededVoidFuture()
        }.whenComplete { [logger] result in
            switch result {
            case .success(let (backend, selection)):
                // Whatever happens next, the server is released and its connection closed with the client's (at
                // once if the client has gone meanwhile).
                channel.closeFuture.whenComplete { _ in
                    pool.release(selection)
                    backend.close(promise: nil)
                }
                // Same event loop as the client channel: the pipelines can be joined synchronously.
                do {
                    let (front, back) = GlueHandler.matchedPair()
                    try backend.pipeline.syncOperations.addHandler(back, name: "glue")
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(IdleStateHandler(allTimeout: idle), name: "idle-state")
                    try sync.addHandler(IdleCloser(), name: "idle-closer")
                    try sync.addHandler(front, name: "glue")
                    early.release()
                    try channel.syncOptions?.setOption(.autoRead, value: true)
                } catch {
                    channel.close(promise: nil)
                }
            case .failure(let error):
                // No server could take the client: close at once rather than leave it hanging.
                logger.error("client refused: \(error)", metadata: ["client": "\(client?.description ?? "?")"])
                channel.close(promise: nil)
            }
        }
    }
}

/// Holds what a client delivers before its real server is joined (bytes, end of input) and passes it on, in order,
/// once the glue is in place; then it steps out of the pipeline.
final class EarlyClientInput: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private var held: [NIOAny] = []
    private var inputClosed = false
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { held.append(data) }

    func channelReadComplete(context: ChannelHandlerContext) {}

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            inputClosed = true
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// The glue is in place: what was held goes on, and later input passes straight through.
    func release() {
        guard let context else { return }
        let held = self.held, inputClosed = self.inputClosed
        self.held = []
        for data in held { context.fireChannelRead(data) }
        if !held.isEmpty { context.fireChannelReadComplete() }
        if inputClosed { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
