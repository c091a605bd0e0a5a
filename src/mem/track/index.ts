/**
 * Dirty-memory tracking for pre-dump and incremental dump: which private pages of a task were
 * written since the previous (pre-)dump, across separate criu-ts invocations.
 *
 * Backends (chosen by kerndat's chooseTracker, see kerndat/tracker.ts for the order and why):
 *   uffd        userfaultfd WP_ASYNC + PAGEMAP_SCAN (uffd.ts); a holder process keeps the
 *               userfaultfd between invocations (holder.ts)
 *   soft-dirty  clear_refs "4" + pagemap bit 55 (soft-dirty.ts)
 *   none        every collect returns everything (none.ts)
 *
 * Life of the tracking of one task, pre-dump → pre-dump → dump:
 *   1st pre-dump  openTracker (fresh) → collect (all whole; arms) → copy → keep()
 *   2nd pre-dump  openTracker (not fresh) → collect (written since) → copy → keep()
 *   dump          openTracker (not fresh) → collect → copy → end()
 * State between invocations lives in /run/criu-ts/track/pidns-N (state.ts); a lock keeps two criu-ts
 * processes off one task. If criu-ts dies mid-way, the task runs on unharmed: before keep() the
 * userfaultfd dies with criu-ts (the kernel unregisters everything); after keep() the holder
 * tracks on, and exits with the task, or at the next end() / endTracking().
 */

import { readdirSync } from 'node:fs';
import { TaskError } from '../../errors.js';
import { chooseTracker, describeTracker, type TrackerKind } from '../../kerndat/index.js';
import { log } from '../../log.js';
import { findHolders, isHolderAlive, startTimeOf, stopHolder } from './holder.js';
import { NoneTracker } from './none.js';
import { SoftDirtyTracker } from './soft-dirty.js';
import { lockTracking, readKept, removeKept, trackDir, type KeptRecord, type TrackLock } from './state.js';
import type { DirtyTracker, KeptInput, OpenTrackerOptions, TrackContext } from './types.js';
import { UffdTracker } from './uffd.js';

export type { AddrRange, DirtyTracker, OpenTrackerOptions } from './types.js';
export { findUffdWpMarkers, isUffdWpMarker } from './markers.js';

/** Why the record kept for `pid` cannot be continued, or null when it can. */
function staleReason(rec: KeptRecord, targetStartTime: number | null): string | null {
  if (targetStartTime === null) return 'the task is gone';
  if (rec.targetStartTime !== targetStartTime) return 'the pid now belongs to another process';
  if (rec.kind === 'uffd' && (rec.holder === null || !isHolderAlive(rec.holder, rec.pid)))
    return 'its holder process is gone';
  return null;
}

/** Stop every holder of `pid` and remove its files. */
async function dropKept(dir: string, pid: number, rec: KeptRecord | null): Promise<void> {
  if (rec?.holder != null) await stopHolder(rec.holder.pid, pid);
  for (const orphan of findHolders(pid)) await stopHolder(orphan, pid);
  removeKept(dir, pid);
}

/**
 * Start or continue tracking the dirty memory of task `pid` (frozen by the caller). Throws
 * UnsupportedError when the forced tracker is not available here, TaskError when the task is gone
 * or another criu-ts process tracks it.
 */
export async function openTracker(opts: OpenTrackerOptions): Promise<DirtyTracker> {
  const { pid } = opts;
  const kind = chooseTracker(opts.choice);
  const targetStartTime = startTimeOf(pid);
  if (targetStartTime === null) throw new TaskError(pid, `Cannot track memory of task ${pid}: no such process`);
  const lock = await lockTracking(pid);
  log().debug(`Dirty memory tracker: ${kind} chosen, task ${pid} locked`);
  try {
    const dir = trackDir();
    const ctx: TrackContext = { pid, targetStartTime, dir, lock };
    let kept: KeptInput | null = null;
    const found = readKept(dir, pid);
    if (typeof found === 'string') {
      log().warn(`Dirty memory tracker: dropping unreadable tracking state: ${found}`);
      await dropKept(dir, pid, null);
    } else if (found !== null) {
      const stale = staleReason(found.rec, targetStartTime);
      if (stale === null && found.rec.kind !== kind) {
        log().info(`Dirty memory tracker: task ${pid} was tracked by ${found.rec.kind}, now ${kind}: starting afresh`);
        await dropKept(dir, pid, found.rec);
      } else if (stale !== null) {
        log().info(`Dirty memory tracker: tracking state of task ${pid} is stale (${stale}): starting afresh`);
        await dropKept(dir, pid, found.rec);
      } else kept = { state: found.state, armed: found.rec.armed, holder: found.rec.holder };
    }
    let tracker: DirtyTracker;
    switch (kind) {
      case 'uffd':
        tracker = await UffdTracker.open(ctx, opts.injector, kept);
        break;
      case 'soft-dirty':
        tracker = SoftDirtyTracker.open(ctx, kept);
        break;
      case 'none':
        tracker = new NoneTracker(ctx, kept);
        break;
    }
    const how = tracker.fresh ? 'starting afresh' : 'continuing the previous tracking';
    log().info(`Dirty memory tracker: ${describeTracker(kind)} for task ${pid}, ${how}`);
    if (kind === 'none') log().info('Dirty memory tracker: none, so every pre-dump copies all present pages');
    return tracker;
  } catch (err) {
    lock.release();
    throw err;
  }
}

/** End any tracking kept for `pid` (no-op when none); safe to call with the task running. */
export async function endTracking(pid: number): Promise<void> {
  const lock = await lockTracking(pid);
  try {
    const dir = trackDir();
    const found = readKept(dir, pid);
    await dropKept(dir, pid, found !== null && typeof found !== 'string' ? found.rec : null);
  } finally {
    lock.release();
  }
}

/**
 * Remove the tracking state kept for tasks that are gone (or whose pid another process has now),
 * and stop their holders: a pre-dumped tree's short-lived children leave many. A task another
 * criu process is working on is left alone. Failures are logged, not thrown.
 */
export async function sweepStaleTracking(): Promise<number> {
  const dir = trackDir();
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return 0; // nothing kept yet
  }
  let removed = 0;
  for (const name of names) {
    const m = /^(\d+)\.json$/.exec(name);
    if (m === null) continue;
    const pid = Number(m[1]);
    const found = readKept(dir, pid);
    if (found === null || typeof found === 'string') continue;
    const startTime = startTimeOf(pid);
    if (startTime !== null && startTime === found.rec.targetStartTime) continue;
    let lock: TrackLock;
    try {
      lock = await lockTracking(pid);
    } catch {
      continue; // another criu process holds it
    }
    try {
      await dropKept(dir, pid, found.rec);
      removed++;
    } catch (err) {
      log().warn(`Dirty memory tracker: cannot remove the stale tracking state of ${pid}: ${String(err)}`);
    } finally {
      lock.release();
    }
  }
  if (removed > 0) log().debug(`Dirty memory tracker: removed the state of ${removed} task(s) that are gone`);
  return removed;
}

/** Whether tracking state is kept for pid (and can be continued), and its kind. */
export function trackingKept(pid: number): { kind: TrackerKind } | null {
  const found = readKept(trackDir(), pid);
  if (found === null || typeof found === 'string') return null;
  return staleReason(found.rec, startTimeOf(pid)) === null ? { kind: found.rec.kind } : null;
}
