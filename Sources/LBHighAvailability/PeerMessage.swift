import Foundation
import LBRuntime
import LBTLS

/// What one node of a pair tells the other, about once a second and at once after an operator change: its role,
/// a digest of its virtual services, and every operator override with when and where it last changed. The whole
/// state each time, so a node that was down catches up from the first message it hears (the newest change wins).
public struct PeerMessage: Codable, Equatable, Sendable {
    public var node: String
    /// Milliseconds since 1970; a message older (or newer) than `Verifier.window` is refused.
    public var sentAt: Int64
    /// 16 random bytes, hex: a message seen once is refused the second time.
    public var nonce: String
    public var role: PairStatus.Role
    public var configDigest: String
    public var overrides: [Entry]

    public struct Entry: Codable, Equatable, Sendable {
        public var service: String
        public var server: String
        public var change: OverrideChange
        public init(service: String, server: String, change: OverrideChange) {
            self.service = service
            self.server = server
            self.change = change
        }
    }

    public init(node: String, sentAt: Int64, nonce: String, role: PairStatus.Role, configDigest: String, overrides: [Entry]) {
        self.node = node
        self.sentAt = sentAt
        self.nonce = nonce
        self.role = role
        self.configDigest = configDigest
        self.overrides = overrides
    }

    /// Domain separation: the secret authenticates nothing but these messages.
    static let context = Array("lb peer message v1\n".utf8)
    static let macLength = 32

    /// The datagram: HMAC-SHA-256(secret, context ‖ JSON) followed by the JSON.
    public func sealed(secret: [UInt8]) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let body = (try? encoder.encode(self)).map(Array.init) ?? []
        return KeyedHash.hmacSHA256(key: secret, data: Self.context + body) + body
    }
}

/// Checks each datagram from the peer: authentic (MAC), from the peer, fresh, and not seen before.
public struct PeerVerifier: Sendable {
    public enum Refusal: Error, Equatable, CustomStringConvertible {
        case short(Int)
        case badMAC
        case malformed
        case wrongSender(String)
        case stale(skewMilliseconds: Int64)
        case replayed(nonce: String)
        case older(byMilliseconds: Int64)

        public var description: String {
            switch self {
            case .short(let count): return "a \(count)-byte datagram is too short to carry a MAC"
            case .badMAC: return "the MAC does not match (forged or altered, or the nodes' peer secrets differ)"
            case .malformed: return "authentic but not a peer message (another lb version?)"
            case .wrongSender(let node): return "it names \"\(node)\" as its sender, which is not the peer"
            case .stale(let skew): return "its time is \(skew) ms away from this node's (a replay, or the clocks differ: use NTP)"
            case .replayed(let nonce): return "its nonce \(nonce) was seen before (a replay)"
            case .older(let age): return "it was sent \(age) ms before the newest message accepted (a replay, or late)"
            }
        }
    }

    public static let window: Int64 = 30_000
    public let secret: [UInt8]
    public let peer: String
    /// Nonces seen within the window, with their send times (only authentic messages are remembered, so a flood of
    /// forged datagrams cannot grow it).
    private var seen: [String: Int64] = [:]
    /// The send time of the newest message accepted: an older one is a replay or arrived late (each message carries
    /// the whole state, so dropping a late one loses nothing).
    private var newest: Int64 = 0

    public init(secret: [UInt8], peer: String) {
        self.secret = secret
        self.peer = peer
    }

    public mutating func open(_ datagram: [UInt8], now: Int64) throws(Refusal) -> PeerMessage {
        guard datagram.count > PeerMessage.macLength else { throw .short(datagram.count) }
        let mac = Array(datagram.prefix(PeerMessage.macLength))
        let body = Array(datagram.dropFirst(PeerMessage.macLength))
        let expected = KeyedHash.hmacSHA256(key: secret, data: PeerMessage.context + body)
        // Constant time: no early exit on the first differing byte.
        guard expected.count == mac.count, zip(expected, mac).reduce(0, { $0 | ($1.0 ^ $1.1) }) == 0 else { throw .badMAC }
        guard let message = try? JSONDecoder().decode(PeerMessage.self, from: Data(body)) else { throw .malformed }
        guard message.node == peer else { throw .wrongSender(message.node) }
        let skew = message.sentAt - now
        guard abs(skew) <= Self.window else { throw .stale(skewMilliseconds: skew) }
        seen = seen.filter { now - $0.value <= Self.window }
        guard seen[message.nonce] == nil else { throw .replayed(nonce: message.nonce) }
        guard message.sentAt > newest else { throw .older(byMilliseconds: newest - message.sentAt) }
        seen[message.nonce] = message.sentAt
        newest = message.sentAt
        return message
    }
}
