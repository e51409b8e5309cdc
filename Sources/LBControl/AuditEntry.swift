import Foundation

/// One operator action as lbd records it in STATE_DIR/audit.log (one JSON object per line) and `lbctl audit` shows
/// it: who (the caller's uid from the control socket's peer credentials, and its user name at that moment), what
/// (command and targets), and how it ended. Healthcare change control asks who took a server out and when.
public struct AuditEntry: Codable, Equatable, Sendable {
    /// When lbd finished handling the action, ISO 8601 in UTC with milliseconds ("2026-11-27T03:41:07.250Z").
    public var time: String
    /// The caller's uid; nil for an action that did not come over the control socket (SIGHUP).
    public var uid: UInt32?
    /// The caller's user name (getpwuid at the time of the action), or how the action arrived ("SIGHUP").
    public var user: String
    /// drain, halt, online, reload or mode.
    public var command: String
    public var targets: AuditTargets
    /// ok or failed.
    public var result: String
    /// lbd's explanation when result is failed.
    public var error: String?

    public init(time: String, uid: UInt32?, user: String, command: String, targets: AuditTargets, result: String,
                error: String?) {
        self.time = time
        self.uid = uid
        self.user = user
        self.command = command
        self.targets = targets
        self.result = result
        self.error = error
    }

    /// The entry's time as a date (nil if the line was written by hand and is not ISO 8601).
    public var date: Date? { AuditTime.parse(time) }
}

/// What an action was aimed at; absent fields are left out of the JSON.
public struct AuditTargets: Codable, Equatable, Sendable {
    public var service: String?
    public var server: String?
    public var mode: String?

    public init(service: String? = nil, server: String? = nil, mode: String? = nil) {
        self.service = service
        self.server = server
        self.mode = mode
    }

    /// "Viewer/node-2", "node-2 (every service)", "CoreServerDICOM-104 → l4-nat", or "-".
    public var summary: String {
        var text: String
        switch (service, server) {
        case let (service?, server?): text = "\(service)/\(server)"
        case let (nil, server?): text = "\(server) (every service)"
        case let (service?, nil): text = service
        case (nil, nil): text = ""
        }
        if let mode { text += (text.isEmpty ? "" : " ") + "→ \(mode)" }
        return text.isEmpty ? "-" : text
    }
}

/// The one time format of the audit trail: ISO 8601, UTC, milliseconds.
public enum AuditTime {
    public static func format(_ date: Date) -> String {
        formatter(fractional: true).string(from: date)
    }

    /// ISO 8601 with or without fractional seconds, with a zone ("Z" or "+01:00").
    public static func parse(_ text: String) -> Date? {
        formatter(fractional: true).date(from: text) ?? formatter(fractional: false).date(from: text)
    }

    private static func formatter(fractional: Bool) -> ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = fractional ? [.withInternetDateTime, .withFractionalSeconds] : [.withInternetDateTime]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter
    }
}
