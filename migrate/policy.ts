/**
 * When to stop pre-copying and freeze: the convergence policy of a live migration.
 *
 * After each pre-dump iteration the controller knows how many bytes it sent and how long the
 * iteration took. The bytes sent by iteration k (k ≥ 2) are what the task dirtied while iteration
 * k-1 ran: the final dump will have about as much to send, at the rate the last iteration moved
 * its pages (not the first's: a few scattered dirty pages move at a fraction of the bulk rate, and
 * each iteration, as the final phase, pays fixed costs; taking the first iteration's rate froze a
 * 16 MB dirty set expecting 21 ms). Iterations do not stop the task (pre-dump.ts), so going on
 * costs bytes, not downtime. Stop when:
 *   - that estimate fits half the downtime target (the remaining dirty set fits bandwidth × target
 *     / 2: the other half is for what the final phase costs whatever the dirty set, measured at
 *     about 100-250 ms here: freezing, the other images, restoring the task's state);
 *   - the dirty set no longer shrinks (the task dirties as fast as we copy: more iterations only
 *     cost bytes);
 *   - the iteration limit or the time limit is reached.
 * At least two iterations run: the first one sends everything and says nothing of the dirty rate.
 * Pure logic, no I/O.
 */

export interface PolicyOptions {
  /** Downtime aimed at for the final dump's transfer, in ms (default 100). */
  downtimeTargetMs: number;
  /** Pre-dump iterations at most (default 8). */
  maxIterations: number;
  /** Time for the pre-copy phase at most, in ms (default 60 000). */
  maxPreCopyMs: number;
  /** An iteration must send at most this fraction of the previous one to count as shrinking (0.9). */
  shrinkRatio: number;
}

export const DEFAULT_POLICY: PolicyOptions = {
  downtimeTargetMs: 100,
  maxIterations: 8,
  maxPreCopyMs: 60_000,
  shrinkRatio: 0.9,
};

export interface IterationRecord {
  /** Bytes of page data sent. */
  bytes: number;
  /** Wall time of the iteration, ms (pre-dump and page transfer). */
  ms: number;
}

export interface Decision {
  isStop: boolean;
  reason: string;
  /** Bytes per second the final transfer is expected at (0 when unknown). */
  bandwidth: number;
  /** The final transfer's expected time, ms (Infinity when unknown). */
  estimatedMs: number;
}

/** Decide after the iterations in `history` (oldest first), `elapsedMs` into the pre-copy. */
export function decide(history: readonly IterationRecord[], elapsedMs: number, opts: PolicyOptions): Decision {
  const totalBytes = history.reduce((n, i) => n + i.bytes, 0);
  const totalMs = history.reduce((n, i) => n + i.ms, 0);
  const last = history[history.length - 1];
  const prev = history[history.length - 2];
  const overall = totalMs > 0 ? (totalBytes / totalMs) * 1000 : 0;
  const lastRate = last !== undefined && last.ms > 0 ? (last.bytes / last.ms) * 1000 : 0;
  const bandwidth = history.length >= 2 && lastRate > 0 ? Math.min(overall, lastRate) : overall;
  const estimatedMs = last === undefined || bandwidth === 0 ? Infinity : (last.bytes / bandwidth) * 1000;
  const out = (isStop: boolean, reason: string): Decision => ({ isStop, reason, bandwidth, estimatedMs });
  if (history.length >= opts.maxIterations) return out(true, `reached the limit of ${opts.maxIterations} iterations`);
  if (elapsedMs >= opts.maxPreCopyMs) return out(true, `reached the pre-copy time limit (${opts.maxPreCopyMs} ms)`);
  if (last === undefined || prev === undefined) return out(false, 'the first iteration copies everything');
  if (estimatedMs <= opts.downtimeTargetMs / 2)
    return out(true, `the dirty set (${last.bytes} bytes) fits the downtime target of ${opts.downtimeTargetMs} ms`);
  if (history.length >= 3 && last.bytes > prev.bytes * opts.shrinkRatio)
    return out(true, 'the dirty set no longer shrinks (the task dirties memory about as fast as it is copied)');
  return out(false, 'still converging');
}
