import Foundation
import LBControl
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// lbd's control socket: a Unix socket (mode 0600, or 0660 with a control group) where lbctl sends one JSON request
/// per connection. The kernel tells who is calling (SO_PEERCRED): root, or a member of the configured group;
/// anyone else is refused before the request is read. The handler is given those credentials (the audit trail).
final class ControlServer: @unchecked Sendable {
    let path: String
    private let allowedGroup: gid_t?
    private let logger: Logger
    private let handle: @Sendable (ControlRequest, PeerCredentials) async -> ControlResponse
    private var channel: Channel?

    init(path: String, allowedGroup: gid_t?, logger: Logger,
         handle: @escaping @Sendable (ControlRequest, PeerCredentials) async -> ControlResponse) {
        self.path = path
        self.allowedGroup = allowedGroup
        self.logger = logger
        self.handle = handle
    }

    /// What is wrong with `path` as a control socket path, before anything is started; nil if nothing.
    static func pathProblem(_ path: String) -> String? {
        guard path.hasPrefix("/") else {
            return "--socket \"\(path)\": the control socket path must be absolute (lbctl must find it from any directory), e.g. /run/lb/lbd.sock"
        }
        // sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
        guard path.utf8.count <= 107 else {
            return "--socket \"\(path)\": \(path.utf8.count) bytes, over the 107 a Unix socket path may have"
        }
        guard !path.hasSuffix("/"), !path.utf8.contains(0) else {
            return "--socket \"\(path)\": not a file name"
        }
        return nil
    }

    func start(group: EventLoopGroup) async throws {
        if let problem = Self.pathProblem(path) { throw ControlServerError(description: problem) }
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        try Self.makeDirectory(directory.isEmpty ? "/" : directory, for: path)
        // A socket file left by an lbd that died is stale; one that answers belongs to a running lbd. Anything
        // else at that path is not lbd's to remove.
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else {
                throw ControlServerError(description: "control socket \(path): something other than a socket is there; remove it or choose another --socket")
            }
            if (try? ControlClient.send(ControlRequest(command: .status), socketPath: path, timeout: 2)) != nil {
                throw ControlServerError(description: "another lbd answers on \(path); stop it first or use --socket")
            }
            unlink(path)
        }
        let handle = self.handle, logger = self.logger, allowedGroup = self.allowedGroup
        let channel: Channel
        do {
            channel = try await ServerBootstrap(group: group)
                // A client may send its request and shut down its sending side (nc -N, socat): it still gets its answer.
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder()))
                        try channel.pipeline.syncOperations.addHandler(
                            ControlHandler(allowedGroup: allowedGroup, logger: logger, handle: handle))
                    }
                }
                .bind(unixDomainSocketPath: path).get()
        } catch {
            throw ControlServerError(description: "control socket \(path): cannot listen: \(error)")
        }
        chmod(path, allowedGroup == nil ? 0o600 : 0o660)
        if let allowedGroup { chown(path, 0, allowedGroup) }
        self.channel = channel
        logger.info("control socket listening", metadata: ["socket": "\(path)"])
    }

    /// Creates the socket's directory (and its parents) as needed, mode 0755, with errors that name it.
    private static func makeDirectory(_ directory: String, for socket: String) throws {
        var info = stat()
        if stat(directory, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else {
                throw ControlServerError(description: "control socket \(socket): \(directory) is not a directory")
            }
            return
        }
        let parent = String(directory[..<(directory.lastIndex(of: "/") ?? directory.startIndex)])
        if !parent.isEmpty { try makeDirectory(parent, for: socket) }
        guard mkdir(directory, 0o755) == 0 || errno == EEXIST else {
            throw ControlServerError(description: "control socket \(socket): cannot create the directory \(directory): \(String(cString: strerror(errno)))")
        }
    }

    func stop() async {
        try? await channel?.close().get()
        unlink(path)
    }
}

struct ControlServerError: Error, CustomStringConvertible {
    let description: String
}

/// Splits the stream at newlines. A request longer than `ControlProtocol.maximumRequestBytes` is an error (the
/// handler answers it); bytes left without a newline when the client shuts down its side are the request.
struct LineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - buffer.readerIndex
            guard length <= ControlProtocol.maximumRequestBytes else { throw ControlRequestTooLong() }
            context.fireChannelRead(wrapInboundOut(buffer.readSlice(length: length)!))
            buffer.moveReaderIndex(forwardBy: 1)
            return .continue
        }
        if buffer.readableBytes > ControlProtocol.maximumRequestBytes { throw ControlRequestTooLong() }
        return .needMoreData
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if buffer.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(buffer.readSlice(length: buffer.readableBytes)!)) }
        return .needMoreData
    }
}

struct ControlRequestTooLong: Error {}

