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

/** What /proc/sysvipc/sem and /proc/sysvipc/msg tell of a semaphore set or a message queue. */
export interface SysvObject {
  key: number;
  id: number;
  /** The permission bits. */
  mode: number;
  uid: number;
  gid: number;
  cuid: number;
  cgid: number;
  /** sem: nsems; msg: qnum (messages waiting). */
  count: number;
  /** msg: cbytes (bytes waiting); sem: 0. */
  bytes: number;
}

/**
 * /proc/sysvipc/sem ("key semid perms nsems uid gid cuid cgid otime ctime") or /proc/sysvipc/msg
 * ("key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid stime rtime ctime") of this thread's
 * IPC namespace, by id.
 */
export function readSysvObjects(kind: 'sem' | 'msg', text?: string): Map<number, SysvObject> {
  const out = new Map<number, SysvObject>();
  const body = text ?? readProcText(`/proc/sysvipc/${kind}`) ?? '';
  // The columns after perms: sem has nsems, then the ids; msg has cbytes, qnum, lspid, lrpid.
  const ids = kind === 'sem' ? 4 : 7;
  for (const line of body.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < ids + 4) continue;
    const n = (i: number): number => {
      const v = Number(f[i]);
      if (!Number.isSafeInteger(v)) throw new Error(`/proc/sysvipc/${kind}: cannot parse "${line}"`);
      return v;
    };
    const mode = Number.parseInt(f[2] as string, 8);
    if (!Number.isSafeInteger(mode)) throw new Error(`/proc/sysvipc/${kind}: cannot parse "${line}"`);
    out.set(n(1), {
      key: n(0) >>> 0,
      id: n(1),
      mode,
      count: kind === 'sem' ? n(3) : n(4),
      bytes: kind === 'sem' ? 0 : n(3),
      uid: n(ids),
      gid: n(ids + 1),
      cuid: n(ids + 2),
      cgid: n(ids + 3),
    });
  }
  return out;
}
