/**
 * `criu pre-dump`: copy a running process's memory without stopping it for long, as a step
 * towards a final dump (or a live migration) that then has little left to copy.
 *
 *   1. check: the task exists, its tree holds nothing the final dump refuses (src/dump/tree.ts),
 *      every fd of every process is of a kind the final dump supports (a pre-dump of a task that
 *      cannot be dumped would be wasted work);
 *   then for each process of the tree, parents first:
 *   2. learn the VMAs, collect the dirty pages from the tracker (which re-arms it), scan the
 *      present pages; plan which pages to copy and which the parent holds. The task is frozen
 *      only while the tracker needs it: to create its userfaultfd (first iteration), or for the
 *      whole step with soft-dirty, whose read-and-clear is not atomic. uffd's collect is (see
 *      DirtyTracker.collectsRunning), so later iterations never stop the task;
 *   3. copy the planned pages while the task runs. This is safe because the tracker was re-armed
 *      before the copy: a page the task changes during the copy is reported again at the next
 *      collect and copied again then, so a torn copy never survives to a final dump (which
 *      copies frozen). A range unmapped during the copy is written as zeros for the same reason;
 *   4. write the pagemaps, the `parent` link, inventory (last), stats-dump; keep each process's
 *      tracker for the next iteration. As in CRIU, a pre-dump always tracks memory (--track-mem
 *      is implied).
 * The tasks are never killed, and they are running again whatever happens.
 *
 * Images: pagemap-<pid>.img and pages-<n>.img per process, inventory.img, stats-dump, `parent`.
 */

import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { TaskError } from '../errors.js';
import { writeImage, writeParentLink } from '../images/index.js';
import { log } from '../log.js';
import { readMaps, type MapsEntry } from '../proc/maps.js';
import { SMAPS_SIZE_KEYS, type SmapsEntry } from '../proc/smaps.js';
import { readStat } from '../proc/stat.js';
import type { FileOptions } from '../files/types.js';
import type { TrackerChoice } from '../kerndat/tracker.js';
import { freezeProcess, hasExited, resumeProcess, type FrozenProcess } from './freeze.js';
import { PROT, VMA_AREA, classifyVma, type VmaInfo } from './vma.js';
import { O_RDWR } from '../kernel/constants.js';
import { decodeKnown, encodeKnown, planMemory, type MemoryPlan } from './memory.js';
import { localPageSink, parentKnown, removeNew, type PageSink } from './page-sink.js';
import { dumpStatsEntry, inventoryEntry, noDumpStats, nowUs, type DumpStats } from './entries.js';
import { rootIds } from './ids.js';
import { checkTreeNamespaces, type NsKind, type TreeNamespaces } from './namespaces.js';
import type { PidfdStore } from './pidfd-store.js';
import { openTracker, sweepStaleTracking, type DirtyTracker } from '../mem/track/index.js';
import { checkTreeFds, checkTreeMemory, readDumpTree, type TreeMember } from './tree.js';
import { copyBuffers } from '../mem/buffer-pool.js';
import { isSmallCopy, pagesBytes } from '../mem/dump-pages.js';
import { treePids } from './pid-ns.js';

export interface PreDumpOptions {
  pid: number;
  imagesDir: string;
  /** --prev-images-dir: the previous (pre-)dump, relative to imagesDir or absolute. */
  prevImagesDir?: string;
  tracker: TrackerChoice;
  /** Where the pages go (default: files in imagesDir). */
  sink?: PageSink;
  /** RPC's pidfd store: PID reuse detection between iterations by pidfds (pidfd-store.ts). */
  pidfdStore?: PidfdStore;
  signal?: AbortSignal;
  onProgress?: (what: string, done: number, total: number) => void;
  /**
   * The options the final dump will have (--shell-job, --tcp-established...): a pre-dump refuses
   * a task that dump would refuse, and only that.
   */
  fileOptions?: FileOptions;
  /** --namespaces, as the final dump will have it. */
  namespaces?: readonly string[];
}

