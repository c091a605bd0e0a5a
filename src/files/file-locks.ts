/**
 * File locks: flock(2), POSIX record locks (fcntl F_SETLK, lockf) and open file description locks
 * (F_OFD_SETLK), in filelocks.img as CRIU writes it (kind FILE_LOCKS, one file_lock_entry per
 * lock: flag FL_POSIX 1 | FL_FLOCK 2 | FL_OFD 4, type F_RDLCK 0 | F_WRLCK 1, the owner's pid and one
 * of its fds on the file, start, len with 0 for "to the end of the file").
 *
 * Dump: the "lock:" lines of /proc/PID/fdinfo/FD (fs/locks.c), which list the locks on the file
 * that this fd's description holds (flock, OFD) or that this process owns (POSIX):
 *
 *   lock:	1: FLOCK  ADVISORY  READ 6643 fe:00:1703960 0 EOF
 *   lock:	1: POSIX  ADVISORY  WRITE 6643 fe:00:1703971 5 14
 *
 * A POSIX lock shows on every fd of its process on that file: one entry per lock and process. A
 * flock or OFD lock belongs to the description: one entry for the tree, at the first fd seen. As
 * CRIU, a task holding locks is refused in one line unless --file-locks (-l) is given, and leases
 * and mandatory locks are refused.
 *
 * Restore: once the process's fds are in place, each lock is taken again inside it, without
 * waiting (LOCK_NB, F_SETLK, F_OFD_SETLK): a lock someone else holds meanwhile fails the restore in
 * one line rather than hang it (CRIU waits, F_SETLKW). The image's locks are taken whether or not
 * the restore is given -l.
 */
import { UnsupportedError, isErrno } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import type { FdDumpInput, FileOptions } from './types.js';

/** file_lock_entry.flag, as CRIU (criu/include/file-lock.h). */
const FL_POSIX = 1;
const FL_FLOCK = 2;
const FL_OFD = 4;
/** fcntl lock types (also CRIU's file_lock_entry.type). */
const F_RDLCK = 0;
const F_WRLCK = 1;
/** flock(2) operations. */
const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
/** fcntl(2) commands. */
const F_SETLK = 6;
const F_OFD_SETLK = 37;
const SEEK_SET = 0;

const KINDS: ReadonlyMap<string, number> = new Map([
  ['POSIX', FL_POSIX],
  ['FLOCK', FL_FLOCK],
  ['OFDLCK', FL_OFD],
]);

/** One "lock:" line of an fdinfo. */
export interface LockLine {
  kind: string;
  mode: string;
  type: string;
  start: bigint;
  /** The last byte, or null for "to the end of the file" (EOF). */
  end: bigint | null;
}

const LOCK_LINE = /^lock:\s+\d+:\s+(\S+)\s+(\S+)\s+(\S+)\s+-?\d+\s+\S+\s+(\d+)\s+(EOF|\d+)\s*$/;

/** The "lock:" lines of an fdinfo text. */
export function parseLockLines(raw: string): LockLine[] {
  const locks: LockLine[] = [];
  for (const line of raw.split('\n')) {
    if (!line.startsWith('lock:')) continue;
    const m = LOCK_LINE.exec(line);
    if (m === null) throw new Error(`Cannot parse the fdinfo line "${line}"`);
    const [, kind, mode, type, start, end] = m as unknown as [string, string, string, string, string, string];
    locks.push({ kind, mode, type, start: BigInt(start), end: end === 'EOF' ? null : BigInt(end) });
  }
  return locks;
}

/** Why the file locks on fd `input` cannot be dumped with `options`, or undefined. */
export function fileLockRefusal(input: FdDumpInput, options: FileOptions): string | undefined {
  const locks = parseLockLines(input.fdinfo.raw);
  const what = `fd ${input.fd} of task ${input.pid}`;
  for (const l of locks) {
    if (!KINDS.has(l.kind) || l.mode !== 'ADVISORY' || (l.type !== 'READ' && l.type !== 'WRITE'))
      return `Cannot dump ${what}: it holds a ${l.mode} ${l.kind} ${l.type} lock; only advisory flock, POSIX and OFD locks are supported`;
    if (options.isFileLocks !== true)
      return `Cannot dump ${what}: it holds a file lock (${l.kind} ${l.type}); with --file-locks (-l) file locks are dumped too`;
  }
  return undefined;
}

