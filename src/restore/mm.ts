/**
 * Rebuilding the dumped address space inside the emptied stub, by injected calls:
 *   - each VMA mapped at its address (MAP_FIXED_NOREPLACE: the stub holds nothing else but the
 *     scratch area), anonymous or from its file (opened in the task, then closed), writable
 *     while it is filled;
 *   - the dumped pages read straight into place from pages-<id>.img, opened inside the task:
 *     one pread64 per pagemap run, so the bytes are copied once, by the kernel;
 *   - protections and madvise flags set as dumped;
 *   - the vDSO put back at its dumped address with arch_prctl(ARCH_MAP_VDSO_64);
 *   - the mm fields (code, data, brk, stack, args, env, auxv, exe link) with prctl(PR_SET_MM_MAP).
 */

import { existsSync, fchmodSync, fchownSync, ftruncateSync, statSync } from 'node:fs';
import path from 'node:path';
import { ImageError, TaskError, UnsupportedError } from '../errors.js';
import { PE_PRESENT, readPagemap, readShmemRuns, shmemPagemapFileName, type ImageEntry } from '../images/index.js';
import { PageChain, type PageSource } from '../mem/page-chain.js';
import type { InjectedCall, Injector } from '../inject/injector.js';
import { SYSCALLS_X86_64 } from '../kernel/syscalls.js';
import { log } from '../log.js';
import { readMaps } from '../proc/maps.js';
import * as sys from '../sys/native.js';
import { MAP, VMA_AREA } from '../dump/vma.js';
import { clipOutSources, clipSources, coverageOf } from '../mem/page-chain.js';
import { fillChangedPages, fillPages } from '../mem/fill-pages.js';
import { openUffdFill } from '../mem/uffd-fill.js';
import { countPages, intersect, normalize, pageAddr, pageIndex, pageRuns, subtract, type Run } from '../mem/runs.js';
import { F_ADD_SEALS, MFD_ALLOW_SEALING } from '../files/memfd.js';
import { openInTask } from '../files/task-io.js';
import { O_CLOEXEC, O_RDONLY, O_RDWR, TASK_SIZE } from '../kernel/constants.js';
import type { SysvSegments } from './sysv-shm.js';
import type { FileVmaLayout } from '../dump/pre-dump.js';

const PAGE = 4096n;
const PROT_READ = 1n;
const PROT_WRITE = 2n;
const PROT_EXEC = 4n;
const MAP_SHARED = 0x01n;
const MADV_DONTNEED = 4n;
const MAP_FIXED = 0x10n;
const MAP_ANONYMOUS = 0x20n;
const MAP_FIXED_NOREPLACE = 0x100000n;
const ARCH_MAP_VDSO_64 = 0x2003n;
const PR_SET_MM = 35n;
const PR_SET_MM_MAP = 14n;

interface Vma {
  start: bigint;
  end: bigint;
  prot: bigint;
  flags: bigint;
  status: number;
  pgoff: bigint;
  shmid: number;
  madv: bigint;
  fdflags: number;
  /** mlock'ed (MAP_LOCKED in the image, as CRIU records smaps' "lo"): locked once filled. */
  isLocked: boolean;
}

function toVma(e: ImageEntry): Vma {
  const flags = BigInt(Number(e['flags']));
  return {
    start: BigInt(e['start'] as bigint),
    end: BigInt(e['end'] as bigint),
    prot: BigInt(Number(e['prot'])),
    // Mapped without MAP_LOCKED: it would fault every page in before the pages are written.
    flags: flags & ~BigInt(MAP.LOCKED),
    isLocked: (flags & BigInt(MAP.LOCKED)) !== 0n,
    status: Number(e['status']),
    pgoff: BigInt((e['pgoff'] as bigint | undefined) ?? 0n),
    shmid: Number(e['shmid'] ?? 0),
    madv: BigInt((e['madv'] as bigint | undefined) ?? 0n),
    fdflags: Number(e['fdflags'] ?? 0),
  };
}

/** A VMA's pages as a run of page indices. */
const vmaRun = (v: Vma): Run => ({ start: pageIndex(v.start), end: pageIndex(v.end) });

const isSpecial = (v: Vma): boolean => (v.status & (VMA_AREA.VDSO | VMA_AREA.VVAR | VMA_AREA.VSYSCALL)) !== 0;

/** The VMAs of an mm image. */
function vmasOf(mm: ImageEntry): Vma[] {
  return ((mm['vmas'] as ImageEntry[] | undefined) ?? []).map(toVma);
}

export function dumpedVmas(mm: ImageEntry): { start: bigint; end: bigint }[] {
  return vmasOf(mm);
}

