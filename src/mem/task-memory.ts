/**
 * Reading a task's memory through /proc/PID/mem (native memReadv: a pread per run), not
 * process_vm_readv.
 *
 * Why: process_vm_readv pins the pages it reads, and the kernel does not let a read-only pin
 * hold an anonymous page that the task shares copy-on-write (with its parent, its children):
 * it gives the task a copy of its own first (mm/gup.c, "unshare"). Every pre-dump of a tree that
 * forked so (a pre-fork server, python's multiprocessing, a shell's subshells) would then leave
 * the running tree holding copies of all it shared, as would `dump -R`; measured here, 32 MiB a
 * process shared with its child became private to both after one pre-dump, and a read of such
 * memory ran at 0.46 GiB/s. Reading /proc/PID/mem takes the pages by reference, without a pin:
 * nothing is unshared, ~7 GiB/s here, near process_vm_readv's ~8 on memory of one task alone.
 *
 * Kernel interfaces: /proc/PID/mem (needs ptrace access to the task, as process_vm_readv does).
 */

import { TaskError, isErrno } from '../errors.js';
import { O_CLOEXEC, O_RDONLY } from '../kernel/constants.js';
import * as sys from '../sys/native.js';

/** A task's /proc/PID/mem, open for reading: read()/readAsync() have process_vm_readv's result. */
export class TaskMemory {
  private constructor(
    readonly pid: number,
    private readonly fd: number,
  ) {}

  /** Open task `pid`'s memory; a task that is gone is a TaskError. */
  static open(pid: number): TaskMemory {
    try {
      return new TaskMemory(pid, sys.open(`/proc/${pid}/mem`, O_RDONLY | O_CLOEXEC, 0));
    } catch (err) {
      if (isErrno(err, 'ENOENT', 'ESRCH')) throw new TaskError(pid, `Task ${pid} is gone`, { cause: err });
      throw err;
    }
  }

  /**
   * Read the (addr, len) pairs of `remote` into `buf` from `offset` on: the bytes read, short at
   * the first range that cannot be read whole (0 when the first cannot: unmapped). A task whose
   * memory is gone (it exited) is a TaskError.
   */
  read(buf: Buffer, offset: number, remote: BigUint64Array): number {
    let n: number;
    try {
      n = sys.memReadv(this.fd, buf, offset, remote);
    } catch (err) {
      return unreadable(err);
    }
    return this.checked(n);
  }

  async readAsync(buf: Buffer, offset: number, remote: BigUint64Array): Promise<number> {
    let n: number;
    try {
      n = await sys.memReadvAsync(this.fd, buf, offset, remote);
    } catch (err) {
      return unreadable(err);
    }
    return this.checked(n);
  }

  /** Nothing read and no error: the end of the file, which /proc/PID/mem reports once the task's memory is gone. */
  private checked(n: number): number {
    if (n === 0) throw new TaskError(this.pid, `Task ${this.pid} exited while its memory was read`);
    return n;
  }

  close(): void {
    sys.close(this.fd);
  }
}

/** EIO: not a byte of the first range could be read (it is not mapped). */
function unreadable(err: unknown): number {
  if (isErrno(err, 'EIO')) return 0;
  throw err;
}
