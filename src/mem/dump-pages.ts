/**
 * Copying a stopped task's memory into `pagemap-<pid>.img` + `pages-<id>.img`.
 *
 * Which pages: /proc/PID/pagemap (8 bytes per page: bit 63 present, 62 swapped, 61 file page or
 * shared anonymous) tells, per VMA policy (src/dump/vma.ts): every present or swapped page of
 * private anonymous memory; only the copied-on-write pages of private file mappings.
 * How: process_vm_readv in large batches (up to IOV_MAX runs, `CHUNK_BYTES` at a time) on the
 * thread pool, double-buffered against the writes of the previous batch, so copying and writing
 * overlap and criu's memory use stays bounded whatever the size of the task.
 *
 * The pages file is written under a temporary name and renamed when complete.
 */

import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { TaskError } from '../errors.js';
import { PAGE_SIZE, PE_PRESENT, type ImageEntry } from '../images/index.js';
import * as sys from '../sys/native.js';
import type { PagesPolicy } from '../dump/vma.js';

const PAGE = BigInt(PAGE_SIZE);
const CHUNK_BYTES = 8 << 20;
const IOV_MAX = 1024;
const PM_PRESENT = 1n << 63n;
const PM_SWAP = 1n << 62n;
const PM_FILE = 1n << 61n;
const PAGEMAP_BATCH_PAGES = 1 << 18; // 2 MiB of pagemap per pread

export interface DumpRange {
  start: bigint;
  end: bigint;
  pages: PagesPolicy;
}

/** A run of pages to copy: [vaddr, vaddr + nrPages * 4096). */
export interface PageRun {
  vaddr: bigint;
  nrPages: number;
}

export interface PagesDumpResult {
  /** pagemap_entry list (without the head), in address order. */
  entries: ImageEntry[];
  pagesScanned: number;
  pagesWritten: number;
}

/** The runs of pages to dump in the given ranges, from the task's pagemap. */
export function findPageRuns(pid: number, ranges: readonly DumpRange[]): { runs: PageRun[]; pagesScanned: number } {
  const fd = sys.open(`/proc/${pid}/pagemap`, 0, 0);
  const runs: PageRun[] = [];
  let scanned = 0;
  try {
    for (const r of ranges) {
      if (r.pages === 'none') continue;
      const needsAnon = r.pages === 'cow';
      for (let page = r.start / PAGE; page < r.end / PAGE;) {
        const count = Math.min(PAGEMAP_BATCH_PAGES, Number(r.end / PAGE - page));
        const buf = Buffer.alloc(count * 8);
        const got = sys.pread(fd, buf, 0, buf.length, page * 8n);
        const words = new BigUint64Array(buf.buffer, buf.byteOffset, Math.floor(got / 8));
        scanned += words.length;
        for (let i = 0; i < words.length; i++) {
          const w = words[i] as bigint;
          const take = (w & PM_SWAP) !== 0n || ((w & PM_PRESENT) !== 0n && (!needsAnon || (w & PM_FILE) === 0n));
          if (!take) continue;
          const vaddr = (page + BigInt(i)) * PAGE;
          const last = runs[runs.length - 1];
          if (last !== undefined && last.vaddr + BigInt(last.nrPages) * PAGE === vaddr) last.nrPages++;
          else runs.push({ vaddr, nrPages: 1 });
        }
        if (words.length < count) break; // the range ended early (unmapped meanwhile)
        page += BigInt(count);
      }
    }
  } finally {
    sys.close(fd);
  }
  return { runs, pagesScanned: scanned };
}

/** Split runs into batches of at most CHUNK_BYTES and IOV_MAX runs (runs may be cut). */
function* batches(runs: readonly PageRun[]): Generator<PageRun[]> {
  let batch: PageRun[] = [];
  let bytes = 0;
  for (const run of runs) {
    let { vaddr, nrPages } = run;
    while (nrPages > 0) {
      const room = Math.floor((CHUNK_BYTES - bytes) / PAGE_SIZE);
      const take = Math.min(room, nrPages);
      batch.push({ vaddr, nrPages: take });
      bytes += take * PAGE_SIZE;
      vaddr += BigInt(take) * PAGE;
      nrPages -= take;
      if (bytes >= CHUNK_BYTES || batch.length >= IOV_MAX) {
        yield batch;
        batch = [];
        bytes = 0;
      }
    }
  }
  if (batch.length > 0) yield batch;
}

/**
 * Copy the runs from the task into `dir/pages-<pagesId>.img` and return the pagemap entries.
 * The caller writes the pagemap image (head `{pages_id}` then the entries).
 */
export async function writePages(
  pid: number,
  runs: readonly PageRun[],
  dir: string,
  pagesId: number,
  onProgress?: (bytesDone: number) => void,
): Promise<{ entries: ImageEntry[]; pagesWritten: number }> {
  const final = path.join(dir, `pages-${pagesId}.img`);
  const tmp = path.join(dir, `.pages-${pagesId}.img.tmp-${process.pid}`);
  const fh: FileHandle = await open(tmp, 'wx', 0o600);
  const buffers = [Buffer.allocUnsafe(CHUNK_BYTES), Buffer.allocUnsafe(CHUNK_BYTES)];
  let pending: Promise<unknown> = Promise.resolve();
  let written = 0;
  let turn = 0;
  try {
    for (const batch of batches(runs)) {
      const buf = buffers[turn++ % 2] as Buffer;
      const iov = new BigUint64Array(batch.length * 2);
      let bytes = 0;
      batch.forEach((r, i) => {
        iov[2 * i] = r.vaddr;
        iov[2 * i + 1] = BigInt(r.nrPages * PAGE_SIZE);
        bytes += r.nrPages * PAGE_SIZE;
      });
      // The previous write must be done before its buffer is refilled (two turns later).
      const got = await sys.processVmReadvAsync(pid, buf, 0, iov);
      if (got !== bytes)
        throw new TaskError(pid, `Cannot read the memory of task ${pid}: got ${got} of ${bytes} bytes`);
      await pending;
      pending = fh.write(buf, 0, bytes);
      written += bytes;
      onProgress?.(written);
    }
    await pending;
    await fh.sync();
    await fh.close();
    await rename(tmp, final);
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  const entries = runs.map((r) => ({
    vaddr: r.vaddr,
    compat_nr_pages: 0,
    flags: PE_PRESENT,
    nr_pages: BigInt(r.nrPages),
  }));
  return { entries, pagesWritten: written / PAGE_SIZE };
}
