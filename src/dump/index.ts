/**
 * `criu dump`: checkpoint a running process, its threads and its descendants, into CRIU-format
 * images (pstree.img lists the processes, parents first; each has its own mm, core, fdinfo, fs,
 * ids and pagemap images, and files.img is shared: a description open in several processes is
 * one entry).
 *
 * Steps, in order; any failure before the images are complete puts the process back exactly as
 * it was (threads resumed, registers and masks restored, no scratch mapping, not traced) and
 * removes what was written:
 *   1. check: the task exists, no zombie or shared kernel object in its tree, and every fd of
 *      every process is of a supported kind
 *   2. freeze: seize and stop every thread of every process, parents first
 *   3. collect, process by process: mm and VMAs, fds, per-thread cores, fs, ids (in memory)
 *      (process.ts); a zombie: its exit status
 *   4. memory, each process's while its other state is collected: present pages copied into
 *      pages-<n>.img, pagemap-<pid>.img (or sent to a page server); with a tracker and a parent
 *      image, unchanged pages are left to the parent
 *   5. write the images (temporary names, renamed on completion), inventory.img last
 *   6. end: kill the tree (default), leave it running (-R) or stopped (-s)
 *   7. stats-dump
 */

import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { TaskError } from '../errors.js';
import { imageFileName, PARENT_LINK, writeParentLink, type ImageEntry } from '../images/index.js';
import { prepareImageKinds, writeImagesSync, type ImageToWrite } from '../images/image-writer.js';
import { log } from '../log.js';
import { injectedCallCounts } from '../inject/injector.js';
import { copyBuffers } from '../mem/buffer-pool.js';
import { readStat } from '../proc/stat.js';
import { readStatus } from '../proc/status.js';
import type * as TrackModule from '../mem/track/index.js';
import { localImageSink, type FileImageSink } from '../files/image-sink.js';
import type { FileOptions } from '../files/types.js';
import { removeLinkRemaps } from '../files/link-remap.js';
import { unlockDumpedConnections } from '../files/inet-socket.js';
import { nsLockId } from '../files/net-lock.js';
import { dumpCpuinfo } from '../cpuinfo/index.js';
import type { DirtyTracker } from '../mem/track/index.js';
import { dedupChain } from '../mem/dedup.js';
import type { TrackerChoice } from '../kerndat/tracker.js';
import { kerndat } from '../kerndat/index.js';
import type { ActionHook } from '../actions.js';
import { killTree, resumeTree, stopTree, type FrozenTask } from './freeze.js';
import { preReadMm, type MmPreRead } from './mm.js';
import { dumpSeccomp } from './seccomp.js';
import { localPageSink, removeNew, type PageSink } from './page-sink.js';
import { dumpStatsEntry, inventoryEntry, newRunId, noDumpStats, nowUs, type DumpStats } from './entries.js';
import { kobjIds, rootIds } from './ids.js';
import { dumpSysvShm, removeSysvShm } from './sysv-shm.js';
import { dumpMsgQueues, dumpSemSets } from './sysv-ipc.js';
import { checkTreeNamespaces, dumpIpcVar, dumpUtsns, inTreeIpc, type TreeNamespaces } from './namespaces.js';
import { treePids } from './pid-ns.js';
import { checkTreeFds, checkTreeMemory, freezeDumpTree, readDumpTree, releaseTree, zombieCore } from './tree.js';
import { dumpProcess, type ProcessDumpContext } from './process.js';
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
  /** --namespaces: kinds to take as the tree's own even where it shares criu's (namespaces.ts). */
  namespaces?: readonly string[];
}

/** What dump() returns: the stats, and with end 'keep-frozen' the task still frozen. */
export type DumpResult = DumpStats & {
  /** The tree, parents first. */
  frozen?: FrozenTask[];
  /** With 'keep-frozen': when the task was frozen (nowUs clock: process.hrtime in µs). */
  frozenAtUs?: number;
  endTracking?: () => Promise<void>;
  /** With 'keep-frozen': the System V segments to remove (removeSysvShm) when it is killed. */
  sysvShmIds?: number[];
  /**
   * With 'keep-frozen': undo what --tcp-established did to the tree's connections once it is
   * resumed (repair mode off, the network lock lifted) or killed (the lock lifted: sockets closed
   * in repair mode go silently, sending the peer nothing).
   */
  endConnections?: (how: 'resumed' | 'killed') => void;
};

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

