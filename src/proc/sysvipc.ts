/**
 * /proc/sysvipc/shm: the System V shared memory segments of this process's IPC namespace, one
 * line each after a header:
 *   key shmid perms size cpid lpid nattch uid gid cuid cgid atime dtime ctime rss swap
 * key and the rest in decimal, perms in octal. perms is shm_perm.mode: the permission bits, and
 * SHM_DEST (0o1000: removed, gone once the last process detaches; its key reads 0 from then on)
 * and SHM_LOCKED (0o2000).
 */

import { readProcText } from './read.js';

export const SHM_DEST = 0o1000;
export const SHM_LOCKED = 0o2000;

export interface ShmSegment {
  /** The IPC key (0: IPC_PRIVATE, or removed). */
  key: number;
  id: number;
  /** shm_perm.mode: permission bits with SHM_DEST and SHM_LOCKED. */
  mode: number;
  size: number;
  /** How many mappings attach it (each VMA counts: a fork or a split adds one). */
  nattch: number;
  uid: number;
  gid: number;
  cuid: number;
  cgid: number;
}

/** The segments by id; parse errors throw (the kernel's format, not a task's: never expected). */
export function readShmSegments(text = readProcText('/proc/sysvipc/shm') ?? ''): Map<number, ShmSegment> {
  const out = new Map<number, ShmSegment>();
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 11) continue;
    const n = (i: number): number => {
      const v = Number(f[i]);
      if (!Number.isSafeInteger(v)) throw new Error(`/proc/sysvipc/shm: cannot parse "${line}"`);
      return v;
    };
    const mode = Number.parseInt(f[2] as string, 8);
    if (!Number.isSafeInteger(mode)) throw new Error(`/proc/sysvipc/shm: cannot parse "${line}"`);
    // The key is an int printed signed; keys are unsigned in images (ipc_desc_entry.key).
    const seg: ShmSegment = {
      key: n(0) >>> 0,
      id: n(1),
      mode,
      size: n(3),
      nattch: n(6),
      uid: n(7),
      gid: n(8),
      cuid: n(9),
      cgid: n(10),
    };
    out.set(seg.id, seg);
  }
  return out;
}
