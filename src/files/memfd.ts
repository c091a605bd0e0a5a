/**
 * The MEMFD fd kind: fds of memfd_create(2) files ("/memfd:NAME (deleted)"), as CRIU 4.2 dumps
 * them:
 *
 *   files.img   file_entry {type MEMFD, memfd: memfd_file_entry {id, flags, pos, fown, inode_id}}
 *   memfd.img   memfd_inode_entry {name (without "memfd:"), uid, gid, size, shmid (the inode
 *               number), seals (F_GET_SEALS), inode_id, mode}: once per memfd inode
 *   pagemap-shmem-<shmid>.img + pages-<n>.img: the contents, as CRIU stores shmem: one
 *               PE_PRESENT pagemap entry per run of non-zero pages, vaddr = the byte offset
 *
 * The simplest CRIU-compatible way to save the contents: read them with pread(2) through criu's
 * duplicate of the fd (no position change, no mapping, no injection) and store every page that is
 * not all zeros; zero pages and holes read back as zeros from the truncated file. (CRIU itself
 * asks mincore(2) of a mapping which pages exist; a page of zeros written by the task becomes a
 * hole here: the contents are equal, only its block allocation differs.)
 *
 * Restore: memfd_create(name, MFD_ALLOW_SEALING) injected into the task; then, from criu's side
 * through a pidfd_getfd duplicate: ftruncate to size, pwrite of the pages, fchown, fchmod and
 * F_ADD_SEALS (last, as seals may forbid writing). A description whose flags differ from what
 * memfd_create gives (O_RDWR | O_LARGEFILE), and every further description of the same inode, is
 * opened through /proc/self/fd, as CRIU does. Then lseek and fown as for regular files.
 *
 * Not supported: hugetlbfs memfds (MFD_HUGETLB): refused at dump. Shared mappings of a memfd
 * (memory dump) must use the same inode ids: see `memfdInodeId`.
 */