/** Dump process `pid` and its descendants into `imagesDir`. Returns the statistics written to stats-dump. */
export async function dump(opts: DumpOptions): Promise<DumpResult> {
  /** This dump's run id: in the inventory, and naming the network lock's tables of a PID namespace. */
  const runId = newRunId();
  const { pid } = opts;
  await opts.onAction?.('pre-dump', pid);
  const durability = { isDurable: opts.isDurable !== false };
  const reserving = copyBuffers.reserveAsync(2);
  reserving.catch(() => undefined); // awaited before the freeze
  if (readStat(pid) === null) throw new TaskError(pid, `Cannot dump task ${pid}: no such process`);
  const isTracking = opts.trackMem === true || isTrackingRecorded(pid);
  const seen = readDumpTree(pid).filter((t) => t.isZombie !== true);
  // smaps, read on the thread pool while the rest of the preparation runs (see preReadMm).
  const mmPreReading = new Map(seen.map((t) => [t.pid, preReadMm(t.pid)]));
  for (const reading of mmPreReading.values()) reading.catch(() => undefined); // awaited before the freeze
  // A socket whose peer another process of the tree holds is inside the dump (treePids).
  const treeOptions = (tree: readonly { pid: number }[]): FileOptions =>
    tree.length > 1 ? { ...opts.fileOptions, treePids: tree.map((t) => t.pid) } : (opts.fileOptions ?? {});
  checkTreeFds(seen, treeOptions(seen));
  checkTreeMemory(seen);
  let namespaces: TreeNamespaces = checkTreeNamespaces(
    pid,
    seen.map((t) => t.pid),
    opts.namespaces,
  );
  await mkdir(opts.imagesDir, { recursive: true, mode: 0o700 });
  const dir = opts.imagesDir;
  const before = new Set(await readdir(dir));
  let nextPagesId = 2; // pages-1.img holds the first task's memory
  const allocPagesId = (): number => nextPagesId++;
  const sink = opts.sink ?? localPageSink(dir, allocPagesId);
  const isLinkingParent = opts.prevImagesDir !== undefined && sink.isLocal;
  const isParentLinkEarly = isLinkingParent && !before.has(PARENT_LINK);
  // A full dump reserves room for its pages at once, on the thread pool (PageSink.reserve): it
  // is allocated while the rest is prepared. A failure from here on discards it (sink.abort).
  // (The first task's pages go into the reserved pages-1.img: its estimate only.)
  const estimate = opts.prevImagesDir === undefined && !isTracking ? estimatePagesBytes(pid) : 0;
  if (estimate >= RESERVE_MIN_BYTES) sink.reserve?.(estimate);
  let track: typeof TrackModule | null;
  const mmPre = new Map<number, MmPreRead | null>();
  let tasks: FrozenTask[] | null;
  let zombies: { pid: number; ppid: number }[];
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
    prepareImageKinds([
      ...DUMP_IMAGE_KINDS,
      ...(namespaces.own.has('uts') ? ['UTSNS'] : []),
      ...(namespaces.own.has('ipc') ? ['IPC_VAR', 'IPCNS_SHM', 'IPCNS_SEM', 'IPCNS_MSG'] : []),
    ]);
    log().debug('dump: prepared (cpuinfo written, image coders ready)');
    // smaps walks every page table: read before the freeze; once frozen only checked to still hold.
    for (const [p, reading] of mmPreReading) mmPre.set(p, await reading);
    log().debug('dump: smaps read');
    await reserving; // the copy buffers' first touch is slow on VMs: not while frozen (buffer-pool.ts)
    log().debug('dump: copy buffers ready');
    t0 = nowUs();
    ({ tasks, zombies } = freezeDumpTree(pid));
  } catch (err) {
    await sink.abort();
    await removeNew(dir, before);
    throw err;
  }
  const tFrozen = nowUs();
  const nrThreads = tasks.reduce((n, t) => n + t.threads.length, 0);
  log().info(`Frozen ${tasks.length} process(es) of tree ${pid}, ${nrThreads} thread(s), in ${tFrozen - t0} us`);
  const stats: DumpResult = { ...noDumpStats(), freezingTimeUs: tFrozen - t0 };
  /** The memory trackers of the processes dumped so far (each ends with this dump). */
  const trackers: { pid: number; tracker: DirtyTracker }[] = [];
  /** End every tracker (each at most once); with `isQuiet`, a failure is only logged. */
  const endTrackers = async (isQuiet: boolean): Promise<void> => {
    for (const { pid: tp, tracker } of trackers.splice(0)) {
      try {
        await tracker.end();
      } catch (err) {
        if (!isQuiet) throw err;
        log().warn(`Cannot end the memory tracking of ${tp}: ${String(err)}`);
      }
    }
  };
  // Set by each process's dump (a closure): typed so that TypeScript does not narrow it to null.
  /** The page copy once started: stopped and settled before the sink is discarded after a failure. */
  let copy = null as { promise: Promise<unknown>; abort: AbortController } | null;
  // The files' shared state: one ghost table for the fds and the mappings (a deleted file open
  // and mapped is one ghost), and the --link-remap links a failed dump removes. One for the
  // tree: a description open in several processes is one file entry.
  const filesShared = new Map<string, unknown>();
  let postDumpError: unknown = null;
  /** The System V segments to remove when the tree is killed. */
  let sysvShmIds: number[] = [];
  try {
    // Processes forked while the tree was read are checked now (a refusal resumes the tree).
    const fileOptions = treeOptions(tasks);
    checkTreeFds(
      tasks.filter((t) => !mmPreReading.has(t.pid)),
      fileOptions,
    );
    // Frozen, the namespaces are final (a setns or unshare since the check above is refused now).
    namespaces = checkTreeNamespaces(
      pid,
      tasks.map((t) => t.pid),
      opts.namespaces,
    );
    throwIfAborted(opts.signal);
    // The images hold the pids as the tree's PID namespace sees them (pid-ns.ts).
    const pids = treePids(pid, namespaces.own.has('pid'));
    // Its network lock's tables are named by the run (another tree's processes have its pids).
    const lockId = pids.isOwn ? (p: number): string => nsLockId(runId, pids.vpid(p)) : undefined;
    let nextId = 1;
    const extraImages = new Map<string, { entry: ImageEntry; extra?: Uint8Array }[]>();
    const batch: ImageToWrite[] = [];
    const add = (name: string, kind: string, entries: ImageToWrite['entries']): void => {
      batch.push({ path: path.join(dir, name), kind, entries });
    };
    // Shared memory contents go where the task pages go (a page server's, as CRIU's). The per-id
    // images (a connection's queues, a ghost file) join the batch: one write at the end, not a
    // file and its fsync each while the tree is frozen (a server's hundred connections).
    const localImages: FileImageSink = {
      ...localImageSink(dir, allocPagesId),
      writeImage: async (kind, id, records) => add(imageFileName(kind, id), kind, records),
    };
    const ctx: ProcessDumpContext = {
      options: opts,
      dir,
      sink,
      track,
      mmPre,
      allocId: () => nextId++,
      images:
        sink.writeShmem === undefined ? localImages : { ...localImages, writeShmemPages: sink.writeShmem.bind(sink) },
      fileOptions,
      filesShared,
      addEntry: async (kind, entry, extra) => {
        const list = extraImages.get(kind) ?? [];
        list.push(extra === undefined ? { entry } : { entry, extra });
        extraImages.set(kind, list);
      },
      extraImages,
      seccomp: dumpSeccomp(tasks.map((t) => ({ pid: t.pid, tids: t.threads.map((inj) => inj.tid) }))),
      dumpedShmem: new Set(),
      sysvShm: new Map(),
      namespaces,
      pids,
      ...(lockId === undefined ? {} : { lockId }),
      add,
      fileEntries: [],
      pstree: [],
      stats,
      onTracker: (tp, tracker) => trackers.push({ pid: tp, tracker }),
      onCopy: (c) => (copy = c),
    };
    const tMem = nowUs();
    for (const [i, task] of tasks.entries()) await dumpProcess(task, i, ctx);
    for (const z of zombies) {
      // A zombie: its exit status (as waitpid reports it) and its place in the tree, as CRIU.
      const st = readStat(z.pid);
      const groups = pids.groupsOf(z.pid);
      if (st === null || groups === null)
        throw new TaskError(z.pid, `Zombie ${z.pid} was reaped while its parent was frozen`);
      const vz = pids.vpid(z.pid);
      add(`core-${vz}.img`, 'CORE', [zombieCore(st)]);
      ctx.pstree.push({ pid: vz, ppid: pids.vpid(z.ppid), pgid: groups.pgid, sid: groups.sid, threads: [vz] });
    }
    if (zombies.length > 0) log().info(`Dumped ${zombies.length} zombie(s) of tree ${pid}`);
    const treeIds = kobjIds(0, namespaces.own).task;
    const shm = inTreeIpc(pid, namespaces, () => dumpSysvShm(ctx.sysvShm, !namespaces.isIpcCriu));
    const ipcId = Number(treeIds['ipc_ns_id'] ?? 0);
    if (shm.records.length > 0 || namespaces.own.has('ipc')) {
      add(imageFileName('IPCNS_SHM', ipcId), 'IPCNS_SHM', shm.records);
      // A namespace of the tree's own goes with the tree, and its segments with it.
      if (namespaces.isIpcCriu) sysvShmIds = shm.removedWithTree;
      log().info(`Dumped ${shm.records.length} System V shared memory segment(s)`);
    }
    if (namespaces.own.has('uts')) add(imageFileName('UTSNS', Number(treeIds['uts_ns_id'])), 'UTSNS', [dumpUtsns(pid)]);
    if (namespaces.own.has('ipc')) {
      add(imageFileName('IPC_VAR', ipcId), 'IPC_VAR', [dumpIpcVar(pid)]);
      const { sem, msg } = inTreeIpc(pid, namespaces, () => ({ sem: dumpSemSets(), msg: dumpMsgQueues() }));
      add(imageFileName('IPCNS_SEM', ipcId), 'IPCNS_SEM', sem);
      add(imageFileName('IPCNS_MSG', ipcId), 'IPCNS_MSG', msg);
      if (sem.length + msg.length > 0)
        log().info(`Dumped ${sem.length} System V semaphore set(s) and ${msg.length} message queue(s)`);
    }
    if (namespaces.own.size > 0) log().info(`Dumped the tree's own namespaces: ${[...namespaces.own].join(', ')}`);
    stats.memdumpTimeUs = nowUs() - tMem;
    // The small images in one synchronous batch (src/images/image-writer.ts says why). Files
    // other modules refer to (a FIFO's path, say) come in as FILES entries of addEntry.
    const filesExtra = extraImages.get('FILES') ?? [];
    extraImages.delete('FILES');
    add('files.img', 'FILES', [...ctx.fileEntries, ...filesExtra.map((e) => e.entry)]);
    for (const [kind, list] of extraImages) add(imageFileName(kind), kind, list);
    add('pstree.img', 'PSTREE', ctx.pstree);
    const { filters } = ctx.seccomp;
    add('seccomp.img', 'SECCOMP', [filters.length > 0 ? { seccomp_filters: filters } : {}]);
    writeImagesSync(batch, durability);
    throwIfAborted(opts.signal);

    log().debug('dump: images');
    const tWrite = nowUs();
    await sink.commit();
    log().debug('dump: images (pagemap written)');
    if (isLinkingParent && !isParentLinkEarly) await writeParentLink(dir, opts.prevImagesDir as string);
    stats.memwriteTimeUs = nowUs() - tWrite;
    // Last: the inventory makes the directory a complete dump.
    writeImagesSync(
      [
        {
          path: path.join(dir, 'inventory.img'),
          kind: 'INVENTORY',
          entries: [inventoryEntry(rootIds(), opts.fileOptions?.isTcpClose === true, runId)],
        },
      ],
      durability,
    );
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

    const ending = tasks;
    if (postDumpError !== null) {
      // As CRIU: a failed post-dump action leaves the task running and the images in place; the
      // caller learns the script's status and decides (kill it, or let it run).
      await endTrackers(true);
      tasks = null;
      removeLinkRemaps(filesShared);
      releaseTree(filesShared, ending);
      resumeTree(ending);
    } else if (opts.end === 'kill') {
      // Killed first, then the tracking ended: with the task's address space gone, closing the
      // userfaultfd has no VMA left to unregister (~40 ms for 1 GiB otherwise). The images are
      // complete: a failure to end the tracking is only logged.
      tasks = null;
      for (const line of removeSysvShm(sysvShmIds)) log().warn(line);
      // With tracking, the end is collected: see above.
      killTree(ending, { isReaping: trackers.length > 0 || opts.canLeaveKilledUnreaped !== true });
      log().debug(`dump: tree ${pid} killed`);
      await endTrackers(true);
    } else if (opts.end === 'keep-frozen') {
      // Live migration: still frozen and traced by this process until the caller kills it (then
      // ends the tracking, cheaply: see above) or resumes it (ending the tracking first).
      tasks = null;
      stats.frozen = ending;
      stats.sysvShmIds = sysvShmIds;
      stats.frozenAtUs = t0; // the freeze began there: its own time is downtime too
      stats.endConnections = (how) => {
        if (how === 'resumed') releaseTree(filesShared, ending);
        else
          unlockDumpedConnections(
            filesShared,
            ending.map((t) => t.pid),
          );
      };
      stats.endTracking = () => endTrackers(false);
    } else {
      // Tracking ends with the final dump: the task is left as it was before the first pre-dump.
      await endTrackers(false);
      tasks = null;
      // As CRIU: a task left running gets its connections back now; one left stopped keeps them
      // in repair mode and locked, to be killed and restored.
      if (opts.end === 'leave-running') {
        releaseTree(filesShared, ending);
        resumeTree(ending);
      } else stopTree(ending);
      for (const t of ending) opts.pidfdStore?.add(t.pid); // alive: a later dump may compare against this one
    }
  } catch (err) {
    removeLinkRemaps(filesShared);
    if (tasks !== null) releaseTree(filesShared, tasks);
    copy?.abort.abort(err);
    await copy?.promise.catch(() => undefined);
    // A dump ends the tracking either way (its collect did not re-arm: markLastCollect).
    await endTrackers(true);
    await sink.abort();
    if (tasks !== null) {
      try {
        resumeTree(tasks);
      } catch (resumeErr) {
        log().error(`Cannot resume tree ${pid} after a failed dump: ${String(resumeErr)}`);
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
