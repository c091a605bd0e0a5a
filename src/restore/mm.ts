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

import path from 'node:path';
import { ImageError, UnsupportedError } from '../errors.js';
import { PE_PARENT, PE_PRESENT, type ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import { readMaps } from '../proc/maps.js';
import { VMA_AREA } from '../dump/vma.js';
import { openInTask } from '../files/task-io.js';

const PAGE = 4096n;
const PROT_WRITE = 2n;
const MAP_FIXED_NOREPLACE = 0x100000n;
const ARCH_MAP_VDSO_64 = 0x2003n;
const PR_SET_MM = 35n;
const PR_SET_MM_MAP = 14n;
const O_RDONLY = 0;
const O_RDWR = 2;

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
}

function toVma(e: ImageEntry): Vma {
  return {
    start: BigInt(e['start'] as bigint),
    end: BigInt(e['end'] as bigint),
    prot: BigInt(Number(e['prot'])),
    flags: BigInt(Number(e['flags'])),
    status: Number(e['status']),
    pgoff: BigInt((e['pgoff'] as bigint | undefined) ?? 0n),
    shmid: Number(e['shmid'] ?? 0),
    madv: BigInt((e['madv'] as bigint | undefined) ?? 0n),
    fdflags: Number(e['fdflags'] ?? 0),
  };
}

export function dumpedVmas(mm: ImageEntry): { start: bigint; end: bigint }[] {
  return ((mm['vmas'] as ImageEntry[] | undefined) ?? []).map(toVma);
}

/** Map every VMA and fill it. `fileName` resolves a files.img id to its path. */
export function restoreMemory(
  inj: Injector,
  mm: ImageEntry,
  pagemap: readonly ImageEntry[],
  imagesDir: string,
  pagesId: number,
  fileName: (id: number) => string,
): { pagesRestored: number } {
  const vmas = ((mm['vmas'] as ImageEntry[] | undefined) ?? []).map(toVma);
  const isSpecial = (v: Vma): boolean => (v.status & (VMA_AREA.VDSO | VMA_AREA.VVAR | VMA_AREA.VSYSCALL)) !== 0;
  // 1. map
  for (const v of vmas) {
    if (isSpecial(v)) continue;
    if ((v.status & VMA_AREA.REGULAR) === 0) continue;
    const len = v.end - v.start;
    const fillable = (v.flags & 0x01n) === 0n; // private mappings get their pages from the image
    const prot = fillable ? v.prot | PROT_WRITE : v.prot;
    const isFile = (v.status & (VMA_AREA.FILE_PRIVATE | VMA_AREA.FILE_SHARED)) !== 0;
    let fd = -1n;
    if (isFile) fd = BigInt(openInTask(inj, fileName(v.shmid), v.fdflags === O_RDWR ? O_RDWR : O_RDONLY));
    else if ((v.status & VMA_AREA.ANON_SHARED) !== 0)
      throw new UnsupportedError('vma-anon-shared', 'Cannot restore shared anonymous memory yet');
    try {
      const flags = (v.flags & ~0x10n) | MAP_FIXED_NOREPLACE;
      const got = inj.syscallOrThrow('mmap', [v.start, len, prot, flags, fd, isFile ? v.pgoff : 0n]);
      if (got !== v.start)
        throw new ImageError(`mm image`, `VMA 0x${v.start.toString(16)} was mapped at 0x${got.toString(16)}`);
    } finally {
      if (fd >= 0n) inj.syscallOrThrow('close', [fd]);
      inj.resetScratch();
    }
  }
  // 2. fill
  let restored = 0;
  const pagesFd = BigInt(openInTask(inj, path.resolve(imagesDir, `pages-${pagesId}.img`), O_RDONLY));
  try {
    let offset = 0n;
    for (const e of pagemap) {
      const flags = Number(e['flags'] ?? PE_PRESENT);
      const nr = BigInt((e['nr_pages'] as bigint | undefined) ?? BigInt(Number(e['compat_nr_pages'] ?? 0)));
      const vaddr = BigInt(e['vaddr'] as bigint);
      if ((flags & PE_PARENT) !== 0)
        throw new UnsupportedError('parent-images', 'Cannot restore pages from a parent image yet');
      if ((flags & PE_PRESENT) === 0) continue;
      const len = nr * PAGE;
      let done = 0n;
      while (done < len) {
        const n = inj.syscallOrThrow('pread64', [pagesFd, vaddr + done, len - done, offset + done]);
        if (n === 0n)
          throw new ImageError(
            `pages-${pagesId}.img`,
            `the file ends before page 0x${(vaddr + done).toString(16)}`,
            Number(offset + done),
          );
        done += n;
      }
      offset += len;
      restored += Number(nr);
    }
  } finally {
    inj.syscallOrThrow('close', [pagesFd]);
  }
  // 3. protections and advice
  for (const v of vmas) {
    if (isSpecial(v) || (v.status & VMA_AREA.REGULAR) === 0) continue;
    if ((v.flags & 0x01n) === 0n && (v.prot & PROT_WRITE) === 0n)
      inj.syscallOrThrow('mprotect', [v.start, v.end - v.start, v.prot]);
    for (let advice = 0n; advice < 64n; advice++) {
      if ((v.madv & (1n << advice)) !== 0n) inj.syscallOrThrow('madvise', [v.start, v.end - v.start, advice]);
    }
  }
  return { pagesRestored: restored };
}

/** Put the vDSO (and vvar) back where they were, and check the layout matches the dump. */
export function restoreVdso(inj: Injector, mm: ImageEntry, pid: number): void {
  const vmas = ((mm['vmas'] as ImageEntry[] | undefined) ?? []).map(toVma);
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
