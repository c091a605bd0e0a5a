/**
 * RPC's pidfd store (criu_opts.pidfd_store_sk, as CRIU's criu/pidfd-store.c): PID reuse detection
 * between the iterations of a pre-dump loop by pidfds, for tools (P.Haul-like) that keep one
 * connectionless AF_UNIX socket alive across the iterations and pass it to each.
 *
 * The socket is the client's: taken with pidfd_getfd. The first iteration finds it unnamed and
 * binds it to an abstract name and connects it to itself, so that what an iteration sends stays
 * queued in it for the next. Each message: the pid (a native int) with its pidfd (SCM_RIGHTS).
 *   - open() drains what the previous iteration left;
 *   - isReused(pid): no pidfd for pid, or its process has exited (pidfd_send_signal 0: ESRCH):
 *     pid may name another task than the one the parent images hold, and their pages are not
 *     taken from the parent;
 *   - add(pid) leaves a pidfd of the task for the next iteration.
 * criu-ts's tracker also checks the task's start time (src/mem/track/), which catches the same
 * reuse; the store is the check CRIU's clients ask for.
 *
 * Kernel interfaces: pidfd_open, pidfd_getfd, pidfd_send_signal (5.6+), sendmsg/recvmsg with
 * SCM_RIGHTS, SO_SNDBUFFORCE/SO_RCVBUFFORCE (CAP_NET_ADMIN; without it the default queue).
 */

import { randomBytes } from 'node:crypto';
import { SyscallError, UsageError } from '../errors.js';
import { AF_UNIX, SOCK_DGRAM, SOL_SOCKET, MSG_DONTWAIT } from '../kernel/constants.js';
import { log } from '../log.js';
import * as sys from '../sys/native.js';

/** socket(7), unix(7) numbers not in src/kernel/constants.ts. */
const SO_TYPE = 3;
const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;
const SO_DOMAIN = 39;

export class PidfdStore {
  private constructor(
    private readonly sock: number,
    /** pid -> pidfd, as the previous iteration left them. */
    private readonly entries: Map<number, number>,
  ) {}

  /** Take the client's socket `clientFd`, make it ready the first time, and drain it. */
  static async open(clientPid: number, clientFd: number): Promise<PidfdStore> {
    let sock: number;
    try {
      const pidfd = sys.pidfdOpen(clientPid, 0);
      try {
        sock = sys.pidfdGetfd(pidfd, clientFd, 0);
      } finally {
        sys.close(pidfd);
      }
    } catch (err) {
      throw new UsageError(`Cannot take the pidfd store socket (fd ${clientFd} of ${clientPid}): ${reason(err)}`);
    }
    try {
      const int = (name: number): number => sys.getsockopt(sock, SOL_SOCKET, name, 4).readInt32LE(0);
      let isDgramUnix: boolean;
      try {
        isDgramUnix = int(SO_DOMAIN) === AF_UNIX && int(SO_TYPE) === SOCK_DGRAM;
      } catch {
        isDgramUnix = false; // not a socket
      }
      if (!isDgramUnix) throw new UsageError('The pidfd store (pidfd_store_sk) must be an AF_UNIX datagram socket');
      await bindToItself(sock, clientPid, clientFd);
      return new PidfdStore(sock, drain(sock));
    } catch (err) {
      sys.close(sock);
      throw err;
    }
  }

  /** How many pidfds the previous iteration left. */
  get size(): number {
    return this.entries.size;
  }

  /** Whether `pid` may not be the task of the previous iteration (see the module header). */
  isReused(pid: number): boolean {
    const pidfd = this.entries.get(pid);
    if (pidfd === undefined) return true;
    try {
      sys.pidfdSendSignal(pidfd, 0, 0);
      return false;
    } catch (err) {
      if (err instanceof SyscallError && err.errnoCode === 'ESRCH') return true;
      throw err;
    }
  }

  /**
   * For a (pre-)dump with parent images `prevImagesDir`: whether `pid` may be another task than
   * the parent's (its pages are then all copied), logged. An empty store means the client passed
   * another socket than the previous iteration's: refused, as CRIU refuses it.
   */
  isReusedSinceParent(pid: number, prevImagesDir: string | undefined): boolean {
    if (this.entries.size === 0)
      throw new UsageError(
        `No pidfds in the pidfd store (pidfd_store_sk) while the parent is ${prevImagesDir ?? '?'}: ` +
          'the same socket as in the previous iteration must be passed',
      );
    const isReused = this.isReused(pid);
    if (isReused) log().warn(`Pid reuse detected for pid ${pid}: its pages are not taken from the parent`);
    return isReused;
  }

  /** Leave a pidfd of task `pid` for the next iteration. */
  add(pid: number): void {
    const kept = this.isReused(pid) ? null : (this.entries.get(pid) as number);
    const pidfd = kept ?? sys.pidfdOpen(pid, 0);
    try {
      const msg = Buffer.alloc(4);
      msg.writeInt32LE(pid, 0);
      sys.sendFd(this.sock, msg, pidfd, MSG_DONTWAIT);
    } finally {
      if (kept === null) sys.close(pidfd);
    }
  }

  /** Close the pidfds drained and this process's copy of the socket (the client keeps its own). */
  close(): void {
    for (const pidfd of this.entries.values()) sys.close(pidfd);
    this.entries.clear();
    sys.close(this.sock);
  }
}

/**
 * An unnamed socket (the first iteration's) is bound to an abstract name and connected to it: it
 * then queues what it sends for whoever reads it next. One bound already (a later iteration) is
 * left as it is.
 */
async function bindToItself(sock: number, clientPid: number, clientFd: number): Promise<void> {
  const name = `\0criu-pidfd-store-${clientPid}-${clientFd}-${randomBytes(8).toString('hex')}`;
  try {
    sys.bindUnix(sock, name);
  } catch (err) {
    if (err instanceof SyscallError && err.errnoCode === 'EINVAL') return; // bound already
    throw err;
  }
  for (const opt of [SO_SNDBUFFORCE, SO_RCVBUFFORCE]) {
    const b = Buffer.alloc(4);
    b.writeInt32LE(0x3fffffff, 0);
    try {
      sys.setsockopt(sock, SOL_SOCKET, opt, b);
    } catch (err) {
      log().debug(`pidfd store: cannot enlarge the socket's queue: ${reason(err)}`);
    }
  }
  await sys.connectUnixAsync(sock, name);
}

/** Every (pid, pidfd) queued in the socket. */
function drain(sock: number): Map<number, number> {
  const entries = new Map<number, number>();
  for (;;) {
    let msg: { data: Buffer; fds: number[] };
    try {
      msg = sys.recvFds(sock, 4, MSG_DONTWAIT);
    } catch (err) {
      if (err instanceof SyscallError && err.errnoCode === 'EAGAIN') break;
      for (const fd of entries.values()) sys.close(fd);
      throw err;
    }
    const [pidfd, ...extra] = msg.fds;
    for (const fd of extra) sys.close(fd);
    if (msg.data.length < 4 || pidfd === undefined) {
      if (pidfd !== undefined) sys.close(pidfd);
      continue; // not one of ours
    }
    const pid = msg.data.readInt32LE(0);
    const old = entries.get(pid);
    if (old !== undefined) sys.close(old);
    entries.set(pid, pidfd);
  }
  return entries;
}

function reason(err: unknown): string {
  return err instanceof SyscallError ? err.errnoCode : String(err);
}
