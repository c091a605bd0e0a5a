/**
 * The entries both `dump` and `pre-dump` write: the inventory (written last, it makes a directory a
 * complete (pre-)dump) and stats-dump's dump_stats_entry; and the clock their times come from.
 *
 * Image kinds: INVENTORY, STATS.
 */

import type { ImageEntry } from '../images/index.js';

/** Microseconds of a monotonic clock. */
export function nowUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

/**
 * The inventory; `rootIds` is criu's own task_kobj_ids_entry (ids.ts). `isTcpClose`: dumped with
 * --tcp-close, which the restore then needs too (as in CRIU).
 */
/** A new dump's run id (the inventory's dump_criu_run_id): unique on this host. */
export function newRunId(): string {
  return `criu-ts-${process.pid}-${Date.now()}-${Math.floor(Math.random() * 1e9)}`;
}

export function inventoryEntry(rootIds: ImageEntry, isTcpClose = false, runId = newRunId()): ImageEntry {
  return {
    ...(isTcpClose ? { tcp_close: true } : {}),
    img_version: 2,
    fdinfo_per_id: true,
    root_ids: rootIds,
    ns_per_id: true,
    lsmtype: 0,
    dump_criu_run_id: runId,
  };
}

/** What stats-dump says of a dump or pre-dump (times in µs). */
export interface DumpStats {
  freezingTimeUs: number;
  frozenTimeUs: number;
  memdumpTimeUs: number;
  memwriteTimeUs: number;
  pagesScanned: number;
  pagesSkippedParent: number;
  pagesWritten: number;
}

/** Stats with nothing counted yet. */
export function noDumpStats(): DumpStats {
  return {
    freezingTimeUs: 0,
    frozenTimeUs: 0,
    memdumpTimeUs: 0,
    memwriteTimeUs: 0,
    pagesScanned: 0,
    pagesSkippedParent: 0,
    pagesWritten: 0,
  };
}

export function dumpStatsEntry(s: DumpStats): ImageEntry {
  return {
    freezing_time: s.freezingTimeUs,
    frozen_time: s.frozenTimeUs,
    memdump_time: s.memdumpTimeUs,
    memwrite_time: s.memwriteTimeUs,
    pages_scanned: s.pagesScanned,
    pages_skipped_parent: s.pagesSkippedParent,
    pages_written: s.pagesWritten,
    pages_lazy: 0,
  };
}
