/**
 * /proc/PID/auxv: the ELF auxiliary vector the kernel built at execve (mm->saved_auxv), as native
 * (little-endian on x86-64) u64 words, pairs of type and value, ending with the AT_NULL pair:
 *
 *   +----------+-----------------+----------+-----------------+-----+---------+---------+
 *   | type u64 | value u64       | type u64 | value u64       | ... | 0 (u64) | 0 (u64) |
 *   | 33       | 0x7f2dd4624000  | 51       | 3376            |     | AT_NULL             |
 *   +----------+-----------------+----------+-----------------+-----+---------+---------+
 *
 * The file stops right after the AT_NULL pair (fs/proc/base.c, auxv_read). It does not change after
 * execve except through prctl(PR_SET_MM, PR_SET_MM_AUXV / PR_SET_MM_MAP), which is how restore
 * puts it back.
 *
 * CRIU's mm.img `mm_saved_auxv` is the flat list of words WITHOUT the terminating AT_NULL pair
 * (CRIU 4.2 golden images: 44 words, 22 pairs, the last [28 AT_RSEQ_ALIGN, 32]); the kernel
 * appends AT_NULL again when the vector is handed back with PR_SET_MM_MAP.
 */

import { readProcBytes, taskDir } from './read.js';

/** The AT_* types worth naming (uapi/linux/auxvec.h, asm/auxvec.h). */
export const AT = {
  AT_NULL: 0n,
  AT_PHDR: 3n,
  AT_PHENT: 4n,
  AT_PHNUM: 5n,
  AT_PAGESZ: 6n,
  AT_BASE: 7n,
  AT_FLAGS: 8n,
  AT_ENTRY: 9n,
  AT_UID: 11n,
  AT_EUID: 12n,
  AT_GID: 13n,
  AT_EGID: 14n,
  AT_PLATFORM: 15n,
  AT_HWCAP: 16n,
  AT_CLKTCK: 17n,
  AT_SECURE: 23n,
  AT_RANDOM: 25n,
  AT_HWCAP2: 26n,
  AT_RSEQ_FEATURE_SIZE: 27n,
  AT_RSEQ_ALIGN: 28n,
  AT_EXECFN: 31n,
  AT_SYSINFO_EHDR: 33n,
  AT_MINSIGSTKSZ: 51n,
} as const;

/** One auxv entry: [type, value]. */
export type AuxvPair = readonly [type: bigint, value: bigint];

/** The pairs before AT_NULL. A vector without AT_NULL (truncated) is rejected. */
export function parseAuxv(bytes: Uint8Array): AuxvPair[] {
  if (bytes.byteLength % 16 !== 0) throw new Error(`Cannot parse auxv: ${bytes.byteLength} bytes is not whole pairs`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const pairs: AuxvPair[] = [];
  for (let off = 0; off < bytes.byteLength; off += 16) {
    const type = view.getBigUint64(off, true);
    if (type === AT.AT_NULL) return pairs;
    pairs.push([type, view.getBigUint64(off + 8, true)]);
  }
  throw new Error('Cannot parse auxv: no AT_NULL entry');
}

/** The words as mm.img's mm_saved_auxv stores them: type, value, … without the AT_NULL pair. */
export function toSavedAuxv(pairs: readonly AuxvPair[]): bigint[] {
  return pairs.flatMap(([type, value]) => [type, value]);
}

/** The value of the first entry of `type`, or undefined. */
export function auxvValue(pairs: readonly AuxvPair[], type: bigint): bigint | undefined {
  return pairs.find(([t]) => t === type)?.[1];
}

/** The auxv pairs of a task, or null when it is gone. */
export function readAuxv(pid: number): AuxvPair[] | null {
  const bytes = readProcBytes(`${taskDir(pid)}/auxv`);
  return bytes === null ? null : parseAuxv(bytes);
}
