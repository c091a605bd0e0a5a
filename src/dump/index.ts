/**
 * `criu dump`: checkpoint one running process (all its threads) into CRIU-format images.
 *
 * Steps, in order; any failure before the images are complete puts the process back exactly as
 * it was (threads resumed, registers and masks restored, no scratch mapping, not traced) and
 * removes what was written:
 *   1. check: the task exists, has no children, and every fd is of a supported kind
 *   2. freeze: seize and stop every thread
 *   3. collect: mm and VMAs, fds, per-thread cores, fs, ids (in memory)
 *   4. memory: present pages copied into pages-1.img, pagemap-<pid>.img (or sent to a page
 *      server); with a tracker and a parent image, unchanged pages are left to the parent
 *   5. write the images (temporary names, renamed on completion), inventory.img last
 *   6. end: kill the task (default), leave it running (-R) or stopped (-s)
 *   7. stats-dump
 */

import { mkdir, readdir } from 'node:fs/promises';
import { readlinkSync, statSync } from 'node:fs';
import path from 'node:path';
import { TaskError, UnsupportedError } from '../errors.js';
import { imageFileName, PARENT_LINK, writeParentLink, type ImageEntry } from '../images/index.js';
import { prepareImageKinds, writeImagesSync, type ImageToWrite } from '../images/image-writer.js';
import { log } from '../log.js';
import { injectedCallCounts } from '../inject/injector.js';
import { copyBuffers } from '../mem/buffer-pool.js';
import { pagesBytes } from '../mem/dump-pages.js';
import { readChildren, scanChildren } from '../proc/children.js';
import { readStat } from '../proc/stat.js';
import { readStatus } from '../proc/status.js';
import type * as TrackModule from '../mem/track/index.js';
import { checkFds, dumpFiles } from '../files/index.js';
import { localImageSink } from '../files/image-sink.js';
import type { FileOptions } from '../files/types.js';
import { dumpDeletedMappings } from '../files/vma-ghost.js';
import { releaseTcpRepair } from '../files/inet-socket.js';
import { removeLinkRemaps } from '../files/link-remap.js';
import { dumpCpuinfo } from '../cpuinfo/index.js';
import type { DirtyTracker } from '../mem/track/index.js';
import { dedupChain } from '../mem/dedup.js';
import type { TrackerChoice } from '../kerndat/tracker.js';
import { kerndat } from '../kerndat/index.js';
import { dumpTaskCore, dumpThread } from './core.js';
import type { ActionHook } from '../actions.js';
import { freezeProcess, killProcess, resumeProcess, stopProcess, type FrozenProcess } from './freeze.js';
import { completeMm, dumpMm, dumpMmShmem, MM_CALLS, pathFileEntry, preReadMm } from './mm.js';
import { dumpSeccomp } from './seccomp.js';
import { decodeKnown, planMemory } from './memory.js';
import { localPageSink, parentKnown, removeNew, type PageSink } from './page-sink.js';
import { dumpStatsEntry, inventoryEntry, nowUs, type DumpStats } from './entries.js';
import { kobjIds } from './ids.js';
import type { PidfdStore } from './pidfd-store.js';

export type { DumpStats } from './entries.js';
import { isTrackingRecorded } from '../mem/track/state.js';

export interface DumpOptions {
  pid: number;
  imagesDir: string;
  /** What happens to the task once the images are complete. */
  end: 'kill' | 'leave-running' | 'leave-stopped' | 'keep-frozen';
  /** Aborted by SIGINT/SIGTERM: the dump stops and the task is resumed. */
  signal?: AbortSignal;
  /** Called with bytes of memory written so far (progress). */
  onProgress?: (what: string, done: number, total: number) => void;
  /** --prev-images-dir: the previous (pre-)dump, relative to imagesDir or absolute. */
  prevImagesDir?: string;
  /** --track-mem: use the memory tracker (also used when pre-dumps left one running). */
  trackMem?: boolean;
  tracker?: TrackerChoice;
  /** --auto-dedup: punch the pages this dump supersedes out of the parent images. */
  autoDedup?: boolean;
  /** Where the task's pages go (default: files in imagesDir). */
  sink?: PageSink;
  /** RPC's pidfd store: PID reuse detection against the parent by pidfds (pidfd-store.ts). */
  pidfdStore?: PidfdStore;
  /** -j/--shell-job, --link-remap, --evasive-devices: how the fd kinds treat terminals, unlinked files, devices. */
  fileOptions?: FileOptions;
  /** fsync the images (default true); see WriteSyncOptions.isDurable for when not to. */
  isDurable?: boolean;
  /**
   * With end 'kill': return once SIGKILL is sent instead of collecting the task's end (which
   * comes after the kernel has freed its memory: 100-150 ms for 1 GiB). Only for a caller whose
   * process exits right after (the `criu dump` command): the kernel then hands the dead task to
   * its parent (exit_ptrace). A long-lived caller must collect it, or it stays a zombie traced by
   * that caller.
   */
  canLeaveKilledUnreaped?: boolean;
  /** Action points pre-dump and post-dump (src/actions.ts). */
  onAction?: ActionHook;
}

