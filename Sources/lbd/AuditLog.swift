import Foundation
import LBControl
#if canImport(Glibc)
import Glibc
#endif

/// STATE_DIR/audit.log: one JSON line per operator action, appended and fsynced before lbctl gets its answer, so a
/// crash right after an action cannot lose its record. The file is opened before the action is applied: if it
/// cannot be written, the action is refused and nothing changes (an action without its record is what change
/// control forbids).
final class AuditLog: @unchecked Sendable {
    let path: String
    private let lock = NSLock()

    init(directory: String) {
        path = (directory as NSString).appendingPathComponent("audit.log")
    }

    /// An open, append-only handle on the trail, taken before an action is applied.
    struct Pending {
        fileprivate let descriptor: Int32
    }

    func open() throws -> Pending {
        let directory = (path as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o755])
        } catch {
            throw AuditLogError(path: path, operation: "create its directory", reason: "\(error.localizedDescription)")
        }
        let descriptor = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else { throw AuditLogError(path: path, operation: "open", reason: Self.errnoText()) }
        return Pending(descriptor: descriptor)
    }

    /// Appends one line in a single write (O_APPEND keeps concurrent lines whole) and fsyncs; closes the handle.
    func append(_ entry: AuditEntry, to pending: Pending) throws {
        defer { close(pending.descriptor) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var line: Data
        do {
            line = try encoder.encode(entry)
        } catch {
            throw AuditLogError(path: path, operation: "encode an entry", reason: "\(error)")
        }
        line.append(UInt8(ascii: "\n"))
        try lock.withLock {
            let written = line.withUnsafeBytes { write(pending.descriptor, $0.baseAddress, $0.count) }
            guard written == line.count else {
                throw AuditLogError(path: path, operation: "append",
                                    reason: written < 0 ? Self.errnoText() : "short write (\(written) of \(line.count) bytes)")
            }
            guard fsync(pending.descriptor) == 0 else {
                throw AuditLogError(path: path, operation: "fsync", reason: Self.errnoText())
            }
        }
    }

    /// Opens, appends, fsyncs: for actions that are not refused when the trail fails (a SIGHUP has nobody to
    /// answer; its failure is logged).
    func record(_ entry: AuditEntry) throws {
        try append(entry, to: try open())
    }

    /// The entries at or after `since`, oldest first, and how many lines could not be read.
    func entries(since: Date?) throws -> (entries: [AuditEntry], unreadable: Int) {
        guard FileManager.default.fileExists(atPath: path) else { return ([], 0) }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw AuditLogError(path: path, operation: "read", reason: error.localizedDescription)
        }
        var entries: [AuditEntry] = []
        var unreadable = 0
        let decoder = JSONDecoder()
        for line in data.split(separator: UInt8(ascii: "\n")) where !line.isEmpty {
            guard let entry = try? decoder.decode(AuditEntry.self, from: Data(line)) else {
                unreadable += 1
                continue
            }
            if let since {
                guard let date = entry.date, date >= since else { continue }
            }
            entries.append(entry)
        }
        return (entries, unreadable)
    }

    private static func errnoText() -> String { String(cString: strerror(errno)) }
}

struct AuditLogError: Error, CustomStringConvertible {
    let path: String
    let operation: String
    let reason: String
    var description: String { "audit trail \(path): cannot \(operation): \(reason)" }
}
