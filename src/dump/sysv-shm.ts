/**
 * System V shared memory (shmget/shmat) attached by the dumped tree: the segments, with their
 * contents, in ipcns-shm-<ipc ns id>.img as CRIU writes them (an ipc_shm_entry, then `size`
 * bytes padded to 4); each attaching VMA refers to its segment by id (vma.shmid, status
 * SYSVIPC), as in CRIU.
 *
 * CRIU dumps System V IPC only as part of an IPC namespace of the tree's own, and refuses a
 * segment attached by a task that lives in the host's. criu-ts dumps the segments the tree has
 * attached either way (PostgreSQL keeps one), when they are the tree's alone: every attachment
 * the kernel counts (nattch: one per VMA) is a VMA of the tree. Each attachment must map the
 * whole segment (shmat does; a piece unmapped since is refused), in one or more VMAs (mprotect
 * splits it).
 *
 * The dumped segments move into the images with the tree: a dump that kills the tree removes
 * them (IPC_RMID, removeSysvShm) as the tree's end, as an IPC namespace's segments end with it,
 * so that a restore on this machine can make each again with its id and key. Left running or
 * stopped, the tree keeps them (and a restore next to it then finds their ids taken).
 *
 * Read from outside: /proc/sysvipc/shm for the segment, /proc/PID/map_files/ of an attaching VMA
 * for the contents (a file on the segment's memory: no injection, no change to the task).
 */

import { closeSync, openSync } from 'node:fs';
import { TaskError, UnsupportedError } from '../errors.js';
import { PAGE_SIZE, type ImageEntry } from '../images/index.js';
import { readShmSegments, SHM_DEST, type ShmSegment } from '../proc/sysvipc.js';
import * as sys from '../sys/native.js';
import { IPC_RMID, SHM_RDONLY } from '../kernel/constants.js';
import { VMA_AREA, type VmaInfo } from './vma.js';

/** Segments larger than this are refused: their contents are held in memory while dumped. */
export const SYSV_SHM_MAX_BYTES = 1 << 30;

/** One shmat of a segment: its VMAs, contiguous (start - pgoff the same for each). */
export interface SysvAttach {
  pid: number;
  start: bigint;
  end: bigint;
  /** pgoff of the first VMA (0 when the attachment still maps the segment from its start). */
  pgoff: bigint;
  /** The end of the first VMA: its /proc/PID/map_files/ name (a file on the whole segment). */
  firstEnd: bigint;
}

/** The tree's use of one segment: its attachments and how many VMAs they make (nattch's unit). */
export interface SysvUse {
  attaches: SysvAttach[];
  vmaCount: number;
}

/** Note the System V VMAs of process `pid` in `uses` (by segment id). */
export function noteSysvShm(pid: number, vmas: readonly VmaInfo[], uses: Map<number, SysvUse>): void {
  let last: SysvAttach | null = null;
  let lastId = -1;
  for (const v of vmas) {
    if ((v.status & VMA_AREA.SYSVIPC) === 0) {
      last = null;
      continue;
    }
    const id = v.inode;
    const use = uses.get(id) ?? { attaches: [], vmaCount: 0 };
    uses.set(id, use);
    use.vmaCount++;
    if (last !== null && lastId === id && last.end === v.start && v.pgoff === last.pgoff + (last.end - last.start)) {
      last.end = v.end;
      continue;
    }
    last = { pid, start: v.start, end: v.end, pgoff: v.pgoff, firstEnd: v.end };
    lastId = id;
    use.attaches.push(last);
  }
}

const pageUp = (n: number): bigint => BigInt(Math.ceil(n / PAGE_SIZE) * PAGE_SIZE);
const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

export interface SysvShmDump {
  /** IPCNS_SHM's records. */
  records: { entry: ImageEntry; extra: Buffer }[];
  /** The segments to remove when the tree is killed (removeSysvShm). */
  removedWithTree: number[];
}

/**
 * The IPCNS_SHM records of the segments in `uses`: checked to be the tree's alone and attached
 * whole, contents read. Throws UnsupportedError (a clear refusal) otherwise. `isWholeNamespace`
 * (an IPC namespace of the tree's own, as CRIU dumps it): every other segment of the namespace
 * too, read through an attachment of criu's own for a moment; one attached outside the tree is
 * refused.
 */
