import Logging
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Lets one log line through per interval and counts the ones held back, so a flood (refused connections, a full
/// descriptor table) is visible in the log without filling it.
final class RateLimitedLog: Sendable {
    private let interval: TimeAmount
    private let state = NIOLockedValueBox<(next: NIODeadline, suppressed: Int)>((.distantPast, 0))

    init(interval: TimeAmount) { self.interval = interval }

    /// nil: hold this line back. Otherwise log it, with the number of lines held back since the last one.
    func admit() -> Int? {
        state.withLockedValue { state in
            let now = NIODeadline.now()
            guard now >= state.next else {
                state.suppressed += 1
                return nil
            }
            let held = state.suppressed
            state = (now + interval, 0)
            return held
        }
    }
}

/// How the listening sockets of a service react to running out of descriptors.
enum AcceptLimits {
    /// How long accepting pauses after accept(2) fails for lack of descriptors or memory.
    static let backoff = TimeAmount.seconds(1)
    static let logInterval = TimeAmount.seconds(10)

    static func pauseHandler(service: String, logger: Logger) -> AcceptPauseHandler {
        AcceptPauseHandler(service: service, logger: logger)
    }
}

/// On a listening channel: when accept(2) fails with EMFILE, ENFILE, ENOBUFS or ENOMEM, stop accepting for
/// `AcceptLimits.backoff`, then try again; say so once per `AcceptLimits.logInterval`.
///
/// Why not NIO's AcceptBackoffHandler: it holds back the next read, but a server channel whose accept failed keeps
/// its read interest in epoll (level-triggered: the pending connection keeps the socket readable), so the event
/// loop wakes and fails accept again at 100 % of a core. Switching autoRead off removes the interest.
final class AcceptPauseHandler: ChannelInboundHandler {
    typealias InboundIn = Channel
    private let service: String
    private let logger: Logger
    private let log = RateLimitedLog(interval: AcceptLimits.logInterval)
    private var paused = false

    init(service: String, logger: Logger) {
        self.service = service
        self.logger = logger
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let ioError = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(ioError.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        if let held = log.admit() {
            var limit = rlimit()
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
            logger.error("not accepting for \(AcceptLimits.backoff): \(String(cString: strerror(ioError.errnoCode)))", metadata: [
                "service": "\(service)", "descriptor_limit": "\(limit.rlim_cur)", "repeats": "\(held)"])
        }
        guard !paused else { return }
        paused = true
        let channel = context.channel
        try? channel.syncOptions?.setOption(.autoRead, value: false)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: AcceptLimits.backoff) {
            loopBound.value.paused = false
            try? channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }
}
