/**
 * Dumping a task's address space description into `mm-<pid>.img` (mm_entry): the VMAs (from
 * /proc/PID/smaps), the mm fields (/proc/PID/stat, and brk by an injected brk(0)), the saved
 * auxv (/proc/PID/auxv), the exe link, dumpable and THP-disabled (injected prctls; MM_CALLS).
 *
 * smaps read before the freeze (preReadMm): reading smaps walks every page table of the task
 * (its Rss, Pss... counters), ~90 ms for 1 GiB, which the dumper would otherwise spend frozen.
 * Of smaps the dump uses only the maps line of each VMA and its VmFlags (the counters are not
 * used). So the dumper reads smaps while the task still runs, and once it is frozen reads the
 * cheap /proc/PID/maps (no page-table walk): if maps is byte for byte the maps lines of the
 * pre-read, the VMAs are the same ones (same bounds, protection, offset, file) and the pre-read
 * is used; otherwise smaps is read again, frozen.
 *   What this cannot see: a change of VmFlags alone, on a whole VMA (a range inside one splits
 * it, which maps shows), in the few milliseconds between the pre-read and the freeze. Of the
 * flags the dump keeps, only madvise advice changes that way (MADV_DONTDUMP, DONTFORK,
 * WIPEONFORK, HUGEPAGE/NOHUGEPAGE, MERGEABLE, RANDOM/SEQUENTIAL, and PR_SET_MEMORY_MERGE's
 * MERGEABLE), and no counter or file tells that it happened (the kernel exposes no VMA sequence
 * number; PROCMAP_QUERY reports protections only). The dump accepts that: the window is the
 * same as if the task had called madvise just after the freeze, which a dump cannot see either;
 * what is restored is advice the task gave a moment before. Flags set by criu-ts itself (the
 * tracker's uffd-wp registration) do not go into the image.
 *
 * File-backed VMAs refer to a reg_file_entry in files.img by id (vma.shmid), as CRIU does; those
 * entries are made here, one per path and open mode.
 *
 * Shared memory (dumpMmShmem, after the fds, as its memfd inodes may be open as fds too): the
 * contents of each shmem object are read through /proc/PID/map_files/START-END (a file of our own
 * on the object: no injection, no change to the task) and stored as CRIU does, in
 * pagemap-shmem-<inode>.img + a pages-<n>.img, only the non-zero pages:
 *   - MAP_SHARED | MAP_ANONYMOUS (status ANON_SHARED): vma.shmid = the inode number;
 *   - a memfd mapped shared (status FILE_SHARED | MEMFD): vma.shmid = the id of a MEMFD
 *     file_entry naming its memfd.img inode (the fd's own when the memfd is open as an fd).
 */

import { closeSync, fstatSync, openSync, readlinkSync, statSync, type BigIntStats } from 'node:fs';
import { TaskError, UnsupportedError } from '../errors.js';
import { PAGE_SIZE, type ImageEntry } from '../images/index.js';
import type { FileImageSink } from '../files/image-sink.js';
import { F_GET_SEALS, memfdName, readNonZeroPages } from '../files/memfd.js';
import * as sys from '../sys/native.js';
import type { InjectedCall } from '../inject/injector.js';
import { readAuxv, toSavedAuxv } from '../proc/auxv.js';
import { mapsTextOf, parseSmaps, readSmaps, type SmapsEntry } from '../proc/smaps.js';
import { log } from '../log.js';
import { readProcText, readProcTextAsync } from '../proc/read.js';
import { readStat } from '../proc/stat.js';
import type { DeletedMapping } from '../files/vma-ghost.js';
import { classifyVma, MAP, VMA_AREA, type VmaInfo } from './vma.js';

export interface MmDump {
  entry: ImageEntry;
  vmas: VmaInfo[];
  /** reg file entries (file_entry with type REG) for the mapped files and the exe. */
  files: ImageEntry[];
  /** Mappings of unlinked files: their reg entries need a ghost (src/files/vma-ghost.ts). */
  deleted: DeletedMapping[];
}

const FD_TYPE_REG = 1;

/** What preReadMm read of a running task, for dumpMm to use if it still holds once frozen. */
export interface MmPreRead {
  smapsText: string;
  /** smapsText parsed (parsing a cold parser costs ~15 ms: done before the freeze too). */
  smaps: SmapsEntry[];
}