export interface PreDumpStats extends DumpStats {
  tracker: string;
  /** The processes pre-dumped, parents first: what a skeleton of the tree is made of (skeleton.ts). */
  processes: ProcessLayout[];
  /** The namespace kinds the tree has of its own (namespaces.ts): a skeleton is made in new ones. */
  namespaces: NsKind[];
}

/** One process of a pre-dumped tree: its place in the tree, its private anonymous memory and its mapped files. */
export interface ProcessLayout {
  pid: number;
  /** 0 for the tree's root. */
  ppid: number;
  pgid: number;
  sid: number;
  /** Its writable private anonymous VMAs at this pre-dump (what its skeleton maps). */
  anonVmas: { start: bigint; end: bigint }[];
  /** Its mappings of files by path (programs, libraries, data files): a skeleton maps them ahead. */
  fileVmas: FileVmaLayout[];
}

/** A mapping of a file by its path, as the dump will describe it (vma.ts): what a skeleton maps. */
export interface FileVmaLayout {
  start: bigint;
  end: bigint;
  prot: number;
  flags: number;
  pgoff: bigint;
  /** Open flags the file needs (O_RDONLY 0, O_RDWR 2). */
  fdflags: number;
  path: string;
}

/** The VmFlags a maps line tells (protections and sharing); the madvise ones it cannot. */
function mapsFlags(m: MapsEntry): ReadonlySet<string> {
  const f = new Set<string>();
  if (m.isRead) f.add('rd');
  if (m.isWrite) f.add('wr');
  if (m.isExec) f.add('ex');
  if (m.isShared) f.add('sh');
  return f;
}
const NO_BYTES = Object.fromEntries(SMAPS_SIZE_KEYS.map((k) => [k, 0])) as SmapsEntry['bytes'];

/**
 * The tree a pre-dump of `pid` takes, checked as the final dump would check it (tree.ts, and
 * every fd of every process), without changing anything.
 */
export function checkDumpable(
  pid: number,
  fileOptions: FileOptions = {},
  namespaces: readonly string[] = [],
): { tree: TreeMember[]; namespaces: TreeNamespaces } {
  if (readStat(pid) === null) throw new TaskError(pid, `Cannot dump task ${pid}: no such process`);
  // Zombies have no memory or files: the final dump takes their exit status.
  const tree = readDumpTree(pid).filter((t) => t.isZombie !== true);
  checkTreeFds(tree, tree.length > 1 ? { ...fileOptions, treePids: tree.map((t) => t.pid) } : fileOptions);
  checkTreeMemory(tree);
  return {
    tree,
    namespaces: checkTreeNamespaces(
      pid,
      tree.map((t) => t.pid),
      namespaces,
    ),
  };
}

/**
 * The VMAs of files reached by their path: not deleted, not memfds. The open mode is read from
 * maps alone here (no VmFlags): a shared mapping is opened read-write when it is writable.
 */
function fileVmasOf(vmas: readonly VmaInfo[]): FileVmaLayout[] {
  const isFile = (v: VmaInfo): v is VmaInfo & { path: string } =>
    (v.status & (VMA_AREA.FILE_PRIVATE | VMA_AREA.FILE_SHARED)) !== 0 &&
    (v.status & VMA_AREA.MEMFD) === 0 &&
    v.path !== undefined &&
    !v.isDeleted;
  return vmas.filter(isFile).map((v) => ({
    start: v.start,
    end: v.end,
    prot: v.prot,
    flags: v.flags,
    pgoff: v.pgoff,
    fdflags: (v.status & VMA_AREA.FILE_SHARED) !== 0 && (v.prot & PROT.WRITE) !== 0 ? O_RDWR : 0,
    path: v.path,
  }));
}

/** What one process's part of a pre-dump leaves for the end of the pre-dump. */
interface ProcessPreDump {
  pid: number;
  tracker: DirtyTracker;
  plan: MemoryPlan;
  pagesWritten: number;
}

