import LBConfig
import LBRuntime
import LBTLS
import NIOConcurrencyHelpers
import NIOCore

/// A persistence cookie's value as lb issues them (`RealServerPool.cookieValue`: 16 hex digits), held as two words.
/// Finding a server by it is two comparisons, and reading it from a request makes no String: 16 bytes is one more than
/// a Swift string keeps inline, so a String of it is allocated (and compared the slow way) on every request.
public struct PersistenceCookie: Hashable, Sendable {
    let first: UInt64
    let second: UInt64

    /// Nil unless `bytes` are 16 long: nothing else is a value lb issued, so nothing else names a server.
    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count == 16 else { return nil }
        first = bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
        second = bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
    }

    init?(_ text: String) {
        var text = text
        guard let cookie = text.withUTF8({ PersistenceCookie(UnsafeRawBufferPointer($0)) }) else { return nil }
        self = cookie
    }
}

/// Where one client connection or request goes, and why.
public struct Selection: Sendable, Equatable {
    public enum Reason: String, Sendable { case cookie, sticky, scheduled, fallback }

    /// What a selection says about its server that does not change: made once per server and shared by all its
    /// selections. A selection is copied several times a request (into the idle-connection pool and out, with the
    /// response); one reference to count per copy instead of two strings and an address.
    final class Server: Sendable {
        let name: String
        let address: IPAddress
        let cookieValue: String?
        /// The same value, for comparing with a client's.
        let cookie: PersistenceCookie?

        init(name: String, address: IPAddress, cookieValue: String?) {
            self.name = name
            self.address = address
            self.cookieValue = cookieValue
            cookie = cookieValue.flatMap(PersistenceCookie.init)
        }
    }

    private let server: Server
    /// nil for the fallback server, which is outside the pool.
    public var serverIndex: Int?
    public var name: String { server.name }
    public var address: IPAddress { server.address }
    public var port: UInt16
    public var reason: Reason
    /// The opaque id a persistence cookie carries for this server.
    public var cookieValue: String? { server.cookieValue }
    /// The same, for comparing with the cookie a client sent.
    var cookie: PersistenceCookie? { server.cookie }

    public init(serverIndex: Int?, name: String, address: IPAddress, port: UInt16, reason: Reason, cookieValue: String?) {
        self.init(serverIndex: serverIndex, server: Server(name: name, address: address, cookieValue: cookieValue),
                  port: port, reason: reason)
    }

    init(serverIndex: Int?, server: Server, port: UInt16, reason: Reason) {
        self.server = server
        self.serverIndex = serverIndex
        self.port = port
        self.reason = reason
    }

    public static func == (lhs: Selection, rhs: Selection) -> Bool {
        lhs.serverIndex == rhs.serverIndex && lhs.name == rhs.name && lhs.address == rhs.address && lhs.port == rhs.port
            && lhs.reason == rhs.reason && lhs.cookieValue == rhs.cookieValue
    }
}

/// The real servers of one virtual service with their live state: health, operator weight, active connections,
/// and the source-IP stick table. Shared by every event loop, so all state sits behind one lock; each choice is a
/// few comparisons.
public final class RealServerPool: Sendable {
    public let service: VirtualService

    struct Member {
        var server: RealServer
        /// Set by the agent from the one membership rule (health, overrides, weight); the pool never derives it.
        var membership: Membership
        /// Connection failures and 502s in a row from real traffic (health_check.observe).
        var observedFailures = 0
        /// Clients that came back to this server through their cookie or stick entry, and when (the sessions a
        /// draining server still holds).
        var pinned: [IPAddress: NIODeadline] = [:]
        /// Open connections to this server, so `halt` can close them.
        var channels: [ObjectIdentifier: Channel] = [:]
        /// Connections and bytes: shared by every generation of the service that has this same server, so a reload
        /// neither resets the figures nor hides the connections the previous generation still carries.
        let tally: ServerTally
        /// The server as its selections name it, with the id the cookie carries (derived from the service and
        /// server names, never from the address).
        let selected: Selection.Server
    }

    struct State {
        var members: [Member]
        var scheduler: SchedulerState
        var sticky: [IPAddress: (index: Int, expires: NIODeadline)] = [:]
        var lastStickySweep = NIODeadline.now()
        /// Reused by every choice, so a request allocates no candidate list.
        var candidateScratch: [Candidate] = []
    }

    private let state: NIOLockedValueBox<State>

