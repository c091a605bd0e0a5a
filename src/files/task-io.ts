/**
 * Opening, positioning and closing files inside a task being restored, by injected syscalls:
 * openat(2), lseek(2), close(2). Shared by the path-based fd kinds (reg, ghost, memfd). And
 * feeding bytes to an fd of the task (a pipe's, a socket's queue), through its scratch space.
 *
 * A failed call is rethrown as a SyscallError naming the path (the injector's own error names
 * only the raw arguments).
 */

import { SyscallError } from '../errors.js';
import type { Injector } from '../inject/injector.js';
import { O_CLOEXEC, O_CREAT, O_DIRECTORY, O_EXCL, O_NOCTTY, O_TRUNC } from '../kernel/constants.js';
import { errnoName } from '../kernel/errno.js';
import { SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';

export const AT_FDCWD = -100n;
export const SEEK_SET = 0n;
/** The O_TMPFILE bit without O_DIRECTORY. uapi/asm-generic/fcntl.h. */
export const __O_TMPFILE = 0o20000000;

/**
 * The open(2) flags that reopen a description with these fdinfo flags: without O_CLOEXEC (the
 * orchestrator sets FD_CLOEXEC), and never creating or truncating anything. A file made with
 * O_TMPFILE keeps that bit (and O_DIRECTORY, part of O_TMPFILE) in f_flags: reopening must drop
 * both or it would make a new file.
 */
export function reopenFlags(flags: number): number {
  let f = flags & ~(O_CLOEXEC | O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY);
  if (f & __O_TMPFILE) f &= ~(__O_TMPFILE | O_DIRECTORY);
  return f;
}

/** openat(AT_FDCWD, path, reopenFlags(flags)) in the task; returns the new fd there. */
export function openInTask(injector: Injector, path: string, flags: number): number {
  const addr = injector.pushData(Buffer.from(`${path}\0`));
  const f = reopenFlags(flags);
  const ret = injector.syscall(NR.openat, [AT_FDCWD, addr, BigInt(f), 0n]);
  if (ret < 0n && ret >= -4095n) throw taskSyscallError('openat', ret, [`"${path}"`, `0${f.toString(8)}`]);
  return Number(ret);
}

/** lseek(fd, pos, SEEK_SET) in the task. */
export function seekInTask(injector: Injector, fd: number, pos: bigint): void {
  if (pos === 0n) return;
  const ret = injector.syscall(NR.lseek, [BigInt(fd), pos, SEEK_SET]);
  if (ret < 0n && ret >= -4095n) throw taskSyscallError('lseek', ret, [fd, pos]);
}

/** close(fd) in the task, ignoring errors (clean-up paths). */
export function closeInTask(injector: Injector, fd: number): void {
  try {
    injector.syscall(NR.close, [BigInt(fd)]);
  } catch {
    // the task is gone: nothing left to close
  }
}

/** A failed injected call as `name(args): ECODE`; the caller's context says which task and fd. */
export function taskSyscallError(name: string, ret: bigint, args: readonly (string | number | bigint)[]): SyscallError {
  const errno = Number(-ret);
  return new SyscallError(name, errno, errnoName(errno), args);
}

/** Bytes copied into the task at once: well within its scratch space (512 KiB, restore/stub.ts). */
export const FEED_CHUNK = 128 << 10;

/**
 * Feed `data` to the task, `chunk` bytes of its scratch space at a time (the scratch space is
 * reused: what was pushed before is gone). `put(addr, len)` runs the injected call that takes
 * bytes from there (write, sendto) and returns its raw result: bytes taken, or -errno.
 * `onErrno(errno)` may make room (a bigger buffer) and return true to try again; any other failure,
 * or a call that takes nothing, throws with `what`. A message that must go whole (a datagram) is
 * fed with `chunk` at least its length.
 */
export function feedInTask(
  injector: Injector,
  data: Buffer,
  what: string,
  put: (addr: bigint, len: number) => bigint,
  opts: { chunk?: number; onErrno?: (errno: number) => boolean } = {},
): void {
  const chunk = opts.chunk ?? FEED_CHUNK;
  let base = 0n;
  let chunkEnd = 0;
  for (let off = 0; off < data.length;) {
    if (off >= chunkEnd) {
      injector.resetScratch();
      chunkEnd = Math.min(data.length, off + chunk);
      base = injector.pushData(data.subarray(off, chunkEnd)) - BigInt(off);
    }
    const ret = put(base + BigInt(off), chunkEnd - off);
    if (ret < 0n && ret >= -4095n) {
      if (opts.onErrno?.(Number(-ret)) === true) continue;
      throw taskSyscallError(what, ret, [off, data.length]);
    }
    if (ret === 0n) throw new Error(`Cannot refill ${what}: nothing taken at ${off} of ${data.length} bytes`);
    off += Number(ret);
  }
}
