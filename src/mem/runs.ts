/**
 * Sets of pages as sorted, disjoint runs of page indexes [start, end): the arithmetic behind
 * incremental dumps (which present pages changed, which are already in the image chain) and
 * dedup (which pages of a parent image are still referenced).
 *
 * Page indexes are plain numbers (vaddr / 4096 < 2^47 / 4096 fits a double exactly).
 */

import { PAGE_SIZE } from '../images/index.js';

const PAGE = BigInt(PAGE_SIZE);

export interface Run {
  start: number;
  end: number;
}

// Through doubles rather than BigInt division and multiplication: exact below 2^53 (user addresses
// are below 2^47), and one BigInt made per address instead of two.
export function pageIndex(addr: bigint): number {
  return Math.floor(Number(addr) / PAGE_SIZE);
}

export function pageAddr(index: number): bigint {
  return BigInt(index * PAGE_SIZE);
}

/** The pages of byte ranges (page-aligned), as normalized runs. */
export function pageRuns(ranges: readonly { start: bigint; end: bigint }[]): Run[] {
  return normalize(ranges.map((r) => ({ start: pageIndex(r.start), end: pageIndex(r.end) })));
}

/** Sort, and merge runs that overlap or touch. */
export function normalize(runs: readonly Run[]): Run[] {
  const sorted = runs.filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  const out: Run[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else out.push({ start: r.start, end: r.end });
  }
  return out;
}

/** a ∩ b, both normalized. */
export function intersect(a: readonly Run[], b: readonly Run[]): Run[] {
  const out: Run[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = a[i] as Run;
    const y = b[j] as Run;
    const start = Math.max(x.start, y.start);
    const end = Math.min(x.end, y.end);
    if (end > start) out.push({ start, end });
    if (x.end < y.end) i++;
    else j++;
  }
  return out;
}

/** a \ b, both normalized. */
export function subtract(a: readonly Run[], b: readonly Run[]): Run[] {
  const out: Run[] = [];
  let j = 0;
  for (const x of a) {
    let start = x.start;
    while (j < b.length && (b[j] as Run).end <= start) j++;
    let k = j;
    while (start < x.end) {
      const y = b[k];
      if (y === undefined || y.start >= x.end) {
        out.push({ start, end: x.end });
        break;
      }
      if (y.start > start) out.push({ start, end: y.start });
      start = Math.max(start, y.end);
      k++;
    }
  }
  return out;
}

export function countPages(runs: readonly Run[]): number {
  return runs.reduce((n, r) => n + r.end - r.start, 0);
}

/** The remote (address, length) pairs of process_vm_readv/writev (and memReadv) for runs of whole pages. */
export function remoteIov(runs: readonly { vaddr: bigint; nrPages: number }[]): BigUint64Array {
  const iov = new BigUint64Array(runs.length * 2);
  runs.forEach((r, i) => {
    iov[2 * i] = r.vaddr;
    iov[2 * i + 1] = BigInt(r.nrPages) * PAGE;
  });
  return iov;
}
