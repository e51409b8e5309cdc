import Foundation

/// The one JSON rendering of the status: `lbctl status --format json` prints it and lbd's `/status.json` serves it,
/// byte for byte the same schema, so a script written against one reads the other.
public enum StatusJSON {
    public static func encode(_ services: [ServiceStatus]) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        // Encoding plain value types cannot fail; an empty list is the honest fallback if it ever did.
        return (try? encoder.encode(services)) ?? Data("[]".utf8)
    }
}

/// One health transition as the status page lists it (`/transitions.json`, newest first).
public struct TransitionStatus: Codable, Equatable, Sendable {
    /// ISO 8601, UTC.
    public var time: String
    public var service: String
    public var server: String
    /// "up" or "down".
    public var health: String
    public var reason: String?

    public init(time: String, service: String, server: String, health: String, reason: String?) {
        self.time = time
        self.service = service
        self.server = server
        self.health = health
        self.reason = reason
    }

    public static func encode(_ transitions: [TransitionStatus]) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(transitions)) ?? Data("[]".utf8)
    }
}