    /// `cookieKey`: the installation's secret for persistence cookie ids (lbd keeps it in its state directory).
    /// Where a server that real traffic found failing is reported (service, server, reason); the agent decides.
    private let onObservedFailure: (@Sendable (String, String, String) -> Void)?
    /// The sorry server as its selections name it.
    private let fallbackSelected: Selection.Server?

    /// `tallies` gives each server its counters (by name), carried from an earlier generation; servers without
    /// one start from zero.
    public init(service: VirtualService, cookieKey: [UInt8] = [], tallies: [String: ServerTally] = [:],
                onObservedFailure: (@Sendable (String, String, String) -> Void)? = nil) {
        self.service = service
        self.onObservedFailure = onObservedFailure
        let members = service.realServers.map { server in
            Member(server: server, membership: Membership(weight: server.weight, present: true, reason: .serving),
                   tally: tallies[server.name] ?? ServerTally(),
                   selected: Selection.Server(name: server.name, address: server.address,
                                              cookieValue: Self.cookieValue(vip: service.address, server: server, key: cookieKey)))
        }
        fallbackSelected = service.fallback.map { Selection.Server(name: "fallback", address: $0.address, cookieValue: nil) }
        self.state = NIOLockedValueBox(State(members: members, scheduler: SchedulerState(service.scheduler)))
    }

    /// The id a persistence cookie carries for a server: a keyed hash of the VIP and the server's name and address,
    /// so every service of one VIP that has the same server gives it the same id (a browser's cookie is sent to all
    /// ports of a host: RFC 6265), while the id reveals neither the address nor the name.
    static func cookieValue(vip: IPAddress, server: RealServer, key: [UInt8]) -> String {
        let digest = KeyedHash.hmacSHA256(key: key, data: Array("\(vip)|\(server.name)|\(server.address)".utf8))
        return digest.prefix(8).map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    }

    /// Chooses a server for a new connection or request and counts it as active until `release`.
    /// - Parameters:
    ///   - client: the client's address, for source-ip persistence and source-hash.
    ///   - cookie: the persistence cookie the client sent, if any.
    ///   - port: the VIP port the client used (servers without a port get this one).
    ///   - excluding: servers that already failed for this client (redispatch).
    public func select(client: IPAddress?, cookie: String? = nil, port: UInt16, excluding: Set<Int> = []) -> Selection? {
        select(client: client, cookie: cookie.flatMap(PersistenceCookie.init), port: port, excluding: excluding)
    }

    /// As above, with the client's cookie as read from its request.
    func select(client: IPAddress?, cookie: PersistenceCookie?, port: UInt16, excluding: Set<Int> = []) -> Selection? {
        let now = NIODeadline.now()
        return state.withLockedValue { state -> Selection? in
            func usable(_ index: Int) -> Bool {
                let member = state.members[index]
                return member.membership.acceptsNew && !excluding.contains(index)
            }
            func usableWhenPinned(_ index: Int) -> Bool {
                state.members[index].membership.acceptsPinned && !excluding.contains(index)
            }
            func take(_ index: Int, _ reason: Selection.Reason) -> Selection {
                state.members[index].tally.opened()
                let member = state.members[index]
                return Selection(serverIndex: index, server: member.selected, port: member.server.port(forVIPPort: port),
                                 reason: reason)
            }

            Self.sweepIfDue(&state, now: now)
            // 1. A cookie naming a server that takes its sessions wins (a draining one too); an unknown or dead one
            //    falls through to scheduling.
            if let cookie, let index = state.members.firstIndex(where: { $0.selected.cookie == cookie }), usableWhenPinned(index) {
                if let client { state.members[index].pinned[client] = now }
                return take(index, .cookie)
            }
            // 2. Source-IP stickiness, while the entry is fresh and its server usable.
            var timeout: Duration?
            if case .sourceIP(let configured) = service.persistence { timeout = configured }
            if let timeout, let client {
                if let entry = state.sticky[client], entry.expires > now, usableWhenPinned(entry.index) {
                    state.sticky[client] = (entry.index, now + TimeAmount(timeout))
                    state.members[entry.index].pinned[client] = now
                    return take(entry.index, .sticky)
                }
            }
            // 3. The scheduler, over the usable servers.
            state.candidateScratch.removeAll(keepingCapacity: true)
            for index in state.members.indices where usable(index) {
                state.candidateScratch.append(Candidate(index: index, weight: state.members[index].membership.weight,
                                                        activeConnections: state.members[index].tally.counts.active))
            }
            let candidates = state.candidateScratch
            if let chosen = state.scheduler.choose(from: candidates, clientKey: client.map(\.bytes) ?? []) {
                if let timeout, let client { state.sticky[client] = (chosen.index, now + TimeAmount(timeout)) }
                return take(chosen.index, .scheduled)
            }
            // 4. Nobody can take it: the sorry server, if there is one.
            if let fallback = service.fallback, let fallbackSelected {
                return Selection(serverIndex: nil, server: fallbackSelected, port: fallback.port ?? port, reason: .fallback)
            }
            return nil
        }
    }

