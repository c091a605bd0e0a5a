/**
 * The x86 XSAVE area (PTRACE_GETREGSET NT_X86_XSTATE, standard non-compacted format) and CRIU's
 * user_x86_fpregs_entry / user_x86_xsave_entry fields, both ways.
 *
 *   offset  size  what
 *        0   512  legacy FXSAVE region: cwd u16, swd u16, twd u16 (abridged), fop u16,
 *                 rip u64 @8, rdp u64 @16, mxcsr u32 @24, mxcsr_mask u32 @28,
 *                 st_space 8x16 bytes @32, xmm_space 16x16 bytes @160
 *      512    64  XSAVE header: xstate_bv u64, xcomp_bv u64
 *      576   256  component 2: upper halves of ymm0-15 (ymmh_space)
 *      960    64  component 3: MPX bound registers (bndreg_state)
 *     1024    16  component 4: MPX BNDCFGU/BNDSTATUS (bndcsr_state)
 *     1088    64  component 5: AVX-512 opmask k0-7 (opmask_reg)
 *     1152   512  component 6: upper halves of zmm0-15 (zmm_upper)
 *     1664  1024  component 7: zmm16-31 (hi16_zmm)
 *     2688     8  component 9: PKRU (pkru)
 *
 * The offsets of the standard format are fixed by the architecture for these components
 * (CPUID leaf 0xD reports the same); a component is only stored when its xstate_bv bit is set
 * or the buffer is long enough to hold it.
 */

import type { ImageEntry } from '../images/index.js';

const COMPONENTS = [
  { field: 'ymmh_space', offset: 576, bytes: 256, width: 32 },
  { field: 'bndreg_state', offset: 960, bytes: 64, width: 64 },
  { field: 'bndcsr_state', offset: 1024, bytes: 16, width: 64 },
  { field: 'opmask_reg', offset: 1088, bytes: 64, width: 64 },
  { field: 'zmm_upper', offset: 1152, bytes: 512, width: 64 },
  { field: 'hi16_zmm', offset: 1664, bytes: 1024, width: 64 },
  { field: 'pkru', offset: 2688, bytes: 8, width: 32 },
] as const;

function words32(buf: Buffer, offset: number, count: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push(buf.readUInt32LE(offset + 4 * i));
  return out;
}

function words64(buf: Buffer, offset: number, count: number): bigint[] {
  const out: bigint[] = [];
  for (let i = 0; i < count; i++) out.push(buf.readBigUInt64LE(offset + 8 * i));
  return out;
}

/** CRIU's fpregs entry from an XSAVE (or plain 512-byte FXSAVE) buffer. */
export function decodeXsave(buf: Buffer): ImageEntry {
  const entry: ImageEntry = {
    cwd: buf.readUInt16LE(0),
    swd: buf.readUInt16LE(2),
    twd: buf.readUInt16LE(4),
    fop: buf.readUInt16LE(6),
    rip: buf.readBigUInt64LE(8),
    rdp: buf.readBigUInt64LE(16),
    mxcsr: buf.readUInt32LE(24),
    mxcsr_mask: buf.readUInt32LE(28),
    st_space: words32(buf, 32, 32),
    xmm_space: words32(buf, 160, 64),
  };
  if (buf.length < 576) return entry;
  const xsave: ImageEntry = { xstate_bv: buf.readBigUInt64LE(512) };
  for (const c of COMPONENTS) {
    if (buf.length < c.offset + c.bytes) continue;
    xsave[c.field] = c.width === 32 ? words32(buf, c.offset, c.bytes / 4) : words64(buf, c.offset, c.bytes / 8);
  }
  entry['xsave'] = xsave;
  return entry;
}

/**
 * Write CRIU's fpregs fields over `base`, an XSAVE buffer of the running CPU's size (as
 * PTRACE_GETREGSET returned it for the thread being restored), and return it.
 */
export function encodeXsave(entry: ImageEntry, base: Buffer): Buffer {
  const buf = Buffer.from(base);
  const num = (k: string): number => Number(entry[k] ?? 0);
  buf.writeUInt16LE(num('cwd'), 0);
  buf.writeUInt16LE(num('swd'), 2);
  buf.writeUInt16LE(num('twd'), 4);
  buf.writeUInt16LE(num('fop'), 6);
  buf.writeBigUInt64LE(BigInt((entry['rip'] as bigint | undefined) ?? 0n), 8);
  buf.writeBigUInt64LE(BigInt((entry['rdp'] as bigint | undefined) ?? 0n), 16);
  buf.writeUInt32LE(num('mxcsr') >>> 0, 24);
  // mxcsr_mask is read-only for the CPU: keep the running one.
  ((entry['st_space'] as number[] | undefined) ?? []).forEach((w, i) => buf.writeUInt32LE(w >>> 0, 32 + 4 * i));
  ((entry['xmm_space'] as number[] | undefined) ?? []).forEach((w, i) => buf.writeUInt32LE(w >>> 0, 160 + 4 * i));
  const xsave = entry['xsave'] as ImageEntry | undefined;
  if (xsave === undefined || buf.length < 576) return buf;
  const bv = BigInt((xsave['xstate_bv'] as bigint | number | undefined) ?? 3n);
  for (const c of COMPONENTS) {
    const words = xsave[c.field] as (number | bigint)[] | undefined;
    if (words === undefined || words.length === 0) continue;
    if (buf.length < c.offset + c.bytes) continue;
    words.forEach((w, i) => {
      if (c.width === 32) buf.writeUInt32LE(Number(w) >>> 0, c.offset + 4 * i);
      else buf.writeBigUInt64LE(BigInt(w), c.offset + 8 * i);
    });
  }
  // A feature this CPU lacks makes PTRACE_SETREGSET fail with EINVAL: `cpuinfo check` (--cpu-cap
  // fpu, the default) refuses such images before restore gets here.
  buf.writeBigUInt64LE(bv, 512);
  return buf;
}
