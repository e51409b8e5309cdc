import LBConfig
import NIOConcurrencyHelpers
import NIOCore

/// Keep-alive connections to real servers, waiting for their next request. One set per event loop and service,
/// used only from that loop, so a reused connection needs no locking.
final class IdleConnections {
    private var idle: [Int: [(handler: BackendHandler, selection: Selection)]] = [:]

    /// More than this many idle connections per server are closed rather than kept.
    private let maximumPerServer = 64

    private static let registry = NIOLockedValueBox<[RegistryKey: NIOLoopBound<IdleConnections>]>([:])

    private struct RegistryKey: Hashable {
        let loop: ObjectIdentifier
        let service: String
    }

    static func forLoop(_ loop: EventLoop, service: String) -> IdleConnections {
        let key = RegistryKey(loop: ObjectIdentifier(loop), service: service)
        let bound = registry.withLockedValue { registry in
            if let existing = registry[key] { return existing }
            let created = NIOLoopBound(IdleConnections(), eventLoop: loop)
            registry[key] = created
            return created
        }
        return bound.value
    }

    /// An open idle connection to the chosen server, if there is one.
    func take(for selection: Selection) -> BackendHandler? {
        guard let index = selection.serverIndex else { return nil }
        while var list = idle[index], let candidate = list.popLast() {
            idle[index] = list
            if !candidate.handler.isClosed, candidate.handler.channel?.isActive == true { return candidate.handler }
        }
        return nil
    }

    /// Keeps a connection whose response has completed. The pool's active count is released now: idle is not busy.
    func put(_ handler: BackendHandler, selection: Selection, pool: RealServerPool) {
        pool.release(selection)
        guard let index = selection.serverIndex, (idle[index]?.count ?? 0) < maximumPerServer else {
            handler.close()
            return
        }
        idle[index, default: []].append((handler, selection))
    }
}
