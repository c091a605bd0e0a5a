/**
 * /proc/PID/pagemap: which pages of a task are present or swapped, two ways.
 *
 * 1. read(2): one little-endian u64 per virtual page, at file offset (addr / 4096) * 8
 *    (Documentation/admin-guide/mm/pagemap.rst):
 *
 *      63 present | 62 swapped | 61 file page or shared anon | 59-60 zero
 *      58 guard region (6.14+) | 57 uffd-wp | 56 exclusively mapped (4.2+) | 55 soft-dirty
 *      0-54 PFN (present) or swap type/offset
 *
 *    The PFN reads 0 without CAP_SYS_ADMIN (4.2+). Soft-dirty is always 0 on kernels built without
 *    CONFIG_MEM_SOFT_DIRTY (this machine). Reading a range of N pages costs 8N bytes of copying:
 *    1 GiB of address space is 262144 entries, 2 MiB; it is read in large chunks into one reused
 *    Buffer and decoded on its high 32-bit words, with no per-page allocation.
 *
 * 2. ioctl(PAGEMAP_SCAN) (6.7+) on the same fd: the kernel walks the range and returns regions
 *    (struct page_region { u64 start, end, categories; }) of pages matching a category filter, here
 *    anyof PAGE_IS_PRESENT | PAGE_IS_SWAPPED: no per-page data crosses to user space at all.
 *    Quirk (seen on 6.18): when the region vector fills up, walk_end may be rounded down to a
 *    2 MiB boundary although regions past it were returned; the next call, from walk_end, returns
 *    those again. The regions are therefore clipped to what the previous ones did not cover.
 *
 * Both produce runs of pages to dump as a flat array [firstPage, nrPages, firstPage, nrPages, …]
 * (page indices: addr / 4096, exact in a number), half-open, ascending, adjacent runs merged.
 * Filters, as CRIU's should_dump_page: pages of a private file mapping that were never written
 * (still the file's page: bit 61 / PAGE_IS_FILE) are skipped when `skipFilePages`, and, when
 * `zeroPfn` is given, present pages mapping the shared zero page (read PFN == zeroPfn, which needs
 * CAP_SYS_ADMIN; PAGE_IS_PFNZERO for the scan) are skipped. (On this machine's 6.18 VM, read
 * faults on private anonymous memory allocate a page each instead of mapping the zero page.)
 */

import { UnsupportedError, isErrno } from '../errors.js';
import {
  O_CLOEXEC,
  O_RDONLY,
  PAGE_IS_FILE,
  PAGE_IS_GUARD,
  PAGE_IS_PFNZERO,
  PAGE_IS_PRESENT,
  PAGE_IS_SWAPPED,
  PAGE_REGION_WORDS,
  PAGE_SIZE,
  TASK_SIZE,
  PM_FILE,
  PM_MMAP_EXCLUSIVE,
  PM_PFN_MASK,
  PM_PRESENT,
  PM_SOFT_DIRTY,
  PM_SWAP,
  PM_UFFD_WP,
} from '../kernel/constants.js';
import * as sys from '../sys/native.js';

/** Bits of the high 32-bit word of an entry. */
const HI_PRESENT = 1 << 31;
const HI_SWAP = 1 << 30;
const HI_FILE = 1 << 29;
/** Bit 57: the page (or the pte marker of an empty page) is uffd write-protected. */
const HI_UFFD_WP = 1 << 25;
/** Bit 58 (6.14+): a guard region's pte marker (madvise MADV_GUARD_INSTALL). */
const HI_GUARD = 1 << 26;
/** A swap entry's type (bits 0-4); pte markers use the last type, which no swap device gets. */
const SWP_TYPE_MASK = 0x1f;
const SWP_PTE_MARKER = 0x1f;
/** PFN bits 32-54 live in the low 23 bits of the high word. */
const HI_PFN_MASK = 0x7fffff;

