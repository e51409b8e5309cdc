import Glibc
import LBSystem
import Testing

@Suite("programs lbd runs (Subprocess)")
struct SubprocessTests {
    /// SwiftNIO opens sockets without close-on-exec. A helper program (iptables-restore, ip, nft) must not inherit
    /// them: while it ran, a listener lbd had closed still accepted connections that nobody would serve.
    @Test func aProgramInheritsNoneOfLbdsSockets() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)  // as SwiftNIO makes them: no SOCK_CLOEXEC
        try #require(listener >= 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0 && listen(listener, 8) == 0)
        var status = stat()
        try #require(fstat(listener, &status) == 0)
        let name = "socket:[\(status.st_ino)]"

        // ls lists its own descriptors: 0–2 (lbd's pipes) and the directory it is reading; nothing else.
        let result = try Subprocess.run("/bin/ls", ["-l", "/proc/self/fd"])
        #expect(result.succeeded, "\(result.errorOutput)")
        let descriptors = result.output.split(separator: "\n").compactMap { line -> (fd: String, target: String)? in
            let sides = line.split(separator: " -> ", maxSplits: 1)
            guard sides.count == 2 else { return nil }
            return (String(sides[0].split(separator: " ").last ?? ""), String(sides[1]))
        }
        #expect(descriptors.count >= 3, "the listing ran: \(result.output)")
        #expect(!result.output.contains(name), "the child holds lbd's listener \(name): \(result.output)")
        #expect(descriptors.allSatisfy { ["0", "1", "2"].contains($0.fd) || $0.target.hasPrefix("/proc/") }, "\(result.output)")
    }
}
