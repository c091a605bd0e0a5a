/**
 * The dump of one frozen process of a tree (index.ts freezes the tree and writes what the
 * processes share): its mm and VMAs, cwd and root, its pages (copied through the page sink on
 * the thread pool while the rest is collected), its fds and deleted mappings, shared memory
 * contents, its task core and thread cores, fs and ids; and its pstree entry.
 */

import { readlinkSync, statSync } from 'node:fs';
import { TaskError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import type { ImageToWrite } from '../images/image-writer.js';
import { TASK_STATE } from '../images/task-state.js';
import { log } from '../log.js';
import { pagesBytes } from '../mem/dump-pages.js';
import type * as TrackModule from '../mem/track/index.js';
import type { DirtyTracker } from '../mem/track/index.js';
import { readStatus } from '../proc/status.js';
import { dumpFiles } from '../files/index.js';
import type { FileImageSink } from '../files/image-sink.js';
import type { FileOptions } from '../files/types.js';
import { dumpDeletedMappings } from '../files/vma-ghost.js';
import { dumpTaskCore, dumpThread } from './core.js';
import type { FrozenTask } from './freeze.js';
import { kobjIds } from './ids.js';
import type { TreeNamespaces } from './namespaces.js';
import type { TreePids } from './pid-ns.js';
import { decodeKnown, planMemory } from './memory.js';
import { completeMm, dumpMm, dumpMmShmem, MM_CALLS, pathFileEntry, type MmPreRead } from './mm.js';
import { parentKnown, type PageSink } from './page-sink.js';
import type { SeccompDump } from './seccomp.js';
import type { DumpOptions, DumpResult } from './index.js';
import { noteSysvShm, type SysvUse } from './sysv-shm.js';

const O_DIRECTORY = 0o200000;
/** The scratch space made for the injected calls of a dump (the task core's take ~3 KiB). */
const SCRATCH_BYTES = 16n << 10n;

/** What the dumps of a tree's processes share, and where each puts what it collects. */
export interface ProcessDumpContext {
  options: DumpOptions;
  dir: string;
  sink: PageSink;
  /** The tracker module when memory is tracked (loaded before the freeze), else null. */
  track: typeof TrackModule | null;
  /** smaps read before the freeze, by pid (null: read once frozen). */
  mmPre: ReadonlyMap<number, MmPreRead | null>;
  /** A new file id, unique within files.img. */
  allocId(): number;
  images: FileImageSink;
  fileOptions: FileOptions;
  /** The fd kind modules' state for the whole tree (a description, a ghost, once). */
  filesShared: Map<string, unknown>;
  addEntry(kind: string, entry: ImageEntry, extra?: Uint8Array): Promise<void>;
  /** The entries of the other image kinds so far (MEMFD_INODE is extended here). */
  extraImages: Map<string, { entry: ImageEntry; extra?: Uint8Array }[]>;
  seccomp: SeccompDump;
  /** Shared anonymous objects dumped so far (each once for the tree). */
  dumpedShmem: Set<number>;
  /** The System V segments the tree's processes attach, by id (dumped once all are seen). */
  sysvShm: Map<number, SysvUse>;
  /** The tree's namespaces (namespaces.ts): which are its own, for the ids. */
  namespaces: TreeNamespaces;
  /** The tree's pids as its PID namespace sees them: those of the images. */
  pids: TreePids;
  /** The network lock's table of a process (absent: its pid; net-lock.ts). */
  lockId?: (hostPid: number) => string;
  /** Add an image to the batch written once every process is dumped. */
  add(name: string, kind: string, entries: ImageToWrite['entries']): void;
  /** files.img: every process's file entries (its mappings' files, then its fds'). */
  fileEntries: ImageEntry[];
  pstree: ImageEntry[];
  stats: DumpResult;
  /** A tracker was opened for process `pid` (it ends with the dump). */
  onTracker(pid: number, tracker: DirtyTracker): void;
  /** The page copy began: stopped and settled before the sink is discarded after a failure. */
  onCopy(copy: { promise: Promise<unknown>; abort: AbortController }): void;
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw new TaskError(0, 'Dump interrupted', { cause: signal.reason });
}

/**
 * Dump process `task`, the `index`-th of the frozen tree: its images go into the batch
 * (ctx.add), its file entries and pstree entry into ctx's lists, its pages through the sink.
 */
export async function dumpProcess(task: FrozenTask, index: number, ctx: ProcessDumpContext): Promise<void> {
  const { options: opts, allocId, images, sink, dir, add, stats, track } = ctx;
  const tp = task.pid;
  log().debug(`dump: mm of ${tp}`);
  const mm = dumpMm(tp, allocId, ctx.mmPre.get(tp) ?? null);
  noteSysvShm(tp, mm.vmas, ctx.sysvShm);
  const dirEntry = (p: string): number => {
    const id = allocId();
    mm.files.push(pathFileEntry(id, p, O_DIRECTORY, statSync(`/proc/${tp}/root${p}`, { bigint: true })));
    return id;
  };
  const fsEntry = {
    cwd_id: dirEntry(readlinkSync(`/proc/${tp}/cwd`)),
    root_id: dirEntry(readlinkSync(`/proc/${tp}/root`)),
    umask: readStatus(tp)?.umask ?? 0o22,
  };
  // The scratch mapping of the injected calls, made before the page copy starts: mmap and
  // munmap wait for the task's mmap lock, which each read of the copy holds (an injected mmap
  // took 10-17 ms beside a copy), and readers of /proc/PID then queue behind them. The other
  // threads' calls use the same mapping (they are made one thread after the other).
  const scratch = task.leader.prepareScratch(SCRATCH_BYTES);
  for (const t of task.threads) if (t !== task.leader) t.useScratch(scratch.addr, scratch.sizeBytes);
  // The memory first: its copy runs on the thread pool while this thread collects the rest and
  // writes the small images. The injected calls meanwhile only write to the scratch mapping,
  // which is not one of mm.vmas (and the task is frozen).
  log().debug('dump: memory');
  let tracker: DirtyTracker | null = null;
  if (track !== null && (opts.trackMem === true || track.trackingKept(tp) !== null)) {
    tracker = await track.openTracker({ pid: tp, injector: task.leader, choice: opts.tracker ?? 'auto' });
    ctx.onTracker(tp, tracker);
    // A dump ends the tracking (below, or on failure): its collect need not re-arm.
    tracker.markLastCollect();
  }
  log().debug('dump: memory plan');
  const vp = ctx.pids.vpid(tp);
  const hasParent = await sink.open(vp, opts.prevImagesDir);
  const isReused = hasParent && opts.pidfdStore?.isReusedSinceParent(tp, opts.prevImagesDir) === true;
  const known =
    hasParent && tracker !== null && !isReused
      ? parentKnown(decodeKnown(tracker.state), sink, opts.prevImagesDir, dir)
      : null;
  const plan = await planMemory(tp, mm.vmas, tracker, known);
  log().debug('dump: memory copy');
  const totalBytes = pagesBytes(plan.copy);
  // Stopped at its next chunk by the caller's signal, or by a failure of what runs beside it.
  const copyAbort = new AbortController();
  const onAbort = (): void => copyAbort.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const copying = sink
    .writePages(tp, plan, {
      imageId: vp,
      running: false,
      signal: copyAbort.signal,
      onProgress: (done) => opts.onProgress?.('memory', done, totalBytes),
    })
    .finally(() => opts.signal?.removeEventListener('abort', onAbort));
  ctx.onCopy({ promise: copying, abort: copyAbort });
  copying.catch(() => undefined); // awaited below, or before the sink is discarded

  log().debug('dump: files');
  const fileCtx = {
    allocId,
    images,
    options: ctx.fileOptions,
    shared: ctx.filesShared,
    addEntry: ctx.addEntry,
    vpid: ctx.pids.vpid,
    ...(ctx.lockId === undefined ? {} : { lockId: ctx.lockId }),
  };
  const files = await dumpFiles(tp, task.leader, fileCtx);
  await dumpDeletedMappings(tp, mm.deleted, { ...fileCtx, pid: tp, injector: task.leader });
  // Shared memory contents, after the fds: a mapped memfd may be open as an fd too.
  const memfdInodes = ctx.extraImages.get('MEMFD_INODE') ?? [];
  const inodeEntries = memfdInodes.map((e) => e.entry);
  await dumpMmShmem(tp, mm, { allocId, images, memfdInodes: inodeEntries, dumpedShmem: ctx.dumpedShmem });
  for (const entry of inodeEntries.slice(memfdInodes.length)) memfdInodes.push({ entry });
  if (memfdInodes.length > 0) ctx.extraImages.set('MEMFD_INODE', memfdInodes);
  throwIfAborted(opts.signal);

  log().debug('dump: task core');
  // The mm's injected calls go in the task core's batch: one resumption of the task for both.
  const { tc: taskCore, extra: mmResults } = dumpTaskCore(tp, task.leader, MM_CALLS, ctx.pids.vpid);
  // A process in a group stop (SIGSTOP, Ctrl-Z) when seized comes back stopped, as in CRIU.
  if (task.leader.seizeState === 'group-stop') taskCore['task_state'] = TASK_STATE.STOPPED;
  completeMm(mm, mmResults);
  log().debug('dump: thread cores');
  for (const inj of task.threads) {
    const t = dumpThread(tp, inj);
    const sc = ctx.seccomp.threads.get(inj.tid);
    if (sc !== undefined && sc.mode !== 0) {
      t.thread_core['seccomp_mode'] = sc.mode;
      if (sc.newest !== undefined) t.thread_core['seccomp_filter'] = sc.newest;
    }
    const core: ImageEntry = { mtype: 1, thread_info: t.thread_info, thread_core: t.thread_core };
    if (inj.tid === task.leader.tid) core['tc'] = taskCore;
    add(`core-${ctx.pids.vpid(inj.tid)}.img`, 'CORE', [core]);
  }
  const ids = kobjIds(index, ctx.namespaces.own);
  add(`mm-${vp}.img`, 'MM', [mm.entry]);
  add(`fdinfo-${Number(ids.task['files_id'])}.img`, 'FDINFO', files.fdinfo);
  add(`fs-${vp}.img`, 'FS', [fsEntry]);
  add(`ids-${vp}.img`, 'IDS', [ids.task]);
  ctx.fileEntries.push(...mm.files, ...files.files);
  const groups = ctx.pids.groupsOf(tp);
  if (groups === null) throw new TaskError(tp, `Task ${tp} exited while being dumped`);
  ctx.pstree.push({
    pid: vp,
    ppid: ctx.pids.vpid(task.ppid),
    pgid: groups.pgid,
    sid: groups.sid,
    threads: task.threads.map((t) => ctx.pids.vpid(t.tid)).sort((a, b) => (a === vp ? -1 : b === vp ? 1 : a - b)),
  });
  const pages = await copying;
  stats.pagesScanned += plan.pagesScanned;
  stats.pagesSkippedParent += plan.pagesInParent;
  stats.pagesWritten += pages.pagesWritten;
}