/** Which VMAs (by index) get pages from the pagemap: they are mapped writable while filled. */
function vmasWithPages(vmas: readonly Vma[], pages: readonly PageSource[]): Set<number> {
  const out = new Set<number>();
  const order = vmas.map((_, i) => i).sort((a, b) => ((vmas[a] as Vma).start < (vmas[b] as Vma).start ? -1 : 1));
  let k = 0;
  for (const run of pages) {
    const end = run.vaddr + BigInt(run.nrPages) * PAGE;
    while (k < order.length && (vmas[order[k] as number] as Vma).end <= run.vaddr) k++;
    for (let j = k; j < order.length && (vmas[order[j] as number] as Vma).start < end; j++) out.add(order[j] as number);
  }
  return out;
}

/**
 * Fill [start, start + len), which maps bytes [objOffset, objOffset + len) of a shmem object, from
 * its pagemap-shmem-<shmid>.img (vaddr there = offset in the object). Returns the pages filled.
 */
async function fillShmemMapping(
  inj: Injector,
  imagesDir: string,
  shmid: bigint,
  start: bigint,
  objOffset: bigint,
  len: bigint,
): Promise<number> {
  const pagemapPath = path.join(imagesDir, shmemPagemapFileName(shmid));
  if (!existsSync(pagemapPath)) return 0; // all zeros
  const { pagesId, runs } = await readPagemap(pagemapPath);
  const file = path.resolve(imagesDir, `pages-${pagesId}.img`);
  const wanted: PageSource[] = [];
  let fileOffset = 0n;
  for (const r of runs) {
    if ((r.flags & PE_PRESENT) === 0) continue;
    const from = r.vaddr > objOffset ? r.vaddr : objOffset;
    const rEnd = r.vaddr + BigInt(r.nrPages) * PAGE;
    const to = rEnd < objOffset + len ? rEnd : objOffset + len;
    if (to > from)
      wanted.push({
        vaddr: start + (from - objOffset),
        nrPages: Number((to - from) / PAGE),
        fileOffset: fileOffset + (from - r.vaddr),
        file,
      });
    fileOffset += BigInt(r.nrPages) * PAGE;
  }
  return fillPages(inj.pid, wanted);
}

/**
 * Map every VMA but the memfd ones (restoreMemfdMappings, once the fds exist) and fill it.
 * `fileName` resolves a files.img id to its path.
 *
 * A VMA is mapped writable only when pages are to be written into it (and mprotected back after):
 * the kernel marks a private mapping made writable as accountable ("ac" in smaps) for good, so a
 * read-only VMA mapped writable for nothing would differ from the dumped one.
 */
