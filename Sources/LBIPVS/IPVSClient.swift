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

    public func add(_ service: IPVSService) throws {
        try send(.newService, IPVSCodec.message(service: IPVSCodec.service(service)), object: "service \(service)")
    }

    public func update(_ service: IPVSService) throws {
        try send(.setService, IPVSCodec.message(service: IPVSCodec.service(service)), object: "service \(service)")
    }

    public func delete(_ service: IPVSService) throws {
        try send(.deleteService, IPVSCodec.message(service: IPVSCodec.serviceKey(service)), object: "service \(service)")
    }

    public func add(_ destination: IPVSDestination, to service: IPVSService) throws {
        try send(.newDestination, IPVSCodec.message(service: IPVSCodec.serviceKey(service), destination: IPVSCodec.destination(destination)),
                 object: "destination \(destination) of service \(service)")
    }

    public func update(_ destination: IPVSDestination, in service: IPVSService) throws {
        try send(.setDestination, IPVSCodec.message(service: IPVSCodec.serviceKey(service), destination: IPVSCodec.destination(destination)),
                 object: "destination \(destination) of service \(service)")
    }

    public func delete(_ destination: IPVSDestination, from service: IPVSService) throws {
        try send(.deleteDestination, IPVSCodec.message(service: IPVSCodec.serviceKey(service), destination: IPVSCodec.destination(destination)),
                 object: "destination \(destination) of service \(service)")
    }

    /// Removes every service and destination (the whole table, lb's or not): for tests and explicit operator use.
    public func flush() throws {
        try send(.flush, NetlinkAttributes(), object: "IPVS table")
    }

    // MARK: Dumps

    public func services() throws -> [IPVSService] {
        try dump(.getService, NetlinkAttributes(), object: "service list").compactMap { IPVSCodec.decodeService($0[...]) }
    }

    public func destinations(of service: IPVSService) throws -> [(IPVSDestination, IPVSCounters)] {
        let family = IPVSCodec.family(service.address)
        return try dump(.getDestination, IPVSCodec.message(service: IPVSCodec.serviceKey(service)),
                        object: "destinations of service \(service)")
            .compactMap { IPVSCodec.decodeDestination($0[...], serviceFamily: family) }
    }

    // MARK: Transport

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

/// A plan stopped part-way: what reached the kernel, what failed and why, and what was not attempted.
/// Planning again from a fresh dump converges, since the plan is computed from what the kernel holds.
public struct IPVSApplyError: Error, CustomStringConvertible, Sendable {
    public var applied: [IPVSOperation]
    public var failed: IPVSOperation
    public var error: IPVSError
    public var notApplied: [IPVSOperation]

    public var description: String {
        "\(error) (while trying to \(failed)); \(applied.count) change(s) applied, \(notApplied.count) not attempted"
    }
}

extension IPVSClient {
    /// The whole table, as a dump finds it.
    public func table() throws -> IPVSTable {
        try IPVSTable(services().map { service in (service, try destinations(of: service).map(\.0)) })
    }

    /// Sends each operation in order; stops at the first refusal and says what was and was not applied.
    public func apply(_ operations: [IPVSOperation]) throws {
        for (index, operation) in operations.enumerated() {
            do {
                switch operation {
                case .addService(let service): try add(service)
                case .updateService(let service): try update(service)
                case .deleteService(let service): try delete(service)
                case .addDestination(let destination, let service): try add(destination, to: service)
                case .updateDestination(let destination, let service): try update(destination, in: service)
                case .deleteDestination(let destination, let service): try delete(destination, from: service)
                }
            } catch let error as IPVSError {
                throw IPVSApplyError(applied: Array(operations[..<index]), failed: operation, error: error,
                                     notApplied: Array(operations[(index + 1)...]))
            }
        }
    }
}
