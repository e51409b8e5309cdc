import Foundation
import LBConfig
import Logging
import NIOPosix

/// What happens in a pair, as the agent learns it (from keepalived's FIFO and the peer channel; any thread).
public enum PairEvent: Sendable {
    case vrrp(VRRPNotification.State)
    case keepalivedStopped(String)
    case peerMessage(PeerMessage)
    /// The last refusal, its sender, and how many there were since the last report (at most one report a second).
    case refused(PeerVerifier.Refusal, from: String, count: Int)
}

/// The real moving parts of a pair: keepalived supervised, and the peer channel on a thread of its own.
public final class KeepalivedPair: @unchecked Sendable {
    public let keepalivedFiles: KeepalivedConfig.Files
    private let logger: Logger
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private var supervisor: KeepalivedSupervisor?
    private var channel: PeerChannel?

    /// `directory`: lbd's state directory (keepalived.conf, the standby flag); `runtimeDirectory`: pid files and
    /// the FIFO (a tmpfs such as /run/lb; never a 9p or NFS share, where FIFOs do not work).
    public init(directory: String, runtimeDirectory: String, logger: Logger) {
        keepalivedFiles = KeepalivedConfig.Files(directory: directory, runtimeDirectory: runtimeDirectory)
        self.logger = logger
    }

    public func check(_ pair: HighAvailability) throws {
        _ = try KeepalivedSupervisor.program()
        _ = try PeerChannel.readSecret(pair.peerSecretFile)
    }

    public func start(_ pair: HighAvailability, node: String, keepalivedConfig: String, standby: Bool,
                      events: @escaping @Sendable (PairEvent) -> Void) throws {
        guard let me = pair.node(named: node), let peer = pair.peer(of: node) else { return }
        let secret = try PeerChannel.readSecret(pair.peerSecretFile)
        channel = try PeerChannel(local: me.address.description, peer: peer.address.description, port: Int(pair.peerPort),
                                  secret: secret, peerName: peer.name, group: group, logger: logger,
                                  onMessage: { events(.peerMessage($0)) }, onRefusal: { events(.refused($0, from: $1, count: $2)) })
        do {
            let supervisor = try KeepalivedSupervisor(files: keepalivedFiles, logger: logger,
                                                      onState: { events(.vrrp($0)) }, onStopped: { events(.keepalivedStopped($0)) })
            try supervisor.start(configuration: keepalivedConfig, standby: standby)
            self.supervisor = supervisor
        } catch {
            channel?.close()
            channel = nil
            throw error
        }
    }

    public func reload(keepalivedConfig: String) throws {
        try supervisor?.reload(configuration: keepalivedConfig)
    }

    public func setStandby(_ on: Bool) throws {
        guard let supervisor else { return }
        try supervisor.setStandby(on)
    }

    public func send(_ message: PeerMessage) {
        channel?.send(message)
    }

    public func stop() {
        supervisor?.stop()
        supervisor = nil
        channel?.close()
        channel = nil
    }
}