export async function restoreMemory(
  inj: Injector,
  mm: ImageEntry,
  allPages: readonly PageSource[] | PageChain,
  imagesDir: string,
  fileName: (id: number) => string,
  prefilled?: Prefilled,
  sharedObjects?: SharedObjects,
  sysv?: SysvSegments,
): Promise<{ pagesRestored: number; pagesCompared: number; pagesSkippedCow: number }> {
  const vmas = vmasOf(mm);
  let pages: readonly PageSource[] = allPages instanceof PageChain ? [] : allPages;
  const mappedProt = new Map<number, bigint>();
  let restored = 0;
  // 0. memory placed beforehand (a live migration's pre-copy): keep what the dump's plain
  // writable anonymous VMAs cover, drop the rest.
  let keep: Run[] = [];
  if (prefilled !== undefined) {
    const reusable = normalize(vmas.filter(isReusable).map(vmaRun));
    keep = intersect(prefilled.mapped, reusable);
    for (const r of subtract(prefilled.mapped, keep))
      inj.syscallOrThrow('munmap', [pageAddr(r.start), BigInt(r.end - r.start) * PAGE]);
    const covered = allPages instanceof PageChain ? await allPages.coverage() : coverageOf(pages);
    // Kept pages the dump does not have were dropped since (MADV_DONTNEED, say): zero them.
    for (const r of subtract(keep, covered))
      inj.syscallOrThrow('madvise', [pageAddr(r.start), BigInt(r.end - r.start) * PAGE, MADV_DONTNEED]);
    // Kept pages hold their latest pre-copied contents: only the ones this image has anew are
    // read. Inherited ones hold the parent's: all are read, and compared (below).
    const wanted = prefilled.isInherited === true ? covered : subtract(covered, subtract(keep, prefilled.present));
    pages = allPages instanceof PageChain ? await allPages.sourcesIn(wanted) : clipSources(pages, wanted);
    log().info(
      `${prefilled.isInherited === true ? 'Inherited' : 'Pre-copied'} memory: ${countPages(keep)} pages kept, ` +
        `${countPages(prefilled.mapped) - countPages(keep)} dropped`,
    );
  } else if (allPages instanceof PageChain) {
    pages = await allPages.sources();
  }
  // Files mapped ahead: kept for the dump's VMA of the same file, unmapped otherwise.
  const premapped = keepPremappedFiles(inj, vmas, prefilled?.files ?? [], fileName);
  // CRIU also dumps the vDSO's pages; the restored task gets this kernel's own (restoreVdso).
  pages = clipOutSources(pages, normalize(vmas.filter(isSpecial).map(vmaRun)));
  // Which VMAs get pages written (mapped writable for it): after the pre-copied ones are left out.
  const withPages = vmasWithPages(vmas, pages);
  // Pages in a program's or library's code: written there through ptrace, by a debugger's
  // breakpoint or CRIU's own infection of the task (its dumps have such a page). They go in
  // through /proc/PID/mem, so that the mapping is never made writable: the kernel would mark it
  // accountable for good, which the original code mapping was not.
  const codeWithPages = new Set(
    [...withPages].filter((i) => {
      const v = vmas[i] as Vma;
      const isCode = (v.prot & (PROT_WRITE | PROT_EXEC)) === PROT_EXEC;
      return isCode && (v.status & VMA_AREA.FILE_PRIVATE) !== 0 && (v.flags & MAP_SHARED) === 0n;
    }),
  );
  for (const i of codeWithPages) withPages.delete(i);
  // 1. map (and fill shared anonymous memory, whose pages are not in the task's pagemap). A file
  // is opened once for all its VMAs (a library has four or five), closed after the last mmap.
  // The plain mmaps, a few hundred for a program with many libraries, are made together at the
  // end (mapAll: one chain of injected calls), each at its own address.
  const openFiles = new Map<string, bigint>();
  const maps: MapCall[] = [];
  const preparing: InjectedCall[] = [];
  try {
    for (let i = 0; i < vmas.length; i++) {
      const v = vmas[i] as Vma;
      if (isSpecial(v) || (v.status & VMA_AREA.REGULAR) === 0 || (v.status & VMA_AREA.MEMFD) !== 0) continue;
      if ((v.status & VMA_AREA.SYSVIPC) !== 0) {
        if (mappedProt.has(i)) continue; // attached with the first piece of its attachment
        attachSysv(inj, vmas, i, mappedProt, sysv);
        continue;
      }
      if ((v.status & VMA_AREA.ANON_SHARED) !== 0) {
        if (mappedProt.has(i)) continue; // mapped with the first piece of its object
        restored += await mapAnonShared(inj, vmas, i, imagesDir, mappedProt, sharedObjects);
        continue;
      }
      const len = v.end - v.start;
      const isPrivate = (v.flags & MAP_SHARED) === 0n;
      const prot = isPrivate && withPages.has(i) ? v.prot | PROT_WRITE : v.prot;
      if (keep.length > 0 && isReusable(v)) {
        // Around the kept memory: the new pieces merge with it into the one VMA, then it gets its
        // protections in step 3. A skeleton maps its memory read-write (skeleton.ts), whatever
        // the VMA had (JIT code is rwx); inherited memory has the parent's, the same as the VMA's.
        const keptProt = prefilled?.isInherited === true ? v.prot : PROT_READ | PROT_WRITE;
        const flags = (v.flags & ~MAP_FIXED) | MAP_FIXED_NOREPLACE;
        for (const r of subtract([vmaRun(v)], keep))
          maps.push({
            start: pageAddr(r.start),
            len: BigInt(r.end - r.start) * PAGE,
            prot: keptProt,
            flags,
            fd: -1n,
            pgoff: 0n,
          });
        mappedProt.set(i, keptProt);
        continue;
      }
      const isFile = (v.status & (VMA_AREA.FILE_PRIVATE | VMA_AREA.FILE_SHARED)) !== 0;
      if (premapped.has(i)) {
        // Its pages are written below: writable until then, as a new mapping would be.
        if (prot !== v.prot) preparing.push({ name: 'mprotect', args: () => [v.start, len, prot] });
        mappedProt.set(i, prot);
        continue;
      }
      let fd = -1n;
      if (isFile) {
        const name = fileName(v.shmid);
        const mode = v.fdflags === O_RDWR ? O_RDWR : O_RDONLY;
        const key = `${mode}\0${name}`;
        try {
          fd = openFiles.get(key) ?? BigInt(openInTask(inj, name, mode));
        } finally {
          inj.resetScratch();
        }
        openFiles.set(key, fd);
      }
      const flags = (v.flags & ~MAP_FIXED) | MAP_FIXED_NOREPLACE;
      maps.push({ start: v.start, len, prot, flags, fd, pgoff: isFile ? v.pgoff : 0n });
      mappedProt.set(i, prot);
    }
    mapAll(inj, maps);
    inj.runCallsOrThrow(preparing);
  } finally {
    const closes = [...openFiles.values()].map((fd): InjectedCall => ({ name: 'close', args: () => [fd] }));
    inj.runCallsOrThrow(closes);
  }
  // 2. fill from the pages files (this image's and its parents'): src/mem/fill-pages.ts; memory
  // just mapped private anonymous (all of it, unless pre-copied memory was kept) by UFFDIO_COPY.
  const isInherited = prefilled?.isInherited === true;
  const fresh =
    prefilled === undefined || isInherited
      ? freshAnonRuns(vmas, mappedProt, withPages).filter((r) => intersect([r], keep).length === 0)
      : [];
  const code = normalize([...codeWithPages].map((i) => vmaRun(vmas[i] as Vma)));
  // Inherited memory: a page is written only where it differs from the parent's.
  const compared = isInherited ? clipSources(pages, keep) : [];
  if (isInherited) pages = clipOutSources(pages, keep);
  restored += await fillMemory(inj, clipOutSources(pages, code), fresh);
  if (code.length > 0) restored += await fillCode(inj.pid, clipSources(pages, code));
  const cow = compared.length === 0 ? { compared: 0, written: 0 } : await fillChangedPages(inj.pid, compared);
  restored += cow.written;
  // 3. protections and advice (in one chain of injected calls)
  const finishing: InjectedCall[] = [];
  for (let i = 0; i < vmas.length; i++) {
    const v = vmas[i] as Vma;
    const prot = mappedProt.get(i);
    if (prot === undefined) continue;
    if (prot !== v.prot) finishing.push({ name: 'mprotect', args: () => [v.start, v.end - v.start, v.prot] });
    finishing.push(...adviceCalls(v));
  }
  inj.runCallsOrThrow(finishing);
  return { pagesRestored: restored, pagesCompared: cow.compared, pagesSkippedCow: cow.compared - cow.written };
}

