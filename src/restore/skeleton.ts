/**
 * Restoring while the pages still arrive: the destination side of a live migration.
 *
 * A Skeleton is the restore stub (stub.ts), started with the migrating task's PID (1 in a new PID
 * namespace when the tree had one of its own) as soon as the
 * first pre-dump has arrived, into which each pre-dump's pages are read while the task still runs
 * on the source: its private anonymous VMAs are mapped (read-write) at their addresses and filled
 * from the pages images, iteration after iteration (only what changed is read again). The final
 * restore (index.ts, `skeleton` option) then starts from this memory instead of an empty stub:
 * it keeps what the dump's plain anonymous VMAs cover, reads only the pages the final image holds
 * anew, and does everything else as usual. The pages read during pre-copy cost no downtime.
 *
 * Correctness rests on the pre-dump chain's rule (src/dump/memory.ts): a page marked PE_PARENT is
 * unchanged since the previous iteration and was present then, so the skeleton, which applied
 * every iteration's PE_PRESENT pages in order, holds exactly what the chain resolves it to.
 * Pages the skeleton holds but the final image lacks are zeroed (they were dropped since).
 *
 * A process tree gets a skeleton of the same shape: the root's stub is started first, and at the
 * first pre-dump each other process is forked from its parent's stub (tree.ts forkStub) once
 * that holds the parent's memory, in its session and group, as the final restore would make it.
 * It keeps the parent's memory where it has the same VMAs, and its pages are compared with the
 * parent's: only those that differ are written, so that what parent and child shared
 * copy-on-write on the source is shared on the destination too. The final restore takes each
 * process's stub from the skeleton instead of forking it.
 * A tree whose shape changed since the skeleton was made (a fork, an exit, a setsid) cannot use
 * it: the migration makes a new one from the next pre-dump (which reads every pre-copied page
 * again), and the final restore one from scratch.
 *
 * The process's mappings of files (its program, libraries, data files) are mapped ahead too, by
 * path, as the final restore would map them: that restore keeps each one the dump still has
 * (same range, protections, flags, offset and file: the one mapped, unchanged since by inode,
 * size and mtime) instead of opening and mapping it again during the downtime (mm.ts).
 *
 * The VMA ranges and the tree's shape come from the pre-dump's caller (the migration controller
 * learns them from the source), not from the images: a pre-dump writes only what CRIU's does.
 */

import { CLONE_NEWPID } from '../kernel/constants.js';
import path from 'node:path';
import { O_RDONLY, O_RDWR } from '../kernel/constants.js';
import { TaskError } from '../errors.js';
import type { Injector } from '../inject/injector.js';
import { log } from '../log.js';
import { PageChain, clipSources } from '../mem/page-chain.js';
import { fillChangedPages, fillPages } from '../mem/fill-pages.js';
import { intersect, normalize, pageAddr, pageIndex, pageRuns, subtract, type Run } from '../mem/runs.js';
import { SYSCALLS_X86_64 } from '../kernel/syscalls.js';
import {
  LEADER_SCRATCH_BYTES,
  findHole,
  killStub,
  scratchBytes,
  startStub,
  waitForFreePid,
  type Stub,
} from './stub.js';
import { forkStub, joinGroups, leadAsDumped } from './tree.js';
import type { FileVmaLayout, ProcessLayout } from '../dump/pre-dump.js';
import { statSync, type BigIntStats } from 'node:fs';
import { openInTask } from '../files/task-io.js';
import type { InjectedCall } from '../inject/injector.js';
import { unmapFiles, type PremappedFile } from './mm.js';

const PAGE = 4096n;
const MAP_PRIVATE_ANON = 0x22n;
const MAP_FIXED_NOREPLACE = 0x100000n;
const PROT_RW = 3n;
const MADV_DONTNEED = 4n;

export interface SkeletonStats {
  pagesFilled: number;
  pagesMapped: number;
  /** File VMAs mapped ahead (in all). */
  fileVmasMapped: number;
  /** Pages a process inherited from its parent and keeps shared with it (the same contents). */
  pagesShared: number;
}

