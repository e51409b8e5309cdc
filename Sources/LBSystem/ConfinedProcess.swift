import CSpawn
import Glibc

/// Starting a program with as little of lbd as possible: for external health checks, which run operator-written
/// commands once every few seconds for the life of lbd, as root unless confined.
///
/// What the child gets (see `lb_spawn_confined`): its own process group, the working directory `/`, default signal
/// dispositions and an empty signal mask, stdin from /dev/null, stdout and stderr into one pipe, no other
/// descriptor, only the environment given, and — when lbd runs as root — the user's uid and primary gid with no
/// supplementary groups.
///
/// Why not swiftlang/swift-subprocess: its Linux child (process_shims.c as read for this change) calls setuid before
/// setgid and setgroups, so dropping from root to another user with a group fails (EPERM) and root's supplementary
/// groups stay unless a list is given; its signal reset stops at the first EINVAL (glibc's reserved signal 32),
/// leaving the real-time signals above it as inherited; and its waiting is built for async/await, while lbd's checks
/// run on NIO event loops. The spawner here is small, and ExternalCheckTests observe each property from the child.
public enum ConfinedProcess {
    /// A running confined program: its pid (also its process group) and the read end of its output pipe.
    public struct Started: Sendable {
        public var pid: pid_t
        public var output: Int32
    }

    public enum SpawnError: Error, CustomStringConvertible, Sendable, Equatable {
        case unknownUser(String)
        case cannotStart(program: String, user: String?, errno: Int32)

        public var description: String {
            switch self {
            case .unknownUser(let name): "user \"\(name)\" does not exist on this host"
            case .cannotStart(let program, let user, let code):
                "cannot run \(program)\(user.map { " as \($0)" } ?? ""): \(String(cString: strerror(code)))"
            }
        }
    }

    /// The uid and primary gid of a user, from the system's user database.
    public static func identity(ofUser name: String) throws(SpawnError) -> (uid: uid_t, gid: gid_t) {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16 * 1024)
        let status = getpwnam_r(name, &entry, &buffer, buffer.count, &result)
        guard status == 0, result != nil else { throw .unknownUser(name) }
        return (entry.pw_uid, entry.pw_gid)
    }

    /// Starts `program` (an absolute path) with `arguments` and exactly `environment`. `user` is switched to when
    /// lbd runs as root; otherwise the program runs as lbd's own (unprivileged) user. `dieWithParent`: SIGTERM
    /// when the calling thread ends (PR_SET_PDEATHSIG), for children that must not outlive lbd (keepalived).
    public static func start(_ program: String, _ arguments: [String], environment: [String: String],
                             user: String?, dieWithParent: Bool = false) throws(SpawnError) -> Started {
        var target: (uid: uid_t, gid: gid_t)?
        if let user, geteuid() == 0 { target = try identity(ofUser: user) }
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw .cannotStart(program: program, user: user, errno: errno) }
        // Close-on-exec: other programs started meanwhile must not hold this pipe open (the child gets it by dup2).
        _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
        let argv: [UnsafeMutablePointer<CChar>?] = ([program] + arguments).map { strdup($0) } + [nil]
        let lines = environment.map { "\($0.key)=\($0.value)" }.sorted()
        let envp: [UnsafeMutablePointer<CChar>?] = lines.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        let pid = lb_spawn_confined(program, argv, envp, ends[1], target?.uid ?? uid_t.max, target?.gid ?? gid_t.max,
                                    dieWithParent ? 1 : 0)
        close(ends[1])
        guard pid > 0 else {
            close(ends[0])
            throw .cannotStart(program: program, user: target == nil ? nil : user, errno: Int32(-pid))
        }
        return Started(pid: pid, output: ends[0])
    }

    /// The exit status of `pid` if it has ended (128 + signal for a signal), without waiting.
    public static func exitStatus(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        var reaped: pid_t
        repeat { reaped = waitpid(pid, &status, WNOHANG) } while reaped < 0 && errno == EINTR
        guard reaped == pid else { return reaped < 0 ? 255 : nil }
        return (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    }

    /// Sends `signal` to the program's whole process group (what it started too).
    public static func signalGroup(_ pid: pid_t, _ signal: Int32) {
        _ = kill(-pid, signal)
    }
}
