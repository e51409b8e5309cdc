import Foundation
import Glibc

/// lbctl's side: connects to lbd's Unix socket, sends one request, reads one response. Blocking and simple.
public enum ControlClient {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public static func send(_ request: ControlRequest, socketPath: String,
                            timeout: Int = ControlProtocol.clientTimeout) throws -> ControlResponse {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw Failure(description: "socket path too long: \(socketPath)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes + [0]) }
        var time = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let reason = String(cString: strerror(errno))
            throw Failure(description: "cannot reach lbd at \(socketPath): \(reason) (is lbd running? use --socket if it was started with another path)")
        }
        var line = try JSONEncoder().encode(request)
        line.append(UInt8(ascii: "\n"))
        // lbd may answer and close before reading (a caller it refuses at accept): no SIGPIPE, and its answer is read.
        let written = line.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let writeError = written == line.count ? nil : String(cString: strerror(errno))
        var reply = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !reply.contains(UInt8(ascii: "\n")) {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            reply += buffer[0..<count]
        }
        guard let end = reply.firstIndex(of: UInt8(ascii: "\n")) else {
            if let writeError { throw Failure(description: "write to lbd failed: \(writeError)") }
            throw Failure(description: "lbd closed the connection without an answer (not permitted, or lbd stopping)")
        }
        do {
            return try JSONDecoder().decode(ControlResponse.self, from: Data(reply[..<end]))
        } catch {
            throw Failure(description: "unreadable answer from lbd: \(error)")
        }
    }
}