import { closeSync, fchmodSync, fchownSync, ftruncateSync, openSync } from 'node:fs';
import { ImageError, isErrno, UnsupportedError } from '../errors.js';
import { PAGE_SIZE, readShmemRuns, type ImageEntry } from '../images/index.js';
import { O_CLOEXEC, O_LARGEFILE, O_RDWR } from '../kernel/constants.js';
import { SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';
import * as sys from '../sys/native.js';
import { readMaps } from '../proc/maps.js';
import { dumpFown, restoreFown } from './fown.js';
import { imageSinkOf, type ShmemRun } from './image-sink.js';
import { DELETED_SUFFIX } from './ghost.js';
import { isMemfdLink } from './reg.js';
import { closeInTask, openInTask, reopenFlags, seekInTask, taskSyscallError } from './task-io.js';
import { sharedMap } from './shared.js';
import {
  FD_TYPES,
  type FdDumpInput,
  type FdKindModule,
  type FileDumpContext,
  type FileRestoreContext,
} from './types.js';

/** fcntl(2) seal commands. uapi/linux/fcntl.h. */
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
/** memfd_create(2) flags. uapi/linux/memfd.h. */
export const MFD_ALLOW_SEALING = 2;

const MEMFD_PREFIX = '/memfd:';

/** The memfd name of a link "/memfd:NAME (deleted)". */
export function memfdName(link: string): string {
  return link.slice(MEMFD_PREFIX.length, link.length - DELETED_SUFFIX.length);
}

interface DumpedInode {
  inodeId: number;
}

/**
 * The memfd_inode_entry id of the memfd behind `input`: dumps the inode (memfd.img entry and
 * contents) the first time it is seen in this dump.
 */
export async function memfdInodeId(input: FdDumpInput, ctx: FileDumpContext): Promise<number> {
  const inodes = sharedMap<bigint, DumpedInode>(ctx.shared, 'memfd.inodes');
  const known = inodes.get(input.stat.ino);
  if (known !== undefined) return known.inodeId;
  const st = input.stat;
  if (st.blksize !== BigInt(PAGE_SIZE))
    throw new UnsupportedError(
      'memfd-hugetlb',
      `Cannot dump fd ${input.fd} of task ${input.pid} (${input.link}): hugetlbfs memfds are not supported`,
    );
  const inodeId = inodes.size + 1;
  inodes.set(st.ino, { inodeId });
  const size = Number(st.size);
  await imageSinkOf(ctx).writeShmemPages(st.ino, readNonZeroPages(input.localFd, size));
  await ctx.addEntry('MEMFD_INODE', {
    name: memfdName(input.link),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: st.size,
    shmid: Number(st.ino),
    seals: sys.fcntl(input.localFd, F_GET_SEALS, 0),
    inode_id: BigInt(inodeId),
    mode: Number(st.mode),
  });
  return inodeId;
}

/**
 * The non-zero pages of the first `size` bytes of `fd`, merged into runs. Only where the file has
 * data (SEEK_DATA / SEEK_HOLE): a shmem object's holes are never read (PostgreSQL's 140 MiB of
 * shared buffers hold a few MiB), and where the file system cannot tell, everything is.
 */
export function readNonZeroPages(fd: number, size: number): ShmemRun[] {
  const runs: ShmemRun[] = [];
  const chunkPages = 256;
  const buf = Buffer.alloc(chunkPages * PAGE_SIZE);
  let pending: { pageIndex: number; pages: Buffer[] } | null = null;
  const flush = (): void => {
    if (pending !== null) runs.push({ pageIndex: pending.pageIndex, data: Buffer.concat(pending.pages) });
    pending = null;
  };
  for (const extent of dataExtents(fd, size)) {
    flush();
    for (let off = extent.start; off < extent.end; off += buf.length) {
      const want = Math.min(buf.length, extent.end - off);
      buf.fill(0, 0, Math.ceil(want / PAGE_SIZE) * PAGE_SIZE); // a partial last page: zeros past the end
      let got = 0;
      while (got < want) {
        const n = sys.pread(fd, buf, got, want - got, BigInt(off + got));
        if (n === 0) break;
        got += n;
      }
      for (let p = 0; p * PAGE_SIZE < want; p++) {
        const page = buf.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
        const index = off / PAGE_SIZE + p;
        if (isZero(page)) {
          flush();
          continue;
        }
        if (pending === null) pending = { pageIndex: index, pages: [] };
        pending.pages.push(Buffer.from(page));
      }
    }
  }
  flush();
  return runs;
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;

/**
 * The page-aligned byte ranges of [0, size) where `fd` has data; all of it when that is unknown.
 * The seeks go through a description of their own: `fd` may share the task's (pidfd_getfd), whose
 * offset must stay as it is.
 */
function dataExtents(fd: number, size: number): { start: number; end: number }[] {
  const probe = openSync(`/proc/self/fd/${fd}`, 'r');
  try {
    return dataExtentsOf(probe, size);
  } finally {
    closeSync(probe);
  }
}

function dataExtentsOf(fd: number, size: number): { start: number; end: number }[] {
  const pageDown = (n: number): number => Math.floor(n / PAGE_SIZE) * PAGE_SIZE;
  const pageUp = (n: number): number => Math.min(size, Math.ceil(n / PAGE_SIZE) * PAGE_SIZE);
  const out: { start: number; end: number }[] = [];
  for (let at = 0; at < size;) {
    let start: number;
    let end: number;
    try {
      start = Number(sys.lseek(fd, BigInt(at), SEEK_DATA));
      end = Number(sys.lseek(fd, BigInt(start), SEEK_HOLE));
    } catch (err) {
      if (isErrno(err, 'ENXIO')) break; // no data after `at`
      if (isErrno(err, 'EINVAL') && at === 0) return [{ start: 0, end: size }]; // cannot tell
      throw err;
    }
    if (start >= size) break;
    out.push({ start: pageDown(start), end: pageUp(Math.min(end, size)) });
    at = pageUp(end);
    if (end <= start) break; // never expected; not to loop
  }
  return out;
}

function isZero(b: Buffer): boolean {
  const words = new BigUint64Array(b.buffer, b.byteOffset, b.length / 8);
  for (const w of words) if (w !== 0n) return false;
  return true;
}

export const memfdFile: FdKindModule = {
  type: FD_TYPES.MEMFD,
  name: 'memfd',
  restoreOrder: 0,

  matches(input: FdDumpInput): boolean {
    return isMemfdLink(input.link) && (Number(input.stat.mode) & 0o170000) === 0o100000;
  },

  async dump(input: FdDumpInput, id: number, ctx: FileDumpContext): Promise<ImageEntry> {
    const memfd: ImageEntry = {
      id,
      flags: input.fdinfo.flags & ~O_CLOEXEC,
      pos: input.fdinfo.pos,
      fown: dumpFown(input, ctx),
      inode_id: await memfdInodeId(input, ctx),
    };
    return { type: FD_TYPES.MEMFD, id, memfd };
  },

  async restore(entry: ImageEntry, ctx: FileRestoreContext): Promise<number> {
    const memfd = entry['memfd'] as ImageEntry | undefined;
    if (memfd === undefined)
      throw new ImageError('files.img', `file ${String(entry['id'])} of type MEMFD has no memfd entry`);
    const id = Number(memfd['id']);
    const flags = Number(memfd['flags']);
    const inodeId = Number(memfd['inode_id']);
    const byInode = sharedMap<number, number>(ctx.shared, 'memfd.firstFileId');
    const first = byInode.get(inodeId);
    const firstFd = first === undefined ? undefined : ctx.fdOfFileId(first);
    // In a tree, another process may have the memfd already (treeMemfdPath).
    const elsewhere = firstFd === undefined && ctx.tree !== undefined ? treeMemfdPath(ctx.tree, inodeId) : undefined;
    let fd: number;
    if (firstFd !== undefined) fd = openInTask(ctx.injector, `/proc/self/fd/${firstFd}`, flags);
    else if (elsewhere !== undefined) {
      fd = openInTask(ctx.injector, elsewhere, flags);
      byInode.set(inodeId, id);
    } else {
      fd = await createMemfd(inodeId, ctx);
      if (reopenFlags(flags) !== (O_RDWR | O_LARGEFILE)) {
        try {
          const again = openInTask(ctx.injector, `/proc/self/fd/${fd}`, flags);
          closeInTask(ctx.injector, fd);
          fd = again;
        } catch (err) {
          closeInTask(ctx.injector, fd);
          throw err;
        }
      }
      byInode.set(inodeId, id);
      ctx.tree?.shared.set(`memfd:${inodeId}`, { pid: ctx.hostPid, fileId: id } satisfies TreeMemfd);
    }
    try {
      seekInTask(ctx.injector, fd, BigInt(memfd['pos'] as bigint));
      restoreFown(ctx.injector, fd, memfd['fown'] as ImageEntry | undefined);
    } catch (err) {
      closeInTask(ctx.injector, fd);
      throw err;
    }
    return fd;
  },
};

/** Create memfd inode `inodeId` in the task with its contents and attributes; returns its fd there. */
async function createMemfd(inodeId: number, ctx: FileRestoreContext): Promise<number> {
  const inode = (await ctx.entriesOf('MEMFD_INODE')).find((r) => Number(r.entry['inode_id']) === inodeId)?.entry;
  if (inode === undefined) throw new ImageError('memfd.img', `no memfd inode ${inodeId}`);
  const name = String(inode['name']);
  const nameAddr = ctx.injector.pushData(Buffer.from(`${name}\0`));
  const ret = ctx.injector.syscall(NR.memfd_create, [nameAddr, BigInt(MFD_ALLOW_SEALING)]);
  if (ret < 0n && ret >= -4095n) throw taskSyscallError('memfd_create', ret, [`"${name}"`, MFD_ALLOW_SEALING]);
  const fd = Number(ret);
  const pidfd = sys.pidfdOpen(ctx.hostPid, 0);
  let local = -1;
  try {
    local = sys.pidfdGetfd(pidfd, fd, 0);
    await fillShmem(local, ctx.imagesDir, BigInt(inode['shmid'] as number));
    // After the pages: the last one may reach past the size.
    ftruncateSync(local, Number(inode['size']));
    fchownSync(local, Number(inode['uid']), Number(inode['gid']));
    if (inode['mode'] !== undefined) fchmodSync(local, Number(inode['mode']) & 0o7777);
    const seals = Number(inode['seals'] ?? 0);
    if (seals !== 0) sys.fcntl(local, F_ADD_SEALS, seals);
  } catch (err) {
    closeInTask(ctx.injector, fd);
    throw err;
  } finally {
    if (local >= 0) sys.close(local);
    sys.close(pidfd);
  }
  return fd;
}

/** Write the pages of pagemap-shmem-<shmid>.img into `fd` (no image: an all-zero memfd). */
async function fillShmem(fd: number, dir: string, shmid: bigint): Promise<void> {
  await readShmemRuns(dir, shmid, (offset, data) => {
    for (let done = 0; done < data.length;)
      done += sys.pwrite(fd, data, done, data.length - done, offset + BigInt(done));
  });
}

/** Where a memfd of a tree was made: by an fd (its file id) or for a mapping (an address in it). */
export type TreeMemfd = { pid: number; fileId: number } | { pid: number; addr: bigint };

/**
 * The path to open, in another process of the tree, the memfd of inode `inodeId` one process
 * made already: its fd there (/proc/PID/fd/N), or its mapping (/proc/PID/map_files/START-END of
 * the VMA that holds the address, which the process's own restore may have split since).
 */
export function treeMemfdPath(
  tree: Pick<NonNullable<FileRestoreContext['tree']>, 'shared' | 'fdOfFileId'>,
  inodeId: number,
): string | undefined {
  const made = tree.shared.get(`memfd:${inodeId}`) as TreeMemfd | undefined;
  if (made === undefined) return undefined;
  if ('fileId' in made) {
    const where = tree.fdOfFileId(made.fileId);
    return where === undefined ? undefined : `/proc/${where.hostPid}/fd/${where.fd}`;
  }
  const vma = (readMaps(made.pid) ?? []).find((m) => m.start <= made.addr && made.addr < m.end);
  return vma === undefined
    ? undefined
    : `/proc/${made.pid}/map_files/${vma.start.toString(16)}-${vma.end.toString(16)}`;
}
