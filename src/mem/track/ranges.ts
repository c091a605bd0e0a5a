/**
 * Page-range arithmetic for the dirty-memory trackers: pure functions, no kernel interface.
 *
 * Two representations:
 * - AddrRange { start, end }: byte addresses as bigint, page-aligned, half-open. What the tracker
 *   interface speaks.
 * - PageRuns: a flat number[] [first, end, first, end, …] of page indices (addr / 4096), half-open,
 *   sorted, disjoint, with touching runs merged. What the backends compute with: x86-64 user
 *   addresses are below 2^47, so page indices (< 2^35) are exact in a double and the loops avoid
 *   BigInt arithmetic.
 */

import { PAGE_SIZE } from '../../kernel/constants.js';

/** Page-aligned byte addresses, [start, end). */
export interface AddrRange {
  start: bigint;
  end: bigint;
}

/** [first, end, first, end, …] page indices: sorted, disjoint, merged, half-open. */
export type PageRuns = number[];

const PAGE = BigInt(PAGE_SIZE);

/**
 * Runs from arbitrary page-index pairs (unsorted, overlapping, touching or empty allowed):
 * sorted, merged, empties dropped.
 */
export function normalizeRuns(pairs: readonly number[]): PageRuns {
  // Scans report in address order: one pass then, no sort (a sort's comparator calls cost
  // milliseconds for a few thousand runs in code not yet compiled, as in every one-off command).
  let isSorted = true;
  for (let i = 2; i + 1 < pairs.length && isSorted; i += 2) isSorted = (pairs[i] as number) >= (pairs[i - 2] as number);
  if (isSorted) {
    const out: PageRuns = [];
    for (let i = 0; i + 1 < pairs.length; i += 2) appendRun(out, pairs[i] as number, pairs[i + 1] as number);
    return out;
  }
  const idx: number[] = [];
  for (let i = 0; i + 1 < pairs.length; i += 2) if ((pairs[i + 1] as number) > (pairs[i] as number)) idx.push(i);
  idx.sort((a, b) => (pairs[a] as number) - (pairs[b] as number));
  const out: PageRuns = [];
  for (const i of idx) appendRun(out, pairs[i] as number, pairs[i + 1] as number);
  return out;
}

/**
 * Append [first, end) to runs whose last run starts at or before `first`: merges with the last
 * run when they touch or overlap.
 */
export function appendRun(runs: PageRuns, first: number, end: number): void {
  if (end <= first) return;
  const n = runs.length;
  if (n >= 2 && first <= (runs[n - 1] as number)) {
    if (end > (runs[n - 1] as number)) runs[n - 1] = end;
  } else runs.push(first, end);
}

/** a ∪ b. */
export function unionRuns(a: PageRuns, b: PageRuns): PageRuns {
  const out: PageRuns = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const takeA = j >= b.length || (i < a.length && (a[i] as number) <= (b[j] as number));
    if (takeA) {
      appendRun(out, a[i] as number, a[i + 1] as number);
      i += 2;
    } else {
      appendRun(out, b[j] as number, b[j + 1] as number);
      j += 2;
    }
  }
  return out;
}

/** a ∩ b. */
export function intersectRuns(a: PageRuns, b: PageRuns): PageRuns {
  const out: PageRuns = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const lo = Math.max(a[i] as number, b[j] as number);
    const hi = Math.min(a[i + 1] as number, b[j + 1] as number);
    if (hi > lo) appendRun(out, lo, hi);
    if ((a[i + 1] as number) < (b[j + 1] as number)) i += 2;
    else j += 2;
  }
  return out;
}

/** a − b. */
export function subtractRuns(a: PageRuns, b: PageRuns): PageRuns {
  const out: PageRuns = [];
  let j = 0;
  for (let i = 0; i < a.length; i += 2) {
    let lo = a[i] as number;
    const hi = a[i + 1] as number;
    while (j < b.length && (b[j + 1] as number) <= lo) j += 2;
    let k = j;
    while (k < b.length && (b[k] as number) < hi) {
      if ((b[k] as number) > lo) appendRun(out, lo, b[k] as number);
      lo = Math.max(lo, b[k + 1] as number);
      if (lo >= hi) break;
      k += 2;
    }
    if (lo < hi) appendRun(out, lo, hi);
  }
  return out;
}

/** Total pages in runs. */
export function countPages(runs: PageRuns): number {
  let n = 0;
  for (let i = 0; i < runs.length; i += 2) n += (runs[i + 1] as number) - (runs[i] as number);
  return n;
}

/** True when page `page` lies in runs (binary search). */
export function runsContain(runs: PageRuns, page: number): boolean {
  let lo = 0;
  let hi = runs.length / 2;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((runs[2 * mid + 1] as number) <= page) lo = mid + 1;
    else hi = mid;
  }
  return lo < runs.length / 2 && (runs[2 * lo] as number) <= page;
}

/**
 * Address ranges to runs. Each range must be page-aligned with start <= end (RangeError
 * otherwise: a caller bug); order and overlaps do not matter.
 */
export function runsFromRanges(ranges: readonly AddrRange[]): PageRuns {
  const pairs: number[] = [];
  for (const r of ranges) {
    if (r.start % PAGE !== 0n || r.end % PAGE !== 0n || r.end < r.start)
      throw new RangeError(`Not a page-aligned range: 0x${r.start.toString(16)}-0x${r.end.toString(16)}`);
    pairs.push(Number(r.start / PAGE), Number(r.end / PAGE));
  }
  return normalizeRuns(pairs);
}

/** Runs to address ranges. */
export function rangesFromRuns(runs: PageRuns): AddrRange[] {
  const out: AddrRange[] = [];
  for (let i = 0; i < runs.length; i += 2)
    out.push({ start: BigInt((runs[i] as number) * PAGE_SIZE), end: BigInt((runs[i + 1] as number) * PAGE_SIZE) });
  return out;
}

/** Runs as hex address pairs, for the state file: ["7f00…-7f00…", …]. */
export function formatRuns(runs: PageRuns): string[] {
  return rangesFromRuns(runs).map((r) => `${r.start.toString(16)}-${r.end.toString(16)}`);
}

/** The inverse of formatRuns; null when an entry is malformed. */
export function parseRuns(text: readonly unknown[]): PageRuns | null {
  const ranges: AddrRange[] = [];
  for (const item of text) {
    if (typeof item !== 'string') return null;
    const m = /^([0-9a-f]{1,16})-([0-9a-f]{1,16})$/.exec(item);
    if (m === null) return null;
    const start = BigInt(`0x${m[1] as string}`);
    const end = BigInt(`0x${m[2] as string}`);
    if (start % PAGE !== 0n || end % PAGE !== 0n || end < start) return null;
    ranges.push({ start, end });
  }
  return runsFromRanges(ranges);
}