/** Write pages into mappings that are not writable, through /proc/PID/mem. */
async function fillCode(pid: number, pages: readonly PageSource[]): Promise<number> {
  const memFd = sys.open(`/proc/${pid}/mem`, O_RDWR | O_CLOEXEC, 0);
  try {
    return await fillPages(pid, pages, { memFd });
  } finally {
    sys.close(memFd);
  }
}

/** Fills of private anonymous memory smaller than this go by process_vm_writev (not worth a userfaultfd). */
const UFFD_FILL_MIN_BYTES = 16 << 20;

/**
 * The private anonymous VMAs just mapped (step 1) that get pages, as page runs: one per VMA, not
 * merged, as one UFFDIO_COPY must stay within one VMA (a MAP_GROWSDOWN one next to a plain one,
 * say, is two).
 */
function freshAnonRuns(
  vmas: readonly Vma[],
  mappedProt: ReadonlyMap<number, bigint>,
  withPages: ReadonlySet<number>,
): Run[] {
  const runs: Run[] = [];
  vmas.forEach((v, i) => {
    const isAnonPrivate =
      (v.status & VMA_AREA.ANON_PRIVATE) !== 0 &&
      (v.status & (VMA_AREA.FILE_PRIVATE | VMA_AREA.FILE_SHARED | VMA_AREA.ANON_SHARED)) === 0 &&
      (v.flags & MAP_SHARED) === 0n;
    if (isAnonPrivate && mappedProt.has(i) && withPages.has(i)) runs.push(vmaRun(v));
  });
  return runs.sort((a, b) => a.start - b.start);
}

/**
 * Write `pages` into the task: those in `freshAnon` by UFFDIO_COPY (src/mem/uffd-fill.ts) when
 * they are many, the others (and all of them when no userfaultfd can be had) by process_vm_writev.
 */
async function fillMemory(inj: Injector, pages: readonly PageSource[], freshAnon: readonly Run[]): Promise<number> {
  const anonPages = freshAnon.length === 0 ? [] : clipSources(pages, freshAnon);
  const anonBytes = anonPages.reduce((n, s) => n + s.nrPages, 0) * Number(PAGE);
  const uffd = anonBytes >= UFFD_FILL_MIN_BYTES ? openUffdFill(inj, freshAnon) : null;
  if (uffd === null) return fillPages(inj.pid, pages);
  try {
    const viaUffd = clipSources(anonPages, uffd.runs);
    const rest = clipOutSources(pages, uffd.runs);
    return (await fillPages(inj.pid, viaUffd, { uffd: uffd.fd })) + (await fillPages(inj.pid, rest));
  } finally {
    uffd.close();
  }
}

/**
 * Memory already in the task before its restore proper: anonymous private RW mappings covering
 * `mapped`. Either a live migration's pre-copied contents (skeleton.ts), the latest but for
 * `present`, the pages the final image itself holds (PE_PRESENT), which are newer; or, with
 * isInherited, the parent's memory the process was forked with (inheritMemory): every page the
 * image has there is compared, and written only where it differs, so that the rest stays shared
 * copy-on-write with the parent, as it was when dumped.
 */
export interface Prefilled {
  mapped: Run[];
  present: Run[];
  isInherited?: boolean;
  /** File VMAs a skeleton mapped ahead (skeleton.ts): kept where the dump has them unchanged. */
  files?: readonly PremappedFile[];
}

/** A file VMA mapped ahead, and the file it maps (as it was then). */
export interface PremappedFile extends FileVmaLayout {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
}

/**
 * A process just forked from its parent's stub, once the parent's memory is restored: keep the
 * parent's private anonymous VMAs that the process had too (same range, protections and flags,
 * both plain writable memory), unmap every other mapping but the scratch area, close every fd.
 * What is kept goes to restoreMemory as Prefilled.
 */