/** Read what dumpMm can use from before the freeze (see the header); null when the task is gone. */
export async function preReadMm(pid: number): Promise<MmPreRead | null> {
  // On the thread pool: for 1 GiB the kernel takes ~30 ms to walk the page tables for smaps.
  const smapsText = await readProcTextAsync(`/proc/${pid}/smaps`);
  return smapsText === null ? null : { smapsText, smaps: parseSmaps(smapsText) };
}

/** The VMAs of the frozen task: the pre-read ones when maps shows them unchanged, else read now. */
function frozenSmaps(pid: number, pre: MmPreRead | null): SmapsEntry[] | null {
  if (pre !== null) {
    const maps = readProcText(`/proc/${pid}/maps`);
    if (maps === null) return null;
    if (maps === mapsTextOf(pre.smapsText)) {
      log().debug(`mm of ${pid}: the VMAs read before the freeze are unchanged`);
      return pre.smaps;
    }
    log().debug(`mm of ${pid}: the VMAs changed since they were read before the freeze: reading smaps again`);
  }
  return readSmaps(pid);
}

const PR_GET_DUMPABLE = 3n;
const PR_GET_THP_DISABLE = 42n;

/**
 * The calls made inside the task for the mm entry (brk, dumpable, THP disabled). The dumper runs
 * them in the task core's batch (one resumption of the task for both, see Injector.runCalls)
 * and hands their checked results to completeMm.
 */
export const MM_CALLS: readonly InjectedCall[] = [
  { name: 'brk', args: () => [0n] },
  { name: 'prctl', args: () => [PR_GET_DUMPABLE, 0n, 0n, 0n, 0n] },
  { name: 'prctl', args: () => [PR_GET_THP_DISABLE, 0n, 0n, 0n, 0n] },
];

/** Complete the mm entry with the results of MM_CALLS, in order. */
export function completeMm(mm: MmDump, results: readonly bigint[]): void {
  const [brk, dumpable, thpDisabled] = results;
  if (brk === undefined || dumpable === undefined || thpDisabled === undefined)
    throw new RangeError(`completeMm needs ${MM_CALLS.length} results`);
  mm.entry['mm_brk'] = brk;
  mm.entry['dumpable'] = Number(dumpable);
  mm.entry['thp_disabled'] = thpDisabled !== 0n;
}

/**
 * Collect the mm of a frozen task, but the fields MM_CALLS gives (see completeMm). `allocId`
 * numbers new file entries; `pre` is what preReadMm read before the freeze, if anything.
 */
