#ifndef LB_SPAWN_H
#define LB_SPAWN_H
#include <spawn.h>
#include <sys/types.h>

/// Starts `path` (an absolute path) confined for an external health check, and returns its pid, or -errno.
/// The child: its own process group (pgid = pid), working directory /, every signal at its default disposition
/// and an empty signal mask (lbd's own ignored or blocked signals are not inherited), stdin /dev/null, stdout and
/// stderr both `output_fd`, no other descriptor, and, when `uid` is not (uid_t)-1, the user `uid` and group `gid`
/// with no supplementary groups. `argv` and `envp` are NULL-terminated and used as given (no PATH search, no
/// inherited environment). A failure between fork and exec is reported as -errno, not as a child exiting.
/// With `die_with_parent` the child gets SIGTERM when the calling thread ends (PR_SET_PDEATHSIG): call it from a
/// thread that lives as long as the child should.
pid_t lb_spawn_confined(const char *path, char *const argv[], char *const envp[], int output_fd,
                        uid_t uid, gid_t gid, int die_with_parent);

/// Adds "close every descriptor from `from` up" to `actions` (glibc's posix_spawn_file_actions_addclosefrom_np,
/// which Swift's Glibc module does not show). Returns 0 or an errno value.
int lb_spawn_actions_close_from(posix_spawn_file_actions_t *actions, int from);

#endif