export function inheritMemory(
  inj: Injector,
  parentMm: ImageEntry,
  mm: ImageEntry,
  scratch: { start: bigint; end: bigint },
): Prefilled {
  const theirs = vmasOf(parentMm).filter(isReusable);
  const same = (a: Vma, b: Vma): boolean =>
    a.start === b.start && a.end === b.end && a.prot === b.prot && a.flags === b.flags && a.madv === b.madv;
  const kept = pageRuns(vmasOf(mm).filter((v) => isReusable(v) && theirs.some((w) => same(v, w))));
  const held = normalize([...pageRuns([scratch]), ...kept]);
  const maps = (readMaps(inj.pid) ?? []).filter((m) => m.start < TASK_SIZE);
  for (const r of subtract(pageRuns(maps), held))
    inj.syscallOrThrow('munmap', [pageAddr(r.start), BigInt(r.end - r.start) * PAGE]);
  inj.syscallOrThrow('close_range', [0n, 0xffff_ffffn, 0n]);
  return { mapped: kept, present: [], isInherited: true };
}

/** A VMA pre-copied memory can become: plain writable private anonymous memory. */
function isReusable(v: Vma): boolean {
  return (
    (v.status & VMA_AREA.ANON_PRIVATE) !== 0 &&
    (v.status & (VMA_AREA.STACK | VMA_AREA.FILE_PRIVATE | VMA_AREA.FILE_SHARED)) === 0 &&
    (v.flags & (MAP_SHARED | BigInt(MAP.GROWSDOWN) | BigInt(MAP.NORESERVE))) === 0n &&
    (v.prot & PROT_WRITE) !== 0n
  );
}

function mapAt(
  inj: Injector,
  start: bigint,
  len: bigint,
  prot: bigint,
  flags: bigint,
  fd: bigint,
  pgoff: bigint,
): void {
  mapAll(inj, [{ start, len, prot, flags, fd, pgoff }]);
}

/** The madvise calls that give VMA `v` its advice, and its mlock. */
function adviceCalls(v: Vma): InjectedCall[] {
  const calls: InjectedCall[] = [];
  for (let advice = 0n; advice < 64n; advice++)
    if ((v.madv & (1n << advice)) !== 0n)
      calls.push({ name: 'madvise', args: () => [v.start, v.end - v.start, advice] });
  if (v.isLocked) calls.push({ name: 'mlock', args: () => [v.start, v.end - v.start] });
  return calls;
}

/**
 * The VMAs of `vmas` (by index) that a skeleton mapped ahead, the same VMA of the same file: the
 * dump's file entry names the path mapped, and the file there is still the one mapped (inode,
 * size, mtime). Every other file VMA mapped ahead is unmapped.
 */
function keepPremappedFiles(
  inj: Injector,
  vmas: readonly Vma[],
  files: readonly PremappedFile[],
  fileName: (id: number) => string,
): Set<number> {
  const kept = new Set<number>();
  const gone: PremappedFile[] = [];
  const fileVmaAt = new Map<bigint, number>();
  vmas.forEach((v, i) => {
    if ((v.status & (VMA_AREA.FILE_PRIVATE | VMA_AREA.FILE_SHARED)) !== 0 && (v.status & VMA_AREA.MEMFD) === 0)
      fileVmaAt.set(v.start, i);
  });
  const isUnchanged = new Map<string, boolean>(); // by path: a library has four or five VMAs
  for (const f of files) {
    const i = fileVmaAt.get(f.start);
    const v = i === undefined ? undefined : vmas[i];
    const isSame =
      v !== undefined &&
      v.end === f.end &&
      v.prot === BigInt(f.prot) &&
      v.flags === BigInt(f.flags) &&
      v.pgoff === f.pgoff &&
      v.fdflags === f.fdflags &&
      fileName(v.shmid) === f.path;
    if (isSame && !isUnchanged.has(f.path)) isUnchanged.set(f.path, isStillTheFile(inj.pid, f));
    if (isSame && isUnchanged.get(f.path) === true) kept.add(i as number);
    else gone.push(f);
  }
  unmapFiles(inj, gone);
  if (files.length > 0) log().info(`Files mapped ahead: ${kept.size} VMAs kept, ${gone.length} unmapped`);
  return kept;
}

/** Unmap the file VMAs `files` (mapped ahead) in the task of `inj`, in one chain. */
export function unmapFiles(inj: Injector, files: readonly FileVmaLayout[]): void {
  inj.runCallsOrThrow(files.map((f): InjectedCall => ({ name: 'munmap', args: () => [f.start, f.end - f.start] })));
}

/** Whether the file at `f.path` (in the task's root) is still the one `f` maps. */
function isStillTheFile(pid: number, f: PremappedFile): boolean {
  try {
    const st = statSync(`/proc/${pid}/root${f.path}`, { bigint: true });
    return st.dev === f.dev && st.ino === f.ino && st.size === f.size && st.mtimeNs === f.mtimeNs;
  } catch {
    return false;
  }
}

