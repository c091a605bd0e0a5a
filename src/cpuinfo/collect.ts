/**
 * The running CPU as a cpuinfo_x86_entry (cpuinfo.img, CPUINFO), filled the way CRIU 4.2 fills it
 * (compel/arch/x86/src/lib/cpu.c: compel_cpuid, compel_fpuid) so that CRIU and criu-ts images of the
 * same machine agree word for word: cpuid leaves 0, 1, 6, 7.0, 0xd.0, 0xd.1, 0xf, 0x80000000..8,
 * 0x8000000a, and XCR0 (xgetbv). No kernel interface: both are instructions.
 *
 * The cpuid results come through a CpuSource so that tests can describe other CPUs.
 */

import {
  CAPABILITY_VER,
  CPUID_1_ECX,
  CPUID_1_EDX,
  CPUID_6_EAX,
  CPUID_7_0_EBX,
  CPUID_7_0_ECX,
  CPUID_7_0_EDX,
  CPUID_8000_0001_ECX,
  CPUID_8000_0001_EDX,
  CPUID_8000_0007_EBX,
  CPUID_8000_0008_EBX,
  CPUID_8000_000A_EDX,
  CPUID_D_1_EAX,
  CPUID_F_0_EDX,
  CPUID_F_1_EDX,
  NCAPINTS,
  X86_FEATURE,
  XSAVE_CPUID_FEATURES,
  hasFeature,
  type FeatureBit,
} from './features.js';

/** cpuinfo_x86_entry.vendor (proto/cpuinfo.proto). */
export const CPU_VENDOR = { UNKNOWN: 0, INTEL: 1, AMD: 2 } as const;

/** A cpuinfo_x86_entry as the image layer holds it (snake_case wire names, u64 as bigint). */
export type CpuinfoX86Entry = {
  vendor_id: number;
  cpu_family: number;
  model: number;
  stepping: number;
  capability_ver: number;
  capability: number[];
  model_id?: string;
  xfeatures_mask?: bigint;
  xsave_size?: number;
  xsave_size_max?: number;
};

/** Where the cpuid and xgetbv results come from: the real CPU (src/sys/native) or a test table. */
export interface CpuSource {
  /** [eax, ebx, ecx, edx] of cpuid(leaf, subleaf). */
  cpuid(leaf: number, subleaf: number): readonly [number, number, number, number];
  /** XCR`index`; only called when CPUID.1:ECX.OSXSAVE is set. */
  xgetbv(index: number): bigint;
}

/**
 * The user state components CRIU records (its XFEATURE_MASK_USER: x87, SSE, AVX, MPX ×2,
 * AVX-512 ×3, PKRU).
 */
const XFEATURE_MASK_USER = 0x2ffn;
/**
 * CRIU 4.2 then clears its XFEATURE_MASK_SUPERVISOR, defined as `XFEATURE_MASK_PT | XFEATURE_HDC`:
 * the second term is the component's index (10), not its mask, so the value is 0x10a and the
 * recorded mask loses SSE (bit 1) and MPX bounds registers (bit 3) besides PT (bit 8). We record
 * the same value: CRIU's restore refuses an image whose mask has bits its own lacks, so a mask
 * with SSE would make every criu-ts image fail CRIU's fpu check. SSE state travels with x87 anyway
 * (FXSR), and MPX is gone from current CPUs and kernels.
 */
const CRIU_XFEATURE_CLEARED = 0x10an;

function u32(n: number): number {
  return n >>> 0;
}

function ascii(regs: readonly number[]): string {
  const b = Buffer.alloc(regs.length * 4);
  regs.forEach((r, i) => b.writeUInt32LE(u32(r), i * 4));
  const nul = b.indexOf(0);
  return b.toString('latin1', 0, nul < 0 ? b.length : nul);
}

function setBit(words: number[], bit: FeatureBit, on: boolean): void {
  const w = Math.floor(bit / 32);
  const mask = 1 << (bit % 32);
  words[w] = u32(on ? (words[w] ?? 0) | mask : (words[w] ?? 0) & ~mask);
}

/** The CPU vendor string of cpuid leaf 0 ("GenuineIntel", "AuthenticAMD", ...). */
export function vendorString(src: CpuSource): string {
  const [, ebx, ecx, edx] = src.cpuid(0, 0);
  return ascii([ebx, edx, ecx]);
}

/**
 * Describe the CPU of `src` as CRIU 4.2 would: the capability words (the cpuid registers of the
 * table in features.ts, plus CRIU's fix-ups of the Linux-defined bits), family/model/stepping,
 * the brand string, and the XSAVE layout. Vendors other than Intel and AMD (and Hygon, an AMD
 * design) get vendor_id UNKNOWN, which CRIU refuses on restore.
 */
