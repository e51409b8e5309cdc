import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram per state change to the Unix socket
/// named by NOTIFY_SOCKET. Outside systemd (no NOTIFY_SOCKET) every call does nothing, so lbd runs the same by hand.
///
/// Why not link libsystemd: the message format is a stable, documented line protocol, and lbd should not need
/// systemd's library on machines that run it under another supervisor.
final class SystemdNotifier: @unchecked Sendable {
    /// The socket address, or nil when lbd is not run by systemd with Type=notify.
    private let address: sockaddr_un?
    private let addressLength: socklen_t
    private let descriptor: Int32
    private let lock = NSLock()
    /// Why a send failed the last time (logged once by the caller, not on every watchdog ping).
    private(set) var lastError: String?

    /// WatchdogSec= as systemd passes it (WATCHDOG_USEC), if it is meant for this process (WATCHDOG_PID).
    let watchdogInterval: Duration?

    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        if let usec = environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0,
           environment["WATCHDOG_PID"].flatMap(Int32.init).map({ $0 == getpid() }) ?? true {
            watchdogInterval = .microseconds(Int64(usec))
        } else {
            watchdogInterval = nil
        }
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty,
              let (address, length) = Self.socketAddress(path) else {
            address = nil
            addressLength = 0
            descriptor = -1
            return
        }
        self.address = address
        self.addressLength = length
        self.descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }

    deinit {
        if descriptor >= 0 { close(descriptor) }
    }

    var isActive: Bool { address != nil && descriptor >= 0 }

    /// Start-up is complete: the kernel state is applied and every listener is bound.
    func ready(status: String) { send("READY=1\nSTATUS=\(status)") }

    /// A reload begins. MONOTONIC_USEC lets systemd tell this reload from an earlier one (systemd.service(5)).
    func reloading() {
        send("RELOADING=1\nMONOTONIC_USEC=\(Self.monotonicMicroseconds())\nSTATUS=reloading the config")
    }

    func stopping() { send("STOPPING=1\nSTATUS=stopping: draining connections") }

    func watchdog() { send("WATCHDOG=1") }

    func status(_ text: String) { send("STATUS=\(text)") }

    /// Sends one datagram; a failure is remembered (lastError), never thrown: lbd serves traffic whether or not
    /// systemd hears about it.
    @discardableResult
    func send(_ message: String) -> Bool {
        guard var address, descriptor >= 0 else { return false }
        let bytes = Array(message.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                bytes.withUnsafeBytes { buffer in
                    sendto(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL), socketAddress, addressLength)
                }
            }
        }
        lock.withLock { lastError = sent < 0 ? "NOTIFY_SOCKET: \(String(cString: strerror(errno)))" : nil }
        return sent >= 0
    }

    /// NOTIFY_SOCKET is a path, or "@name" for the abstract namespace.
    static func socketAddress(_ path: String) -> (sockaddr_un, socklen_t)? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 } else if bytes.first != UInt8(ascii: "/") { return nil }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in bytes.enumerated() { buffer[index] = byte }
        }
        // sun_path follows sun_family; an abstract name is not NUL-terminated, a path is.
        let pathOffset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path) ?? MemoryLayout<sa_family_t>.size
        let length = pathOffset + bytes.count + (abstract ? 0 : 1)
        return (address, socklen_t(length))
    }

    static func monotonicMicroseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1_000
    }
}
