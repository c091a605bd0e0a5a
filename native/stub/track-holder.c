/*
 * criu-track-holder PID STARTTIME: keeps a userfaultfd open between criu-ts invocations, so that
 * dirty-memory tracking of task PID survives from one `criu pre-dump` to the next.
 *
 * Started by the first pre-dump (src/mem/track/holder.ts) in its own session, with
 *   fd 3: the userfaultfd (created inside task PID, registered for write-protection)
 *   fd 4: a pidfd of task PID
 * and stdin/stdout/stderr on /dev/null. It does nothing but wait: it exits when task PID exits
 * (the pidfd becomes readable) or on SIGTERM (the default action; the final dump or
 * `endTracking` sends it). Either way the kernel closes fd 3, and with the last reference to the
 * userfaultfd gone it unregisters every range and drops the write-protection: the task is left as
 * it was before tracking. PID and STARTTIME are not used here; they are in argv so that an
 * orphaned holder can be recognised from /proc/N/cmdline.
 *
 * Kernel interfaces: poll(2) on a pidfd (5.3+). Plain C with libc.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define UFFD_FD 3
#define PIDFD_FD 4

int main(int argc, char** argv) {
  if (argc != 3 || atoi(argv[1]) <= 0) return 2;
  if (fcntl(UFFD_FD, F_GETFD) < 0 || fcntl(PIDFD_FD, F_GETFD) < 0) return 2;
  /*
   * Not tied to any directory, fd or terminal signal of the criu process that started us: an fd
   * it leaked without O_CLOEXEC (the write end of a pipe someone reads to its end, say) must not
   * live on here.
   */
  if (chdir("/") != 0) return 2;
  if (syscall(SYS_close_range, PIDFD_FD + 1, ~0U, 0) != 0) {
    for (int fd = PIDFD_FD + 1; fd < 65536; fd++) close(fd);
  }
  signal(SIGINT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  struct pollfd p = {.fd = PIDFD_FD, .events = POLLIN};
  for (;;) {
    int n = poll(&p, 1, -1);
    if (n > 0) return 0;
    if (n < 0 && errno != EINTR) return 1;
  }
}
