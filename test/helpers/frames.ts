/**
 * Page frames of other processes, from /proc/PID/pagemap (root sees them): what memory two
 * processes share (copy-on-write, say).
 */
import { closeSync, openSync, readSync } from 'node:fs';

const PFN_MASK = (1n << 55n) - 1n;
const PRESENT = 1n << 63n;

/** The page frames of `nrPages` pages of `pid` from `addr` (0 for a page not present). */
export function pageFrames(pid: number, addr: bigint, nrPages: number): bigint[] {
  const fd = openSync(`/proc/${pid}/pagemap`, 'r');
  try {
    const buf = Buffer.alloc(nrPages * 8);
    const got = readSync(fd, buf, 0, buf.length, Number((addr / 4096n) * 8n));
    if (got !== buf.length) throw new Error(`pagemap of ${pid}: ${got} of ${buf.length} bytes`);
    return Array.from({ length: nrPages }, (_, i) => {
      const e = buf.readBigUInt64LE(i * 8);
      return (e & PRESENT) === 0n ? 0n : e & PFN_MASK;
    });
  } finally {
    closeSync(fd);
  }
}

/** How many of the pages both processes map to the same frame. */
export function sharedPages(a: number, b: number, addr: bigint, nrPages: number): number {
  const fb = pageFrames(b, addr, nrPages);
  return pageFrames(a, addr, nrPages).filter((f, i) => f !== 0n && f === fb[i]).length;
}