/** Entries per read: 512 Ki entries = 4 MiB of pagemap = 2 GiB of address space. */
const CHUNK_ENTRIES = 512 * 1024;

export interface PagemapEntry {
  isPresent: boolean;
  isSwapped: boolean;
  /** File page or shared anonymous page. */
  isFile: boolean;
  isExclusive: boolean;
  isSoftDirty: boolean;
  isUffdWp: boolean;
  /** PFN of a present page (0 without CAP_SYS_ADMIN); swap type and offset of a swapped one. */
  pfn: bigint;
}

/** One entry decoded (for tests and diagnostics; the run builders do not allocate per page). */
export function decodePagemapEntry(e: bigint): PagemapEntry {
  return {
    isPresent: (e & PM_PRESENT) !== 0n,
    isSwapped: (e & PM_SWAP) !== 0n,
    isFile: (e & PM_FILE) !== 0n,
    isExclusive: (e & PM_MMAP_EXCLUSIVE) !== 0n,
    isSoftDirty: (e & PM_SOFT_DIRTY) !== 0n,
    isUffdWp: (e & PM_UFFD_WP) !== 0n,
    pfn: e & PM_PFN_MASK,
  };
}

export interface RunFilter {
  /** Skip pages with bit 61 (a private file mapping's pages not yet copied on write). */
  skipFilePages?: boolean;
  /** Skip present pages whose PFN is this one (the shared zero page). */
  zeroPfn?: number;
}

/**
 * Append to `runs` the runs of pages to dump among `nrEntries` entries held as little-endian u32
 * pairs in `words` (entry i = words[2i] | words[2i+1] << 32), the first being page `firstPage`.
 * A run touching the last run of `runs` extends it.
 */
export function appendPagemapRuns(
  words: Uint32Array,
  nrEntries: number,
  firstPage: number,
  filter: RunFilter,
  runs: number[],
): void {
  const skipFile = filter.skipFilePages === true;
  const zeroPfn = filter.zeroPfn;
  const hasZero = zeroPfn !== undefined;
  const zeroLo = hasZero ? zeroPfn % 0x100000000 : 0;
  const zeroHi = hasZero ? Math.floor(zeroPfn / 0x100000000) : 0;
  let runStart = -1;
  for (let i = 0; i < nrEntries; i++) {
    const hi = words[2 * i + 1] as number;
    let isWanted = (hi & (HI_PRESENT | HI_SWAP)) !== 0;
    // A uffd-wp pte marker (a tracked task's empty page) reads as a swap entry: no data there.
    if (isWanted && (hi & (HI_PRESENT | HI_SWAP | HI_UFFD_WP)) === (HI_SWAP | HI_UFFD_WP)) {
      if (((words[2 * i] as number) & SWP_TYPE_MASK) === SWP_PTE_MARKER) isWanted = false;
    }
    // A guard region holds no data either, but is state: an access there must fault after a
    // restore too, and neither CRIU's images nor criu-ts's restore carry it yet.
    if (isWanted && (hi & (HI_PRESENT | HI_SWAP | HI_GUARD)) === (HI_SWAP | HI_GUARD))
      throw new UnsupportedError(
        'guard-region',
        `Cannot dump the memory at 0x${((firstPage + i) * PAGE_SIZE).toString(16)}: a guard region ` +
          '(madvise MADV_GUARD_INSTALL), which criu-ts cannot dump yet',
      );
    if (isWanted && skipFile && (hi & HI_FILE) !== 0) isWanted = false;
    if (
      isWanted &&
      hasZero &&
      (hi & HI_PRESENT) !== 0 &&
      (hi & HI_PFN_MASK) === zeroHi &&
      (words[2 * i] as number) >>> 0 === zeroLo
    )
      isWanted = false;
    if (isWanted) {
      if (runStart < 0) runStart = i;
    } else if (runStart >= 0) {
      // Only a run at entry 0 can continue the previous call's last run.
      if (runStart === 0) pushRun(runs, firstPage, i);
      else runs.push(firstPage + runStart, i - runStart);
      runStart = -1;
    }
  }
  if (runStart >= 0) pushRun(runs, firstPage + runStart, nrEntries - runStart);
}