export function collectX86(src: CpuSource): CpuinfoX86Entry {
  const words: number[] = new Array<number>(NCAPINTS).fill(0);
  const [maxLeaf] = src.cpuid(0, 0);
  const vendorText = vendorString(src);
  const vendor =
    vendorText === 'GenuineIntel'
      ? CPU_VENDOR.INTEL
      : vendorText === 'AuthenticAMD' || vendorText === 'HygonGenuine'
        ? CPU_VENDOR.AMD
        : CPU_VENDOR.UNKNOWN;

  let family = 4;
  let model = 0;
  let stepping = 0;
  if (maxLeaf >= 1) {
    const [eax, , ecx, edx] = src.cpuid(1, 0);
    family = (eax >>> 8) & 0xf;
    model = (eax >>> 4) & 0xf;
    stepping = eax & 0xf;
    if (family === 0xf) family += (eax >>> 20) & 0xff;
    if (family >= 0x6) model += ((eax >>> 16) & 0xf) << 4;
    words[CPUID_1_EDX] = u32(edx);
    words[CPUID_1_ECX] = u32(ecx);
  }
  if (maxLeaf >= 6) words[CPUID_6_EAX] = u32(src.cpuid(6, 0)[0]);
  if (maxLeaf >= 7) {
    const [, ebx, ecx, edx] = src.cpuid(7, 0);
    words[CPUID_7_0_EBX] = u32(ebx);
    words[CPUID_7_0_ECX] = u32(ecx);
    words[CPUID_7_0_EDX] = u32(edx);
  }
  if (maxLeaf >= 0xd) words[CPUID_D_1_EAX] = u32(src.cpuid(0xd, 1)[0]);
  if (maxLeaf >= 0xf) {
    words[CPUID_F_0_EDX] = u32(src.cpuid(0xf, 0)[3]);
    if (hasFeature(words, X86_FEATURE.CQM_LLC)) words[CPUID_F_1_EDX] = u32(src.cpuid(0xf, 1)[3]);
  }

  const extLevel = u32(src.cpuid(0x80000000, 0)[0]);
  if ((extLevel & 0xffff0000) >>> 0 === 0x80000000 && extLevel >= 0x80000001) {
    const [, , ecx, edx] = src.cpuid(0x80000001, 0);
    words[CPUID_8000_0001_ECX] = u32(ecx);
    words[CPUID_8000_0001_EDX] = u32(edx);
  }
  let modelId = '';
  if (extLevel >= 0x80000004) {
    // The brand string, trimmed as the kernel trims it for /proc/cpuinfo's "model name" (Intel
    // right-justifies it; CRIU trims the leading spaces only, and the field is not compared).
    modelId = ascii([...src.cpuid(0x80000002, 0), ...src.cpuid(0x80000003, 0), ...src.cpuid(0x80000004, 0)]);
    modelId = modelId.trim();
  }
  if (extLevel >= 0x80000007) words[CPUID_8000_0007_EBX] = u32(src.cpuid(0x80000007, 0)[1]);
  if (extLevel >= 0x8000000a) words[CPUID_8000_000A_EDX] = u32(src.cpuid(0x8000000a, 0)[3]);
  if (extLevel >= 0x80000008) words[CPUID_8000_0008_EBX] = u32(src.cpuid(0x80000008, 0)[1]);

  // The Linux-defined bits CRIU sets, and its vendor fix-ups (from the kernel's early_init_*).
  setBit(words, X86_FEATURE.CPUID, true);
  setBit(words, X86_FEATURE.NOPL, true);
  if ((maxLeaf | 0) < 0xd) setBit(words, X86_FEATURE.XSAVE, false);
  if (vendor === CPU_VENDOR.INTEL) {
    if (family === 15) {
      setBit(words, X86_FEATURE.REP_GOOD, false);
      setBit(words, X86_FEATURE.ERMS, false);
    } else if (family === 6) {
      setBit(words, X86_FEATURE.REP_GOOD, true);
    }
  } else if (vendor === CPU_VENDOR.AMD) {
    setBit(words, 31, false); // CPUID 1 EDX bit 31: a nonstandard 3DNow flag on AMD
    if (family >= 0x10) setBit(words, X86_FEATURE.REP_GOOD, true);
    if (family === 0xf) {
      const level = u32(src.cpuid(1, 0)[0]);
      if ((level >= 0x0f48 && level < 0x0f50) || level >= 0x0f58) setBit(words, X86_FEATURE.REP_GOOD, true);
    }
  }

  const entry: CpuinfoX86Entry = {
    vendor_id: vendor,
    cpu_family: family & 0xff,
    model: model & 0xff,
    stepping,
    capability_ver: CAPABILITY_VER,
    capability: words,
    ...(modelId === '' ? {} : { model_id: modelId }),
    ...xsaveLayout(src, words),
  };
  return entry;
}

/**
 * xfeatures_mask, xsave_size, xsave_size_max: CPUID 0xd.0 (EDX:EAX the supported components, EBX
 * the XSAVE area for the components XCR0 enables, ECX the area for all of them), reduced as CRIU
 * does, then to what XCR0 enables: a component the OS left off cannot be saved or restored here,
 * whatever the CPU could do. On Linux XCR0 holds every user component the kernel knows, so this
 * is CRIU's value there.
 */
function xsaveLayout(
  src: CpuSource,
  words: readonly number[],
): { xfeatures_mask: bigint; xsave_size: number; xsave_size_max: number } {
  if (!hasFeature(words, X86_FEATURE.FPU) || !hasFeature(words, X86_FEATURE.XSAVE)) {
    return { xfeatures_mask: 0n, xsave_size: 0, xsave_size_max: 0 };
  }
  const [eax, ebx, ecx, edx] = src.cpuid(0xd, 0);
  let mask = (BigInt(u32(edx)) << 32n) | BigInt(u32(eax));
  XSAVE_CPUID_FEATURES.forEach((bit, i) => {
    if (!hasFeature(words, bit)) mask &= ~(1n << BigInt(i));
  });
  mask &= XFEATURE_MASK_USER & ~CRIU_XFEATURE_CLEARED;
  if (hasFeature(words, X86_FEATURE.OSXSAVE)) mask &= src.xgetbv(0);
  return { xfeatures_mask: mask, xsave_size: u32(ebx), xsave_size_max: u32(ecx) };
}
