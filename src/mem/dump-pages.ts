/**
 * Copying a stopped task's memory into `pagemap-<pid>.img` + `pages-<id>.img`.
 *
 * Which pages: /proc/PID/pagemap (src/proc/pagemap.ts: PAGEMAP_SCAN, or reading it) tells, per
 * VMA policy (src/dump/vma.ts): every present or swapped page of private anonymous memory; only
 * the copied-on-write pages of private file mappings.
 * How: reads of /proc/PID/mem (task-memory.ts says why not process_vm_readv) in large batches
 * (up to IOV_MAX runs, `CHUNK_BYTES` at a time) on the thread pool, double-buffered against the writes of the previous batch, so copying and writing
 * overlap and criu's memory use stays bounded whatever the size of the task. Small copies (a
 * final dump or a pre-dump iteration after the first) go another way: see writePagesSmall.
 *
 * The pages file is written under a temporary name and renamed when complete.
 */

import { closeSync, fsyncSync, openSync, renameSync, unlinkSync } from 'node:fs';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { CriuError, ImageError, TaskError, isErrno } from '../errors.js';
import { log } from '../log.js';
import { openPagemap, readPagemapRuns, scanPagemapRuns } from '../proc/pagemap.js';
import { PAGE_SIZE, PE_PRESENT, pagemapEntry, type ImageEntry } from '../images/index.js';
import * as sys from '../sys/native.js';
import type { PagesPolicy } from '../dump/vma.js';
import { COPY_BUFFER_BYTES, copyBuffers } from './buffer-pool.js';
import { remoteIov } from './runs.js';
import { TaskMemory } from './task-memory.js';

const PAGE = BigInt(PAGE_SIZE);
const CHUNK_BYTES = COPY_BUFFER_BYTES;
const IOV_MAX = 1024;
/** Copies up to this size go by writePagesSmall. */
const SYNC_MAX_BYTES = 2 * CHUNK_BYTES;

/** Whether writePages takes its small-copy path for `bytes` of pages (its own small buffers, see smallCopyBuffers). */
export function isSmallCopy(bytes: number): boolean {
  return bytes <= SYNC_MAX_BYTES;
}

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

/**
 * The runs of pages to dump in the given ranges, from the task's pagemap: by ioctl(PAGEMAP_SCAN)
 * (6.7+: the kernel filters, no per-page data crosses), else by reading it.
 */
export function findPageRuns(pid: number, ranges: readonly DumpRange[]): { runs: PageRun[]; pagesScanned: number } {
  const fd = openPagemap(pid);
  if (fd === null) throw new TaskError(pid, `Task ${pid} exited while being dumped`);
  const flat: number[] = [];
  let scanned = 0;
  let canScan = true;
  try {
    for (const r of ranges) {
      if (r.pages === 'none') continue;
      const filter = { skipFilePages: r.pages === 'cow' };
      scanned += Number((r.end - r.start) / PAGE);
      if (canScan) {
        try {
          scanPagemapRuns(fd, r.start, r.end, filter, flat);
          continue;
        } catch (err) {
          if (!isErrno(err, 'ENOTTY', 'EINVAL', 'EOPNOTSUPP')) throw err;
          canScan = false; // a kernel without PAGEMAP_SCAN
        }
      }
      readPagemapRuns(fd, r.start, r.end, filter, flat);
    }
  } finally {
    sys.close(fd);
  }
  const runs: PageRun[] = [];
  for (let i = 0; i < flat.length; i += 2)
    runs.push({ vaddr: BigInt(flat[i] as number) * PAGE, nrPages: flat[i + 1] as number });
  return { runs, pagesScanned: scanned };
}

/** A pages file made ready before the copy (preparePagesFile): open, with room allocated. */
export interface PreparedPagesFile {
  /** Its temporary name (renamed to pages-<id>.img once complete). */
  tmp: string;
  fh: FileHandle;
  /** Bytes allocated in it (0 when the file system refused): cut back to what is written. */
  allocatedBytes: number;
}