/**
 * The file_lock_entry records of the locks fd `input` shows, not recorded yet (`seen` holds the
 * keys of those recorded, for the whole dump): `fileId` is the description's id in files.img.
 */
export function fileLockEntries(
  input: FdDumpInput,
  fileId: number,
  seen: Set<string>,
  vpid: (hostPid: number) => number = (p) => p,
): ImageEntry[] {
  const entries: ImageEntry[] = [];
  for (const l of parseLockLines(input.fdinfo.raw)) {
    const flag = KINDS.get(l.kind);
    if (flag === undefined) continue; // refused before (fileLockRefusal)
    const owner = flag === FL_POSIX ? `task ${input.pid} inode ${input.stat.dev}:${input.stat.ino}` : `file ${fileId}`;
    const key = `${l.kind} ${owner} ${l.type} ${l.start}-${l.end ?? 'EOF'}`;
    if (seen.has(key)) continue;
    seen.add(key);
    entries.push({
      flag,
      type: l.type === 'WRITE' ? F_WRLCK : F_RDLCK,
      pid: vpid(input.pid), // as the tree's PID namespace sees it
      fd: input.fd,
      start: l.start,
      len: l.end === null ? 0n : l.end + 1n - l.start,
    });
  }
  return entries;
}

/** struct flock, x86_64: l_type, l_whence (shorts), l_start, l_len (off_t), l_pid. */
function flockStruct(type: number, start: bigint, len: bigint): Buffer {
  const b = Buffer.alloc(32);
  b.writeInt16LE(type, 0);
  b.writeInt16LE(SEEK_SET, 2);
  b.writeBigInt64LE(start, 8);
  b.writeBigInt64LE(len, 16);
  return b;
}

/** Take again, inside the task being restored (process `pid`), the locks of `entries` that are its. */
export function restoreFileLocks(injector: Injector, pid: number, entries: readonly ImageEntry[]): void {
  for (const e of entries) {
    if (Number(e['pid']) !== pid) continue;
    const fd = BigInt(Number(e['fd']));
    const flag = Number(e['flag']);
    const type = Number(e['type']);
    const start = BigInt((e['start'] as bigint | number | undefined) ?? 0);
    const len = BigInt((e['len'] as bigint | number | undefined) ?? 0);
    const what = `the ${flag === FL_FLOCK ? 'flock' : flag === FL_OFD ? 'OFD' : 'POSIX'} lock of fd ${fd} of task ${pid}`;
    if (type !== F_RDLCK && type !== F_WRLCK)
      throw new UnsupportedError('file-lock', `Cannot restore ${what}: lock type ${type} is not supported`);
    try {
      if (flag === FL_FLOCK)
        injector.syscallOrThrow('flock', [fd, BigInt((type === F_WRLCK ? LOCK_EX : LOCK_SH) | LOCK_NB)]);
      else if (flag === FL_POSIX || flag === FL_OFD)
        injector.syscallOrThrow('fcntl', [
          fd,
          BigInt(flag === FL_OFD ? F_OFD_SETLK : F_SETLK),
          injector.pushData(flockStruct(type, start, len)),
        ]);
      else
        throw new UnsupportedError('file-lock', `Cannot restore a file lock of fd ${fd} of task ${pid}: flag ${flag}`);
    } catch (err) {
      if (err instanceof UnsupportedError) throw err;
      throw new UnsupportedError(
        'file-lock',
        isErrno(err, 'EAGAIN', 'EACCES')
          ? `Cannot restore ${what}: another process holds a lock on that file that conflicts with it`
          : `Cannot restore ${what}: ${(err as Error).message}`,
        { cause: err },
      );
    } finally {
      injector.resetScratch();
    }
  }
}
