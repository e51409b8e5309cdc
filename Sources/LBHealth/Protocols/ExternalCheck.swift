import Dispatch
import LBSystem
import NIOCore

/// `external`: runs the configured command through /bin/sh with the real server in its environment
/// (LB_SERVER_ADDRESS, LB_SERVER_PORT); exit 0 = healthy. Killed at the check's timeout; its output goes into the
/// failure reason (first 200 characters), so the log says why.
enum ExternalCheck {
    static func run(_ command: String, target: ProbeTarget, timeout: Duration, on eventLoop: EventLoop) -> EventLoopFuture<ProbeResult> {
        let promise = eventLoop.makePromise(of: ProbeResult.self)
        let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
        // A blocking wait: off the event loop.
        DispatchQueue.global().async {
            do {
                let result = try Subprocess.run("/bin/sh", ["-c", command],
                                                environment: ["LB_SERVER_ADDRESS": "\(target.address)",
                                                              "LB_SERVER_PORT": "\(target.port)"],
                                                timeout: seconds)
                if result.status == 0 {
                    promise.succeed(.pass)
                } else {
                    let said = (result.output + result.errorOutput).split(whereSeparator: \.isNewline).joined(separator: " / ")
                    let reason = result.status == 124 ? "command did not finish within \(timeout.configText)"
                        : "command exited \(result.status)"
                    promise.succeed(.fail(said.isEmpty ? reason : "\(reason): \(said.prefix(200))"))
                }
            } catch {
                promise.succeed(.fail("\(error)"))
            }
        }
        return promise.futureResult
    }
}
