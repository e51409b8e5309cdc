import NIOConcurrencyHelpers
import NIOCore

/// A client connection that `ConnectionClock` wakes.
protocol ClockedConnection: AnyObject {
    /// Where the connection sits on its clock; kept by the clock alone (nil: not on it).
    var clockPosition: Int? { get set }
    /// Its deadline has passed. The clock has already dropped that deadline: a connection that wants waking again
    /// sets a new one.
    func wake()
}

/// Wakes the client connections of one event loop when their deadlines pass (header, body and idle timeouts), from
/// one task that repeats every `tick` while any connection is on the clock.
///
/// Why not a scheduled task per connection: each costs a task, a promise and closures (about 230 bytes for as long
/// as an idle connection waits), and NIO cancels one by a linear search of every task scheduled on the loop, under
/// a lock, so with thousands of open connections each close scanned all the others' timers. Here a connection
/// joins, moves its deadline and leaves by stores into two arrays (no allocation once they have grown), and a tick
/// reads the deadlines as one array of integers. The price: a deadline is noticed up to one tick late.
///
/// A loop's clock exists while connections are on it: the last to leave cancels the tick and unregisters it, so a
/// loop without connections is never woken, and an embedded loop of a test is not kept.
final class ConnectionClock {
    static let tick = TimeAmount.milliseconds(100)

    private let eventLoop: EventLoop
    private var connections: [any ClockedConnection] = []
    /// Each connection's deadline (uptime nanoseconds, as `NIODeadline`), at the connection's position; `none`: no
    /// deadline.
    private var deadlines: [UInt64] = []
    private static let none = UInt64.max
    /// The connections due at a tick, woken after the scan (a wake may take connections off the clock).
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

    /// The clock registered for `loop`, if any; makes none (for tests).
    static func registered(on loop: EventLoop) -> ConnectionClock? {
        clocks.withLockedValue { $0[ObjectIdentifier(loop)] }?.value
    }

    /// The number of connections on the clock (for tests).
    var count: Int { connections.count }

    /// Sets (or drops, with nil) the connection's deadline, putting it on the clock if it is not on it.
    func wake(_ connection: any ClockedConnection, at deadline: NIODeadline?) {
        let value = deadline?.uptimeNanoseconds ?? Self.none
        if let position = connection.clockPosition {
            assert(connections[position] === connection, "a connection on another clock")
            deadlines[position] = value
            return
        }
        connection.clockPosition = connections.count
        connections.append(connection)
        deadlines.append(value)
        if nextTick == nil { scheduleTick() }
    }

    /// Takes the connection off the clock, if it is on it.
    func remove(_ connection: any ClockedConnection) {
        guard let position = connection.clockPosition else { return }
        assert(connections[position] === connection, "a connection on another clock")
        connection.clockPosition = nil
        let last = connections.removeLast()
        let lastDeadline = deadlines.removeLast()
        if position < connections.count {
            connections[position] = last
            deadlines[position] = lastDeadline
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
        let now = NIODeadline.now().uptimeNanoseconds
        for position in deadlines.indices where deadlines[position] <= now {
            deadlines[position] = Self.none
            due.append(connections[position])
        }
        // A wake may close its connection, and take it off the clock, before the next one is woken.
        for connection in due where connection.clockPosition != nil {
            connection.wake()
        }
        due.removeAll(keepingCapacity: true)
        // The last connection to leave stopped the clock; a connection that is still on it wants the next tick.
        if !connections.isEmpty, nextTick == nil { scheduleTick() }
    }
}
