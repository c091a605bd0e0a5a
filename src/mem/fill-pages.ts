/**
 * Filling a restored task's memory from pages files: pread(2) into a buffer of criu's, then
 * process_vm_writev(2) into the task (mappings already made, writable).
 *
 * Why not preadv injected into the task (criu-ts did that first, as CRIU's restorer does): the
 * kernel then writes through the task's user addresses, and on this kind of VM the first access
 * to a fresh page through a user mapping costs ~10 µs on top of the fault (measured: 1 GiB read in
 * place in 4.2 s, 1.7 s with MADV_POPULATE_WRITE first). process_vm_writev pins the task's pages
 * and writes them through the kernel's own mapping, and criu's buffer is reused hot: 0.5 s per GiB,
 * and no injected call per run. The task pays for its first touch later, as it would anyway.
 *
 * Memory just mapped and private anonymous can go in by UFFDIO_COPY instead (uffd-fill.ts says why).
 *
 * Large fills are double-buffered on the thread pool (the next pread overlaps the current write);
 * small ones (the last pages of a live migration, the task frozen) run synchronously.
 */

import path from 'node:path';
import { ImageError, TaskError } from '../errors.js';
import { PAGE_SIZE } from '../images/index.js';
import * as sys from '../sys/native.js';
import { COPY_BUFFER_BYTES, copyBuffers } from './buffer-pool.js';
import type { PageSource } from './page-chain.js';
import { remoteIov } from './runs.js';
import { TaskMemory } from './task-memory.js';

const CHUNK_BYTES = COPY_BUFFER_BYTES;
/** Runs per process_vm_writev at most (IOV_MAX). */
const CHUNK_RUNS = 1024;
/** A gap in the file up to this size is read through rather than starting a new chunk. */
const GAP_MAX = 256n << 10n;
/** File bytes read for one chunk at most (its pages plus the gaps read through): a buffer. */
const SPAN_MAX = COPY_BUFFER_BYTES;
const SYNC_MAX_BYTES = 2 * CHUNK_BYTES;
const O_RDONLY_CLOEXEC = 0o2000000;

/** Pages read in one pread: file bytes [offset, offset + span) for `runs` (in file order). */
interface Chunk {
  file: string;
  offset: bigint;
  span: number;
  runs: PageSource[];
  bytes: number;
}

/**
 * Have the two copy buffers of a fill of `pages` pages faulted in, on the thread pool: a restore
 * starts this as soon as it knows the page count and awaits it before the fill, so that the first
 * touch of 16 MiB (~60 ms on the development VM) overlaps with creating the task. Never rejects:
 * if it fails, the fill faults its buffers itself.
 */
export async function reserveFillBuffers(pages: number): Promise<void> {
  if (pages * PAGE_SIZE <= SYNC_MAX_BYTES) return;
  await copyBuffers.reserveAsync(2).catch(() => undefined);
}

/**
 * Write the sources' pages into task `pid`. Returns the pages filled. With `uffd` (uffd-fill.ts)
 * every page is in a range registered there and not present yet, and goes in by UFFDIO_COPY.
 * With `memFd` (/proc/PID/mem open for writing) the pages go in by pwrite there, which may write
 * into mappings that are not writable, as a debugger's breakpoint does (few pages: one call per run).
 */