/** One mmap at a fixed address (MAP_FIXED_NOREPLACE in `flags`). */
interface MapCall {
  start: bigint;
  len: bigint;
  prot: bigint;
  flags: bigint;
  fd: bigint;
  pgoff: bigint;
}

/** Make every mmap of `maps` in the task, in one chain; each must land at its address. */
function mapAll(inj: Injector, maps: readonly MapCall[]): void {
  const calls = maps.map((m): InjectedCall => ({
    name: 'mmap',
    args: () => [m.start, m.len, m.prot, m.flags, m.fd, m.pgoff],
  }));
  inj.runCallsOrThrow(calls).forEach((got, k) => {
    const m = maps[k] as MapCall;
    if (got !== m.start)
      throw new ImageError('mm image', `VMA 0x${m.start.toString(16)} was mapped at 0x${got.toString(16)}`);
  });
}

/**
 * The shared anonymous objects a tree's restore has made so far, by dumped shmid: the process
 * that made one, and an address where it maps it.
 */
export type SharedObjects = Map<bigint, { pid: number; addr: bigint }>;

/**
 * Shared anonymous memory: the VMAs of one object (shmid = its dumped inode; contiguous, as the
 * dump checked) are mapped at once with mmap(MAP_SHARED | MAP_ANONYMOUS), so that the kernel makes
 * a shmem object of its own, shown as "/dev/zero (deleted)" as before (only its inode number is
 * new), filled, and split again by the mprotects of step 3. Returns the pages filled.
 *
 * In a tree, an object another process made already (`shared`) is mapped from there instead:
 * opened through /proc/PID/map_files/ of that process's mapping, inside this one, and mapped
 * MAP_SHARED at this process's offset; its pages are in it already.
 */
async function mapAnonShared(
  inj: Injector,
  vmas: readonly Vma[],
  first: number,
  imagesDir: string,
  mappedProt: Map<number, bigint>,
  shared?: SharedObjects,
): Promise<number> {
  const head = vmas[first] as Vma;
  const group: number[] = [];
  let end = head.start;
  for (let j = first; j < vmas.length; j++) {
    const o = vmas[j] as Vma;
    // A System V attachment is marked shared anonymous too (CRIU's way): never of this object.
    const isObject = (o.status & VMA_AREA.ANON_SHARED) !== 0 && (o.status & VMA_AREA.SYSVIPC) === 0;
    if (!isObject || o.shmid !== head.shmid) continue;
    if (o.start !== end) break;
    group.push(j);
    end = o.end;
  }
  const len = end - head.start;
  const shmid = BigInt(head.shmid);
  const made = shared?.get(shmid);
  if (made !== undefined) {
    const fd = openSharedObject(inj, made.pid, made.addr);
    try {
      const flags = (head.flags & ~(MAP_FIXED | MAP_ANONYMOUS)) | MAP_SHARED | MAP_FIXED_NOREPLACE;
      mapAt(inj, head.start, len, head.prot, flags, fd, head.pgoff);
    } finally {
      inj.syscallOrThrow('close', [fd]);
      inj.resetScratch();
    }
    for (const j of group) mappedProt.set(j, head.prot);
    return 0;
  }
  const hasPages = existsSync(path.join(imagesDir, shmemPagemapFileName(shmid)));
  const prot = hasPages ? head.prot | PROT_WRITE : head.prot;
  const flags = (head.flags & ~MAP_FIXED) | MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
  mapAt(inj, head.start, len, prot, flags, -1n, 0n);
  for (const j of group) mappedProt.set(j, prot);
  shared?.set(shmid, { pid: inj.pid, addr: head.start });
  return fillShmemMapping(inj, imagesDir, shmid, head.start, head.pgoff, len);
}

/**
 * A System V attachment: its VMAs (contiguous, one segment; mprotect splits one) attached at once
 * with every protection any of them has, then mprotected piece by piece in step 3.
 */
function attachSysv(
  inj: Injector,
  vmas: readonly Vma[],
  first: number,
  mappedProt: Map<number, bigint>,
  sysv: SysvSegments | undefined,
): void {
  const head = vmas[first] as Vma;
  const group = [first];
  for (let j = first + 1; j < vmas.length; j++) {
    const o = vmas[j] as Vma;
    const prev = vmas[j - 1] as Vma;
    if ((o.status & VMA_AREA.SYSVIPC) === 0 || o.shmid !== head.shmid || o.start !== prev.end) break;
    group.push(j);
  }
  const prot = group.reduce((p, j) => p | (vmas[j] as Vma).prot, 0n);
  if (sysv === undefined)
    throw new ImageError(
      'mm image',
      `System V shared memory at 0x${head.start.toString(16)} needs its segment's image`,
    );
  sysv.attach(inj, head.shmid, head.start, prot);
  for (const j of group) mappedProt.set(j, prot);
}