function pushRun(runs: number[], first: number, nr: number): void {
  const n = runs.length;
  if (n >= 2 && (runs[n - 2] as number) + (runs[n - 1] as number) === first) runs[n - 1] = (runs[n - 1] as number) + nr;
  else runs.push(first, nr);
}

/** Open /proc/PID/pagemap for reading, or null when the task is gone. Close with sys.close. */
export function openPagemap(pid: number): number | null {
  try {
    return sys.open(`/proc/${pid}/pagemap`, O_RDONLY | O_CLOEXEC, 0);
  } catch (err) {
    if (isErrno(err, 'ENOENT', 'ESRCH')) return null;
    throw err;
  }
}

/**
 * The first page of a guard region (madvise MADV_GUARD_INSTALL) of task `pid`, or undefined when
 * it has none (or is gone, or the kernel predates them: PAGEMAP_SCAN refuses the category).
 * One PAGEMAP_SCAN over the whole address space that stops at the first such page.
 */
export function findGuardPage(pid: number): bigint | undefined {
  const fd = openPagemap(pid);
  if (fd === null) return undefined;
  try {
    const vec = new BigUint64Array(PAGE_REGION_WORDS);
    const res = sys.pagemapScan(
      fd,
      {
        start: 0n,
        end: TASK_SIZE,
        flags: 0n,
        categoryInverted: 0n,
        categoryMask: 0n,
        categoryAnyofMask: PAGE_IS_GUARD,
        returnMask: PAGE_IS_GUARD,
        maxPages: 1n,
      },
      vec,
    );
    return res.nrRegions > 0 ? vec[0] : undefined;
  } catch (err) {
    // EINVAL: a kernel without the category. ESRCH: the task exited after the open (the check
    // runs before the freeze: a shell's child may be gone by then; CI saw it).
    if (isErrno(err, 'EINVAL', 'ESRCH')) return undefined;
    throw err;
  } finally {
    sys.close(fd);
  }
}

/** A reusable read buffer, so repeated scans of many VMAs do not allocate. */
let chunkBuf: Buffer | null = null;

function chunk(): Buffer {
  chunkBuf ??= Buffer.allocUnsafe(CHUNK_ENTRIES * 8);
  return chunkBuf;
}

/** Fill buf[0, len) from pagemap at byte `pos`; pagemap reads are whole entries. */
function preadFull(fd: number, buf: Buffer, len: number, pos: number): void {
  let done = 0;
  while (done < len) {
    const n = sys.pread(fd, buf, done, len - done, BigInt(pos + done));
    if (n <= 0) throw new Error(`Cannot read pagemap: short read at ${pos + done}`);
    done += n;
  }
}

/**
 * The raw entries of pages [firstPage, firstPage + nrPages), read with pread(2) in chunks.
 * `out` is filled when given (it must hold nrPages), else allocated.
 */
export function readPagemapEntries(
  fd: number,
  firstPage: number,
  nrPages: number,
  out: BigUint64Array = new BigUint64Array(nrPages),
): BigUint64Array {
  const bytes = Buffer.from(out.buffer, out.byteOffset, nrPages * 8);
  for (let done = 0; done < nrPages; done += CHUNK_ENTRIES) {
    const n = Math.min(CHUNK_ENTRIES, nrPages - done);
    preadFull(fd, bytes.subarray(done * 8), n * 8, (firstPage + done) * 8);
  }
  return out;
}

/**
 * The runs of pages to dump in [start, end) (page-aligned addresses) by reading pagemap, appended
 * to `runs` (returned).
 */