export async function fillPages(
  pid: number,
  sources: readonly PageSource[],
  opts: { uffd?: number; memFd?: number } = {},
): Promise<number> {
  const { uffd, memFd } = opts;
  const write = (buf: Buffer, c: Chunk): number =>
    memFd !== undefined
      ? writeMem(memFd, buf, c)
      : uffd === undefined
        ? sys.processVmWritev(pid, buf, 0, remoteIov(c.runs))
        : sys.uffdioCopy(uffd, buf, 0, remoteIov(c.runs));
  const writeAsync = (buf: Buffer, c: Chunk): Promise<number> =>
    memFd !== undefined
      ? Promise.resolve(write(buf, c)) // few pages, written in place
      : uffd === undefined
        ? sys.processVmWritevAsync(pid, buf, 0, remoteIov(c.runs))
        : sys.uffdioCopyAsync(uffd, buf, 0, remoteIov(c.runs));
  const chunks = [...chunksOf(sources)];
  const total = chunks.reduce((n, c) => n + c.bytes, 0);
  const { fdOf, closeAll } = imageFiles();
  try {
    if (total <= SYNC_MAX_BYTES) {
      // A pooled buffer when there is one (hot), else one just big enough (fewer first touches).
      const pooled = copyBuffers.takeFree();
      const buf = pooled ?? Buffer.allocUnsafe(maxSpan(chunks));
      try {
        for (const c of chunks) {
          readChunkSync(fdOf(c.file), buf, c);
          checkWritten(pid, c, write(buf, c));
        }
      } finally {
        if (pooled !== null) copyBuffers.give(pooled);
      }
    } else {
      const bufs = [copyBuffers.take(), copyBuffers.take()];
      let writing: Promise<unknown> = Promise.resolve();
      let turn = 0;
      try {
        for (const c of chunks) {
          const buf = bufs[turn++ % 2] as Buffer;
          await readChunk(fdOf(c.file), buf, c);
          await writing; // the other buffer's write, done before this one is written from
          writing = writeAsync(buf, c).then((n) => checkWritten(pid, c, n));
          writing.catch(() => undefined); // awaited at the next turn or below
        }
      } finally {
        await writing.catch(() => undefined); // no copy may still use a buffer after this
        for (const b of bufs) copyBuffers.give(b);
      }
      await writing;
    }
  } finally {
    closeAll();
  }
  return total / PAGE_SIZE;
}

/**
 * Write the sources' pages into task `pid` only where the task holds something else there: for
 * memory it inherited copy-on-write from its parent (restore/mm.ts inheritMemory), which stays
 * shared wherever it is the same, as it was when dumped. Each chunk is read from the image and
 * from the task (/proc/PID/mem: process_vm_readv would unshare them, task-memory.ts), compared
 * page by page, and the pages that differ written.
 */
export async function fillChangedPages(
  pid: number,
  sources: readonly PageSource[],
): Promise<{ compared: number; written: number }> {
  const { fdOf, closeAll } = imageFiles();
  const mem = TaskMemory.open(pid);
  const [image, held] = [copyBuffers.take(), copyBuffers.take()] as [Buffer, Buffer];
  let compared = 0;
  let written = 0;
  try {
    for (const c of chunksOf(sources)) {
      await readChunk(fdOf(c.file), image, c);
      const got = await mem.readAsync(held, 0, remoteIov(c.runs));
      if (got !== c.bytes)
        throw new TaskError(pid, `Cannot read the memory task ${pid} inherited (${got} of ${c.bytes} bytes)`);
      // The pages that differ, moved together at the front of `image`, and where they go.
      const changed: { vaddr: bigint; nrPages: number }[] = [];
      let at = 0;
      let off = 0;
      for (const r of c.runs) {
        for (let i = 0; i < r.nrPages; i++, off += PAGE_SIZE) {
          if (image.compare(held, off, off + PAGE_SIZE, off, off + PAGE_SIZE) === 0) continue;
          if (at !== off) image.copy(image, at, off, off + PAGE_SIZE);
          at += PAGE_SIZE;
          const vaddr = r.vaddr + BigInt(i * PAGE_SIZE);
          const last = changed[changed.length - 1];
          if (last !== undefined && last.vaddr + BigInt(last.nrPages * PAGE_SIZE) === vaddr) last.nrPages++;
          else changed.push({ vaddr, nrPages: 1 });
        }
      }
      compared += c.bytes / PAGE_SIZE;
      for (let k = 0, from = 0; k < changed.length; k += CHUNK_RUNS) {
        const part = changed.slice(k, k + CHUNK_RUNS);
        const bytes = part.reduce((n, x) => n + x.nrPages * PAGE_SIZE, 0);
        const n = await sys.processVmWritevAsync(pid, image, from, remoteIov(part));
        if (n !== bytes)
          throw new TaskError(
            pid,
            `Cannot write the memory of task ${pid}: ${n} of ${bytes} bytes at 0x${part[0]?.vaddr.toString(16)}`,
          );
        from += bytes;
        written += bytes / PAGE_SIZE;
      }
    }
  } finally {
    mem.close();
    closeAll();
    copyBuffers.give(image);
    copyBuffers.give(held);
  }
  return { compared, written };
}

/** The pages files a fill reads, each opened once (read-only), and all closed at the end. */
function imageFiles(): { fdOf: (file: string) => number; closeAll: () => void } {
  const fds = new Map<string, number>();
  return {
    fdOf: (file) => {
      let fd = fds.get(file);
      if (fd === undefined) {
        try {
          fd = sys.open(file, O_RDONLY_CLOEXEC, 0);
        } catch (err) {
          throw new ImageError(path.basename(file), 'cannot be opened', undefined, { cause: err });
        }
        fds.set(file, fd);
      }
      return fd;
    },
    closeAll: () => {
      for (const fd of fds.values()) sys.close(fd);
    },
  };
}

