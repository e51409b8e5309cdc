import Foundation
import LBControl
import Logging
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

    func start(group: EventLoopGroup) async throws {
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        // A socket file left by an lbd that died is stale; one that answers belongs to a running lbd.
        if FileManager.default.fileExists(atPath: path) {
            if (try? ControlClient.send(ControlRequest(command: .status), socketPath: path, timeout: 2)) != nil {
                throw ControlServerError(description: "another lbd answers on \(path); stop it first or use --socket")
            }
            unlink(path)
        }
        let handle = self.handle, logger = self.logger, allowedGroup = self.allowedGroup
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder()))
                    try channel.pipeline.syncOperations.addHandler(
                        ControlHandler(allowedGroup: allowedGroup, logger: logger, handle: handle))
                }
            }
            .bind(unixDomainSocketPath: path).get()
        chmod(path, allowedGroup == nil ? 0o600 : 0o660)
        if let allowedGroup { chown(path, 0, allowedGroup) }
        self.channel = channel
        logger.info("control socket listening", metadata: ["socket": "\(path)"])
    }

    func stop() async {
        try? await channel?.close().get()
        unlink(path)
    }
}

struct ControlServerError: Error, CustomStringConvertible {
    let description: String
}

/// Splits the stream at newlines; a request longer than 64 KiB is refused.
struct LineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - buffer.readerIndex
            context.fireChannelRead(wrapInboundOut(buffer.readSlice(length: length)!))
            buffer.moveReaderIndex(forwardBy: 1)
            return .continue
        }
        if buffer.readableBytes > 65536 { throw ControlServerError(description: "request too long") }
        return .needMoreData
    }
}

final class ControlHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let allowedGroup: gid_t?
    private let logger: Logger
    private let handle: @Sendable (ControlRequest, PeerCredentials) async -> ControlResponse
    private var answered = false

    init(allowedGroup: gid_t?, logger: Logger, handle: @escaping @Sendable (ControlRequest, PeerCredentials) async -> ControlResponse) {
        self.allowedGroup = allowedGroup
        self.logger = logger
        self.handle = handle
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        answered = true
        let line = unwrapInboundIn(data)
        let channel = context.channel
        guard let provider = channel as? SocketOptionProvider else {
            channel.close(promise: nil)
            return
        }
        let future: EventLoopFuture<PeerCredentials> =
            provider.unsafeGetSocketOption(level: .socket, name: .init(rawValue: PeerCredentials.option))
        future.whenComplete { [self] result in
            guard case .success(let peer) = result else {
                channel.close(promise: nil)
                return
            }
            serve(line, from: peer, on: channel)
        }
    }

    private func serve(_ line: ByteBuffer, from peer: PeerCredentials, on channel: Channel) {
        guard permitted(peer) else {
            logger.warning("control request refused", metadata: ["uid": "\(peer.uid)", "gid": "\(peer.gid)", "pid": "\(peer.pid)"])
            Self.reply(ControlResponse(ok: false, message: "permission denied: root or the control group only"), on: channel)
            return
        }
        guard let request = try? JSONDecoder().decode(ControlRequest.self, from: Data(line.readableBytesView)) else {
            Self.reply(ControlResponse(ok: false, message: "unreadable request"), on: channel)
            return
        }
        let handle = self.handle
        // Status is asked for all the time (monitoring, the status page): only changes are worth a log line.
        let level: Logger.Level = request.command == .status ? .debug : .info
        logger.log(level: level, "control request", metadata: ["command": "\(request.command.rawValue)", "uid": "\(peer.uid)",
                                                  "service": "\(request.service ?? "-")", "server": "\(request.server ?? "-")"])
        Task {
            let response = await handle(request, peer)
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