/** Where a process sits in a tree: what a skeleton must match to be restored into. */
export type TreePlace = Pick<ProcessLayout, 'pid' | 'ppid' | 'pgid' | 'sid'>;

/** The skeleton of a process tree (of one process, often): a SkeletonTask per process. */
export class Skeleton {
  private isDone = false;
  /** The processes made so far, parents first: the root at once, the others at the first apply. */
  private readonly tasks: { place: TreePlace; task: SkeletonTask }[] = [];

  private constructor(
    /** The tree's processes, parents first. */
    private readonly places: readonly TreePlace[],
    root: SkeletonTask,
    /** CLONE_NEW* of the namespaces its root was made in (restore/namespaces.ts). */
    readonly cloneFlags: bigint,
  ) {
    this.tasks.push({ place: places[0] as TreePlace, task: root });
  }

  /**
   * Start the root's stub as its PID (free here, or 1 in a new PID namespace), in its session and group; the other processes
   * are forked from their parents' stubs at the first apply (apply says why). With isSibling the
   * root is a child of this process's parent (who reaps it), as `criu restore -S` makes it.
   * `processes` come parents first. On failure nothing is left.
   */
  static async create(
    processes: readonly ProcessLayout[],
    options: { isSibling?: boolean; cloneFlags?: bigint } = {},
  ): Promise<Skeleton> {
    const [root] = processes;
    if (root === undefined) throw new TaskError(0, 'A skeleton needs a process');
    const places = processes.map((p) => ({ pid: p.pid, ppid: p.ppid, pgid: p.pgid, sid: p.sid }));
    places.forEach((p, i) => {
      if (i > 0 && !places.slice(0, i).some((q) => q.pid === p.ppid))
        throw new TaskError(p.pid, `The parent of ${p.pid} (${p.ppid}) comes after it, or not at all`);
    });
    // A skeleton made again (the tree changed) waits for the last one's processes to be reaped.
    // In a new PID namespace every pid is free.
    if (((options.cloneFlags ?? 0n) & CLONE_NEWPID) === 0n) for (const p of processes) await waitForFreePid(p.pid);
    const stub = await startStub(
      root.pid,
      processes.flatMap((p) => [...p.anonVmas, ...p.fileVmas]),
      1,
      options,
    );
    const task = new SkeletonTask(root.pid, stub);
    try {
      leadAsDumped(stub, places[0] as TreePlace);
    } catch (err) {
      task.abort();
      throw err;
    }
    return new Skeleton(places, task, options.cloneFlags ?? 0n);
  }

  /** The root's PID. */
  get pid(): number {
    return (this.tasks[0] as { task: SkeletonTask }).task.pid;
  }

  /** Whether `places` (any order) is the tree this skeleton has: the same processes, parents, groups, sessions. */
  fits(places: readonly TreePlace[]): boolean {
    if (places.length !== this.places.length) return false;
    return places.every((p) => {
      const mine = this.places.find((q) => q.pid === p.pid);
      return mine !== undefined && mine.ppid === p.ppid && mine.pgid === p.pgid && mine.sid === p.sid;
    });
  }

  /** The skeleton of process `pid`, once made. */
  task(pid: number): SkeletonTask | undefined {
    return this.tasks.find((t) => t.place.pid === pid)?.task;
  }

