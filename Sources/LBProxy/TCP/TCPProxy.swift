import LBConfig
import Logging
import NIOCore

/// l7-tcp: one real-server connection per client connection, bytes pumped both ways unchanged.
struct TCPProxy: Sendable {
    let service: VirtualService
    let connector: BackendConnector
    let logger: Logger

    func initialize(client channel: Channel) -> EventLoopFuture<Void> {
        let client = IPAddress(channel.remoteAddress)
        let port = UInt16(channel.localAddress?.port ?? 0)
        let idle = TimeAmount(service.timeouts.idle)
        let pool = connector.pool
        return connector.connect(client: client, port: port, on: channel.eventLoop) { backend in
            backend.eventLoop.makeSucceededVoidFuture()
        }.flatMapThrowing { backend, selection in
            // Same event loop as the client channel: the pipelines can be joined synchronously.
            let (front, back) = GlueHandler.matchedPair()
            try backend.pipeline.syncOperations.addHandler(back)
            try channel.pipeline.syncOperations.addHandlers([IdleStateHandler(allTimeout: idle), IdleCloser(), front])
            channel.closeFuture.whenComplete { _ in
                pool.release(selection)
                backend.close(promise: nil)
            }
        }.flatMapErrorThrowing { [logger] error in
            // No server could take the client: close at once rather than leave it hanging.
            logger.error("client refused: \(error)", metadata: ["client": "\(client?.description ?? "?")"])
            throw error
        }
    }
}