    /// The connection or request chosen by `select` has ended.
    public func release(_ selection: Selection) {
        guard let index = selection.serverIndex else { return }
        state.withLockedValue { $0.members[index].tally.closed() }
    }

    /// The agent's effective membership of each server (by name; servers not named keep theirs). A server that
    /// takes no new connections loses its source-IP stick entries; one that is no longer present has its open
    /// connections closed (halt, or down with on_server_failure: remove).
    public func apply(_ membership: ServiceMembership) {
        let toClose: [Channel] = state.withLockedValue { state in
            var closing: [Channel] = []
            for (server, wanted) in membership.servers {
                guard let index = state.members.firstIndex(where: { $0.server.name == server.name }) else { continue }
                state.members[index].membership = wanted
                if !wanted.acceptsPinned {
                    state.sticky = state.sticky.filter { $0.value.index != index }
                    state.members[index].pinned = [:]
                }
                if !wanted.present { closing += state.members[index].channels.values }
            }
            return closing
        }
        for channel in toClose { channel.close(promise: nil) }
    }

    /// Each server's counters, by name, for the next generation of the service to carry on (same address and
    /// port only: another address is another server).
    func tallies(for next: VirtualService) -> [String: ServerTally] {
        state.withLockedValue { state in
            var found: [String: ServerTally] = [:]
            for member in state.members {
                guard let successor = next.realServers.first(where: { $0.name == member.server.name }),
                      successor.address == member.server.address, successor.port == member.server.port else { continue }
                found[member.server.name] = member.tally
            }
            return found
        }
    }

    /// What real traffic found (health_check.observe): a success resets the count; the failure that reaches the
    /// threshold reports the server once, while it still takes new connections.
    func observe(_ selection: Selection, failure reason: String?) {
        let threshold = service.healthCheck.observe
        guard threshold > 0, let index = selection.serverIndex else { return }
        let report: (String, Int)? = state.withLockedValue { state in
            guard let reason else {
                state.members[index].observedFailures = 0
                return nil
            }
            state.members[index].observedFailures += 1
            let member = state.members[index]
            guard member.observedFailures == threshold, member.membership.acceptsNew else { return nil }
            return (member.server.name, member.observedFailures)
        }
        guard let report, let reason else { return }
        onObservedFailure?(service.name, report.0, "\(reason) (\(report.1) failures in a row in client traffic, observe)")
    }

    /// The membership the pool currently schedules with, by server name.
    public var membership: [String: Membership] {
        state.withLockedValue { Dictionary($0.members.map { ($0.server.name, $0.membership) }, uniquingKeysWith: { a, _ in a }) }
    }

    /// Keeps a real-server connection on record until it closes (for `halt`).
    func track(_ channel: Channel, selection: Selection) {
        guard let index = selection.serverIndex else { return }
        let id = ObjectIdentifier(channel)
        let halted = state.withLockedValue { state -> Bool in
            state.members[index].channels[id] = channel
            return !state.members[index].membership.present
        }
        if halted { channel.close(promise: nil) }
        channel.closeFuture.whenComplete { [state] _ in
            state.withLockedValue { _ = $0.members[index].channels.removeValue(forKey: id) }
        }
    }

    /// Bytes a connection to a server carried, added in batches by the connection's counter.
    func addBytes(index: Int, toServer: UInt64, fromServer: UInt64) {
        state.withLockedValue {
            $0.members[index].tally.add(toServer: toServer, fromServer: fromServer)
        }
    }

    public struct MemberStatus: Sendable, Equatable {
        public var name: String
        /// Clients pinned to the server (cookie or stick entry) seen in the last ten minutes.
        public var pinnedSessions: Int
        public var bytesToServer: UInt64
        public var bytesFromServer: UInt64
        public var weight: Int
        public var activeConnections: Int
        public var totalConnections: Int
    }

