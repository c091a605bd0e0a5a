/**
 * inotify (fd kind INOTIFY): file_entry { type: INOTIFY, id, ify: { id, flags, fown, wd[] } } with
 * one inotify_wd_entry { id: 0, i_ino, mask, ignored_mask, s_dev, wd, f_handle } per watch; the
 * watched inode's file handle and path go in f_handle { bytes, type, handle (u64 words, at least
 * 16), path }, as CRIU 4.x writes them.
 *
 * Dump reads the "inotify wd:" lines of /proc/PID/fdinfo/FD (fs/notify/fdinfo.c, all hex):
 *
 *   inotify wd:3 ino:214852 sdev:fe00000 mask:100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1
 *     f_handle:52482100135a564c     (one line; the handle's bytes; sdev in the kernel's encoding,
 *                                     major << 20 | minor)
 *
 * and finds the watched path as CRIU does: open_by_handle_at(2) (criu's own process, needs
 * CAP_DAC_READ_SEARCH) on a mount of the task with that device (its mount point opened through
 * /proc/PID/root; O_RDONLY, the kernel refuses an O_PATH mount fd), then readlink(/proc/self/fd/N). The path is the one criu sees: the task must
 * share criu's mount namespace (containers come with the mount namespace work).
 *
 * Restore, inside the task: inotify_init1(IN_NONBLOCK), then inotify_add_watch(path, mask) in
 * ascending wd order. The kernel hands out wds cyclically (idr_alloc_cyclic: each new one above
 * the last, never reusing a freed one until it wraps), so a fresh instance gives 1, 2, 3...; where
 * the dumped wds have a hole, the watch is added and removed (inotify_rm_watch) until the next wd
 * is the wanted one, as CRIU does. Each removal queues an IN_IGNORED event: the queue is drained
 * once all watches are in, so the restored fd starts empty (an event on a watched path during
 * those few calls would be drained too; the dumped queue itself is not restored, as in CRIU).
 * Finally the recorded flags (O_NONBLOCK or not) are set.
 */

