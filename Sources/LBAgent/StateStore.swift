import Foundation
import LBConfig
import LBLinks
import LBRuntime
import LBTLS

/// What lbd must remember across restarts: the kernel objects it created (so it never removes what an operator or
/// another tool made) and the operator's overrides.
public struct AgentState: Codable, Equatable, Sendable {
    /// VIP addresses lbd added to interfaces.
    public var vipAddresses: [VIPAddress] = []
    /// IPVS services lbd created, as `10.0.0.40:104/tcp`.
    public var ipvsServices: [String] = []
    /// Operator overrides (drain, halt) by service and server; online servers are not listed.
    public var overrides: [String: [String: AdminState]] = [:]
    /// When and where each override last changed (online included), for a pair's newest-wins merge.
    public var overrideChanges: [String: [String: OverrideChange]] = [:]
    /// `lbctl ha standby` in force (a pair): kept across restarts, so maintenance is not undone by a restart.
    public var pairStandby = false

    enum CodingKeys: String, CodingKey {
        case vipAddresses = "vip_addresses"
        case ipvsServices = "ipvs_services"
        case overrides
        case overrideChanges = "override_changes"
        case pairStandby = "pair_standby"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        vipAddresses = try container.decodeIfPresent([VIPAddress].self, forKey: .vipAddresses) ?? []
        ipvsServices = try container.decodeIfPresent([String].self, forKey: .ipvsServices) ?? []
        overrides = try container.decodeIfPresent([String: [String: AdminState]].self, forKey: .overrides) ?? [:]
        overrideChanges = try container.decodeIfPresent([String: [String: OverrideChange]].self, forKey: .overrideChanges) ?? [:]
        pairStandby = try container.decodeIfPresent(Bool.self, forKey: .pairStandby) ?? false
    }
}

/// The state file, `DIR/state.json`. Every read-modify-write holds one lock for the whole update, and every write
/// is atomic (`AtomicFile`), so a crash leaves the old or the new file, never half of one.
public final class StateStore: @unchecked Sendable {
    public let directory: String
    public var path: String { directory + "/state.json" }
    private let lock = NSLock()

    public init(directory: String) { self.directory = directory }

    /// The saved state; an absent file is an empty state (first start).
    public func load() throws -> AgentState {
        lock.lock()
        defer { lock.unlock() }
        return try loadLocked()
    }

    public func save(_ state: AgentState) throws {
        lock.lock()
        defer { lock.unlock() }
        try saveLocked(state)
    }

    public func update(_ change: (inout AgentState) -> Void) throws {
        lock.lock()
        defer { lock.unlock() }
        var state = try loadLocked()
        change(&state)
        try saveLocked(state)
    }

    /// The installation's secret for persistence cookie ids (`DIR/cookie.key`, 32 random bytes, mode 0600), made on
    /// first use. Both nodes of a pair need the same file for a cookie to stay valid across a failover.
    public func cookieKey() throws -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        let keyPath = directory + "/cookie.key"
        if let data = FileManager.default.contents(atPath: keyPath) {
            guard data.count >= 16 else {
                throw StateStoreError(path: keyPath, reason: "holds \(data.count) bytes, fewer than 16; remove it to make a new one (open sessions lose their server)")
            }
            return Array(data)
        }
        guard let key = KeyedHash.randomBytes(32) else {
            throw StateStoreError(path: keyPath, reason: "no random bytes from OpenSSL")
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw StateStoreError(path: keyPath, reason: "cannot create \(directory): \(error.localizedDescription)")
        }
        try AtomicFile.write(key, to: keyPath, defaultMode: 0o600)
        return key
    }

    private func loadLocked() throws -> AgentState {
        guard let data = FileManager.default.contents(atPath: path) else { return AgentState() }
        do {
            return try JSONDecoder().decode(AgentState.self, from: data)
        } catch {
            throw StateStoreError(path: path, reason: "unreadable (\(error)); move it aside to start afresh, after checking `ip addr` and `ipvsadm -Ln` for lb's objects")
        }
    }

    private func saveLocked(_ state: AgentState) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(state)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw StateStoreError(path: path, reason: "cannot create \(directory): \(error.localizedDescription)")
        }
        try AtomicFile.write(Array(data), to: path, defaultMode: 0o600)
    }
}

public struct StateStoreError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "\(path): \(reason)" }
}

/// Replaces a file so that a crash leaves either the old or the new content: a temporary file created exclusively
/// (O_EXCL, O_NOFOLLOW: never through a link someone planted) in the same directory, written and fsynced, given
/// the original's owner and mode, renamed over the original, and the directory fsynced so the rename is durable.
/// Used for the state file and for the config file that `lbctl mode` rewrites.
public enum AtomicFile {
    public static func write(_ bytes: [UInt8], to path: String, defaultMode: mode_t, keepingPrevious backup: String? = nil) throws {
        var original = stat()
        let exists = lstat(path, &original) == 0
        let mode = exists ? original.st_mode & 0o7777 : defaultMode
        let directory = (path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent
        let temporary = "\(path).tmp.\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard fd >= 0 else { throw StateStoreError(path: temporary, reason: String(cString: strerror(errno))) }
        var failure: String?
        var offset = 0
        while offset < bytes.count, failure == nil {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno != EINTR { failure = String(cString: strerror(errno)) }
            } else {
                offset += written
            }
        }
        if failure == nil, exists, fchown(fd, original.st_uid, original.st_gid) != 0 { failure = String(cString: strerror(errno)) }
        if failure == nil, fchmod(fd, mode) != 0 { failure = String(cString: strerror(errno)) }
        if failure == nil, fsync(fd) != 0 { failure = String(cString: strerror(errno)) }
        close(fd)
        if let failure {
            unlink(temporary)
            throw StateStoreError(path: temporary, reason: failure)
        }
        if let backup, exists {
            unlink(backup)
            _ = link(path, backup)
        }
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw StateStoreError(path: path, reason: reason)
        }
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 { fsync(directoryFD); close(directoryFD) }
    }
}