export function dumpMm(pid: number, allocId: () => number, pre: MmPreRead | null = null): MmDump {
  const smaps = frozenSmaps(pid, pre);
  const stat = readStat(pid);
  const auxv = readAuxv(pid);
  if (smaps === null || stat === null || auxv === null)
    throw new TaskError(pid, `Task ${pid} exited while being dumped`);
  const files: ImageEntry[] = [];
  const fileIds = new Map<string, number>();
  const fileId = (path: string, flags: number): number => {
    const key = `${flags}:${path}`;
    const known = fileIds.get(key);
    if (known !== undefined) return known;
    let st;
    try {
      st = statSync(`/proc/${pid}/root${path}`, { bigint: true });
    } catch (err) {
      throw new UnsupportedError('vma-file', `Cannot dump the mapping of "${path}": the file cannot be reached`, {
        cause: err,
      });
    }
    const id = allocId();
    fileIds.set(key, id);
    files.push(pathFileEntry(id, path, flags, st));
    return id;
  };

  // An unlinked mapped file has no path to stat: its inode is reached through map_files, and
  // its contents are saved as a ghost once the fds are dumped (one reg entry per inode and mode).
  const deleted: DeletedMapping[] = [];
  const deletedFileId = (v: VmaInfo & { path: string }): number => {
    const mapFile = `/proc/${pid}/map_files/${v.start.toString(16)}-${v.end.toString(16)}`;
    let st;
    try {
      st = statSync(mapFile, { bigint: true });
    } catch (err) {
      throw new UnsupportedError('vma-file', `Cannot dump the mapping of deleted file "${v.path}": ${mapFile}`, {
        cause: err,
      });
    }
    const key = `${v.fdflags}:deleted:${st.dev}:${st.ino}`;
    const known = fileIds.get(key);
    if (known !== undefined) return known;
    const id = allocId();
    fileIds.set(key, id);
    files.push(pathFileEntry(id, v.path, v.fdflags, st));
    deleted.push({ fileId: id, start: v.start, end: v.end, path: v.path });
    return id;
  };

  const vmas = smaps.map(classifyVma);
  const vmaEntries: ImageEntry[] = [];
  for (const v of vmas) {
    const isMemfd = (v.status & VMA_AREA.MEMFD) !== 0;
    const isAnonShared = (v.status & VMA_AREA.ANON_SHARED) !== 0;
    // A memfd's shmid is the id of its MEMFD file entry, made by dumpMmShmem once the fds are
    // dumped (the same inode may be open as an fd too); shared anonymous memory's is its inode.
    let shmid = 0n;
    const isSysv = (v.status & VMA_AREA.SYSVIPC) !== 0;
    if (isAnonShared || isSysv) shmid = BigInt(v.inode);
    else if (v.path !== undefined && !isMemfd && v.isDeleted) shmid = BigInt(deletedFileId({ ...v, path: v.path }));
    else if (v.path !== undefined && !isMemfd) shmid = BigInt(fileId(v.path, v.fdflags));
    const e: ImageEntry = {
      start: v.start,
      end: v.end,
      pgoff: v.pgoff,
      shmid,
      prot: v.prot,
      // A System V attachment is shared anonymous memory to CRIU's restore, which attaches it
      // only when it is marked so (the segment's id in shmid, SYSVIPC telling it apart).
      flags: isSysv ? v.flags | MAP.ANONYMOUS : v.flags,
      status: isSysv ? v.status | VMA_AREA.ANON_SHARED : v.status,
      fd: -1n,
    };
    if (v.path !== undefined) e['fdflags'] = v.fdflags;
    if (isAnonShared) checkShmemGroup(vmas, v);
    if (v.madv !== 0n) e['madv'] = v.madv;
    vmaEntries.push(e);
  }

  const exe = readlinkSync(`/proc/${pid}/exe`);
  if (exe.endsWith(' (deleted)'))
    throw new UnsupportedError('exe-deleted', `Cannot dump task ${pid}: its executable was deleted`);
  const entry: ImageEntry = {
    mm_start_code: stat.startcode,
    mm_end_code: stat.endcode,
    mm_start_data: stat.start_data,
    mm_end_data: stat.end_data,
    mm_start_stack: stat.startstack,
    mm_start_brk: stat.start_brk,
    mm_brk: 0n, // completeMm
    mm_arg_start: stat.arg_start,
    mm_arg_end: stat.arg_end,
    mm_env_start: stat.env_start,
    mm_env_end: stat.env_end,
    exe_file_id: fileId(exe, 0),
    mm_saved_auxv: toSavedAuxv(auxv),
    vmas: vmaEntries,
    dumpable: 0, // completeMm
    thp_disabled: false, // completeMm
  };
  return { entry, vmas, files, deleted };
}

/**
 * A files.img entry (REG) for a file known by path only, not by an fd: a mapped file, the exe,
 * the cwd or root directory. No fown, position 0; the size only for regular files.
 */
export function pathFileEntry(id: number, path: string, flags: number, st: BigIntStats): ImageEntry {
  const reg: ImageEntry = { id, flags, pos: 0n, fown: { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 }, name: path };
  if (st.isFile()) reg['size'] = st.size;
  reg['mode'] = Number(st.mode);
  return { type: FD_TYPE_REG, id, reg };
}

/**
 * The VMAs of one shared anonymous object must be one contiguous piece of it (as an mprotect
 * split leaves it): restore maps it once and splits it again. Mapped twice elsewhere: refused.
 */
function checkShmemGroup(vmas: readonly VmaInfo[], v: VmaInfo): void {
  const group = vmas.filter((o) => o.inode === v.inode && (o.status & VMA_AREA.ANON_SHARED) !== 0);
  for (let i = 1; i < group.length; i++) {
    const prev = group[i - 1] as VmaInfo;
    const cur = group[i] as VmaInfo;
    if (cur.start !== prev.end || cur.start - cur.pgoff !== prev.start - prev.pgoff)
      throw new UnsupportedError(
        'vma-anon-shared-layout',
        `Cannot dump shared anonymous memory mapped twice (at 0x${prev.start.toString(16)} and 0x${cur.start.toString(16)})`,
      );
  }
}

