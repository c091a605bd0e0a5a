/**
 * Restoring while the pages still arrive: the destination side of a live migration.
 *
 * A Skeleton is the restore stub (stub.ts), started with the migrating task's PID as soon as the
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
 * A process tree gets a skeleton of the same shape: the root's stub is started first, and each
 * other process is forked from its parent's stub (tree.ts forkStub) before any memory is mapped,
 * in its session and group, as the final restore would make it; each then gets its own memory
 * as above. The final restore takes each process's stub from the skeleton instead of forking it.
 * A tree whose shape changed since the skeleton was made (a fork, an exit, a setsid) cannot use
 * it: the migration makes a new one from the next pre-dump (which reads every pre-copied page
 * again), and the final restore one from scratch.
 *
 * The VMA ranges and the tree's shape come from the pre-dump's caller (the migration controller
 * learns them from the source), not from the images: a pre-dump writes only what CRIU's does.
 */

import path from 'node:path';
import { TaskError } from '../errors.js';
import type { Injector } from '../inject/injector.js';
import { log } from '../log.js';
import { PageChain, clipSources } from '../mem/page-chain.js';
import { fillPages } from '../mem/fill-pages.js';
import { intersect, normalize, pageAddr, pageIndex, subtract, type Run } from '../mem/runs.js';
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
import type { ProcessLayout } from '../dump/pre-dump.js';

const PAGE = 4096n;
const MAP_PRIVATE_ANON = 0x22n;
const MAP_FIXED_NOREPLACE = 0x100000n;
const PROT_RW = 3n;

export interface SkeletonStats {
  pagesFilled: number;
  pagesMapped: number;
}

/** Where a process sits in a tree: what a skeleton must match to be restored into. */
export type TreePlace = Pick<ProcessLayout, 'pid' | 'ppid' | 'pgid' | 'sid'>;

/** The skeleton of a process tree (of one process, often): a SkeletonTask per process. */
export class Skeleton {
  private isDone = false;

  private constructor(
    /** Parents first, as made. */
    private readonly tasks: readonly { place: TreePlace; task: SkeletonTask }[],
  ) {}

  /**
   * Start the root's stub as its PID (free here), then fork each other process from its parent's
   * stub, parents first, in its session and group. With isSibling the root is a child of this
   * process's parent (who reaps it), as `criu restore -S` makes it. On failure nothing is left.
   */
  static create(processes: readonly ProcessLayout[], options: { isSibling?: boolean } = {}): Skeleton {
    const [root] = processes;
    if (root === undefined) throw new TaskError(0, 'A skeleton needs a process');
    const layout = processes.flatMap((p) => p.anonVmas);
    const tasks: { place: TreePlace; task: SkeletonTask }[] = [];
    // A skeleton made again (the tree changed) waits for the last one's processes to be reaped.
    for (const p of processes) waitForFreePid(p.pid);
    try {
      for (const p of processes) {
        const place = { pid: p.pid, ppid: p.ppid, pgid: p.pgid, sid: p.sid };
        const parent = tasks.find((t) => t.place.pid === p.ppid)?.task;
        if (p !== root && parent === undefined)
          throw new TaskError(p.pid, `The parent of ${p.pid} (${p.ppid}) comes after it, or not at all`);
        const stub = parent === undefined ? startStub(p.pid, layout, 1, options) : forkStub(parent.stub, p.pid);
        tasks.push({ place, task: new SkeletonTask(p.pid, stub) });
        leadAsDumped(stub, place);
      }
      joinGroups(tasks.map(({ place, task }) => ({ stub: task.stub, pstree: place })));
    } catch (err) {
      for (const { task } of tasks.reverse()) task.abort();
      throw err;
    }
    return new Skeleton(tasks);
  }

  /** The root's PID. */
  get pid(): number {
    return (this.tasks[0] as { task: SkeletonTask }).task.pid;
  }

  /** Whether `places` (any order) is the tree this skeleton has: the same processes, parents, groups, sessions. */
  fits(places: readonly TreePlace[]): boolean {
    if (places.length !== this.tasks.length) return false;
    return places.every((p) => {
      const mine = this.tasks.find((t) => t.place.pid === p.pid)?.place;
      return mine !== undefined && mine.ppid === p.ppid && mine.pgid === p.pgid && mine.sid === p.sid;
    });
  }

  /** The skeleton of process `pid`. */
  task(pid: number): SkeletonTask | undefined {
    return this.tasks.find((t) => t.place.pid === pid)?.task;
  }

  /** Bring every process's memory to pre-dump `dir` (SkeletonTask.apply): `processes` must fit. */
  async apply(dir: string, processes: readonly ProcessLayout[]): Promise<SkeletonStats> {
    if (this.isDone) throw new TaskError(this.pid, 'The pre-copy skeleton is finished or aborted');
    if (!this.fits(processes)) throw new TaskError(this.pid, `The tree of ${this.pid} is not the skeleton's`);
    const sum: SkeletonStats = { pagesFilled: 0, pagesMapped: 0 };
    for (const p of processes) {
      const got = await (this.task(p.pid) as SkeletonTask).apply(dir, p.anonVmas);
      sum.pagesFilled += got.pagesFilled;
      sum.pagesMapped += got.pagesMapped;
    }
    return sum;
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

  /**
   * Bring the memory to pre-dump `dir` (its pagemap-<pid>.img and chain): `anonVmas` are the
   * task's private anonymous VMAs at that pre-dump. Ranges gone are unmapped, new ones mapped,
   * and the pages this iteration holds anew (plus everything of newly mapped ranges) read in.
   */
  async apply(dir: string, anonVmas: readonly { start: bigint; end: bigint }[]): Promise<SkeletonStats> {
    this.assertLive();
    const inj = this.stub.injector;
    const want = normalize(anonVmas.map((v) => ({ start: pageIndex(v.start), end: pageIndex(v.end) })));
    this.relocateScratch(want);
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
    this.mapped = want;
    const chain = await PageChain.open(dir, `pagemap-${this.pid}.img`);
    const present = await chain.presentRuns();
    // Kept ranges: only the new contents; added ranges: all their pages, wherever in the chain.
    const wanted = normalize([...intersect(present, kept), ...added]);
    const sources = clipSources(await chain.sources(), wanted);
    const filled = await fillPages(this.pid, sources);
    log().info(`Pre-copy ${path.basename(dir)}: ${filled} pages read into task ${this.pid}`);
    return { pagesFilled: filled, pagesMapped: want.reduce((n, r) => n + r.end - r.start, 0) };
  }

  /**
   * Make room for the final restore: its scratch area of `nrThreads` away from the dumped
   * `layout` (moved when it is in the way or too small). Called by restore().
   */
  prepareFinal(layout: readonly { start: bigint; end: bigint }[], nrThreads: number): Stub {
    this.assertLive();
    const size = scratchBytes(nrThreads);
    const runs = normalize(layout.map((v) => ({ start: pageIndex(v.start), end: pageIndex(v.end) })));
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
    killStub(this.pid);
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

function len(r: Run): bigint {
  return BigInt(r.end - r.start) * PAGE;
}
