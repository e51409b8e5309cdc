import NIOConcurrencyHelpers
import NIOCore

/// A client connection that `ConnectionClock` wakes. Moving its deadline is a store into `wakeAt`.
protocol ClockedConnection: AnyObject {
    /// When the connection wants `wake()`; nil: not now (it stays on the clock until it is removed).
    var wakeAt: NIODeadline? { get }
    /// Where the connection sits on its clock; kept by the clock alone (nil: not on it).
    var clockPosition: Int? { get set }
    func wake()
}

/// Wakes the client connections of one event loop when their deadlines pass (header, body and idle timeouts), from
/// one task that repeats every `tick` while any connection is on the clock.
///
/// Why not a scheduled task per connection: each costs a task, a promise and closures (about 230 bytes for as long
/// as an idle connection waits), and NIO cancels one by a linear search of every task scheduled on the loop, under
/// a lock, so with thousands of open connections each close scanned all the others' timers. Here a connection
/// joins, moves its deadline and leaves by stores into an array (no allocation once the array has grown), and a
/// tick looks at each connection once. The price: a deadline is noticed up to one tick late.
///
/// A loop's clock exists while connections are on it: the last to leave cancels the tick and unregisters it, so a
/// loop without connections is never woken, and an embedded loop of a test is not kept.
final class ConnectionClock {
    static let tick = TimeAmount.milliseconds(100)

    private let eventLoop: EventLoop
    private var connections: [any ClockedConnection] = []
    /// The connections due at a tick, woken after the scan (a wake may remove its connection from `connections`).
    private var due: [any ClockedConnection] = []
    private var nextTick: Scheduled<Void>?
    /// Ticks scheduled so far (for tests: connections and requests schedule none of their own).
    private(set) var ticksScheduled = 0

    private init(eventLoop: EventLoop) {
        self.eventLoop = eventLoop
    }

    private static let clocks = NIOLockedValueBox<[ObjectIdentifier: NIOLoopBound<ConnectionClock>]>([:])

    /// The clock of `loop`, made if it has none; call on that loop when a connection joins it.
    static func forLoop(_ loop: EventLoop) -> ConnectionClock {
        let bound = clocks.withLockedValue { clocks in
            if let existing = clocks[ObjectIdentifier(loop)] { return existing }
            let created = NIOLoopBound(ConnectionClock(eventLoop: loop), eventLoop: loop)
            clocks[ObjectIdentifier(loop)] = created
            return created
        }
        return bound.value
    }

    /// The number of connections on the clock (for tests).
    var count: Int { connections.count }

    /// Puts the connection on the clock, if it is not on it already.
    func add(_ connection: any ClockedConnection) {
        guard connection.clockPosition == nil else { return }
        connection.clockPosition = connections.count
        connections.append(connection)
        if nextTick == nil { scheduleTick() }
    }

    /// Takes the connection off the clock, if it is on it.
    func remove(_ connection: any ClockedConnection) {
        guard let position = connection.clockPosition else { return }
        connection.clockPosition = nil
        let last = connections.removeLast()
        if position < connections.count {
            connections[position] = last
            last.clockPosition = position
        }
        if connections.isEmpty { stop() }
    }

    private func stop() {
        nextTick?.cancel()
        nextTick = nil
        let id = ObjectIdentifier(eventLoop)
        Self.clocks.withLockedValue { clocks in
            if let registered = clocks[id], registered.value === self { clocks[id] = nil }
        }
    }

    private func scheduleTick() {
        ticksScheduled &+= 1
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        nextTick = eventLoop.scheduleTask(in: Self.tick) { bound.value.fire() }
    }

    private func fire() {
        nextTick = nil
        let now = NIODeadline.now()
        for connection in connections {
            if let at = connection.wakeAt, at <= now { due.append(connection) }
        }
        for connection in due where connection.clockPosition != nil {
            connection.wake()
        }
        due.removeAll(keepingCapacity: true)
        // The last connection to leave stopped the clock; a connection that is still on it wants the next tick.
        if !connections.isEmpty, nextTick == nil { scheduleTick() }
    }
}
