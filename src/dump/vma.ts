/**
 * Turning /proc/PID/smaps entries into CRIU's vma_entry (proto/vma.proto): mmap prot and flags,
 * CRIU's VMA_AREA_* status bits, madvise bits, and which pages of each VMA the dump must copy.
 *
 * Status bits (criu/include/image.h):
 *   REGULAR 1<<0, STACK 1<<1, VSYSCALL 1<<2, VDSO 1<<3, HEAP 1<<5, FILE_PRIVATE 1<<6,
 *   FILE_SHARED 1<<7, ANON_SHARED 1<<8, ANON_PRIVATE 1<<9, SYSVIPC 1<<10, SOCKET 1<<11,
 *   VVAR 1<<12, AIORING 1<<13, MEMFD 1<<14, UNSUPP 1<<31.
 */

import { UnsupportedError } from '../errors.js';
import type { SmapsEntry } from '../proc/smaps.js';

export const VMA_AREA = {
  REGULAR: 1 << 0,
  STACK: 1 << 1,
  VSYSCALL: 1 << 2,
  VDSO: 1 << 3,
  HEAP: 1 << 5,
  FILE_PRIVATE: 1 << 6,
  FILE_SHARED: 1 << 7,
  ANON_SHARED: 1 << 8,
  ANON_PRIVATE: 1 << 9,
  SYSVIPC: 1 << 10,
  SOCKET: 1 << 11,
  VVAR: 1 << 12,
  AIORING: 1 << 13,
  MEMFD: 1 << 14,
} as const;

/** mmap(2) flags and prot (uapi asm-generic/mman*.h). */
export const MAP = {
  SHARED: 0x01,
  PRIVATE: 0x02,
  FIXED: 0x10,
  ANONYMOUS: 0x20,
  GROWSDOWN: 0x100,
  LOCKED: 0x2000,
  NORESERVE: 0x4000,
} as const;
export const PROT = { READ: 0x1, WRITE: 0x2, EXEC: 0x4 } as const;

/** smaps VmFlags mnemonic → madvise(2) advice number; vma_entry.madv holds 1 << advice. */
const MADVISE_BY_FLAG: ReadonlyMap<string, number> = new Map([
  ['sr', 2], // MADV_SEQUENTIAL
  ['rr', 1], // MADV_RANDOM
  ['dc', 10], // MADV_DONTFORK
  ['mg', 12], // MADV_MERGEABLE
  ['hg', 14], // MADV_HUGEPAGE
  ['nh', 15], // MADV_NOHUGEPAGE
  ['dd', 16], // MADV_DONTDUMP
  ['wf', 18], // MADV_WIPEONFORK
]);

/** Which pages of a VMA go into the pages image. */
export type PagesPolicy =
  /** Every present or swapped page (private anonymous memory). */
  | 'anon'
  /** Only pages that are no longer the file's (copied on write) of a private file mapping. */
  | 'cow'
  /**
   * The vDSO's present pages: in the image as CRIU puts them there (CRIU's restore reads the dumped
   * vDSO; criu-ts's maps this kernel's own and skips them), never tracked: the task cannot write them.
   */
  | 'vdso'
  /** None: the contents live elsewhere (a shared file, the kernel's vvar, shmem images). */
  | 'none';

export interface VmaInfo {
  start: bigint;
  end: bigint;
  prot: number;
  flags: number;
  status: number;
  pgoff: bigint;
  madv: bigint;
  /** The mapped file's path (without " (deleted)"), for file-backed VMAs. */
  path: string | undefined;
  isDeleted: boolean;
  /** Open flags the file must be opened with to map it (O_RDONLY 0 or O_RDWR 2). */
  fdflags: number;
  pages: PagesPolicy;
  /** Special kernel areas: "[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", or "". */
  special: string;
  /**
   * The backing inode number (shmem objects: shared anonymous memory and memfds; a System V
   * segment's is its id), else 0.
   */
  inode: number;
}

const DELETED = ' (deleted)';
/** The name the kernel gives a System V segment's file: its key in 8 hex digits. */
const SYSV_NAME = /^\/SYSV[0-9a-f]{8}$/;