/** Group sources (kept in order per file) into chunks of at most CHUNK_BYTES and CHUNK_RUNS. */
function* chunksOf(sources: readonly PageSource[]): Generator<Chunk> {
  const byFile = new Map<string, PageSource[]>();
  for (const s of sources) {
    const list = byFile.get(s.file);
    if (list === undefined) byFile.set(s.file, [s]);
    else list.push(s);
  }
  for (const [file, list] of byFile) {
    list.sort((a, b) => (a.fileOffset < b.fileOffset ? -1 : a.fileOffset > b.fileOffset ? 1 : 0));
    let c: Chunk | null = null;
    for (const s of list) {
      let { vaddr, nrPages, fileOffset } = s;
      while (nrPages > 0) {
        if (c !== null) {
          const end = c.offset + BigInt(c.span);
          const room = Math.floor((CHUNK_BYTES - c.bytes) / PAGE_SIZE);
          const at = Number(fileOffset - c.offset);
          const isFull = room === 0 || c.runs.length >= CHUNK_RUNS || at + PAGE_SIZE > SPAN_MAX;
          if (fileOffset < end || fileOffset - end > GAP_MAX || isFull) {
            yield c;
            c = null;
          }
        }
        if (c === null) c = { file, offset: fileOffset, span: 0, runs: [], bytes: 0 };
        const at = Number(fileOffset - c.offset);
        const take = Math.min(
          nrPages,
          Math.floor((CHUNK_BYTES - c.bytes) / PAGE_SIZE),
          Math.floor((SPAN_MAX - at) / PAGE_SIZE),
        );
        const len = take * PAGE_SIZE;
        c.runs.push({ vaddr, nrPages: take, file, fileOffset });
        c.span = at + len;
        c.bytes += len;
        vaddr += BigInt(len);
        fileOffset += BigInt(len);
        nrPages -= take;
      }
    }
    if (c !== null) yield c;
  }
}

function maxSpan(chunks: readonly Chunk[]): number {
  return chunks.reduce((n, c) => Math.max(n, c.span), PAGE_SIZE);
}

/** After the span is read: move the runs' data together when the span had gaps. */
function compact(buf: Buffer, c: Chunk): void {
  if (c.span === c.bytes) return;
  let at = 0;
  for (const r of c.runs) {
    const from = Number(r.fileOffset - c.offset);
    const len = r.nrPages * PAGE_SIZE;
    if (from !== at) buf.copy(buf, at, from, from + len);
    at += len;
  }
}

function shortFile(c: Chunk, got: number): ImageError {
  return new ImageError(path.basename(c.file), `the file ends before byte ${c.offset + BigInt(got)}`, Number(c.offset));
}

function readChunkSync(fd: number, buf: Buffer, c: Chunk): void {
  for (let got = 0; got < c.span;) {
    const n = sys.pread(fd, buf, got, c.span - got, c.offset + BigInt(got));
    if (n === 0) throw shortFile(c, got);
    got += n;
  }
  compact(buf, c);
}

async function readChunk(fd: number, buf: Buffer, c: Chunk): Promise<void> {
  for (let got = 0; got < c.span;) {
    const n = await sys.preadAsync(fd, buf, got, c.span - got, c.offset + BigInt(got));
    if (n === 0) throw shortFile(c, got);
    got += n;
  }
  compact(buf, c);
}

/** The chunk's runs (their data together at the start of `buf`) pwritten into /proc/PID/mem. */
function writeMem(memFd: number, buf: Buffer, c: Chunk): number {
  let at = 0;
  for (const r of c.runs) {
    const len = r.nrPages * PAGE_SIZE;
    for (let done = 0; done < len;) {
      const n = sys.pwrite(memFd, buf, at + done, len - done, r.vaddr + BigInt(done));
      if (n === 0) return at + done;
      done += n;
    }
    at += len;
  }
  return at;
}

function checkWritten(pid: number, c: Chunk, written: number): void {
  if (written !== c.bytes) {
    const first = c.runs[0] as PageSource;
    throw new TaskError(
      pid,
      `Cannot write the memory of task ${pid}: ${written} of ${c.bytes} bytes at 0x${first.vaddr.toString(16)}`,
    );
  }
}