/**
 * Create the temporary file of `dir/pages-<pagesId>.img` and allocate `bytes` in it, on the thread
 * pool, while the dumper does other things: the copy then writes into pages that exist already.
 * On tmpfs that moves a third of the writing's cost out of the copy (1 GiB: a 250 ms write becomes
 * 100 ms of fallocate ahead and a 160 ms write, measured here). A refused allocation (a full file
 * system, one without fallocate) is only logged: the writes allocate as usual, and fail as usual.
 */
export async function preparePagesFile(dir: string, pagesId: number, bytes: number): Promise<PreparedPagesFile> {
  const tmp = pagesTmpName(dir, pagesId);
  // Created and its allocation queued synchronously, so that it starts now, not at the caller's
  // next turn of the event loop (a dump's preparation is mostly synchronous work).
  const fd = openSync(tmp, 'wx', 0o600);
  const allocating = sys.fallocateAsync(fd, 0, 0n, BigInt(bytes)).then(
    () => true,
    (err: unknown) => {
      log().debug(`Cannot allocate ${bytes} bytes for ${path.basename(tmp)} ahead: ${String(err)}`);
      return false;
    },
  );
  try {
    const fh = await open(tmp, 'r+');
    return { tmp, fh, allocatedBytes: (await allocating) ? bytes : 0 };
  } finally {
    await allocating;
    closeSync(fd);
  }
}

/** Close and remove a prepared pages file that will not be written. */
export async function discardPagesFile(prepared: PreparedPagesFile): Promise<void> {
  await prepared.fh.close().catch(() => undefined);
  await unlink(prepared.tmp).catch(() => undefined);
}

function pagesTmpName(dir: string, pagesId: number): string {
  return path.join(dir, `.pages-${pagesId}.img.tmp-${process.pid}`);
}