/** Classify one VMA. Throws UnsupportedError for kinds criu-ts cannot dump (device memory, ...). */
export function classifyVma(e: SmapsEntry): VmaInfo {
  const m = e.map;
  const f = e.vmFlags;
  const prot = (m.isRead ? PROT.READ : 0) | (m.isWrite ? PROT.WRITE : 0) | (m.isExec ? PROT.EXEC : 0);
  let madv = 0n;
  for (const [flag, advice] of MADVISE_BY_FLAG) if (f.has(flag)) madv |= 1n << BigInt(advice);
  const extra = (f.has('gd') ? MAP.GROWSDOWN : 0) | (f.has('lo') ? MAP.LOCKED : 0) | (f.has('nr') ? MAP.NORESERVE : 0);
  const base = {
    start: e.start,
    end: e.end,
    prot,
    pgoff: m.offset,
    madv,
    fdflags: 0,
    isDeleted: false,
    inode: m.inode,
  };
  const where = `VMA ${m.start.toString(16)}-${m.end.toString(16)} ${m.path}`;
  switch (m.path) {
    case '[vdso]':
      return {
        ...base,
        flags: MAP.PRIVATE | MAP.ANONYMOUS,
        status: VMA_AREA.REGULAR | VMA_AREA.VDSO | VMA_AREA.ANON_PRIVATE,
        pgoff: 0n,
        path: undefined,
        pages: 'vdso',
        special: m.path,
      };
    case '[vvar]':
    case '[vvar_vclock]':
      return {
        ...base,
        flags: MAP.PRIVATE | MAP.ANONYMOUS,
        status: VMA_AREA.REGULAR | VMA_AREA.VVAR | VMA_AREA.ANON_PRIVATE,
        pgoff: 0n,
        path: undefined,
        pages: 'none',
        special: m.path,
      };
    case '[vsyscall]':
      return {
        ...base,
        flags: MAP.PRIVATE | MAP.ANONYMOUS,
        status: VMA_AREA.VSYSCALL | VMA_AREA.ANON_PRIVATE,
        pgoff: 0n,
        path: undefined,
        pages: 'none',
        special: m.path,
      };
    case '[heap]':
      return {
        ...base,
        flags: MAP.PRIVATE | MAP.ANONYMOUS | extra,
        status: VMA_AREA.REGULAR | VMA_AREA.HEAP | VMA_AREA.ANON_PRIVATE,
        pgoff: 0n,
        path: undefined,
        pages: 'anon',
        special: '',
      };
  }
  if (f.has('io') || f.has('pf'))
    throw new UnsupportedError('vma-io', `Cannot dump ${where}: device (VM_IO/VM_PFNMAP) memory`);
  const isShared = f.has('sh');
  const isAnon = m.inode === 0 && (m.path === '' || m.path === '[stack]' || m.path.startsWith('[anon:'));
  if (isAnon) {
    if (isShared)
      throw new UnsupportedError(
        'vma-anon-shared',
        `Cannot dump ${where}: shared anonymous memory without a backing inode`,
      );
    return {
      ...base,
      flags: MAP.PRIVATE | MAP.ANONYMOUS | extra,
      status: VMA_AREA.REGULAR | VMA_AREA.ANON_PRIVATE,
      pgoff: 0n,
      path: undefined,
      pages: 'anon',
      special: '',
    };
  }
  if (m.path.startsWith('['))
    throw new UnsupportedError('vma-special', `Cannot dump ${where}: unknown special mapping`);
  const isDeleted = m.path.endsWith(DELETED);
  const path = isDeleted ? m.path.slice(0, -DELETED.length) : m.path;
  if ((isShared || f.has('ms')) && isDeleted && SYSV_NAME.test(path)) {
    // shmat(2): a segment of System V shared memory, the inode number its id (CRIU's vma.shmid).
    // Its contents go into ipcns-shm-<ns>.img with the segment (src/dump/sysv-shm.ts). Attached
    // read-only it is not VM_SHARED ("sh"), only VM_MAYSHARE ("ms"), as any shared mapping of a
    // file opened read-only.
    return {
      ...base,
      flags: MAP.SHARED | extra,
      status: VMA_AREA.REGULAR | VMA_AREA.SYSVIPC,
      path: undefined,
      pages: 'none',
      special: '',
    };
  }
  if (isShared && path === '/dev/zero' && isDeleted) {
    // MAP_SHARED | MAP_ANONYMOUS: a shmem object of its own; CRIU's shmid is its inode number and
    // its pages go into pagemap-shmem-<shmid>.img.
    return {
      ...base,
      flags: MAP.SHARED | MAP.ANONYMOUS | extra,
      status: VMA_AREA.REGULAR | VMA_AREA.ANON_SHARED,
      path: undefined,
      pages: 'none',
      special: '',
    };
  }
  const isMemfd = path.startsWith('/memfd:') && isDeleted;
  if (isMemfd && !isShared)
    throw new UnsupportedError(
      'vma-memfd-private',
      `Cannot dump ${where}: private mappings of a memfd are not supported yet`,
    );
  if (isShared) {
    const status = VMA_AREA.REGULAR | VMA_AREA.FILE_SHARED | (isMemfd ? VMA_AREA.MEMFD : 0);
    return {
      ...base,
      flags: MAP.SHARED | extra,
      status,
      path,
      isDeleted,
      fdflags: f.has('mw') ? 2 : 0,
      pages: 'none',
      special: '',
    };
  }
  return {
    ...base,
    flags: MAP.PRIVATE | extra,
    status: VMA_AREA.REGULAR | VMA_AREA.FILE_PRIVATE,
    path,
    isDeleted,
    fdflags: 0,
    pages: 'cow',
    special: '',
  };
}