  /**
   * Bring every process's memory to pre-dump `dir` (SkeletonTask.apply): `processes` must fit.
   * At the first, parents first, each other process is forked from its parent's stub once that
   * holds its memory: it keeps what it had in common with its parent (the same VMAs) and shares
   * it copy-on-write where its pages are the same, as on the source (SkeletonTask.inherit).
   */
  async apply(dir: string, processes: readonly ProcessLayout[]): Promise<SkeletonStats> {
    if (this.isDone) throw new TaskError(this.pid, 'The pre-copy skeleton is finished or aborted');
    if (!this.fits(processes)) throw new TaskError(this.pid, `The tree of ${this.pid} is not the skeleton's`);
    const sum: SkeletonStats = { pagesFilled: 0, pagesMapped: 0, pagesShared: 0, fileVmasMapped: 0 };
    const layoutOf = (pid: number): ProcessLayout => processes.find((p) => p.pid === pid) as ProcessLayout;
    const isFirst = this.tasks.length < this.places.length;
    for (const place of this.places) {
      const p = layoutOf(place.pid);
      const task = this.task(p.pid) ?? this.fork(place, layoutOf(place.ppid), p);
      const got = await task.apply(dir, p);
      sum.pagesFilled += got.pagesFilled;
      sum.pagesMapped += got.pagesMapped;
      sum.pagesShared += got.pagesShared;
      sum.fileVmasMapped += got.fileVmasMapped;
    }
    if (isFirst) joinGroups(this.tasks.map(({ place, task }) => ({ stub: task.stub, pstree: place })));
    return sum;
  }

  /** Fork process `p` from its parent's stub (its memory of this pre-dump in place), in its session and group. */
  private fork(place: TreePlace, parent: ProcessLayout, p: ProcessLayout): SkeletonTask {
    const from = this.task(place.ppid) as SkeletonTask;
    const task = new SkeletonTask(p.pid, forkStub(from.stub, p.pid));
    this.tasks.push({ place, task }); // killed with the others from here on
    leadAsDumped(task.stub, place);
    task.inherit(parent.anonVmas, p, from.mappedRuns, from.premappedFiles);
    return task;
  }

  /** Kill every stub the final restore has not taken (a migration that failed or was called off). */
  abort(): void {
    if (this.isDone) return;
    this.isDone = true;
    for (const { task } of [...this.tasks].reverse()) task.abort();
  }
}

/** The skeleton of one process: its stub, and the pre-copied memory in it. */
export class SkeletonTask {
  /** Page runs mapped (anonymous, private, RW) and holding pre-copied contents. */
  private mapped: Run[] = [];
  /** Of those, what was inherited from the parent at the fork and not yet compared (inherit). */
  private inherited: Run[] = [];
  /** The file VMAs mapped ahead, each with the file it maps. */
  private files: PremappedFile[] = [];
  private isDone = false;

  constructor(
    readonly pid: number,
    readonly stub: Stub,
  ) {}

  get injector(): Injector {
    return this.stub.injector;
  }

  /** The memory held: what the final restore starts from. */
  get mappedRuns(): Run[] {
    return this.mapped;
  }

  /** The file VMAs mapped ahead. */
  get premappedFiles(): readonly PremappedFile[] {
    return this.files;
  }

  /**
   * Right after the fork from the parent's stub, which held `parentMapped`: keep the parent's
   * memory where this process has the same VMA as the parent had (`parentVmas`, `vmas`: their
   * private anonymous VMAs at this pre-dump), unmap the rest (the scratch area stays: the same
   * address, this process's own now). The next apply compares the kept pages with this process's
   * own and writes only those that differ.
   */
  inherit(
    parentVmas: readonly { start: bigint; end: bigint }[],
    layout: ProcessLayout,
    parentMapped: readonly Run[],
    parentFiles: readonly PremappedFile[],
  ): void {
    const vmas = layout.anonVmas;
    const same = vmas.filter((v) => parentVmas.some((w) => w.start === v.start && w.end === v.end));
    const kept = intersect(pageRuns(same), parentMapped);
    const inj = this.stub.injector;
    for (const r of subtract(parentMapped, kept)) inj.syscallOrThrow('munmap', [pageAddr(r.start), len(r)]);
    this.mapped = kept;
    this.inherited = kept;
    // The parent's file VMAs came with the fork: the ones this process has too stay.
    this.files = parentFiles.filter((f) => layout.fileVmas.some((v) => isSameFileVma(v, f)));
    unmapFiles(
      inj,
      parentFiles.filter((f) => !this.files.includes(f)),
    );
  }