/** Split runs into batches of at most `chunkBytes` and IOV_MAX runs (runs may be cut). */
function* batches(runs: readonly PageRun[], chunkBytes = CHUNK_BYTES): Generator<PageRun[]> {
  let batch: PageRun[] = [];
  let bytes = 0;
  for (const run of runs) {
    let { vaddr, nrPages } = run;
    while (nrPages > 0) {
      const room = Math.floor((chunkBytes - bytes) / PAGE_SIZE);
      const take = Math.min(room, nrPages);
      batch.push({ vaddr, nrPages: take });
      bytes += take * PAGE_SIZE;
      vaddr += BigInt(take) * PAGE;
      nrPages -= take;
      if (bytes >= chunkBytes || batch.length >= IOV_MAX) {
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
  signal?: AbortSignal,
  /** The task runs meanwhile (pre-dump): pages unmapped since the plan are written as zeros. */
  tolerateGone = false,
  /** The file to write, made ready by preparePagesFile (taken over: closed, renamed or removed). */
  prepared?: PreparedPagesFile,
): Promise<{ entries: ImageEntry[]; pagesWritten: number; pagesGone: number }> {
  const final = path.join(dir, `pages-${pagesId}.img`);
  const tmp = prepared?.tmp ?? pagesTmpName(dir, pagesId);
  const totalBytes = pagesBytes(runs);
  if (isSmallCopy(totalBytes) && prepared === undefined) {
    if (signal?.aborted === true) throw new TaskError(pid, 'Dump interrupted', { cause: signal.reason });
    const { written, gone } = await writePagesSmall(pid, runs, final, tmp, tolerateGone);
    onProgress?.(totalBytes);
    return { entries: pagemapEntries(runs), pagesWritten: written, pagesGone: gone };
  }
  let fh: FileHandle;
  try {
    fh = prepared?.fh ?? (await open(tmp, 'wx', 0o600));
  } catch (err) {
    throw new ImageError(final, 'the file system refused it', undefined, { cause: err, isWrite: true });
  }
  const buffers = [copyBuffers.take(), copyBuffers.take()];
  let pending: Promise<unknown> = Promise.resolve();
  let written = 0;
  let gone = 0;
  let turn = 0;
  let mem: TaskMemory | null = null;
  try {
    mem = TaskMemory.open(pid);
    for (const batch of batches(runs)) {
      // An interrupted dump stops here, between two batches, not only after the whole copy.
      if (signal?.aborted === true) throw new TaskError(pid, 'Dump interrupted', { cause: signal.reason });
      const buf = buffers[turn++ % 2] as Buffer;
      const bytes = pagesBytes(batch);
      // The previous write must be done before its buffer is refilled (two turns later).
      const got = await mem.readAsync(buf, 0, remoteIov(batch));
      gone += checkRead(mem, buf, batch, got, bytes, tolerateGone);
      await pending;
      pending = writeAll(fh, buf, bytes);
      // Its failure is awaited at the next turn; meanwhile it must not count as unhandled.
      pending.catch(() => undefined);
      written += bytes;
      onProgress?.(written);
    }
    await pending;
    if ((prepared?.allocatedBytes ?? 0) > written) await fh.truncate(written); // fewer pages than estimated
    await fh.sync();
    await fh.close();
    await rename(tmp, final);
  } catch (err) {
    await pending.catch(() => undefined); // no write may still run on the closed handle
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    if (err instanceof CriuError) throw err; // the task's memory could not be read
    throw new ImageError(final, 'the file system refused it', undefined, { cause: err, isWrite: true });
  } finally {
    mem?.close();
    for (const b of buffers) copyBuffers.give(b);
  }
  return { entries: pagemapEntries(runs), pagesWritten: written / PAGE_SIZE, pagesGone: gone };
}

/** Bytes of page data in runs. */
export function pagesBytes(runs: readonly PageRun[]): number {
  return runs.reduce((n, r) => n + r.nrPages * PAGE_SIZE, 0);
}

/**
 * After reading `got` of a batch's `bytes`: a short read is an error for a frozen task; for a
 * running one the rest is read page by page (zeros where gone). Returns the pages zeroed.
 */
function checkRead(
  mem: TaskMemory,
  buf: Buffer,
  batch: readonly PageRun[],
  got: number,
  bytes: number,
  tolerateGone: boolean,
): number {
  if (got === bytes) return 0;
  const { pid } = mem;
  if (!tolerateGone) throw new TaskError(pid, `Cannot read the memory of task ${pid}: got ${got} of ${bytes} bytes`);
  return readPageByPage(mem, buf, batch, got);
}

function pagemapEntries(runs: readonly PageRun[]): ImageEntry[] {
  return runs.map((r) => pagemapEntry({ vaddr: r.vaddr, nrPages: r.nrPages, flags: PE_PRESENT }));
}

/**
 * writePages for a small copy (SYNC_MAX_BYTES): a few MB, the dirty pages of a pre-dump iteration
 * or of a final dump after pre-dumps. The reads are synchronous (a few MB from /proc/PID/mem take
 * about a millisecond) and the writes go to the thread pool, so that the next batch is read while
 * the previous one is written: one round trip per batch. A 1% iteration of 1 GiB on the
 * development VM: 43 ms of copy with synchronous writes, 36-38 ms so (storing is most of it: a
 * page of the file the guest has not used recently costs ~12 µs). The asynchronous path, a round
 * trip per read and per write, would cost more than the copy itself (48 ms measured).
 * With `tolerateGone` (the task runs: a pre-dump) pages unmapped meanwhile are written as zeros.
 * Returns the pages written and, of those, the ones gone.
 */
async function writePagesSmall(
  pid: number,
  runs: readonly PageRun[],
  final: string,
  tmp: string,
  tolerateGone: boolean,
): Promise<{ written: number; gone: number }> {
  let fd: number;
  try {
    fd = openSync(tmp, 'wx', 0o600);
  } catch (err) {
    throw new ImageError(final, 'the file system refused it', undefined, { cause: err, isWrite: true });
  }
  const { bufs, chunkBytes, isPooled } = smallCopyBuffers();
  /** The write of the previous batch, on the thread pool. */
  let inFlight: Promise<void> | null = null;
  let pos = 0;
  let gone = 0;
  let turn = 0;
  let mem: TaskMemory | null = null;
  try {
    try {
      mem = TaskMemory.open(pid);
      for (const batch of batches(runs, chunkBytes)) {
        // This buffer's last write (two batches ago) is done: the previous batch's waited for it.
        const buf = bufs[turn++ % 2] as Buffer;
        const bytes = pagesBytes(batch);
        const got = mem.read(buf, 0, remoteIov(batch));
        gone += checkRead(mem, buf, batch, got, bytes, tolerateGone);
        await inFlight;
        inFlight = sys.pwritevAllAsync(fd, [buf.subarray(0, bytes)], BigInt(pos)).then(() => undefined);
        inFlight.catch(() => undefined); // awaited at the next batch or below
        pos += bytes;
      }
      await inFlight;
      fsyncSync(fd);
    } finally {
      await inFlight?.catch(() => undefined); // no write may still run on the closed fd
      closeSync(fd);
      mem?.close();
    }
    renameSync(tmp, final);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // already gone
    }
    if (err instanceof CriuError) throw err; // the task's memory could not be read
    throw new ImageError(final, 'the file system refused it', undefined, { cause: err, isWrite: true });
  } finally {
    if (isPooled) for (const b of bufs) copyBuffers.give(b);
  }
  return { written: pos / PAGE_SIZE, gone };
}

/** Batch size of a small copy in a process without pooled copy buffers (see smallCopyBuffers). */
const FRESH_CHUNK_BYTES = 1 << 20;

/**
 * The two buffers of a small copy: the pooled copy buffers when this process has them (a
 * long-lived one: faulted in already), else two fresh ones of FRESH_CHUNK_BYTES. A fresh buffer
 * costs a page fault per page the copy puts in it, slow on VMs (buffer-pool.ts): a one-off
 * `criu pre-dump` copying 10 MB faults 2 MiB of buffers so, where faulting in the pair of 8 MiB
 * copy buffers would cost 16 MiB of faults (on the thread pool, competing with the iteration for
 * this VM's two CPUs).
 */
function smallCopyBuffers(): { bufs: readonly [Buffer, Buffer]; chunkBytes: number; isPooled: boolean } {
  const a = copyBuffers.takeFree();
  const b = a === null ? null : copyBuffers.takeFree();
  if (a !== null && b !== null) return { bufs: [a, b], chunkBytes: CHUNK_BYTES, isPooled: true };
  if (a !== null) copyBuffers.give(a);
  const fresh = (): Buffer => Buffer.allocUnsafeSlow(FRESH_CHUNK_BYTES);
  return { bufs: [fresh(), fresh()], chunkBytes: FRESH_CHUNK_BYTES, isPooled: false };
}

/**
 * After a short read of a running task (a range was unmapped meanwhile), read the rest
 * of the batch page by page from byte `from` on; pages that cannot be read are zeroed. Their
 * contents do not matter: the range is gone or mapped anew, which the next collect reports whole.
 * Returns the pages zeroed.
 */
function readPageByPage(mem: TaskMemory, buf: Buffer, batch: readonly PageRun[], from: number): number {
  let zeroed = 0;
  let off = 0;
  const iov = new BigUint64Array(2);
  for (const r of batch) {
    for (let i = 0; i < r.nrPages; i++, off += PAGE_SIZE) {
      if (off < from) continue;
      iov[0] = r.vaddr + BigInt(i) * PAGE;
      iov[1] = PAGE;
      if (mem.read(buf, off, iov) !== PAGE_SIZE) {
        buf.fill(0, off, off + PAGE_SIZE);
        zeroed++;
      }
    }
  }
  return zeroed;
}

/**
 * write(2) may write less than asked (a full disk, RLIMIT_FSIZE): go on until all is written, so
 * that the error comes from the write that cannot go on, instead of a short image.
 */
async function writeAll(fh: FileHandle, buf: Buffer, len: number): Promise<void> {
  for (let off = 0; off < len;) {
    const { bytesWritten } = await fh.write(buf, off, len - off);
    if (bytesWritten <= 0) throw new Error(`write returned ${bytesWritten} at ${off} of ${len} bytes`);
    off += bytesWritten;
  }
}
