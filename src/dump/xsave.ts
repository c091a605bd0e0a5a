/**
 * The x86 XSAVE area (PTRACE_GETREGSET NT_X86_XSTATE, standard non-compacted format) and CRIU's
 * user_x86_fpregs_entry / user_x86_xsave_entry fields, both ways.
 *
 *   offset  size  what
 *        0   512  legacy FXSAVE region: cwd u16, swd u16, twd u16 (abridged), fop u16,
 *                 rip u64 @8, rdp u64 @16, mxcsr u32 @24, mxcsr_mask u32 @28,
 *                 st_space 8x16 bytes @32, xmm_space 16x16 bytes @160
 *      512    64  XSAVE header: xstate_bv u64, xcomp_bv u64
 *        ?     ?  component 2: upper halves of ymm0-15 (ymmh_space, 256 bytes)
 *                 component 3: MPX bound registers (bndreg_state, 64)
 *                 component 4: MPX BNDCFGU/BNDSTATUS (bndcsr_state, 16)
 *                 component 5: AVX-512 opmask k0-7 (opmask_reg, 64)
 *                 component 6: upper halves of zmm0-15 (zmm_upper, 512)
 *                 component 7: zmm16-31 (hi16_zmm, 1024)
 *                 component 9: PKRU (pkru, 8)
 *
 * Where a component sits is the CPU's to say: CPUID leaf 0xD, sub-leaf i, gives its size (EAX) and
 * offset (EBX). Intel CPUs put the AVX-512 components after MPX's (opmask at 1088); AMD CPUs, which
 * have no MPX, put them right after AVX's (opmask at 832), so fixed offsets lose the registers on
 * one of the two. As CRIU does, a component is written to the image when this CPU has it (XCR0),
 * whether or not the task has used it.
 */

import { NATIVE_CPU, type CpuSource } from '../cpuinfo/index.js';
import type { ImageEntry } from '../images/index.js';

/** A component of the XSAVE area as CRIU's image names it. */
export interface XsaveComponent {
  field: string;
  /** Where it sits in this CPU's XSAVE area. */
  offset: number;
  /** Its bytes in the image's field (the architecture's size of the component). */
  bytes: number;
  /** The image field's word size. */
  width: 32 | 64;
}

/** The XSAVE state components of CRIU's user_x86_xsave_entry: component number, field, bytes, width. */
const KNOWN = [
  { index: 2, field: 'ymmh_space', bytes: 256, width: 32 },
  { index: 3, field: 'bndreg_state', bytes: 64, width: 64 },
  { index: 4, field: 'bndcsr_state', bytes: 16, width: 64 },
  { index: 5, field: 'opmask_reg', bytes: 64, width: 64 },
  { index: 6, field: 'zmm_upper', bytes: 512, width: 64 },
  { index: 7, field: 'hi16_zmm', bytes: 1024, width: 64 },
  { index: 9, field: 'pkru', bytes: 8, width: 32 },
] as const;

/** The components `cpu` has enabled (XCR0) and where its XSAVE area keeps them (CPUID 0xD). */
export function xsaveLayout(cpu: CpuSource): XsaveComponent[] {
  const [maxLeaf] = cpu.cpuid(0, 0);
  const [, , osxsave] = cpu.cpuid(1, 0);
  if (maxLeaf < 0xd || (osxsave & (1 << 27)) === 0) return [];
  const xcr0 = cpu.xgetbv(0);
  const out: XsaveComponent[] = [];
  for (const c of KNOWN) {
    if ((xcr0 & (1n << BigInt(c.index))) === 0n) continue;
    const [size, offset] = cpu.cpuid(0xd, c.index);
    if (size < c.bytes || offset < 576) continue; // not a standard-format user component
    out.push({ field: c.field, offset, bytes: c.bytes, width: c.width });
  }
  return out;
}

let thisCpu: XsaveComponent[] | undefined;
/** The running CPU's layout (read once). */
function thisCpuLayout(): XsaveComponent[] {
  thisCpu ??= xsaveLayout(NATIVE_CPU);
  return thisCpu;
}

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

/** CRIU's fpregs entry from an XSAVE (or plain 512-byte FXSAVE) buffer laid out as `layout` says. */
export function decodeXsave(buf: Buffer, layout: readonly XsaveComponent[] = thisCpuLayout()): ImageEntry {
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
  for (const c of layout) {
    if (buf.length < c.offset + c.bytes) continue;
    xsave[c.field] = c.width === 32 ? words32(buf, c.offset, c.bytes / 4) : words64(buf, c.offset, c.bytes / 8);
  }
  entry['xsave'] = xsave;
  return entry;
}

/**
 * Write CRIU's fpregs fields over `base`, an XSAVE buffer of the running CPU's size (as
 * PTRACE_GETREGSET returned it for the thread being restored), laid out as `layout` says, and
 * return it.
 */
export function encodeXsave(
  entry: ImageEntry,
  base: Buffer,
  layout: readonly XsaveComponent[] = thisCpuLayout(),
): Buffer {
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
  for (const c of layout) {
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
