/**
 * uffd-wp pte markers, as a page dumper sees them.
 *
 * While the uffd tracker is armed (UFFD_FEATURE_WP_UNPOPULATED), every empty pte of a registered
 * VMA holds a marker after a scan. /proc/PID/pagemap shows a marker as a swap entry: bit 62
 * (swapped), bit 57 (uffd-wp), swap type 31 (bits 0-4), offset 1 (PTE_MARKER_UFFD_WP); and
 * PAGEMAP_SCAN puts it in PAGE_IS_SWAPPED. It holds no data: a dumper that copies "present or
 * swapped" pages must leave markers out, or it copies every never-touched page of the task as a
 * page of zeros. (Swap type 31 is the highest; real swap devices get the lowest free types, and
 * the kernel's special entries take the top ones.)
 *
 * Kernel interfaces: /proc/PID/pagemap read(2).
 */

import { PAGE_SIZE } from '../../kernel/constants.js';
import { readPagemapEntries } from '../../proc/pagemap.js';
import { appendRun, rangesFromRuns, type AddrRange, type PageRuns } from './ranges.js';

const PM_PRESENT_BIT = 1n << 63n;
const PM_SWAP_BIT = 1n << 62n;
const PM_UFFD_WP_BIT = 1n << 57n;
const SWP_TYPE_MASK = 0x1fn;
const SWP_PTE_MARKER_TYPE = 0x1fn;
const CHUNK_PAGES = 64 * 1024;

/** True when a pagemap entry is a uffd-wp pte marker (no page behind it), not a swapped page. */
export function isUffdWpMarker(entry: bigint): boolean {
  return (
    (entry & PM_PRESENT_BIT) === 0n &&
    (entry & PM_SWAP_BIT) !== 0n &&
    (entry & PM_UFFD_WP_BIT) !== 0n &&
    (entry & SWP_TYPE_MASK) === SWP_PTE_MARKER_TYPE
  );
}

/**
 * The marker pages in [start, end) (page-aligned) of the task whose /proc/PID/pagemap is open as
 * `pagemapFd`: what to subtract from "swapped" pages before copying. Reads 8 bytes per page, so
 * call it on the PAGE_IS_SWAPPED-but-not-present regions only.
 */
export function findUffdWpMarkers(pagemapFd: number, start: bigint, end: bigint): AddrRange[] {
  const page = BigInt(PAGE_SIZE);
  const first = Number(start / page);
  const last = Number(end / page);
  const runs: PageRuns = [];
  const entries = new BigUint64Array(Math.min(CHUNK_PAGES, Math.max(last - first, 0)));
  for (let p = first; p < last; p += CHUNK_PAGES) {
    const n = Math.min(CHUNK_PAGES, last - p);
    readPagemapEntries(pagemapFd, p, n, entries);
    for (let i = 0; i < n; i++) if (isUffdWpMarker(entries[i] as bigint)) appendRun(runs, p + i, p + i + 1);
  }
  return rangesFromRuns(runs);
}