/**
 * Open, inside the task of `inj`, the shmem object process `pid` maps at `addr`: by the
 * map_files entry of the VMA that holds `addr` there now (the mprotects of its restore may have
 * split the first mapping).
 */
function openSharedObject(inj: Injector, pid: number, addr: bigint): bigint {
  const vma = (readMaps(pid) ?? []).find((m) => m.start <= addr && addr < m.end);
  if (vma === undefined)
    throw new TaskError(pid, `Process ${pid} no longer maps its shared memory at 0x${addr.toString(16)}`);
  const name = `/proc/${pid}/map_files/${vma.start.toString(16)}-${vma.end.toString(16)}`;
  return BigInt(openInTask(inj, name, O_RDWR));
}

/**
 * The memfd mappings, once the fds are restored: each VMA maps the memfd its MEMFD file entry
 * names, through the task's own fd of that memfd when it has one (so the mapping and the fd share
 * pages, as before), else a memfd made here (memfd_create in the task, contents, size, owner and
 * mode written through criu's pidfd_getfd duplicate, seals last) and closed once mapped.
 */
export async function restoreMemfdMappings(
  inj: Injector,
  pid: number,
  mm: ImageEntry,
  files: readonly ImageEntry[],
  fdinfo: readonly ImageEntry[],
  imagesDir: string,
  entriesOf: (kind: string) => Promise<readonly { entry: ImageEntry }[]>,
  tree?: TreeMemfds,
): Promise<void> {
  const vmas = ((mm['vmas'] as ImageEntry[] | undefined) ?? [])
    .map(toVma)
    .filter((v) => (v.status & VMA_AREA.MEMFD) !== 0);
  if (vmas.length === 0) return;
  const inodeOfFile = new Map<number, number>();
  for (const f of files) {
    const memfd = f['memfd'] as ImageEntry | undefined;
    if (memfd !== undefined) inodeOfFile.set(Number(f['id']), Number(memfd['inode_id']));
  }
  const fdOfInode = new Map<number, number>();
  for (const fi of fdinfo) {
    const inode = inodeOfFile.get(Number(fi['id']));
    if (inode !== undefined && !fdOfInode.has(inode)) fdOfInode.set(inode, Number(fi['fd']));
  }
  const inodes = (await entriesOf('MEMFD_INODE')).map((r) => r.entry);
  const made = new Map<number, { fd: number; seals: number }>();
  try {
    for (const v of vmas) {
      const inodeId = inodeOfFile.get(v.shmid);
      if (inodeId === undefined)
        throw new ImageError('files.img', `the memfd file ${v.shmid} of VMA 0x${v.start.toString(16)} is missing`);
      const taskFd = fdOfInode.get(inodeId);
      const elsewhere = taskFd === undefined && !made.has(inodeId) ? tree?.pathOf(inodeId) : undefined;
      let fd: number;
      let isOwned = false;
      if (taskFd !== undefined || elsewhere !== undefined) {
        const from = elsewhere ?? `/proc/self/fd/${String(taskFd)}`;
        fd = openInTask(inj, from, v.fdflags === O_RDWR ? O_RDWR : O_RDONLY);
        isOwned = true;
      } else {
        let m = made.get(inodeId);
        if (m === undefined) {
          const inode = inodes.find((e) => Number(e['inode_id']) === inodeId);
          if (inode === undefined) throw new ImageError('memfd.img', `no memfd inode ${inodeId}`);
          m = { fd: await createMemfd(inj, pid, inode, imagesDir), seals: Number(inode['seals'] ?? 0) };
          made.set(inodeId, m);
          tree?.madeAt(inodeId, pid, v.start);
        }
        fd = m.fd;
      }
      try {
        mapAt(inj, v.start, v.end - v.start, v.prot, (v.flags & ~MAP_FIXED) | MAP_FIXED_NOREPLACE, BigInt(fd), v.pgoff);
        inj.runCallsOrThrow(adviceCalls(v));
      } finally {
        if (isOwned) inj.syscallOrThrow('close', [BigInt(fd)]);
        inj.resetScratch();
      }
    }
    for (const m of made.values()) {
      // Seals last: F_SEAL_WRITE and friends would forbid the writes and the shared mappings.
      if (m.seals === 0) continue;
      const ret = inj.syscall(SYSCALLS_X86_64.fcntl, [BigInt(m.fd), BigInt(F_ADD_SEALS), BigInt(m.seals)]);
      if (ret < 0n)
        log().warn(`Cannot seal a mapped memfd of task ${pid} (seals 0x${m.seals.toString(16)}): errno ${-ret}`);
    }
  } finally {
    for (const m of made.values()) inj.syscall(SYSCALLS_X86_64.close, [BigInt(m.fd)]);
  }
}

/**
 * In a tree: where a memfd another process of the tree has already is, as a path to open in
 * this one (/proc/PID/fd/N of its fd there, or /proc/PID/map_files/ of its mapping); and the
 * record of one this process makes for a mapping.
 */
