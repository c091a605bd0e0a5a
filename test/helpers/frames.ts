/**
 * Page frames of other processes, from /proc/PID/pagemap (root sees them): what memory two
 * processes share (copy-on-write, say); and cr_cow (test/fixtures/cr_cow.c), whose parent and
 * child share most of their memory so.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import type { Test } from 'tap';
import { signalTask, startWorkload, type Workload } from './cr.js';

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

/**
 * Start cr_cow in `dir`: its two pids, where its memory is, how many pages, and how many of them
 * P and C share (checked); the teardown kills both.
 */
export async function startCow(
  t: Test,
  dir: string,
): Promise<{ w: Workload; p: number; c: number; at: bigint; pages: number; expected: number }> {
  const w = await startWorkload('cr_cow', dir);
  const m = /^COW P=(\d+) C=(\d+) AT=([0-9a-f]+) PAGES=(\d+)$/m.exec(w.report());
  if (m === null) throw new Error(`cr_cow wrote no COW line: ${w.report()}`);
  const [p, c, pages] = [Number(m[1]), Number(m[2]), Number(m[4])];
  t.teardown(() => [p, c].forEach((pid) => signalTask(pid, 'SIGKILL')));
  const expected = pages - pages / 8; // C rewrote one page in eight
  const at = BigInt(`0x${m[3]}`);
  t.equal(sharedPages(p, c, at, pages), expected, `P and C share ${expected} pages`);
  return { w, p, c, at, pages, expected };
}
