#define _GNU_SOURCE
#include "lb_spawn.h"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <string.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

int lb_spawn_actions_close_from(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

/// Marks every descriptor from 3 up close-on-exec, so the program inherits none of lbd's sockets.
static void cloexec_from_3(void) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 1048576) max = 1048576;
    for (int fd = 3; fd < max; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
}

pid_t lb_spawn_confined(const char *path, char *const argv[], char *const envp[], int output_fd,
                        uid_t uid, gid_t gid, int die_with_parent) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return -errno;
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0) {
        int saved = errno;
        close(report[0]); close(report[1]);
        return -saved;
    }
    // Blocks all signals across fork, so no handler of lbd's runs in the child before the dispositions are reset.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        // Only async-signal-safe calls from here to exec.
        struct sigaction standard;
        memset(&standard, 0, sizeof standard);
        standard.sa_handler = SIG_DFL;
        for (int signal = 1; signal < NSIG; signal++) {
            if (signal == SIGKILL || signal == SIGSTOP) continue;
            if (sigaction(signal, &standard, NULL) != 0) {
                // glibc refuses its own real-time signals (32, 33); an ignored one would survive exec.
                struct { void *handler; unsigned long flags; void *restorer; unsigned long mask; } kernel_default = {0};
                syscall(SYS_rt_sigaction, signal, &kernel_default, NULL, sizeof kernel_default.mask);
            }
        }
        int failed_errno = 0;
        if (setpgid(0, 0) != 0
            || dup2(null_fd, 0) < 0 || dup2(output_fd, 1) < 0 || dup2(output_fd, 2) < 0
            || chdir("/") != 0
            || (uid != (uid_t)-1 && (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0))) {
            failed_errno = errno;
        } else {
            cloexec_from_3();
            // die_with_parent: SIGTERM when the spawning thread ends (a keepalived holding VIPs for a dead lbd
            // would black-hole them). Set after the identity change, which clears it; if lbd is already gone, stop.
            if (die_with_parent && (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)) _exit(127);
            sigset_t empty;
            sigemptyset(&empty);
            sigprocmask(SIG_SETMASK, &empty, NULL);
            execve(path, argv, envp);
            failed_errno = errno;
        }
        (void)!write(report[1], &failed_errno, sizeof failed_errno);
        _exit(127);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(report[1]);
    close(null_fd);
    if (pid < 0) {
        close(report[0]);
        return -fork_errno;
    }
    // The group exists before the parent signals it, whichever of the two runs first.
    setpgid(pid, pid);
    int child_errno = 0;
    ssize_t got;
    do { got = read(report[0], &child_errno, sizeof child_errno); } while (got < 0 && errno == EINTR);
    close(report[0]);
    if (got == (ssize_t)sizeof child_errno) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        return -child_errno;
    }
    return pid;
}