export interface TreeMemfds {
  pathOf(inodeId: number): string | undefined;
  madeAt(inodeId: number, pid: number, addr: bigint): void;
}

/** memfd_create in the task, then its contents and attributes from criu's side. Returns its fd there. */
async function createMemfd(inj: Injector, pid: number, inode: ImageEntry, imagesDir: string): Promise<number> {
  const name = String(inode['name']);
  const fd = Number(
    inj.syscallOrThrow('memfd_create', [inj.pushData(Buffer.from(`${name}\0`)), BigInt(MFD_ALLOW_SEALING)]),
  );
  inj.resetScratch();
  const pidfd = sys.pidfdOpen(pid, 0);
  let local = -1;
  try {
    local = sys.pidfdGetfd(pidfd, fd, 0);
    await readShmemRuns(imagesDir, BigInt(inode['shmid'] as number), (offset, data) => {
      for (let done = 0; done < data.length;)
        done += sys.pwrite(local, data, done, data.length - done, offset + BigInt(done));
    });
    ftruncateSync(local, Number(inode['size']));
    fchownSync(local, Number(inode['uid']), Number(inode['gid']));
    if (inode['mode'] !== undefined) fchmodSync(local, Number(inode['mode']) & 0o7777);
  } catch (err) {
    inj.syscall(SYSCALLS_X86_64.close, [BigInt(fd)]);
    throw err;
  } finally {
    if (local >= 0) sys.close(local);
    sys.close(pidfd);
  }
  return fd;
}

/** Put the vDSO (and vvar) back where they were, and check the layout matches the dump. */
export function restoreVdso(inj: Injector, mm: ImageEntry, pid: number): void {
  const vmas = vmasOf(mm);
  const vvar = vmas.filter((v) => (v.status & VMA_AREA.VVAR) !== 0);
  const vdso = vmas.find((v) => (v.status & VMA_AREA.VDSO) !== 0);
  if (vdso === undefined) return; // the task had unmapped it
  const first = vvar.length > 0 ? vvar.reduce((a, b) => (a.start < b.start ? a : b)) : vdso;
  inj.syscallOrThrow('arch_prctl', [ARCH_MAP_VDSO_64, first.start]);
  const now = readMaps(pid) ?? [];
  const got = now.find((m) => m.path === '[vdso]');
  if (got === undefined || got.start !== vdso.start || got.end !== vdso.end)
    throw new UnsupportedError(
      'vdso-layout',
      `Cannot restore: this kernel's vDSO layout differs from the dumped one (vdso at 0x${vdso.start.toString(16)}-0x${vdso.end.toString(16)} in the dump, 0x${got?.start.toString(16) ?? '?'} here)`,
    );
}

/** prctl(PR_SET_MM, PR_SET_MM_MAP): the mm fields, the auxv and the exe link. */
export function restoreMmFields(inj: Injector, mm: ImageEntry, exePath: string): void {
  const auxv = ((mm['mm_saved_auxv'] as bigint[] | undefined) ?? []).map((v) => BigInt(v));
  const auxvBuf = Buffer.alloc(auxv.length * 8);
  auxv.forEach((v, i) => auxvBuf.writeBigUInt64LE(BigInt.asUintN(64, v), i * 8));
  const auxvAddr = inj.pushData(auxvBuf);
  const exeFd = openInTask(inj, exePath, O_RDONLY);
  try {
    // struct prctl_mm_map: 11 u64 fields, u64 auxv, u32 auxv_size, u32 exe_fd
    const map = Buffer.alloc(104);
    const fields = [
      'mm_start_code',
      'mm_end_code',
      'mm_start_data',
      'mm_end_data',
      'mm_start_brk',
      'mm_brk',
      'mm_start_stack',
      'mm_arg_start',
      'mm_arg_end',
      'mm_env_start',
      'mm_env_end',
    ];
    fields.forEach((f, i) => map.writeBigUInt64LE(BigInt((mm[f] as bigint | undefined) ?? 0n), i * 8));
    map.writeBigUInt64LE(auxvAddr, 88);
    map.writeUInt32LE(auxvBuf.length, 96);
    map.writeUInt32LE(exeFd, 100);
    const mapAddr = inj.pushData(map);
    inj.syscallOrThrow('prctl', [PR_SET_MM, PR_SET_MM_MAP, mapAddr, 104n, 0n]);
  } finally {
    inj.syscallOrThrow('close', [BigInt(exeFd)]);
    inj.resetScratch();
  }
  const PR_SET_DUMPABLE = 4n;
  if (mm['dumpable'] !== undefined)
    inj.syscallOrThrow('prctl', [PR_SET_DUMPABLE, BigInt(Number(mm['dumpable'])), 0n, 0n, 0n]);
  const PR_SET_THP_DISABLE = 41n;
  if (mm['thp_disabled'] === true) inj.syscallOrThrow('prctl', [PR_SET_THP_DISABLE, 1n, 0n, 0n, 0n]);
}