export function dumpSysvShm(uses: ReadonlyMap<number, SysvUse>, isWholeNamespace = false): SysvShmDump {
  const out: SysvShmDump = { records: [], removedWithTree: [] };
  if (uses.size === 0 && !isWholeNamespace) return out;
  const segments = readShmSegments();
  if (isWholeNamespace)
    for (const seg of [...segments.values()].sort((a, b) => a.id - b.id)) {
      if (uses.has(seg.id)) continue;
      checkTheTreesAlone(seg, { attaches: [], vmaCount: 0 });
      out.records.push({ entry: shmEntry(seg), extra: readUnattached(seg) });
    }
  for (const [id, use] of [...uses].sort((a, b) => a[0] - b[0])) {
    const seg = segments.get(id);
    const first = use.attaches[0] as SysvAttach;
    if (seg === undefined)
      throw new TaskError(first.pid, `System V shared memory segment ${id} mapped at ${hex(first.start)} is gone`);
    checkTheTreesAlone(seg, use);
    out.records.push({ entry: shmEntry(seg), extra: readContents(seg, first) });
    // One removed already goes with its last attachment (and its id may then be reused).
    if ((seg.mode & SHM_DEST) === 0) out.removedWithTree.push(id);
  }
  return out;
}

function describe(seg: ShmSegment): string {
  return `System V shared memory segment ${seg.id} (key ${hex(seg.key)}, ${seg.size} bytes)`;
}

function checkTheTreesAlone(seg: ShmSegment, use: SysvUse): void {
  if (seg.nattch > use.vmaCount)
    throw new UnsupportedError(
      'sysv-shm-external',
      `Cannot dump ${describe(seg)}: attached ${seg.nattch - use.vmaCount} time(s) outside the dumped tree`,
    );
  const whole = pageUp(seg.size);
  for (const a of use.attaches)
    if (a.pgoff !== 0n || a.end - a.start !== whole)
      throw new UnsupportedError(
        'sysv-shm-partial',
        `Cannot dump ${describe(seg)}: process ${a.pid} maps only part of it (${hex(a.start)}-${hex(a.end)}, offset ${hex(a.pgoff)})`,
      );
  if (seg.size > SYSV_SHM_MAX_BYTES)
    throw new UnsupportedError('sysv-shm-size', `Cannot dump ${describe(seg)}: segments over 1 GiB are not supported`);
}

/** ipc_shm_entry: mode as the kernel keeps it (SHM_DEST tells the restore to remove it again). */
function shmEntry(seg: ShmSegment): ImageEntry {
  return {
    desc: { key: seg.key, uid: seg.uid, gid: seg.gid, cuid: seg.cuid, cgid: seg.cgid, mode: seg.mode, id: seg.id },
    size: BigInt(seg.size),
  };
}

/** The contents of a segment no task attaches, padded to 4: attached read-only here for a moment. */
function readUnattached(seg: ShmSegment): Buffer {
  const out = Buffer.alloc(Math.ceil(seg.size / 4) * 4);
  const addr = sys.shmat(seg.id, SHM_RDONLY);
  try {
    const n = sys.processVmReadv(process.pid, out, 0, new BigUint64Array([addr, BigInt(seg.size)]));
    if (n !== seg.size) throw new UnsupportedError('sysv-shm-read', `Cannot read ${describe(seg)}: got ${n} bytes`);
  } finally {
    sys.shmdt(addr);
  }
  return out;
}

/** The first `size` bytes of the segment, padded to 4 (the image's layout). */
function readContents(seg: ShmSegment, a: SysvAttach): Buffer {
  const path = `/proc/${a.pid}/map_files/${a.start.toString(16)}-${a.firstEnd.toString(16)}`;
  const out = Buffer.alloc(Math.ceil(seg.size / 4) * 4);
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new UnsupportedError('sysv-shm-read', `Cannot read ${describe(seg)}: ${path}`, { cause: err });
  }
  try {
    for (let got = 0; got < seg.size;) {
      const n = sys.pread(fd, out, got, seg.size - got, BigInt(got));
      if (n === 0) break; // past the end of its memory: zeros
      got += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/**
 * Remove the dumped segments (IPC_RMID), once the tree is killed: each goes when its last
 * attachment does. Failures are returned as lines to log (the images are complete by then).
 */
export function removeSysvShm(ids: readonly number[]): string[] {
  const problems: string[] = [];
  for (const id of ids) {
    try {
      sys.shmctl(id, IPC_RMID, null);
    } catch (err) {
      problems.push(`Cannot remove System V shared memory segment ${id}: ${String(err)}`);
    }
  }
  return problems;
}
