import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Every proxied connection costs two descriptors (client and real server); the soft limit (often 1024) would cap
/// lbd far below what the machine allows. The soft limit is raised to the hard one at start (systemd's unit sets the
/// hard one with LimitNOFILE).
func raiseDescriptorLimit(logger: Logger) {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
    var target = limit.rlim_max
    if target == rlim_t.max {  // RLIM_INFINITY
        // The kernel refuses an infinite descriptor limit; fs.nr_open is the most it allows.
        target = (try? String(contentsOfFile: "/proc/sys/fs/nr_open", encoding: .utf8))
            .flatMap { rlim_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 1_048_576
    }
    guard limit.rlim_cur < target else { return }
    let previous = limit.rlim_cur
    limit.rlim_cur = target
    if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 {
        logger.info("descriptor limit raised", metadata: ["from": "\(previous)", "to": "\(target)"])
    } else {
        logger.warning("cannot raise the descriptor limit: \(String(cString: strerror(errno)))",
                       metadata: ["soft": "\(previous)", "hard": "\(limit.rlim_max)"])
    }
}
