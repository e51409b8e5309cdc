import LBSystem
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// `external`: runs the configured command line with `/bin/sh -c`, confined (see `ConfinedProcess`): as `user`
/// (default `nobody`) when lbd runs as root, with only PATH, LB_SERVER_ADDRESS and LB_SERVER_PORT in its
/// environment, default signal handling, its own process group. Exit 0 = healthy. At the check's timeout the
/// group gets SIGTERM, then SIGKILL half a second later; when the command exits, whatever it left running in its
/// group is killed. Its output (first 4 KiB kept, the rest read and dropped) goes into the failure reason.
///
/// Nothing blocks: the output pipe is read by the event loop, and the exit is polled (waitpid WNOHANG) on it.
enum ExternalCheck {
    static let outputLimit = 4096
    static let killGrace = TimeAmount.milliseconds(500)
    static let pollInterval = TimeAmount.milliseconds(20)
    static let searchPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    static func run(_ command: String, user: String, target: ProbeTarget, timeout: Duration,
                    on eventLoop: EventLoop) -> EventLoopFuture<ProbeResult> {
        guard eventLoop.inEventLoop else {
            return eventLoop.flatSubmit { ExternalCheck.run(command, user: user, target: target, timeout: timeout, on: eventLoop) }
        }
        let started: ConfinedProcess.Started
        do {
            started = try ConfinedProcess.start(
                "/bin/sh", ["-c", command],
                environment: ["PATH": searchPath, "LB_SERVER_ADDRESS": "\(target.address)", "LB_SERVER_PORT": "\(target.port)"],
                user: user)
        } catch {
            return eventLoop.makeSucceededFuture(.fail("\(error)"))
        }
        let run = ExternalRun(pid: started.pid, timeout: timeout, eventLoop: eventLoop)
        let bound = NIOLoopBound(run, eventLoop: eventLoop)
        NIOPipeBootstrap(group: eventLoop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(OutputCollector(run: bound.value))
                }
            }
            .takingOwnershipOfDescriptor(input: started.output)
            .whenComplete { result in
                switch result {
                case .success(let channel): bound.value.outputChannel = channel
                case .failure:
                    close(started.output)
                    bound.value.outputClosed()
                }
            }
        run.poll()
        return run.promise.futureResult
    }
}

/// One run of an external check, on its event loop.
private final class ExternalRun {
    let pid: pid_t
    let timeout: Duration
    let eventLoop: EventLoop
    let promise: EventLoopPromise<ProbeResult>
    let deadline: NIODeadline
    var output: [UInt8] = []
    var outputChannel: Channel?
    private var status: Int32?
    private var outputEnded = false
    private var terminated = false
    private var killed = false
    private var finished = false

    init(pid: pid_t, timeout: Duration, eventLoop: EventLoop) {
        self.pid = pid
        self.timeout = timeout
        self.eventLoop = eventLoop
        self.promise = eventLoop.makePromise()
        self.deadline = .now() + TimeAmount(timeout)
    }

    /// Every `pollInterval` until the command has exited: reap it, or signal its group when its time is up.
    func poll() {
        if status == nil, let exited = ConfinedProcess.exitStatus(pid) {
            status = exited
            // The check is over; anything it started in the background goes with it (and releases the pipe).
            ConfinedProcess.signalGroup(pid, SIGKILL)
            // Output still buffered is collected until the pipe closes, for a bounded time.
            let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
            eventLoop.scheduleTask(in: .seconds(1)) { loopBound.value.finish() }
        }
        if status == nil {
            let now = NIODeadline.now()
            if now >= deadline, !terminated {
                terminated = true
                ConfinedProcess.signalGroup(pid, SIGTERM)
            }
            if now >= deadline + ExternalCheck.killGrace, !killed {
                killed = true
                ConfinedProcess.signalGroup(pid, SIGKILL)
            }
            let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
            eventLoop.scheduleTask(in: ExternalCheck.pollInterval) { loopBound.value.poll() }
        } else if outputEnded {
            finish()
        }
    }

    func outputClosed() {
        outputEnded = true
        if status != nil { finish() }
    }

    private func finish() {
        guard !finished, let status else { return }
        finished = true
        outputChannel?.close(promise: nil)
        if status == 0, !terminated {
            promise.succeed(.pass)
            return
        }
        var said = String(decoding: output, as: UTF8.self).split(whereSeparator: \.isNewline).joined(separator: " / ")
        if said.count > 200 { said = String(said.prefix(200)) + "…" }
        let reason = terminated ? "command did not finish within \(timeout.configText)" : "command exited \(status)"
        promise.succeed(.fail(said.isEmpty ? reason : "\(reason): \(said)"))
    }
}

/// Keeps the first `outputLimit` bytes of the command's output and drops the rest (still reading it, so the
/// command never blocks on a full pipe).
private final class OutputCollector: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let run: ExternalRun

    init(run: ExternalRun) { self.run = run }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        let room = ExternalCheck.outputLimit - run.output.count
        if room > 0, let bytes = buffer.readBytes(length: min(room, buffer.readableBytes)) { run.output += bytes }
    }

    func channelInactive(context: ChannelHandlerContext) {
        run.outputClosed()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { context.close(promise: nil) }
    }
}