export interface ShmemDumpContext {
  allocId(): number;
  images: FileImageSink;
  /**
   * The MEMFD_INODE entries of this dump so far (the fds' memfds), which new ones are appended
   * to; the fds' files dump must be complete.
   */
  memfdInodes: ImageEntry[];
  /** The shared anonymous objects dumped so far (by inode), for a tree: each is dumped once. */
  dumpedShmem?: Set<number>;
}

const FD_TYPE_MEMFD = 18;

/**
 * Dump the contents of the shared memory mappings of `mm` (see the header) and complete the
 * memfd VMAs' shmid. Adds MEMFD file entries to mm.files.
 */
export async function dumpMmShmem(pid: number, mm: MmDump, ctx: ShmemDumpContext): Promise<void> {
  const vmaEntries = mm.entry['vmas'] as ImageEntry[];
  const dumpedInodes = ctx.dumpedShmem ?? new Set<number>();
  const memfdFileIds = new Map<number, number>();
  for (let i = 0; i < mm.vmas.length; i++) {
    const v = mm.vmas[i] as VmaInfo;
    const isMemfd = (v.status & VMA_AREA.MEMFD) !== 0;
    if (!isMemfd && (v.status & VMA_AREA.ANON_SHARED) === 0) continue;
    const knownFileId = memfdFileIds.get(v.inode);
    if (knownFileId !== undefined) {
      (vmaEntries[i] as ImageEntry)['shmid'] = BigInt(knownFileId);
      continue;
    }
    if (!isMemfd && dumpedInodes.has(v.inode)) continue;
    const mapFile = `/proc/${pid}/map_files/${v.start.toString(16)}-${v.end.toString(16)}`;
    let fd: number;
    try {
      fd = openSync(mapFile, 'r');
    } catch (err) {
      throw new UnsupportedError(
        'vma-shmem',
        `Cannot read the shared memory at 0x${v.start.toString(16)}: ${mapFile}`,
        {
          cause: err,
        },
      );
    }
    try {
      const st = fstatSync(fd, { bigint: true });
      if (Number(st.ino) !== v.inode)
        throw new TaskError(pid, `The shared memory at 0x${v.start.toString(16)} changed while being dumped`);
      if (st.blksize !== BigInt(PAGE_SIZE))
        throw new UnsupportedError('vma-hugetlb', `Cannot dump hugetlb shared memory at 0x${v.start.toString(16)}`);
      let inodeId = 0;
      const known = ctx.memfdInodes.find((e) => Number(e['shmid']) === v.inode);
      if (known !== undefined) inodeId = Number(known['inode_id']);
      else {
        // Shared anonymous memory: the object is as large as its mappings reach.
        const size = isMemfd ? Number(st.size) : Math.max(Number(st.size), Number(v.pgoff + v.end - v.start));
        await ctx.images.writeShmemPages(BigInt(v.inode), readNonZeroPages(fd, size));
        dumpedInodes.add(v.inode);
        if (isMemfd) {
          inodeId = ctx.memfdInodes.reduce((m, e) => Math.max(m, Number(e['inode_id'])), 0) + 1;
          ctx.memfdInodes.push({
            name: memfdName(`${v.path ?? ''} (deleted)`),
            uid: Number(st.uid),
            gid: Number(st.gid),
            size: st.size,
            shmid: v.inode,
            seals: sys.fcntl(fd, F_GET_SEALS, 0),
            inode_id: BigInt(inodeId),
            mode: Number(st.mode),
          });
        }
      }
      if (isMemfd) {
        const id = ctx.allocId();
        mm.files.push({
          type: FD_TYPE_MEMFD,
          id,
          memfd: {
            id,
            flags: 0,
            pos: 0n,
            fown: { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 },
            inode_id: inodeId,
          },
        });
        memfdFileIds.set(v.inode, id);
        (vmaEntries[i] as ImageEntry)['shmid'] = BigInt(id);
      }
    } finally {
      closeSync(fd);
    }
  }
}
