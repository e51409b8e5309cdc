import LBConfig

/// When an operator override last changed and on which node (a return to online included): between the two nodes
/// of a pair the newest change wins, so a node that was down catches up when it returns.
public struct OverrideChange: Codable, Hashable, Sendable {
    public var admin: AdminState
    /// Milliseconds since 1970 (wall clock: the nodes compare them).
    public var at: Int64
    public var node: String

    public init(admin: AdminState, at: Int64, node: String) {
        self.admin = admin
        self.at = at
        self.node = node
    }

    /// Whether this change replaces `other`: later wins; at the same millisecond the node name decides, so both
    /// nodes agree.
    public func supersedes(_ other: OverrideChange?) -> Bool {
        guard let other else { return true }
        return at != other.at ? at > other.at : node > other.node
    }
}

/// This node's place in a pair, as lbd knows it: what keepalived last reported, what the peer last said, and the
/// operator's standby request. Part of `RuntimeState`; every view (status, metrics, page) reads it from there.
public struct PairStatus: Sendable, Equatable {
    public enum Role: String, Codable, Sendable, CaseIterable {
        /// keepalived has not reported yet.
        case starting
        case master, backup
        /// keepalived's FAULT: a tracked link is down, or the operator asked for standby.
        case fault
        /// keepalived is not running (it stopped or is being restarted).
        case stopped
    }

    public struct Transition: Sendable, Equatable {
        public var from: Role
        public var to: Role
        public var at: Int64
        public var cause: String
    }

    public var node: String
    public var peer: String
    public var role: Role = .starting
    /// `lbctl ha standby` is in force: this node keeps out of the master role until `lbctl ha resume`.
    public var standby = false
    public var lastTransition: Transition?
    public var transitions = 0
    /// When a valid message from the peer last arrived (ms since 1970), and what it said.
    public var peerLastHeard: Int64?
    public var peerRole: Role?
    public var peerConfigDigest: String?
    public var configDigest: String
    /// Peer messages refused (bad MAC, replayed, stale, wrong sender).
    public var refusedMessages = 0

    public init(node: String, peer: String, configDigest: String) {
        self.node = node
        self.peer = peer
        self.configDigest = configDigest
    }

    /// Whether the peer was heard within `window` milliseconds of `now`.
    public func peerReachable(now: Int64, window: Int64) -> Bool {
        guard let heard = peerLastHeard else { return false }
        return now - heard <= window
    }

    /// Whether both nodes run the same virtual services (unknown until the peer was heard).
    public var configsMatch: Bool? { peerConfigDigest.map { $0 == configDigest } }

    /// keepalived reported `role`: records the transition with its cause; false when nothing changed.
    @discardableResult
    public mutating func enter(_ next: Role, at now: Int64, peerWindow: Int64) -> Bool {
        guard next != role else { return false }
        let cause: String
        switch next {
        case .master:
            if role == .starting { cause = "elected at start" }
            else if !peerReachable(now: now, window: peerWindow) { cause = "peer \(peer) silent" }
            else if peerRole == .fault || peerRole == .stopped { cause = "peer \(peer) gave up the role" }
            else { cause = "VRRP election (higher priority or peer stopped advertising)" }
        case .backup:
            if standby == false, role == .fault { cause = "resumed (standby lifted or link back)" }
            else { cause = "peer \(peer) is master" }
        case .fault: cause = standby ? "operator standby (lbctl ha standby)" : "VRRP link down"
        case .stopped: cause = "keepalived stopped"
        case .starting: cause = "restart"
        }
        lastTransition = Transition(from: role, to: next, at: now, cause: cause)
        transitions += 1
        role = next
        return true
    }
}
