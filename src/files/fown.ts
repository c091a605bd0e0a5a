/**
 * File owner settings (fcntl F_SETOWN/F_SETOWN_EX, F_SETSIG) of an open file description: the
 * `fown_entry` every file sub-message of files.img carries.
 *
 * Kernel interfaces: fcntl(2) F_GETSIG and F_GETOWN on criu's own duplicate of the fd (the owner
 * belongs to the description, so the duplicate sees it); when there is an owner, F_GETOWN_EX and
 * F_GETOWNER_UIDS (CONFIG_CHECKPOINT_RESTORE) injected into the task, because both take a pointer
 * and the pid must be read in the task's pid namespace. Restore: F_SETSIG and F_SETOWN_EX injected
 * into the task being rebuilt.
 *
 * As CRIU: `pid_type` is the f_owner_ex type (F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2) and
 * uid/euid are the credentials recorded with the owner; all zero when the description has no
 * owner. Unlike CRIU we record `signum` even without an owner (F_SETSIG alone is state too; CRIU's
 * restore applies a non-zero signum in either case).
 *
 * Restore limitation: the owner's uid/euid become those of the restoring task (root); CRIU
 * switches credentials with setresuid around F_SETOWN_EX, which cannot be undone from a task
 * that gave up root. They only widen who may receive SIGIO/SIGURG.
 */

import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import { O_PATH } from '../kernel/constants.js';
import * as sys from '../sys/native.js';
import type { FdDumpInput, FileDumpContext } from './types.js';

/** fcntl(2) commands. uapi/asm-generic/fcntl.h. */
export const F_SETOWN = 8;
export const F_GETOWN = 9;
export const F_SETSIG = 10;
export const F_GETSIG = 11;
export const F_SETOWN_EX = 15;
export const F_GETOWN_EX = 16;
export const F_GETOWNER_UIDS = 17;

/** struct f_owner_ex.type. uapi/asm-generic/fcntl.h. */
export const F_OWNER_TID = 0;
export const F_OWNER_PID = 1;
export const F_OWNER_PGRP = 2;

/** The entry of a description without owner and signal. */
export function emptyFown(): ImageEntry {
  return { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 };
}

/** Read the owner settings of the description behind `input` (injects only when there is an owner). */
export function dumpFown(input: FdDumpInput, ctx: FileDumpContext): ImageEntry {
  // An O_PATH fd has no owner: fcntl refuses everything but F_GETFL/F_GETFD/F_DUPFD on it.
  if (input.fdinfo.flags & O_PATH) return emptyFown();
  const signum = sys.fcntl(input.localFd, F_GETSIG, 0);
  const fown = { ...emptyFown(), signum };
  if (sys.fcntl(input.localFd, F_GETOWN, 0) === 0) return fown;
  // struct f_owner_ex { int type; pid_t pid; } then uid_t[2] for F_GETOWNER_UIDS.
  const addr = ctx.injector.pushData(Buffer.alloc(16));
  ctx.injector.syscallOrThrow('fcntl', [BigInt(input.fd), BigInt(F_GETOWN_EX), addr]);
  ctx.injector.syscallOrThrow('fcntl', [BigInt(input.fd), BigInt(F_GETOWNER_UIDS), addr + 8n]);
  const raw = ctx.injector.readMemory(addr, 16);
  return {
    uid: raw.readUInt32LE(8),
    euid: raw.readUInt32LE(12),
    signum,
    pid_type: raw.readInt32LE(0),
    pid: raw.readInt32LE(4),
  };
}

/** Apply a fown_entry to fd `fd` of the task `injector` drives. */
export function restoreFown(injector: Injector, fd: number, fown: ImageEntry | undefined): void {
  if (fown === undefined) return;
  const signum = Number(fown['signum'] ?? 0);
  if (signum !== 0) injector.syscallOrThrow('fcntl', [BigInt(fd), BigInt(F_SETSIG), BigInt(signum)]);
  const pid = Number(fown['pid'] ?? 0);
  if (pid === 0) return;
  const ex = Buffer.alloc(8);
  ex.writeInt32LE(Number(fown['pid_type'] ?? F_OWNER_PID), 0);
  ex.writeInt32LE(pid, 4);
  injector.syscallOrThrow('fcntl', [BigInt(fd), BigInt(F_SETOWN_EX), injector.pushData(ex)]);
}