  /**
   * Bring the memory to pre-dump `dir` (its pagemap-<pid>.img and chain): `anonVmas` are the
   * task's private anonymous VMAs at that pre-dump. Ranges gone are unmapped, new ones mapped,
   * and the pages this iteration holds anew (plus everything of newly mapped ranges) read in.
   */
  async apply(dir: string, layout: ProcessLayout): Promise<SkeletonStats> {
    this.assertLive();
    const inj = this.stub.injector;
    const want = pageRuns(layout.anonVmas);
    this.relocateScratch(normalize([...want, ...pageRuns(layout.fileVmas)]));
    // File VMAs gone or changed first: their ranges may be anonymous memory now.
    const staleFiles = this.files.filter((f) => !layout.fileVmas.some((v) => isSameFileVma(v, f)));
    unmapFiles(inj, staleFiles);
    this.files = this.files.filter((f) => !staleFiles.includes(f));
    for (const r of subtract(this.mapped, want)) inj.syscallOrThrow('munmap', [pageAddr(r.start), len(r)]);
    const added = subtract(want, this.mapped);
    for (const r of added) {
      const got = inj.syscallOrThrow('mmap', [
        pageAddr(r.start),
        len(r),
        PROT_RW,
        MAP_PRIVATE_ANON | MAP_FIXED_NOREPLACE,
        -1n,
        0n,
      ]);
      if (got !== pageAddr(r.start)) throw new TaskError(this.pid, `Pre-copy mapping landed at 0x${got.toString(16)}`);
    }
    const kept = intersect(this.mapped, want);
    // Inherited from the parent: every page this process has there is compared (below).
    const cow = intersect(this.inherited, kept);
    this.inherited = [];
    this.mapped = want;
    const chain = await PageChain.open(dir, `pagemap-${this.pid}.img`);
    const present = await chain.presentRuns();
    // Kept ranges: only the new contents; added ranges: all their pages, wherever in the chain.
    const wanted = normalize([...intersect(present, subtract(kept, cow)), ...added]);
    const all = await chain.sources();
    let filled = await fillPages(this.stub.pid, clipSources(all, wanted));
    let shared = 0;
    if (cow.length > 0) {
      // The parent's pages this process does not have (never touched, or dropped) go.
      for (const r of subtract(cow, await chain.coverage()))
        inj.syscallOrThrow('madvise', [pageAddr(r.start), len(r), MADV_DONTNEED]);
      const got = await fillChangedPages(this.stub.pid, clipSources(all, cow));
      filled += got.written;
      shared = got.compared - got.written;
    }
    const newFiles = this.mapFiles(layout.fileVmas.filter((v) => !this.files.some((f) => isSameFileVma(v, f))));
    log().info(
      `Pre-copy ${path.basename(dir)}: ${filled} pages read into task ${this.pid}` +
        (cow.length > 0 ? `, ${shared} inherited pages kept shared with its parent` : '') +
        `, ${newFiles} file VMAs mapped ahead`,
    );
    return {
      pagesFilled: filled,
      pagesMapped: want.reduce((n, r) => n + r.end - r.start, 0),
      pagesShared: shared,
      fileVmasMapped: newFiles,
    };
  }

