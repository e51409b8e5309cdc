@testable import LBProxy
import NIOCore
import NIOEmbedded
import Testing

/// The per-loop clock that wakes client connections at their deadlines (instead of a NIO timer per connection).
@Suite("Connection clock")
struct ConnectionClockTests {
    final class Connection: ClockedConnection {
        var wakeAt: NIODeadline?
        var clockPosition: Int?
        var woken = 0
        var onWake: ((Connection) -> Void)?
        init(wakeAt: NIODeadline?) { self.wakeAt = wakeAt }
        func wake() {
            woken += 1
            onWake?(self)
        }
    }

    static let past = NIODeadline.now() - .seconds(1)
    static let later = NIODeadline.now() + .hours(1)

    @Test func aTickWakesTheConnectionsWhoseDeadlineHasPassedAndNoOthers() {
        let loop = EmbeddedEventLoop()
        let clock = ConnectionClock.forLoop(loop)
        let due = Connection(wakeAt: Self.past), notYet = Connection(wakeAt: Self.later), unarmed = Connection(wakeAt: nil)
        for connection in [due, notYet, unarmed] { clock.add(connection) }
        clock.add(due)  // already on it: no second place
        #expect(clock.count == 3)
        #expect(clock.ticksScheduled == 1, "one tick for the loop, not one per connection")

        loop.advanceTime(by: ConnectionClock.tick - .milliseconds(1))
        #expect(due.woken == 0, "nothing before the tick")
        loop.advanceTime(by: .milliseconds(1))
        #expect((due.woken, notYet.woken, unarmed.woken) == (1, 0, 0))
        // Still on the clock (a connection leaves only by `remove`): the next tick wakes it again if still due.
        #expect(clock.ticksScheduled == 2)
        due.wakeAt = Self.later
        loop.advanceTime(by: ConnectionClock.tick)
        #expect(due.woken == 1)
        for connection in [due, notYet, unarmed] { clock.remove(connection) }
    }

    @Test func removalKeepsEveryOtherConnectionsPlace() {
        let loop = EmbeddedEventLoop()
        let clock = ConnectionClock.forLoop(loop)
        let connections = (0..<5).map { _ in Connection(wakeAt: Self.past) }
        for connection in connections { clock.add(connection) }
        clock.remove(connections[1])  // the last one moves into its place
        clock.remove(connections[4])
        clock.remove(connections[1])  // no longer on it: nothing happens
        #expect(clock.count == 3)
        #expect(connections[1].clockPosition == nil && connections[4].clockPosition == nil)
        #expect(Set([0, 2, 3].compactMap { connections[$0].clockPosition }) == [0, 1, 2])
        loop.advanceTime(by: ConnectionClock.tick)
        #expect(connections.map(\.woken) == [1, 0, 1, 1, 0])
        for connection in connections { clock.remove(connection) }
    }

    /// A wake that closes its connection (a 408, an idle close) takes it off the clock in the middle of a tick.
    @Test func aConnectionMayLeaveWhileItIsWoken() {
        let loop = EmbeddedEventLoop()
        let clock = ConnectionClock.forLoop(loop)
        let connections = (0..<4).map { _ in Connection(wakeAt: Self.past) }
        for connection in connections {
            connection.onWake = { clock.remove($0) }
            clock.add(connection)
        }
        loop.advanceTime(by: ConnectionClock.tick)
        #expect(connections.map(\.woken) == [1, 1, 1, 1])
        #expect(clock.count == 0)
        #expect(clock.ticksScheduled == 1, "no tick after the last connection left")
    }

    /// The last connection to leave stops the clock: no tick is left scheduled on the loop, and the loop's next
    /// connection gets a new clock (an embedded loop of a test or fuzz input is not kept by the registry).
    @Test func theLastConnectionToLeaveStopsTheClock() {
        let loop = EmbeddedEventLoop()
        let clock = ConnectionClock.forLoop(loop)
        let only = Connection(wakeAt: Self.past)
        clock.add(only)
        #expect(ConnectionClock.forLoop(loop) === clock)
        clock.remove(only)
        #expect(ConnectionClock.forLoop(loop) !== clock)
        loop.advanceTime(by: ConnectionClock.tick * 3)
        #expect(only.woken == 0)
        #expect(clock.ticksScheduled == 1)
        // Another loop has its own clock.
        let other = EmbeddedEventLoop()
        #expect(ConnectionClock.forLoop(other) !== ConnectionClock.forLoop(loop))
    }
}
