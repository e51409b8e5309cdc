import Foundation
import LBConfig
import LBLinks

/// What lbd must remember across restarts: the kernel objects it created (so it never removes what an operator or
/// another tool made). Written atomically (temporary file, fsync, rename) so a crash leaves the old or the new file,
/// never half of one.
struct AgentState: Codable, Equatable {
    /// VIP addresses lbd added to interfaces.
    var vipAddresses: [VIPAddress] = []
    /// IPVS services lbd created, as `10.0.0.40:104/tcp`.
    var ipvsServices: [String] = []
    /// Operator overrides (drain, halt) by service and server; online servers are not listed.
    var overrides: [String: [String: AdminState]] = [:]

    enum CodingKeys: String, CodingKey {
        case vipAddresses = "vip_addresses"
        case ipvsServices = "ipvs_services"
        case overrides
    }

    init() {}

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        vipAddresses = try container.decodeIfPresent([VIPAddress].self, forKey: .vipAddresses) ?? []
        ipvsServices = try container.decodeIfPresent([String].self, forKey: .ipvsServices) ?? []
        overrides = try container.decodeIfPresent([String: [String: AdminState]].self, forKey: .overrides) ?? [:]
    }
}

struct StateStoreError: Error, CustomStringConvertible {
    let path: String
    let reason: String
    var description: String { "state file \(path): \(reason)" }
}

final class StateStore: @unchecked Sendable {
    let directory: String
    var path: String { directory + "/state.json" }
    private let lock = NSLock()

    init(directory: String) { self.directory = directory }

    /// The saved state; an absent file is an empty state (first start).
    func load() throws -> AgentState {
        lock.lock()
        defer { lock.unlock() }
        guard let data = FileManager.default.contents(atPath: path) else { return AgentState() }
        do {
            return try JSONDecoder().decode(AgentState.self, from: data)
        } catch {
            throw StateStoreError(path: path, reason: "unreadable (\(error)); move it aside to start afresh, after checking `ip addr` and `ipvsadm -Ln` for lb's objects")
        }
    }

    func save(_ state: AgentState) throws {
        lock.lock()
        defer { lock.unlock() }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(state)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw StateStoreError(path: path, reason: "cannot create \(directory): \(error.localizedDescription)")
        }
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StateStoreError(path: temporary, reason: String(cString: strerror(errno))) }
        let written = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        guard written == data.count, synced == 0, rename(temporary, path) == 0 else {
            throw StateStoreError(path: path, reason: String(cString: strerror(errno)))
        }
        // The rename itself is durable once the directory is synced.
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 { fsync(directoryFD); close(directoryFD) }
    }

    func update(_ change: (inout AgentState) -> Void) throws {
        var state = try load()
        change(&state)
        try save(state)
    }
}