/** What dump() returns: the stats, and with end 'keep-frozen' the task still frozen. */
export type DumpResult = DumpStats & {
  frozen?: FrozenProcess;
  /** With 'keep-frozen': when the task was frozen (nowUs clock: process.hrtime in µs). */
  frozenAtUs?: number;
  endTracking?: () => Promise<void>;
};

const O_DIRECTORY = 0o200000;
/** The scratch space made for the injected calls of a dump (the task core's take ~3 KiB). */
const SCRATCH_BYTES = 16n << 10n;
/** Full dumps with fewer bytes of pages than this do not reserve room for them ahead. */
const RESERVE_MIN_BYTES = 64 << 20;

/**
 * About how many bytes of pages a full dump of `pid` copies: its anonymous memory, present and
 * swapped (RssAnon + VmSwap of /proc/PID/status, which costs no page-table walk). The private
 * VMAs' pages are what a dump copies (src/dump/vma.ts); shared memory goes elsewhere.
 */
function estimatePagesBytes(pid: number): number {
  const fields = readStatus(pid)?.fields;
  const kib = (key: string): number => Number.parseInt(fields?.get(key) ?? '0', 10) || 0;
  return (kib('RssAnon') + kib('VmSwap')) * 1024;
}
/** The image kinds every dump writes (their encoders are made ready before the freeze). */
const DUMP_IMAGE_KINDS = [
  'MM',
  'CORE',
  'FILES',
  'FDINFO',
  'FS',
  'IDS',
  'PSTREE',
  'SECCOMP',
  'INVENTORY',
  'PAGEMAP',
  'STATS',
];

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw new TaskError(0, 'Dump interrupted', { cause: signal.reason });
}