import { readlinkSync } from 'node:fs';
import { UnsupportedError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import { O_CLOEXEC, O_NONBLOCK, O_PATH, O_RDONLY } from '../kernel/constants.js';
import { fdInfoLines } from '../proc/fdinfo.js';
import { SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';
import { readMountinfo } from '../proc/mountinfo.js';
import * as sys from '../sys/native.js';
import { descriptionFlags, setStatusFlagsInTask } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import { FD_TYPES, type FdInfo, type FdKindModule } from './types.js';

/** fh_entry_sizes.min_entries of proto/fh.proto: CRIU always writes at least 16 handle words. */
const FH_MIN_WORDS = 16;
/** Read size when draining IN_IGNORED events. */
const DRAIN_BYTES = 4096;

/** One watch of an inotify instance, as in its fdinfo. */
export interface InotifyWatch {
  wd: number;
  ino: bigint;
  /** Kernel encoding: major << 20 | minor. */
  sdev: number;
  mask: number;
  ignoredMask: number;
  handleType: number;
  handle: Buffer;
}

/** The watches of an inotify fd's fdinfo, ascending by wd. */
export function parseInotifyInfo(info: FdInfo): InotifyWatch[] {
  return fdInfoLines(info, 'inotify wd')
    .map((line) => {
      const f = new Map<string, string>();
      for (const m of `wd:${line}`.matchAll(/([a-z_-]+):([0-9a-f]+)/g)) f.set(m[1] as string, m[2] as string);
      const hex = (key: string): string => {
        const v = f.get(key);
        if (v === undefined) throw new Error(`No "${key}" in the inotify fdinfo line "inotify wd:${line}"`);
        return v;
      };
      const handle = Buffer.from(hex('f_handle'), 'hex');
      if (handle.length !== parseInt(hex('fhandle-bytes'), 16))
        throw new Error(`Inotify fdinfo line "inotify wd:${line}": the handle length does not match`);
      return {
        wd: parseInt(hex('wd'), 16),
        ino: BigInt(`0x${hex('ino')}`),
        sdev: parseInt(hex('sdev'), 16) >>> 0,
        mask: parseInt(hex('mask'), 16) >>> 0,
        ignoredMask: parseInt(hex('ignored_mask'), 16) >>> 0,
        handleType: parseInt(hex('fhandle-type'), 16) | 0,
        handle,
      };
    })
    .sort((a, b) => a.wd - b.wd);
}

/** Handle bytes as CRIU's fh_entry.handle: little-endian u64 words, zero-padded to 16 words. */
export function handleWords(handle: Buffer): bigint[] {
  const nWords = Math.max(FH_MIN_WORDS, Math.ceil(handle.length / 8));
  const padded = Buffer.alloc(nWords * 8);
  handle.copy(padded);
  return Array.from({ length: nWords }, (_, i) => padded.readBigUInt64LE(i * 8));
}

/** The path of the inode a file handle names, seen from task `pid`'s mounts (see the header). */
export function resolveHandlePath(pid: number, w: InotifyWatch): string {
  const major = w.sdev >>> 20;
  const minor = w.sdev & 0xfffff;
  const mounts = (readMountinfo(pid) ?? []).filter((m) => m.major === major && m.minor === minor);
  // A mount of the filesystem's root reaches every inode; a bind mount of a subtree may not.
  mounts.sort((a, b) => Number(b.root === '/') - Number(a.root === '/'));
  let lastError: unknown = new Error(`no mount of device ${major}:${minor} in task ${pid}`);
  for (const m of mounts) {
    let mountFd = -1;
    let fd = -1;
    try {
      // Not O_PATH: open_by_handle_at refuses an O_PATH mount fd (EBADF).
      mountFd = sys.open(`/proc/${pid}/root${m.mountPoint}`, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0);
      fd = sys.openByHandleAt(mountFd, w.handleType, w.handle, O_PATH | O_CLOEXEC);
      const path = readlinkSync(`/proc/self/fd/${fd}`);
      if (path.startsWith('/') && !path.endsWith(' (deleted)')) return path;
      lastError = new Error(`the inode's path is "${path}"`);
    } catch (err) {
      lastError = err;
    } finally {
      if (fd >= 0) sys.close(fd);
      if (mountFd >= 0) sys.close(mountFd);
    }
  }
  throw new UnsupportedError(
    'inotify watch path',
    `Cannot find the path of inotify watch ${w.wd} (inode ${w.ino} on ${major}:${minor})`,
    { cause: lastError },
  );
}

export const inotifyFile: FdKindModule = {
  type: FD_TYPES.INOTIFY,
  name: 'inotify',
  restoreOrder: 10,

  matches(input) {
    return input.link === 'anon_inode:inotify';
  },

  async dump(input, id, ctx) {
    const wd = parseInotifyInfo(input.fdinfo).map((w) => ({
      id: 0,
      i_ino: w.ino,
      mask: w.mask,
      ignored_mask: w.ignoredMask,
      s_dev: w.sdev,
      wd: w.wd,
      f_handle: {
        bytes: w.handle.length,
        type: w.handleType,
        handle: handleWords(w.handle),
        path: resolveHandlePath(input.pid, w),
      },
    }));
    return {
      type: FD_TYPES.INOTIFY,
      id,
      ify: { id, flags: descriptionFlags(input.fdinfo.flags), fown: dumpFown(input, ctx), wd },
    };
  },

  async restore(entry, ctx) {
    const ify = entry['ify'] as ImageEntry;
    const flags = Number(ify['flags'] ?? 0);
    const { injector } = ctx;
    const fd = Number(injector.syscallOrThrow('inotify_init1', [BigInt(O_NONBLOCK)]));
    const watches = ((ify['wd'] ?? []) as ImageEntry[]).slice().sort((a, b) => Number(a['wd']) - Number(b['wd']));
    let removed = 0;
    for (const w of watches) {
      const want = Number(w['wd']);
      const path = (w['f_handle'] as ImageEntry | undefined)?.['path'];
      if (typeof path !== 'string' || path === '')
        throw new UnsupportedError('inotify watch path', `Cannot restore inotify watch ${want}: no path in the image`);
      const pathAddr = injector.pushData(Buffer.from(`${path}\0`));
      for (;;) {
        const got = Number(
          injector.syscallOrThrow('inotify_add_watch', [BigInt(fd), pathAddr, BigInt(Number(w['mask']))]),
        );
        if (got === want) break;
        if (got > want)
          throw new Error(
            `Cannot restore inotify watch ${want} on ${path}: the kernel gave wd ${got} (watches out of order)`,
          );
        injector.syscallOrThrow('inotify_rm_watch', [BigInt(fd), BigInt(got)]);
        removed++;
      }
    }
    if (removed > 0) {
      const buf = injector.pushData(Buffer.alloc(DRAIN_BYTES));
      while (injector.syscall(NR.read, [BigInt(fd), buf, BigInt(DRAIN_BYTES)]) > 0n) {
        // IN_IGNORED of the removed filler watches; stops at EAGAIN
      }
    }
    setStatusFlagsInTask(injector, fd, flags, O_NONBLOCK);
    restoreFown(injector, fd, ify['fown'] as ImageEntry | undefined);
    return fd;
  },
};