/** Pre-dump process `pid` and its descendants into `imagesDir` (or its page server). */
export async function preDump(opts: PreDumpOptions): Promise<PreDumpStats> {
  const { pid } = opts;
  const { tree, namespaces } = checkDumpable(pid, opts.fileOptions, opts.namespaces);
  // The images (and the layouts) hold the pids as the tree's PID namespace sees them.
  const pids = treePids(pid, namespaces.own.has('pid'));
  log().debug(`Pre-dump of ${pid}: checked (${tree.length} process(es))`);
  await mkdir(opts.imagesDir, { recursive: true, mode: 0o700 });
  const dir = opts.imagesDir;
  const before = new Set(await readdir(dir));
  const sink = opts.sink ?? localPageSink(dir);
  const stats: PreDumpStats = { ...noDumpStats(), tracker: '', processes: [], namespaces: [...namespaces.own] };
  /** Each process's tracker once opened: kept at the end, or ended on failure. */
  const done: ProcessPreDump[] = [];
  const opened: DirtyTracker[] = [];
  let reserving: Promise<void> | null = null;

  /** One process: its dirty pages collected and planned (frozen only as needed), then copied. */
  const preDumpProcess = async (p: number, ppid: number): Promise<void> => {
    // Frozen only as long as needed: to create the tracker's userfaultfd in the task (first
    // iteration), and for a whole collect when the tracker cannot collect with the task running
    // (soft-dirty). The uffd tracker's later iterations do not stop the task at all.
    let frozen: FrozenProcess | null = null;
    let frozenAt = 0;
    const freeze = (): FrozenProcess => {
      if (frozen === null) {
        const t0 = nowUs();
        frozen = freezeProcess(p);
        frozenAt = nowUs();
        stats.freezingTimeUs += frozenAt - t0;
      }
      return frozen;
    };
    const resume = (): void => {
      if (frozen === null) return;
      const f = frozen;
      frozen = null;
      resumeProcess(f);
      stats.frozenTimeUs += nowUs() - frozenAt;
    };
    let plan: MemoryPlan;
    let tracker: DirtyTracker;
    let layout: ProcessLayout;
    try {
      tracker = await openTracker({ pid: p, injector: () => freeze().leader, choice: opts.tracker });
      opened.push(tracker);
      // The copy buffers' first touch is slow on VMs (buffer-pool.ts). A first iteration copies
      // everything: faulting them in on the thread pool overlaps the collect. A later one copies
      // what was written since, usually a few MB that bring small buffers of their own
      // (dump-pages.ts), and a page server's client has buffers of its own.
      if (reserving === null && sink.isLocal && (tracker.fresh || opts.prevImagesDir === undefined)) {
        reserving = copyBuffers.reserveAsync(2);
        reserving.catch(() => undefined); // awaited before the copy
      }
      if (tracker.collectsRunning) resume();
      else freeze();
      // maps, not smaps: smaps walks every page table for its counters (65-125 ms for 1 GiB
      // here), and the VmFlags it adds change nothing in which pages a pre-dump copies.
      const maps = readMaps(p);
      if (maps === null) throw new TaskError(p, `Task ${p} exited while being dumped`);
      const vmas = maps.map((map) =>
        classifyVma({
          map,
          start: map.start,
          end: map.end,
          vmFlags: mapsFlags(map),
          bytes: NO_BYTES,
          isThpEligible: false,
        }),
      );
      const parent = await sink.open(pids.vpid(p), opts.prevImagesDir);
      const isReused = parent && opts.pidfdStore?.isReusedSinceParent(p, opts.prevImagesDir) === true;
      const known = parent && !isReused ? parentKnown(decodeKnown(tracker.state), sink, opts.prevImagesDir, dir) : null;
      plan = await planMemory(p, vmas, tracker, known);
      const groups = pids.groupsOf(p);
      if (groups === null) throw new TaskError(p, `Task ${p} exited while being dumped`);
      layout = {
        pid: pids.vpid(p),
        ppid: pids.vpid(ppid),
        pgid: groups.pgid,
        sid: groups.sid,
        anonVmas: vmas
          .filter((v) => (v.status & VMA_AREA.ANON_PRIVATE) !== 0 && (v.prot & PROT.WRITE) !== 0)
          .map((v) => ({ start: v.start, end: v.end })),
        fileVmas: fileVmasOf(vmas),
      };
    } finally {
      resume(); // running again from here on, whatever happened
    }
    log().info(`Pre-dump of ${p}: tracker ${tracker.kind}`);
    stats.tracker = tracker.kind;
    // What this iteration copies (progress ends at 100% of it, not at the share of all present pages).
    const total = pagesBytes(plan.copy);
    if (sink.isLocal && reserving === null && !isSmallCopy(total)) reserving = copyBuffers.reserveAsync(2);
    await reserving;
    const tMem = nowUs();
    const written = await sink.writePages(p, plan, {
      imageId: pids.vpid(p),
      running: true,
      signal: opts.signal,
      onProgress: (bytes) => opts.onProgress?.('memory', bytes, total),
    });
    stats.memdumpTimeUs += nowUs() - tMem;
    log().debug(`Pre-dump of ${p}: ${written.pagesWritten} pages written`);
    done.push({ pid: p, tracker, plan, pagesWritten: written.pagesWritten });
    stats.processes.push(layout);
  };

  try {
    await sweepStaleTracking();
    for (const member of tree) {
      try {
        await preDumpProcess(member.pid, member.ppid);
      } catch (err) {
        // A child that exited since the tree was read has no memory left to pre-dump.
        if (member.ppid === 0 || !hasExited(member.pid)) throw err;
        log().info(`Pre-dump of ${pid}: process ${member.pid} exited meanwhile`);
        const left = opened.filter((tr) => !done.some((d) => d.tracker === tr));
        for (const tracker of left) {
          opened.splice(opened.indexOf(tracker), 1);
          await tracker.end().catch(() => undefined);
        }
      }
    }
    log().info(`Pre-dump of ${pid}: frozen ${stats.frozenTimeUs} us in all`);
    const tWrite = nowUs();
    const prev = opts.prevImagesDir;
    if (prev !== undefined && sink.isLocal) await writeParentLink(dir, prev);
    await sink.commit();
    // Last: the inventory makes the directory a complete pre-dump (and names it for the tracker).
    await writeImage(path.join(dir, 'inventory.img'), 'INVENTORY', [{ entry: inventoryEntry(rootIds()) }]);
    for (const d of done) {
      opts.pidfdStore?.add(d.pid);
      d.tracker.state = encodeKnown({ dest: sink.destination(dir), known: d.plan.present });
      opened.splice(opened.indexOf(d.tracker), 1);
      try {
        await d.tracker.keep(); // undoes its own work when it fails
      } catch (err) {
        // A child that exited since its pages were taken (its holder then ends at once): its
        // pages stay in the images, and there is nothing left to track.
        if (d.pid === pid || !hasExited(d.pid)) throw err;
        log().info(`Pre-dump of ${pid}: process ${d.pid} exited before its tracking could be kept`);
      }
      stats.pagesScanned += d.plan.pagesScanned;
      stats.pagesSkippedParent += d.plan.pagesInParent;
      stats.pagesWritten += d.pagesWritten;
    }
    log().debug(`Pre-dump of ${pid}: images written, trackers kept`);
    stats.memwriteTimeUs = nowUs() - tWrite;
    await writeImage(path.join(dir, 'stats-dump'), 'STATS', [{ entry: { dump: dumpStatsEntry(stats) } }]);
    return stats;
  } catch (err) {
    // A failed iteration must not be taken as a base by the next: its state is dropped.
    for (const tracker of opened.splice(0)) await tracker.end().catch(() => undefined);
    await sink.abort();
    await removeNew(dir, before);
    throw err;
  }
}