export function readPagemapRuns(
  fd: number,
  start: bigint,
  end: bigint,
  filter: RunFilter = {},
  runs: number[] = [],
): number[] {
  const buf = chunk();
  const words = new Uint32Array(buf.buffer, buf.byteOffset, CHUNK_ENTRIES * 2);
  const firstPage = Number(start / BigInt(PAGE_SIZE));
  const endPage = Number(end / BigInt(PAGE_SIZE));
  for (let page = firstPage; page < endPage; page += CHUNK_ENTRIES) {
    const n = Math.min(CHUNK_ENTRIES, endPage - page);
    preadFull(fd, buf, n * 8, page * 8);
    appendPagemapRuns(words, n, page, filter, runs);
  }
  return runs;
}

/** Regions per PAGEMAP_SCAN call; a call that fills them all is continued from walkEnd. */
const SCAN_REGIONS = 4096;
let scanVec: BigUint64Array | null = null;

/**
 * The same runs by ioctl(PAGEMAP_SCAN) (kernel ≥ 6.7), filtered by the kernel: anyof present or
 * swapped, and not PAGE_IS_FILE / PAGE_IS_PFNZERO when asked (zeroPfn's value is not needed: the
 * kernel knows its zero page; any number turns the filter on).
 */
export function scanPagemapRuns(
  fd: number,
  start: bigint,
  end: bigint,
  filter: RunFilter = {},
  runs: number[] = [],
): number[] {
  scanVec ??= new BigUint64Array(SCAN_REGIONS * PAGE_REGION_WORDS);
  const vec = scanVec;
  let excluded = 0n;
  if (filter.skipFilePages === true) excluded |= PAGE_IS_FILE;
  if (filter.zeroPfn !== undefined) excluded |= PAGE_IS_PFNZERO;
  // The regions read as u32 halves: addr = hi * 2^32 + lo is exact in a double (< 2^53), which
  // avoids two BigInt divisions per region (the sparse case returns one region per page).
  const halves = new Uint32Array(vec.buffer, vec.byteOffset, vec.length * 2);
  const W = PAGE_REGION_WORDS * 2;
  let from = start;
  while (from < end) {
    const res = sys.pagemapScan(
      fd,
      {
        start: from,
        end,
        flags: 0n,
        // Pages whose excluded bits are all clear: inverted then required zero by the mask.
        categoryInverted: excluded,
        categoryMask: excluded,
        categoryAnyofMask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        returnMask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        maxPages: 0n,
      },
      vec,
    );
    for (let r = 0; r < res.nrRegions; r++) {
      let first = ((halves[r * W + 1] as number) * 0x100000000 + (halves[r * W] as number)) / PAGE_SIZE;
      const last = ((halves[r * W + 3] as number) * 0x100000000 + (halves[r * W + 2] as number)) / PAGE_SIZE;
      // Swapped without being present: real swap, or the uffd-wp pte markers a dirty-memory
      // tracker leaves on empty pages, which the scan cannot tell apart. The entries can.
      if (((halves[r * W + 4] as number) & Number(PAGE_IS_PRESENT)) === 0) {
        const n = runs.length;
        if (n >= 2) first = Math.max(first, (runs[n - 2] as number) + (runs[n - 1] as number));
        if (last > first)
          readPagemapRuns(fd, BigInt(first) * BigInt(PAGE_SIZE), BigInt(last) * BigInt(PAGE_SIZE), filter, runs);
        continue;
      }
      // A full vector may end past walkEnd (see the header): keep only what is new.
      const n = runs.length;
      if (n >= 2) first = Math.max(first, (runs[n - 2] as number) + (runs[n - 1] as number));
      if (last > first) pushRun(runs, first, last - first);
    }
    if (res.walkEnd <= from) break;
    from = res.walkEnd;
  }
  return runs;
}

/** Total pages in a flat run list. */
export function countRunPages(runs: readonly number[]): number {
  let total = 0;
  for (let i = 1; i < runs.length; i += 2) total += runs[i] as number;
  return total;
}
