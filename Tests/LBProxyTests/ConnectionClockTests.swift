@testable import LBProxy
import NIOCore
import NIOEmbedded
import Testing

/// The per-loop clock that wakes client connections at their deadlines (instead of a NIO timer per connection).
@Suite("Connection clock")
struct ConnectionClockTests {
    final class Connection: ClockedConnection {
        var clockPosition: Int?
        var woken = 0
        var onWake: ((Connection) -> Void)?
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
        let due = Connection(), notYet = Connection(), unarmed = Connection()
        clock.wake(due, at: Self.later)
        clock.wake(notYet, at: Self.later)
        clock.wake(unarmed, at: nil)
        clock.wake(due, at: Self.past)  // already on it: its deadline moves, it gets no second place
        #expect(clock.count == 3)
        #expect(clock.ticksScheduled == 1, "one tick for the loop, not one per connection")

        loop.advanceTime(by: ConnectionClock.tick - .milliseconds(1))
        #expect(due.woken == 0, "nothing before the tick")
        loop.advanceTime(by: .milliseconds(1))
        #expect((due.woken, notYet.woken, unarmed.woken) == (1, 0, 0))
        // The deadline was dropped as it was woken: no second wake unless it sets a new one.
        #expect(clock.ticksScheduled == 2)
        loop.advanceTime(by: ConnectionClock.tick)
        #expect(due.woken == 1)
        clock.wake(due, at: Self.past)
        loop.advanceTime(by: ConnectionClock.tick)
        #expect(due.woken == 2)
        for connection in [due, notYet, unarmed] { clock.remove(connection) }
        #expect(ConnectionClock.registered(on: loop) == nil)
    }

    @Test func removalKeepsEveryOtherConnectionsPlaceAndDeadline() {
        let loop = EmbeddedEventLoop()
        let clock = ConnectionClock.forLoop(loop)
        let connections = (0..<5).map { _ in Connection() }
        for (index, connection) in connections.enumerated() {
            clock.wake(connection, at: index == 2 ? Self.later : Self.past)
        }
        clock.remove(connections[1])  // the last one moves into its place, with its deadline
        clock.remove(connections[4])
        clock.remove(connections[1])  // no longer on it: nothing happens
        #expect(clock.count == 3)
        #expect(connections[1].clockPosition == nil && connections[4].clockPosition == nil)
        #expect(Set([0, 2, 3].compactMap { connections[$0].clockPosition }) == [0, 1, 2])
        loop.advanceTime(by: ConnectionClock.tick)
        #expect(connections.map(\.woken) == [1, 0, 0, 1, 0])
        for connection in connections { clock.remove(connection) }
    }

    /// A wake that closes its connection (a 408, an idle close) takes it off the clock in the middle of a tick; a
    /// connection taken off by an earlier wake of the same tick is not woken.
    @Test func connectionsMayLeaveWhileTheClockWakesThem() {
        let loop = EmbeddedEventLoop()
        let clock = ConnectionClock.forLoop(loop)
        let connections = (0..<4).map { _ in Connection() }
        for connection in connections {
            connection.onWake = { clock.remove($0) }
            clock.wake(connection, at: Self.past)
        }
        // The first one woken also takes another due connection off.
        let first = connections.first { $0.clockPosition == 0 }!
        let other = connections.first { $0.clockPosition == 2 }!
        first.onWake = { clock.remove($0); clock.remove(other) }
        loop.advanceTime(by: ConnectionClock.tick)
        #expect(connections.map(\.woken).reduce(0, +) == 3)
        #expect(other.woken == 0)
        #expect(clock.count == 0)
        #expect(clock.ticksScheduled == 1, "no tick after the last connection left")
        #expect(ConnectionClock.registered(on: loop) == nil)
    }

    /// The last connection to leave stops the clock: no tick is left scheduled on the loop, and the loop's next
    /// connection gets a new clock (an embedded loop of a test or fuzz input is not kept by the registry).
    @Test func theLastConnectionToLeaveStopsTheClock() {
        let loop = EmbeddedEventLoop()
        let clock = ConnectionClock.forLoop(loop)
        let only = Connection()
        clock.wake(only, at: Self.past)
        #expect(ConnectionClock.registered(on: loop) === clock)
        clock.remove(only)
        #expect(ConnectionClock.registered(on: loop) == nil)
        loop.advanceTime(by: ConnectionClock.tick * 3)
        #expect(only.woken == 0)
        #expect(clock.ticksScheduled == 1)
    }
}
