import LBConfig
import NIOConcurrencyHelpers
import NIOCore

/// Keep-alive connections to real servers, waiting for their next request. One set per event loop and pool
/// instance (a generation of a service), used only from that loop, so a reused connection needs no locking. A
/// connection is only ever reused by the pool that opened it: after a reload, a new pool starts with none, and the
/// retired pool's idle connections are closed.
final class IdleConnections {
    /// By server index (a pool's servers are numbered from 0). An array, not a dictionary: a dictionary's in-place
    /// update allocates each time, and this is done twice per request.
    private var idle: [[(handler: BackendHandler, selection: Selection)]] = []
    /// Set when the pool is retired: returned connections are closed instead of kept.
    private var retired = false

    /// More than this many idle connections per server are closed rather than kept.
    private let maximumPerServer = 64

    private struct RegistryKey: Hashable {
        let loop: ObjectIdentifier
        let pool: ObjectIdentifier
    }

    private static let registry = NIOLockedValueBox<[RegistryKey: (loop: EventLoop, connections: NIOLoopBound<IdleConnections>)]>([:])

    static func forLoop(_ loop: EventLoop, pool: RealServerPool) -> IdleConnections {
        let key = RegistryKey(loop: ObjectIdentifier(loop), pool: ObjectIdentifier(pool))
        let bound = registry.withLockedValue { registry in
            if let existing = registry[key] { return existing.connections }
            let created = NIOLoopBound(IdleConnections(), eventLoop: loop)
            registry[key] = (loop, created)
            return created
        }
        return bound.value
    }

    /// The pool's generation is over: its idle connections close on their loops, and none is kept from now on.
    static func retire(pool: RealServerPool) {
        let id = ObjectIdentifier(pool)
        let mine = registry.withLockedValue { registry in
            let found = registry.filter { $0.key.pool == id }
            for key in found.keys { registry[key] = nil }
            return Array(found.values)
        }
        for (loop, connections) in mine {
            loop.execute { connections.value.closeAll() }
        }
    }

    private func closeAll() {
        retired = true
        let all = idle.flatMap { $0 }
        idle = []
        for entry in all { entry.handler.close() }
    }

    /// An open idle connection to the chosen server, if there is one.
    func take(for selection: Selection) -> BackendHandler? {
        guard let index = selection.serverIndex, index < idle.count else { return nil }
        while let candidate = idle[index].popLast() {
            if !candidate.handler.isClosed, candidate.handler.channel?.isActive == true { return candidate.handler }
        }
        return nil
    }

    /// Keeps a connection whose response has completed. The pool's active count is released now: idle is not busy.
    func put(_ handler: BackendHandler, selection: Selection, pool: RealServerPool) {
        pool.release(selection)
        guard !retired, let index = selection.serverIndex, index >= 0,
              index >= idle.count || idle[index].count < maximumPerServer else {
            handler.close()
            return
        }
        while idle.count <= index { idle.append([]) }
        idle[index].append((handler, selection))
    }
}
