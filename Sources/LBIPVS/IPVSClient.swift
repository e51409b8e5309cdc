import CNetlink
import Glibc
import LBConfig

/// An IPVS request the kernel refused, with the errno and the object concerned:
/// `service 10.0.0.1:80/tcp: File exists`.
public struct IPVSError: Error, CustomStringConvertible, Sendable {
    public var object: String
    public var errno: Int32
    public var description: String { "\(object): \(String(cString: strerror(errno)))" }
}

/// A generic-netlink socket to the kernel's IPVS family (libnl-3, libnl-genl-3). One request at a time; each call
/// waits for the kernel's acknowledgement or dump, so errors come back attached to the request that caused them.
public final class IPVSClient {
    private let socket: OpaquePointer
    private let family: Int32

    public init() throws {
        guard let socket = nl_socket_alloc() else { throw IPVSError(object: "netlink socket", errno: ENOMEM) }
        self.socket = socket
        var status = genl_connect(socket)
        guard status == 0 else {
            nl_socket_free(socket)
            throw IPVSError(object: "generic netlink", errno: Int32(-nl_syserr2nlerr(status)))
        }
        status = genl_ctrl_resolve(socket, "IPVS")
        guard status >= 0 else {
            nl_socket_free(socket)
            // No IPVS family: the ip_vs module is absent and could not be loaded.
            throw IPVSError(object: "IPVS generic netlink family (is the ip_vs module available?)", errno: ENOENT)
        }
        family = status
        // Answers are matched to requests by sequence number; large dumps need a big receive buffer.
        _ = nl_socket_set_buffer_size(socket, 1 << 20, 1 << 20)
        // A kernel that never answers must not hang the agent: receives give up after five seconds.
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        _ = setsockopt(nl_socket_get_fd(socket), SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { nl_socket_free(socket) }

    // MARK: Commands

    public func add(_ service: IPVSService) throws { try apply([.addService(service)], single: true) }
    public func update(_ service: IPVSService) throws { try apply([.updateService(service)], single: true) }
    public func delete(_ service: IPVSService) throws { try apply([.deleteService(service)], single: true) }
    public func add(_ destination: IPVSDestination, to service: IPVSService) throws {
        try apply([.addDestination(destination, service)], single: true)
    }
    public func update(_ destination: IPVSDestination, in service: IPVSService) throws {
        try apply([.updateDestination(destination, service)], single: true)
    }
    public func delete(_ destination: IPVSDestination, from service: IPVSService) throws {
        try apply([.deleteDestination(destination, service)], single: true)
    }

    /// Removes every service and destination (the whole table, lb's or not): for tests and explicit operator use.
    public func flush() throws {
        try send(.flush, NetlinkAttributes(), object: "IPVS table")
    }

    /// Zeroes the packet and byte counters of one service, or of all services.
    public func zeroCounters(of service: IPVSService? = nil) throws {
        try send(.zero, service.map { IPVSCodec.message(service: IPVSCodec.serviceKey($0)) } ?? NetlinkAttributes(),
                 object: service.map { "counters of service \($0)" } ?? "IPVS counters")
    }

    /// Sets the connection timeouts (seconds; 0 keeps the current value).
    public func setTimeouts(_ timeouts: IPVSTimeouts) throws {
        try send(.setConfig, IPVSCodec.timeouts(timeouts), object: "IPVS timeouts")
    }

    public func timeouts() throws -> IPVSTimeouts {
        guard let reply = try exchange(.getConfig, NetlinkAttributes(), flags: NLM_F_ACK, object: "IPVS timeouts").first,
              let timeouts = IPVSCodec.decodeTimeouts(reply[...])
        else { throw IPVSError(object: "IPVS timeouts", errno: EPROTO) }
        return timeouts
    }

    /// The kernel's IPVS version and connection table size.
    public func info() throws -> IPVSInfo {
        guard let reply = try exchange(.getInfo, NetlinkAttributes(), flags: NLM_F_ACK, object: "IPVS info").first,
              let info = IPVSCodec.decodeInfo(reply[...])
        else { throw IPVSError(object: "IPVS info", errno: EPROTO) }
        return info
    }

    public func startSyncDaemon(_ daemon: IPVSSyncDaemon) throws {
        try send(.newDaemon, IPVSCodec.daemon(daemon), object: "sync daemon \(daemon.role) on \(daemon.interface)")
    }

    public func stopSyncDaemon(_ daemon: IPVSSyncDaemon) throws {
        try send(.deleteDaemon, IPVSCodec.daemon(daemon), object: "sync daemon \(daemon.role) on \(daemon.interface)")
    }

    public func syncDaemons() throws -> [IPVSSyncDaemon] {
        try dump(.getDaemon, NetlinkAttributes(), object: "sync daemons").compactMap { IPVSCodec.decodeDaemon($0[...]) }
    }

    // MARK: Dumps

    public func services() throws -> [IPVSService] {
        try dump(.getService, NetlinkAttributes(), object: "service list").compactMap { IPVSCodec.decodeService($0[...]) }
    }

    /// Services with their total counters.
    public func servicesWithCounters() throws -> [(IPVSService, IPVSCounters)] {
        try dump(.getService, NetlinkAttributes(), object: "service list").compactMap { reply in
            IPVSCodec.decodeService(reply[...]).map { ($0, IPVSCodec.decodeServiceCounters(reply[...])) }
        }
    }

    public func destinations(of service: IPVSService) throws -> [(IPVSDestination, IPVSCounters)] {
        let family = IPVSCodec.family(service.address)
        return try dump(.getDestination, IPVSCodec.message(service: IPVSCodec.serviceKey(service)),
                        object: "destinations of service \(service)")
            .compactMap { IPVSCodec.decodeDestination($0[...], serviceFamily: family) }
    }

    // MARK: Transport

    /// Sequence numbers for batched requests, far from libnl's own counter.
    private var nextSequence: UInt32 = 0x4000_0000
    private static let batchMessages = 256
    private static let batchBytes = 64 * 1024

    fileprivate func apply(_ operations: [IPVSOperation], single: Bool) throws {
        var applied: [IPVSOperation] = []
        var failures: [(operation: IPVSOperation, error: IPVSError)] = []
        var index = 0
        while index < operations.count {
            var datagram: [UInt8] = []
            var pending: [UInt32: Int] = [:]
            while index < operations.count, pending.count < Self.batchMessages, datagram.count < Self.batchBytes {
                let (command, attributes) = Self.encode(operations[index])
                nextSequence &+= 1
                datagram += NetlinkFrame.request(family: UInt16(family), command: command, sequence: nextSequence,
                                                 attributes: attributes)
                pending[nextSequence] = index
                index += 1
            }
            let first = operations[pending.values.min() ?? 0]
            let sent = datagram.withUnsafeBytes { Glibc.send(nl_socket_get_fd(socket), $0.baseAddress, $0.count, 0) }
            guard sent == datagram.count else { throw IPVSError(object: Self.object(of: first), errno: sent < 0 ? Glibc.errno : EMSGSIZE) }
            var results: [Int: Int32] = [:]
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while results.count < pending.count {
                let received = buffer.withUnsafeMutableBytes { recv(nl_socket_get_fd(socket), $0.baseAddress, $0.count, 0) }
                if received < 0 {
                    if Glibc.errno == EINTR { continue }
                    let lost = operations[pending.values.filter { results[$0] == nil }.min() ?? 0]
                    throw IPVSError(object: Self.object(of: lost), errno: Glibc.errno == EAGAIN ? ETIMEDOUT : Glibc.errno)
                }
                for ack in NetlinkFrame.acknowledgements(in: buffer[0..<received]) {
                    if let position = pending[ack.sequence] { results[position] = ack.errno }
                }
            }
            for position in results.keys.sorted() {
                let operation = operations[position]
                if let errno = results[position], errno != 0 {
                    failures.append((operation, IPVSError(object: Self.object(of: operation), errno: errno)))
                } else {
                    applied.append(operation)
                }
            }
            if !failures.isEmpty {
                if single, let failure = failures.first { throw failure.error }
                throw IPVSApplyError(applied: applied, failures: failures, notAttempted: Array(operations[index...]))
            }
        }
    }

    private static func encode(_ operation: IPVSOperation) -> (IPVSCommand, NetlinkAttributes) {
        switch operation {
        case .addService(let service): return (.newService, IPVSCodec.message(service: IPVSCodec.service(service)))
        case .updateService(let service): return (.setService, IPVSCodec.message(service: IPVSCodec.service(service)))
        case .deleteService(let service): return (.deleteService, IPVSCodec.message(service: IPVSCodec.serviceKey(service)))
        case .addDestination(let destination, let service):
            return (.newDestination, IPVSCodec.message(service: IPVSCodec.serviceKey(service), destination: IPVSCodec.destination(destination)))
        case .updateDestination(let destination, let service):
            return (.setDestination, IPVSCodec.message(service: IPVSCodec.serviceKey(service), destination: IPVSCodec.destination(destination)))
        case .deleteDestination(let destination, let service):
            return (.deleteDestination, IPVSCodec.message(service: IPVSCodec.serviceKey(service), destination: IPVSCodec.destination(destination)))
        }
    }

    /// How an error names the object of an operation: "service 10.0.0.1:80/tcp".
    private static func object(of operation: IPVSOperation) -> String {
        switch operation {
        case .addService(let s), .updateService(let s), .deleteService(let s): return "service \(s)"
        case .addDestination(let d, let s), .updateDestination(let d, let s), .deleteDestination(let d, let s):
            return "destination \(d) of service \(s)"
        }
    }

    /// What the receive callbacks fill in.
    private final class Reply {
        var messages: [[UInt8]] = []
        var errno: Int32 = 0
    }

    private func send(_ command: IPVSCommand, _ attributes: NetlinkAttributes, object: String) throws {
        _ = try exchange(command, attributes, flags: NLM_F_ACK, object: object)
    }

    private func dump(_ command: IPVSCommand, _ attributes: NetlinkAttributes, object: String) throws -> [[UInt8]] {
        try exchange(command, attributes, flags: NLM_F_DUMP, object: object)
    }

    private func exchange(_ command: IPVSCommand, _ attributes: NetlinkAttributes, flags: Int32, object: String) throws -> [[UInt8]] {
        guard let message = nlmsg_alloc() else { throw IPVSError(object: object, errno: ENOMEM) }
        defer { nlmsg_free(message) }
        guard genlmsg_put(message, UInt32(NL_AUTO_PORT), UInt32(NL_AUTO_SEQ), family, 0, flags, command.rawValue, 1) != nil
        else { throw IPVSError(object: object, errno: ENOMEM) }
        let appended = attributes.bytes.withUnsafeBytes { bytes in
            nlmsg_append(message, UnsafeMutableRawPointer(mutating: bytes.baseAddress), bytes.count, Int32(NLMSG_ALIGNTO))
        }
        guard appended == 0 || attributes.bytes.isEmpty else { throw IPVSError(object: object, errno: ENOMEM) }

        let reply = Reply()
        let context = Unmanaged.passUnretained(reply).toOpaque()
        guard let callbacks = nl_cb_alloc(NL_CB_DEFAULT) else { throw IPVSError(object: object, errno: ENOMEM) }
        defer { nl_cb_put(callbacks) }
        nl_cb_set(callbacks, NL_CB_VALID, NL_CB_CUSTOM, { message, argument in
            guard let message, let argument else { return Int32(NL_SKIP.rawValue) }
            let reply = Unmanaged<Reply>.fromOpaque(argument).takeUnretainedValue()
            var length: Int32 = 0
            if let data = lb_genl_attributes(message, &length), length > 0 {
                reply.messages.append(Array(UnsafeRawBufferPointer(start: data, count: Int(length))))
            }
            return Int32(NL_OK.rawValue)
        }, context)
        nl_cb_err(callbacks, NL_CB_CUSTOM, { _, error, argument in
            guard let error, let argument else { return Int32(NL_STOP.rawValue) }
            Unmanaged<Reply>.fromOpaque(argument).takeUnretainedValue().errno = lb_nlmsgerr_errno(error)
            return Int32(NL_STOP.rawValue)
        }, context)
        var done: Int32 = 0
        let stop: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Int32 = { _, argument in
            argument?.assumingMemoryBound(to: Int32.self).pointee = 1
            return Int32(NL_STOP.rawValue)
        }
        try withUnsafeMutablePointer(to: &done) { donePointer in
            nl_cb_set(callbacks, NL_CB_ACK, NL_CB_CUSTOM, stop, donePointer)
            nl_cb_set(callbacks, NL_CB_FINISH, NL_CB_CUSTOM, stop, donePointer)
            let sent = nl_send_auto(socket, message)
            guard sent >= 0 else { throw IPVSError(object: object, errno: Int32(-nl_syserr2nlerr(sent))) }
            while donePointer.pointee == 0 && reply.errno == 0 {
                let received = nl_recvmsgs(socket, callbacks)
                if received < 0 {
                    if reply.errno != 0 { break }
                    throw IPVSError(object: object, errno: received == -NLE_AGAIN ? ETIMEDOUT : EIO)
                }
            }
        }
        if reply.errno != 0 { throw IPVSError(object: object, errno: reply.errno) }
        return reply.messages
    }
}

/// A plan the kernel refused in part: what reached the kernel, what it refused and why, and what was not sent.
/// Planning again from a fresh dump converges, since the plan is computed from what the kernel holds.
public struct IPVSApplyError: Error, CustomStringConvertible, Sendable {
    public var applied: [IPVSOperation]
    public var failures: [(operation: IPVSOperation, error: IPVSError)]
    public var notAttempted: [IPVSOperation]

    public var description: String {
        let first = failures.first.map { "\($0.error) (while trying to \($0.operation))" } ?? "no failure"
        return "\(first); \(applied.count) change(s) applied, \(failures.count) refused, \(notAttempted.count) not attempted"
    }
}

extension IPVSClient {
    /// The whole table, as a dump finds it.
    public func table() throws -> IPVSTable {
        try IPVSTable(services().map { service in (service, try destinations(of: service).map(\.0)) })
    }

    /// Sends the operations in order, many per datagram (the kernel acknowledges each under its own sequence
    /// number), so a large table costs few system calls. The kernel carries on after a refused message, so every
    /// result of a batch is collected; batches after one with a refusal are not sent.
    public func apply(_ operations: [IPVSOperation]) throws {
        try apply(operations, single: false)
    }
}