final class ControlHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let allowedGroup: gid_t?
    private let logger: Logger
    private let handle: @Sendable (ControlRequest, PeerCredentials) async -> ControlResponse
    /// Who is calling, once the kernel has said and the caller is allowed.
    private var peer: PeerCredentials?
    private var answered = false
    private var readDeadline: Scheduled<Void>?

    init(allowedGroup: gid_t?, logger: Logger, handle: @escaping @Sendable (ControlRequest, PeerCredentials) async -> ControlResponse) {
        self.allowedGroup = allowedGroup
        self.logger = logger
        self.handle = handle
    }

    /// The caller is checked as it connects, before a byte of its request is looked at; a caller that is allowed
    /// has `ControlProtocol.requestReadTimeout` to send its request.
    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        guard let provider = channel as? SocketOptionProvider else {
            channel.close(promise: nil)
            return
        }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let future: EventLoopFuture<PeerCredentials> =
            provider.unsafeGetSocketOption(level: .socket, name: .init(rawValue: PeerCredentials.option))
        future.whenComplete { result in
            let handler = loopBound.value
            guard case .success(let peer) = result else {
                handler.answer(ControlResponse(ok: false, message: "cannot tell who is calling"), on: channel)
                return
            }
            guard handler.permitted(peer) else {
                handler.logger.warning("control request refused", metadata: ["uid": "\(peer.uid)", "gid": "\(peer.gid)", "pid": "\(peer.pid)"])
                handler.answer(ControlResponse(ok: false, message: "permission denied: root or the control group only"), on: channel)
                return
            }
            handler.peer = peer
            if let line = handler.pendingLine {
                handler.pendingLine = nil
                handler.serveOnce(line, on: channel)
            }
        }
        readDeadline = context.eventLoop.scheduleTask(in: .seconds(Int64(ControlProtocol.requestReadTimeout))) {
            let handler = loopBound.value
            handler.answer(ControlResponse(ok: false, message: "no complete request within \(ControlProtocol.requestReadTimeout) s"),
                           on: channel)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        readDeadline?.cancel()
        context.fireChannelInactive()
    }

    /// A request line that arrived before the kernel said who sent it.
    private var pendingLine: ByteBuffer?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if peer == nil {
            if pendingLine == nil { pendingLine = unwrapInboundIn(data) }
            return
        }
        serveOnce(unwrapInboundIn(data), on: context.channel)
    }

    private func serveOnce(_ line: ByteBuffer, on channel: Channel) {
        guard !answered, let peer else { return }
        answered = true
        readDeadline?.cancel()
        serve(line, from: peer, on: channel)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let message = error is ControlRequestTooLong
            ? "request over \(ControlProtocol.maximumRequestBytes / 1024) KiB" : "unreadable request"
        answer(ControlResponse(ok: false, message: message), on: context.channel)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The client has sent all it will: without a request, there is nothing to wait for.
        if case ChannelEvent.inputClosed = event, !answered {
            answer(ControlResponse(ok: false, message: "no request before the end of input"), on: context.channel)
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// One answer per connection, then the close.
    private func answer(_ response: ControlResponse, on channel: Channel) {
        guard !answered else { return }
        answered = true
        readDeadline?.cancel()
        Self.reply(response, on: channel)
    }

    private func serve(_ line: ByteBuffer, from peer: PeerCredentials, on channel: Channel) {
        guard let request = try? JSONDecoder().decode(ControlRequest.self, from: Data(line.readableBytesView)) else {
            Self.reply(ControlResponse(ok: false, message: "unreadable request"), on: channel)
            return
        }
        let handle = self.handle
        // Status is asked for all the time (monitoring, the status page): only changes are worth a log line.
        let level: Logger.Level = request.command == .status ? .debug : .info
        logger.log(level: level, "control request", metadata: ["command": "\(request.command.rawValue)", "uid": "\(peer.uid)",
                                                  "service": "\(request.service ?? "-")", "server": "\(request.server ?? "-")"])
        // lbd answers within ControlProtocol.answerDeadline, which lbctl waits for: a change that takes longer goes
        // on, and the operator is told so rather than left to a timeout on lbctl's side.
        let answer = NIOLockedValueBox(false)
        let deadline = channel.eventLoop.scheduleTask(in: .seconds(Int64(ControlProtocol.answerDeadline))) { [logger] in
            guard answer.withLockedValue({ let first = !$0; $0 = true; return first }) else { return }
            logger.warning("control request still running at the answer deadline", metadata: ["command": "\(request.command.rawValue)"])
            Self.reply(ControlResponse(ok: false, message: "\(request.command.rawValue) is still being applied after \(ControlProtocol.answerDeadline) s; it goes on: see lbctl status and lbd's log"), on: channel)
        }
        Task {
            let response = await handle(request, peer)
            deadline.cancel()
            guard answer.withLockedValue({ let first = !$0; $0 = true; return first }) else { return }
            Self.reply(response, on: channel)
        }
    }

    private static func reply(_ response: ControlResponse, on channel: Channel) {
        var data = (try? JSONEncoder().encode(response)) ?? Data(#"{"ok":false}"#.utf8)
        data.append(UInt8(ascii: "\n"))
        channel.writeAndFlush(ByteBuffer(bytes: data)).whenComplete { _ in channel.close(promise: nil) }
    }

    private func permitted(_ peer: PeerCredentials) -> Bool {
        if peer.uid == 0 { return true }
        guard let allowedGroup else { return false }
        if peer.gid == allowedGroup { return true }
        // Supplementary groups of the calling user.
        guard let account = getpwuid(peer.uid) else { return false }
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        guard getgrouplist(account.pointee.pw_name, account.pointee.pw_gid, &groups, &count) >= 0 else { return false }
        return groups.prefix(Int(count)).contains(allowedGroup)
    }
}

/// struct ucred (pid, uid, gid), which Glibc hides behind _GNU_SOURCE; SO_PEERCRED fills it.
struct PeerCredentials: Sendable {
    static let option: Int32 = 17  // SO_PEERCRED on Linux
    var pid: Int32
    var uid: UInt32
    var gid: UInt32
}