  /**
   * Map the file VMAs `vmas` as the final restore would (each file opened once, in the task, by
   * its path); one that cannot be (a file gone, a range taken) is left to the final restore.
   * Returns how many were mapped.
   */
  private mapFiles(vmas: readonly FileVmaLayout[]): number {
    const inj = this.stub.injector;
    const byFile = new Map<string, FileVmaLayout[]>();
    for (const v of vmas) {
      const key = `${v.fdflags}\0${v.path}`;
      byFile.set(key, [...(byFile.get(key) ?? []), v]);
    }
    let mapped = 0;
    for (const group of byFile.values()) {
      const { path: file, fdflags } = group[0] as FileVmaLayout;
      let fd: number;
      let st: BigIntStats;
      try {
        fd = openInTask(inj, file, fdflags === O_RDWR ? O_RDWR : O_RDONLY);
      } catch (err) {
        log().debug(`Pre-copy of ${this.pid}: ${file} is left to the final restore: ${String(err)}`);
        continue;
      } finally {
        inj.resetScratch();
      }
      try {
        st = statSync(`/proc/${this.stub.pid}/fd/${fd}`, { bigint: true }); // the file its VMAs map
      } catch (err) {
        inj.syscallOrThrow('close', [BigInt(fd)]);
        throw err;
      }
      const calls = group.map((v): InjectedCall => ({
        name: 'mmap',
        args: () => [
          v.start,
          v.end - v.start,
          BigInt(v.prot),
          BigInt(v.flags) | MAP_FIXED_NOREPLACE,
          BigInt(fd),
          v.pgoff,
        ],
      }));
      const results = inj.runCalls([...calls, { name: 'close', args: () => [BigInt(fd)] }]);
      group.forEach((v, k) => {
        const got = (results[k] as { ret: bigint }).ret;
        if (got !== v.start) {
          // Taken (EEXIST), or elsewhere: what it mapped goes, the final restore maps the VMA.
          if (got >= 0n) inj.syscall(SYSCALLS_X86_64.munmap, [got, v.end - v.start]);
          log().debug(
            `Pre-copy of ${this.pid}: ${file} at 0x${v.start.toString(16)} is left to the final restore (${got})`,
          );
          return;
        }
        this.files.push({ ...v, dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs });
        mapped++;
      });
    }
    return mapped;
  }

  /**
   * Make room for the final restore: its scratch area of `nrThreads` away from the dumped
   * `layout` (moved when it is in the way or too small). Called by restore().
   */
  prepareFinal(layout: readonly { start: bigint; end: bigint }[], nrThreads: number): Stub {
    this.assertLive();
    const size = scratchBytes(nrThreads);
    const runs = pageRuns(layout);
    this.relocateScratch(runs, size);
    this.isDone = true; // the restore owns the task from here
    return this.stub;
  }

  /** Kill the stub (a migration that failed or was called off). */
  abort(): void {
    if (this.isDone) return;
    this.isDone = true;
    try {
      this.stub.injector.release();
    } catch {
      // gone already
    }
    killStub(this.stub.pid);
  }

  private assertLive(): void {
    if (this.isDone) throw new TaskError(this.pid, 'The pre-copy skeleton is finished or aborted');
  }

  /** Move the scratch area when it overlaps `runs` (or is smaller than `size`). */
  private relocateScratch(runs: readonly Run[], size = this.stub.scratchBytes): void {
    const stub = this.stub;
    const cur = { start: pageIndex(stub.scratch), end: pageIndex(stub.scratch + stub.scratchBytes) };
    if (size <= stub.scratchBytes && intersect([cur], runs).length === 0) return;
    const inj = stub.injector;
    const used = [...runs, ...this.mapped, cur].map((r) => ({ start: pageAddr(r.start), end: pageAddr(r.end) }));
    const next = findHole(used, size);
    const addr = inj.syscallOrThrow('mmap', [next, size, PROT_RW, MAP_PRIVATE_ANON | MAP_FIXED_NOREPLACE, -1n, 0n]);
    if (addr !== next) throw new TaskError(this.pid, `The scratch area landed at 0x${addr.toString(16)}`);
    inj.writeMemory(next, Buffer.from([0x0f, 0x05, 0xcc, 0xcc]));
    inj.syscallOrThrow('mprotect', [next, PAGE, 5n]);
    const old = stub.scratch;
    const oldBytes = stub.scratchBytes;
    inj.syscallSite = next;
    inj.useScratch(next + PAGE, LEADER_SCRATCH_BYTES);
    inj.syscall(SYSCALLS_X86_64.munmap, [old, oldBytes]);
    stub.scratch = next;
    stub.scratchBytes = size;
  }
}

/** Whether a file VMA of a pre-dump is the one mapped ahead as `f`. */
function isSameFileVma(v: FileVmaLayout, f: FileVmaLayout): boolean {
  return (
    v.start === f.start &&
    v.end === f.end &&
    v.prot === f.prot &&
    v.flags === f.flags &&
    v.pgoff === f.pgoff &&
    v.fdflags === f.fdflags &&
    v.path === f.path
  );
}

function len(r: Run): bigint {
  return BigInt(r.end - r.start) * PAGE;
}