/** Dump process `pid` into `imagesDir`. Returns the statistics written to stats-dump. */
export async function dump(opts: DumpOptions): Promise<DumpResult> {
  const { pid } = opts;
  await opts.onAction?.('pre-dump', pid);
  const durability = { isDurable: opts.isDurable !== false };
  const reserving = copyBuffers.reserveAsync(2);
  reserving.catch(() => undefined); // awaited before the freeze
  const stat = readStat(pid);
  if (stat === null) throw new TaskError(pid, `Cannot dump task ${pid}: no such process`);
  const children = readChildren(pid) ?? scanChildren(pid);
  if (children.length > 0)
    throw new UnsupportedError(
      'process-tree',
      `Cannot dump task ${pid}: it has children (${children.join(', ')}); process trees are not supported yet`,
    );
  // smaps, read on the thread pool while the rest of the preparation runs (see preReadMm).
  const mmPreReading = preReadMm(pid);
  mmPreReading.catch(() => undefined); // awaited before the freeze
  checkFds(pid, opts.fileOptions ?? {});
  await mkdir(opts.imagesDir, { recursive: true, mode: 0o700 });
  const dir = opts.imagesDir;
  const before = new Set(await readdir(dir));
  let nextPagesId = 2; // pages-1.img holds the task's memory
  const sink = opts.sink ?? localPageSink(dir);
  const isLinkingParent = opts.prevImagesDir !== undefined && sink.isLocal;
  const isParentLinkEarly = isLinkingParent && !before.has(PARENT_LINK);
  // A full dump reserves room for its pages at once, on the thread pool (PageSink.reserve): it
  // is allocated while the rest is prepared. A failure from here on discards it (sink.abort).
  const isTracking = opts.trackMem === true || isTrackingRecorded(pid);
  const estimate = opts.prevImagesDir === undefined && !isTracking ? estimatePagesBytes(pid) : 0;
  if (estimate >= RESERVE_MIN_BYTES) sink.reserve?.(estimate);
  let track: typeof TrackModule | null;
  let mmPre: Awaited<typeof mmPreReading>;
  let frozen: FrozenProcess | null;
  let t0: number;
  try {
    await dumpCpuinfo(dir);
    // The parent link, written now rather than frozen (the inventory, written last, still makes
    // the directory a dump). Over a link already there it waits for the end: a failed dump then
    // leaves the old one as it was.
    if (isParentLinkEarly) await writeParentLink(dir, opts.prevImagesDir as string);
    // Whatever can be known before the freeze is not part of the frozen time: the tracker module
    // and the kernel probes that choose it (kerndat, 30-120 ms on first use).
    track = isTracking ? await import('../mem/track/index.js') : null;
    if (track !== null) kerndat();
    prepareImageKinds(DUMP_IMAGE_KINDS);
    log().debug('dump: prepared (cpuinfo written, image coders ready)');
    // smaps walks every page table: read before the freeze; once frozen only checked to still hold.
    mmPre = await mmPreReading;
    log().debug('dump: smaps read');
    await reserving; // the copy buffers' first touch is slow on VMs: not while frozen (buffer-pool.ts)
    log().debug('dump: copy buffers ready');
    t0 = nowUs();
    frozen = freezeProcess(pid);
  } catch (err) {
    await sink.abort();
    throw err;
  }
  const tFrozen = nowUs();
  log().info(`Frozen ${frozen.threads.length} thread(s) of ${pid} in ${tFrozen - t0} us`);
  const stats: DumpResult = {
    freezingTimeUs: tFrozen - t0,
    frozenTimeUs: 0,
    memdumpTimeUs: 0,
    memwriteTimeUs: 0,
    pagesScanned: 0,
    pagesSkippedParent: 0,
    pagesWritten: 0,
  };
  let tracker: DirtyTracker | null = null;
  /** The page copy once started: stopped and settled before the sink is discarded after a failure. */
  let copy: { promise: Promise<unknown>; abort: AbortController } | null = null;
  // The files' shared state: one ghost table for the fds and the mappings (a deleted file open
  // and mapped is one ghost), and the --link-remap links a failed dump removes.
  const filesShared = new Map<string, unknown>();
  let postDumpError: unknown = null;
  try {
    throwIfAborted(opts.signal);
    let nextId = 1;
    const allocId = (): number => nextId++;
    const extraImages = new Map<string, { entry: ImageEntry; extra?: Uint8Array }[]>();

    log().debug('dump: mm');
    const mm = dumpMm(pid, allocId, mmPre);
    const dirEntry = (p: string): number => {
      const id = allocId();
      mm.files.push(pathFileEntry(id, p, O_DIRECTORY, statSync(`/proc/${pid}/root${p}`, { bigint: true })));
      return id;
    };
    const fsEntry = {
      cwd_id: dirEntry(readlinkSync(`/proc/${pid}/cwd`)),
      root_id: dirEntry(readlinkSync(`/proc/${pid}/root`)),
      umask: readStatus(pid)?.umask ?? 0o22,
    };
    // The scratch mapping of the injected calls, made before the page copy starts: mmap and
    // munmap wait for the task's mmap lock, which each read of the copy holds (an injected mmap
    // took 10-17 ms beside a copy), and readers of /proc/PID then queue behind them. The other
    // threads' calls use the same mapping (they are made one thread after the other).
    const scratch = frozen.leader.prepareScratch(SCRATCH_BYTES);
    for (const t of frozen.threads) if (t !== frozen.leader) t.useScratch(scratch.addr, scratch.sizeBytes);
    // The memory first: its copy runs on the thread pool while this thread collects the rest and
    // writes the small images. The injected calls meanwhile only write to the scratch mapping,
    // which is not one of mm.vmas (and the task is frozen).
    log().debug('dump: memory');
    const tMem = nowUs();
    if (track !== null && (opts.trackMem === true || track.trackingKept(pid) !== null)) {
      tracker = await track.openTracker({ pid, injector: frozen.leader, choice: opts.tracker ?? 'auto' });
      // A dump ends the tracking (below, or on failure): its collect need not re-arm.
      tracker.markLastCollect();
    }
    log().debug('dump: memory plan');
    const hasParent = await sink.open(pid, opts.prevImagesDir);
    const isReused = hasParent && opts.pidfdStore?.isReusedSinceParent(pid, opts.prevImagesDir) === true;
    const known =
      hasParent && tracker !== null && !isReused
        ? parentKnown(decodeKnown(tracker.state), sink, opts.prevImagesDir, dir)
        : null;
    const plan = await planMemory(pid, mm.vmas, tracker, known);
    log().debug('dump: memory copy');
    const totalBytes = pagesBytes(plan.copy);
    // Stopped at its next chunk by the caller's signal, or by a failure of what runs beside it.
    const copyAbort = new AbortController();
    const onAbort = (): void => copyAbort.abort(opts.signal?.reason);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const copying = sink
      .writePages(pid, plan, {
        running: false,
        signal: copyAbort.signal,
        onProgress: (done) => opts.onProgress?.('memory', done, totalBytes),
      })
      .then((pages) => {
        stats.memdumpTimeUs = nowUs() - tMem;
        return pages;
      })
      .finally(() => opts.signal?.removeEventListener('abort', onAbort));
    copy = { promise: copying, abort: copyAbort };
    copying.catch(() => undefined); // awaited below, or before the sink is discarded

    log().debug('dump: files');
    const images = localImageSink(dir, () => nextPagesId++);
    const addEntry = async (kind: string, entry: ImageEntry, extra?: Uint8Array): Promise<void> => {
      if (kind === 'FILES') {
        mm.files.push(entry); // a file entry another refers to (a FIFO's path, say)
        return;
      }
      const list = extraImages.get(kind) ?? [];
      list.push(extra === undefined ? { entry } : { entry, extra });
      extraImages.set(kind, list);
    };
    const fileOptions = opts.fileOptions ?? {};
    const files = await dumpFiles(pid, frozen.leader, {
      allocId,
      images,
      options: fileOptions,
      shared: filesShared,
      addEntry,
    });
    await dumpDeletedMappings(pid, mm.deleted, {
      pid,
      injector: frozen.leader,
      allocId,
      images,
      options: fileOptions,
      shared: filesShared,
      addEntry,
    });
    // Shared memory contents, after the fds: a mapped memfd may be open as an fd too.
    const memfdInodes = extraImages.get('MEMFD_INODE') ?? [];
    const inodeEntries = memfdInodes.map((e) => e.entry);
    await dumpMmShmem(pid, mm, { allocId, images, memfdInodes: inodeEntries });
    for (const entry of inodeEntries.slice(memfdInodes.length)) memfdInodes.push({ entry });
    if (memfdInodes.length > 0) extraImages.set('MEMFD_INODE', memfdInodes);
    throwIfAborted(opts.signal);

    log().debug('dump: task core');
    // The mm's injected calls go in the task core's batch: one resumption of the task for both.
    const { tc: taskCore, extra: mmResults } = dumpTaskCore(pid, frozen.leader, MM_CALLS);
    completeMm(mm, mmResults);
    log().debug('dump: thread cores');
    const seccomp = dumpSeccomp(
      pid,
      frozen.threads.map((t) => t.tid),
    );
    const cores = frozen.threads.map((inj) => {
      const t = dumpThread(pid, inj);
      const sc = seccomp.threads.get(inj.tid);
      if (sc !== undefined && sc.mode !== 0) {
        t.thread_core['seccomp_mode'] = sc.mode;
        if (sc.newest !== undefined) t.thread_core['seccomp_filter'] = sc.newest;
      }
      const core: ImageEntry = { mtype: 1, thread_info: t.thread_info, thread_core: t.thread_core };
      if (inj.tid === frozen?.leader.tid) core['tc'] = taskCore;
      return { tid: inj.tid, core };
    });

    // The small images in one synchronous batch (src/images/image-writer.ts says why), while the
    // pages are still being copied: the inventory, written last, is what makes the dump whole.
    const batch: ImageToWrite[] = [];
    const add = (name: string, kind: string, entries: ImageToWrite['entries']): void => {
      batch.push({ path: path.join(dir, name), kind, entries });
    };
    add(`mm-${pid}.img`, 'MM', [mm.entry]);
    for (const { tid, core } of cores) add(`core-${tid}.img`, 'CORE', [core]);
    add('files.img', 'FILES', [...mm.files, ...files.files]);
    add('fdinfo-2.img', 'FDINFO', files.fdinfo);
    for (const [kind, list] of extraImages) add(imageFileName(kind), kind, list);
    add(`fs-${pid}.img`, 'FS', [fsEntry]);
    const ids = kobjIds(pid);
    add(`ids-${pid}.img`, 'IDS', [ids.task]);
    add('pstree.img', 'PSTREE', [
      {
        pid,
        ppid: 0,
        pgid: stat.pgrp,
        sid: stat.session,
        threads: frozen.threads.map((t) => t.tid).sort((a, b) => (a === pid ? -1 : b === pid ? 1 : a - b)),
      },
    ]);
    add('seccomp.img', 'SECCOMP', [seccomp.filters.length > 0 ? { seccomp_filters: seccomp.filters } : {}]);
    writeImagesSync(batch, durability);
    const pages = await copying;
    stats.pagesScanned = plan.pagesScanned;
    stats.pagesSkippedParent = plan.pagesInParent;
    stats.pagesWritten = pages.pagesWritten;
    throwIfAborted(opts.signal);

    log().debug('dump: images');
    const tWrite = nowUs();
    await sink.commit();
    log().debug('dump: images (pagemap written)');
    if (isLinkingParent && !isParentLinkEarly) await writeParentLink(dir, opts.prevImagesDir as string);
    stats.memwriteTimeUs = nowUs() - tWrite;
    // Last: the inventory makes the directory a complete dump.
    add('inventory.img', 'INVENTORY', [inventoryEntry(ids.root)]);
    writeImagesSync(batch.slice(-1), durability);
    stats.frozenTimeUs = nowUs() - tFrozen;
    // Frozen time: the counts are formatted only when they will be written.
    if (log().isEnabled(4)) log().debug(`dump: end (injected calls so far: ${JSON.stringify(injectedCallCounts())})`);
    if (opts.onAction !== undefined) {
      try {
        await opts.onAction('post-dump', pid);
      } catch (err) {
        postDumpError = err;
      }
    }

    const ending = frozen;
    if (postDumpError !== null) {
      // As CRIU: a failed post-dump action leaves the task running and the images in place; the
      // caller learns the script's status and decides (kill it, or let it run).
      if (tracker !== null) await tracker.end().catch(() => undefined);
      tracker = null;
      frozen = null;
      removeLinkRemaps(filesShared);
      releaseTcpRepair(filesShared, pid);
      resumeProcess(ending);
    } else if (opts.end === 'kill') {
      // Killed first, then the tracking ended: with the task's address space gone, closing the
      // userfaultfd has no VMA left to unregister (~40 ms for 1 GiB otherwise). The images are
      // complete: a failure to end the tracking is only logged.
      const last = tracker;
      tracker = null;
      frozen = null;
      // With tracking, the end is collected: see above.
      killProcess(ending, { isReaping: last !== null || opts.canLeaveKilledUnreaped !== true });
      log().debug(`dump: task ${pid} killed`);
      if (last !== null)
        await last
          .end()
          .catch((err: unknown) => log().warn(`Cannot end the memory tracking of ${pid}: ${String(err)}`));
    } else if (opts.end === 'keep-frozen') {
      // Live migration: still frozen and traced by this process until the caller kills it (then
      // ends the tracking, cheaply: see above) or resumes it (ending the tracking first).
      const last = tracker;
      tracker = null;
      frozen = null;
      stats.frozen = ending;
      stats.frozenAtUs = t0; // the freeze began there: its own time is downtime too
      stats.endTracking = async () => {
        if (last !== null) await last.end();
      };
    } else {
      // Tracking ends with the final dump: the task is left as it was before the first pre-dump.
      if (tracker !== null) await tracker.end();
      tracker = null;
      frozen = null;
      // As CRIU: a task left running gets its connections back now; one left stopped keeps them
      // in repair mode and locked, to be killed and restored.
      if (opts.end === 'leave-running') {
        releaseTcpRepair(filesShared, pid);
        resumeProcess(ending);
      } else stopProcess(ending);
      opts.pidfdStore?.add(pid); // the task lives on: a later dump may compare against this one
    }
  } catch (err) {
    removeLinkRemaps(filesShared);
    releaseTcpRepair(filesShared, pid);
    copy?.abort.abort(err);
    await copy?.promise.catch(() => undefined);
    // A dump ends the tracking either way (its collect did not re-arm: markLastCollect).
    if (tracker !== null) await tracker.end().catch(() => undefined);
    await sink.abort();
    if (frozen !== null) {
      try {
        resumeProcess(frozen);
      } catch (resumeErr) {
        log().error(`Cannot resume task ${pid} after a failed dump: ${String(resumeErr)}`);
      }
    }
    await removeNew(dir, before);
    throw err;
  }
  if (postDumpError !== null) throw postDumpError;
  log().debug('dump: stats');
  // Synchronous, as the images: a live migration waits for it with the task frozen.
  writeImagesSync(
    [{ path: path.join(dir, 'stats-dump'), kind: 'STATS', entries: [{ dump: dumpStatsEntry(stats) }] }],
    durability,
  );
  if (opts.autoDedup === true && sink.isLocal && opts.prevImagesDir !== undefined) {
    const saved = await dedupChain(dir);
    log().info(`auto-dedup: ${saved} bytes punched out of the parent images`);
  }
  return stats;
}
