import LBConfig
import Logging
import NIOCore

/// l7-tcp: one real-server connection per client connection, bytes pumped both ways unchanged.
struct TCPProxy: Sendable {
    let service: VirtualService
    let connector: BackendConnector
    let logger: Logger

    /// Ends at once; the real server is connected afterwards. NIO closes an accepted connection whose initializer
    /// finishes after its listening socket closed, so waiting here for the real server would kill every connection
    /// still connecting when lbd stops, or when a mode switch or reload closes the listener. The client is not read
    /// until the two connections are joined.
    func initialize(client channel: Channel) -> EventLoopFuture<Void> {
        let client = IPAddress(channel.remoteAddress)
        let port = UInt16(channel.localAddress?.port ?? 0)
        let idle = TimeAmount(service.timeouts.idle)
        let pool = connector.pool
        do {
            try channel.syncOptions?.setOption(.autoRead, value: false)
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        connector.connect(client: client, port: port, on: channel.eventLoop) { backend in
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
                    try backend.pipeline.syncOperations.addHandler(back)
                    try channel.pipeline.syncOperations.addHandlers([IdleStateHandler(allTimeout: idle), IdleCloser(), front])
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
        return channel.eventLoop.makeSucceededVoidFuture()
    }
}
