/**
 * The dirty-memory tracker contract (re-exported by index.ts), and the base every backend builds
 * on: the lock, the dumper's state bytes, and what keep() and end() do to the state files.
 * No kernel interface here; see uffd.ts, soft-dirty.ts and none.ts.
 */

import type { Injector } from '../../inject/injector.js';
import type { TrackerChoice, TrackerKind } from '../../kerndat/tracker.js';
import type { AddrRange, PageRuns } from './ranges.js';
import { removeKept, writeKept, type HolderRecord, type TrackLock } from './state.js';

export type { AddrRange } from './ranges.js';

export interface OpenTrackerOptions {
  pid: number;
  /**
   * An Injector attached to the frozen task's leader (all threads stopped), or a function that
   * freezes the task and gives one: called only when the tracker must act inside the task
   * (creating its userfaultfd), so a caller whose tracker can collect with the task running
   * (DirtyTracker.collectsRunning) need not freeze it for anything else.
   */
  injector: Injector | (() => Injector);
  choice: TrackerChoice;
}

/**
 * Which private pages of one task were written between two points in time, across criu-ts
 * invocations. One tracker per task; its methods must not run concurrently (each is awaited
 * before the next). Every tracker ends with exactly one keep() or end(); after that it is closed.
 */
export interface DirtyTracker {
  readonly kind: TrackerKind;
  /** True when no earlier tracking state existed for this task (this is the first iteration). */
  readonly fresh: boolean;
  /** collect() loses no write with the task running (uffd, none); soft-dirty needs it frozen. */
  readonly collectsRunning: boolean;
  /**
   * With the task frozen: the ranges, within `ranges` (the private memory the dump copies, sorted,
   * disjoint, page-aligned), that may have been written since the previous collect (by any earlier
   * invocation too); re-arms tracking in the same pass. Memory not tracked before (new VMAs, grown
   * parts, moved VMAs, everything on a fresh tracker, everything with 'none') is returned whole.
   * Sorted, disjoint, merged.
   *
   * Pages that are not present at all (never touched, or dropped by MADV_DONTNEED / munmap) may be
   * returned: the caller intersects with the pages it finds present. The uffd backend also allows
   * the task to run during collect (no write is lost: a write either lands in this result or in
   * the next); soft-dirty requires it frozen.
   */
  collect(ranges: readonly AddrRange[]): Promise<AddrRange[]>;
  /**
   * Say that the next collect is the last one (a final dump: end() follows): it then only reads
   * what was written and does not re-arm tracking, which for uffd spares write-protecting every
   * written page again (a walk of the page tables that changes them). keep() is refused after.
   */
  markLastCollect(): void;
  /** Opaque bytes the dumper stores with the tracking state; null when none. Persisted by keep(). */
  state: Uint8Array | null;
  /** Keep tracking for a later invocation (pre-dump): state survives this process's exit. */
  keep(): Promise<void>;
  /** End tracking: the task is left as before tracking began (no registration, no fd, no holder). */
  end(): Promise<void>;
}

/** What every backend is opened with. */
export interface TrackContext {
  pid: number;
  /** /proc/PID/stat field 22 of the task. */
  targetStartTime: number;
  /** The state directory (state.ts). */
  dir: string;
  lock: TrackLock;
}

/** What a backend opened from kept state gets back. */
export interface KeptInput {
  state: Uint8Array | null;
  armed: PageRuns;
  holder: HolderRecord | null;
}

/** The shared half of every backend. */
export abstract class BaseTracker implements DirtyTracker {
  abstract readonly kind: TrackerKind;
  abstract readonly collectsRunning: boolean;
  readonly fresh: boolean;
  state: Uint8Array | null;
  /** Pages tracked since the last collect (or kept), whose writes the next collect reports. */
  protected armed: PageRuns;
  /** True once a baseline exists: a kept state, or one collect done. */
  protected hasBaseline: boolean;
  protected readonly ctx: TrackContext;
  /** markLastCollect was called: collect need not re-arm, keep() is refused. */
  protected isLastCollect = false;
  private isClosed = false;

  protected constructor(ctx: TrackContext, kept: KeptInput | null) {
    this.ctx = ctx;
    this.fresh = kept === null;
    this.state = kept?.state ?? null;
    this.armed = kept?.armed ?? [];
    this.hasBaseline = kept !== null;
  }

  abstract collect(ranges: readonly AddrRange[]): Promise<AddrRange[]>;

  markLastCollect(): void {
    this.isLastCollect = true;
  }

  /** Make the backend's tracking outlive this process; returns the holder, if it has one. */
  protected abstract keepBackend(): Promise<HolderRecord | null>;
  /** Undo the backend's tracking. */
  protected abstract endBackend(): Promise<void>;
  /** Close this process's fds (after keep, or on a failure path). */
  protected abstract closeBackend(): void;

  protected assertOpen(): void {
    if (this.isClosed) throw new Error('Dirty tracker used after keep() or end()');
  }

  async keep(): Promise<void> {
    this.assertOpen();
    // A bug: what the last collect did not re-arm would be lost to the next iteration.
    if (this.isLastCollect) throw new Error('Dirty tracker kept after its last collect');
    this.isClosed = true;
    try {
      const holder = await this.keepBackend();
      writeKept(
        this.ctx.dir,
        {
          kind: this.kind,
          pid: this.ctx.pid,
          targetStartTime: this.ctx.targetStartTime,
          holder,
          armed: this.armed,
          hasState: this.state !== null,
        },
        this.state,
      );
    } catch (err) {
      // Nothing half-kept: without its record a holder is an orphan, which the next open stops.
      await this.endBackend().catch(() => undefined);
      removeKept(this.ctx.dir, this.ctx.pid);
      throw err;
    } finally {
      this.closeBackend();
      this.ctx.lock.release();
    }
  }

  async end(): Promise<void> {
    this.assertOpen();
    this.isClosed = true;
    try {
      await this.endBackend();
    } finally {
      this.closeBackend();
      removeKept(this.ctx.dir, this.ctx.pid);
      this.ctx.lock.release();
    }
  }
}