    public var status: [MemberStatus] {
        let recent = NIODeadline.now() - .minutes(10)
        return state.withLockedValue { state in
            state.members.map { member in
                let counts = member.tally.counts
                return MemberStatus(name: member.server.name, pinnedSessions: member.pinned.values.filter { $0 > recent }.count,
                                    bytesToServer: counts.toServer, bytesFromServer: counts.fromServer,
                                    weight: member.membership.weight, activeConnections: counts.active,
                                    totalConnections: counts.total)
            }
        }
    }

    /// Drops expired stick-table entries at most every few seconds, so the table stays bounded by recent clients.
    private static func sweepIfDue(_ state: inout State, now: NIODeadline) {
        guard now - state.lastStickySweep > .seconds(5) else { return }
        state.lastStickySweep = now
        state.sticky = state.sticky.filter { $0.value.expires > now }
        let forgotten = now - .minutes(10)
        for index in state.members.indices { state.members[index].pinned = state.members[index].pinned.filter { $0.value > forgotten } }
    }
}


extension IPAddress {
    /// Network-order bytes, for hashing.
    var bytes: [UInt8] {
        switch self {
        case .v4(let value): return withUnsafeBytes(of: value.bigEndian) { Array($0) }
        case .v6(let bytes): return bytes
        }
    }
}

/// The bytes of one real-server connection, as they cross its socket, handed to the pool every megabyte, every
/// second (checked once per read batch and once per flush of writes) and at the end, so the pool's lock is not
/// taken per read. Kept by `ByteCounter` at the socket (under TLS, and under l7-tcp's glue), or by the l7-http
/// backend handler itself when the connection is plain (one handler fewer on every read and write).
struct ServerByteMeter {
    private let pool: RealServerPool
    private let index: Int
    private var toServer: UInt64 = 0
    private var fromServer: UInt64 = 0
    private var lastFlush = NIODeadline.now()

    init(pool: RealServerPool, index: Int) {
        self.pool = pool
        self.index = index
    }

    /// Bytes written to the server; handed over at once past a megabyte, else by `flushIfDue` at the flush.
    mutating func sent(_ count: Int) {
        toServer &+= UInt64(count)
        if toServer &+ fromServer >= 1 << 20 { flush() }
    }

    /// Bytes read from the server; the pool gets them by `flushIfDue` (once per read batch).
    mutating func received(_ count: Int) {
        fromServer &+= UInt64(count)
    }

    /// Hands the counts over if a megabyte has gathered or a second has passed since the last time.
    mutating func flushIfDue() {
        if toServer &+ fromServer >= 1 << 20 { flush(); return }
        let now = NIODeadline.now()
        if now - lastFlush >= .seconds(1) { flush(); lastFlush = now }
    }

    mutating func flush() {
        guard toServer &+ fromServer > 0 else { return }
        pool.addBytes(index: index, toServer: toServer, fromServer: fromServer)
        toServer = 0
        fromServer = 0
    }
}

/// Counts a real-server connection's wire bytes where the handler that speaks to the server does not see them
/// (below TLS, and under l7-tcp's glue).
final class ByteCounter: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var meter: ServerByteMeter

    init(meter: ServerByteMeter) { self.meter = meter }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        meter.received(unwrapInboundIn(data).readableBytes)
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        meter.flushIfDue()
        context.fireChannelReadComplete()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        meter.sent(unwrapOutboundIn(data).readableBytes)
        context.write(data, promise: promise)
    }

    func flush(context: ChannelHandlerContext) {
        meter.flushIfDue()  // a connection that only sends (an upload, an l7-tcp stream one way) is counted too
        context.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        meter.flush()
        context.fireChannelInactive()
    }
}

/// Connections and bytes of one real server of one service, across the service's generations.
public final class ServerTally: Sendable {
    public struct Counts: Sendable, Equatable {
        public var active = 0
        public var total = 0
        public var toServer: UInt64 = 0
        public var fromServer: UInt64 = 0
    }

    private let box = NIOLockedValueBox(Counts())

    public init() {}

    public var counts: Counts { box.withLockedValue { $0 } }

    func opened() { box.withLockedValue { $0.active += 1; $0.total += 1 } }
    func closed() { box.withLockedValue { $0.active -= 1 } }
    func add(toServer: UInt64, fromServer: UInt64) {
        box.withLockedValue {
            $0.toServer &+= toServer
            $0.fromServer &+= fromServer
        }
    }
}
