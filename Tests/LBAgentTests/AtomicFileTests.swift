import Foundation
import Testing
@testable import LBAgent

/// The one atomic-write helper of the state file and of the config file `lbctl mode` rewrites.
@Suite("AtomicFile and StateStore")
struct AtomicFileTests {
    func scratch() throws -> String {
        let directory = NSTemporaryDirectory() + "lb-atomic-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }

    @Test func replacementKeepsOwnerAndModeAndTheBackup() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/lb.yaml"
        try "old\n".write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o640)
        chown(path, 1, 4)   // daemon:adm, as an operator may have set it
        try AtomicFile.write(Array("new\n".utf8), to: path, defaultMode: 0o600, keepingPrevious: path + ".bak")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "new\n")
        #expect(try String(contentsOfFile: path + ".bak", encoding: .utf8) == "old\n")
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o7777 == 0o640)
        #expect(info.st_uid == 1 && info.st_gid == 4)
        // No temporary file is left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == ["lb.yaml", "lb.yaml.bak"])
    }

    @Test func aNewFileGetsTheDefaultMode() throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = StateStore(directory: directory + "/state")
        try store.update { $0.ipvsServices = ["10.0.0.40:104/tcp"] }
        var info = stat()
        #expect(stat(store.path, &info) == 0)
        #expect(info.st_mode & 0o7777 == 0o600)
        #expect(try store.load().ipvsServices == ["10.0.0.40:104/tcp"])
    }

    @Test func updatesFromManyThreadsAreNotLost() async throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = StateStore(directory: directory)
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<40 {
                group.addTask { try? store.update { $0.ipvsServices.append("10.0.0.\(index):80/tcp") } }
            }
        }
        #expect(try store.load().ipvsServices.count == 40)
    }

    @Test func anUnwritableDirectoryIsAnErrorNamingThePath() throws {
        #expect(throws: StateStoreError.self) {
            try AtomicFile.write(Array("x".utf8), to: "/proc/lb-no-such-dir/state.json", defaultMode: 0o600)
        }
    }
}
