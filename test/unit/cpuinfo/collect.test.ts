// Filling cpuinfo_x86_entry from cpuid: described CPUs (a CpuSource table) for CRIU's rules, and the
// real CPU against the kernel's view of it in /proc/cpuinfo.
import { readFileSync } from 'node:fs';
import t from 'tap';
import { UnsupportedError } from '../../../src/errors.js';
import { collectX86, type CpuSource } from '../../../src/cpuinfo/collect.js';
import { X86_FEATURE, featureBit, hasFeature } from '../../../src/cpuinfo/features.js';
import { NATIVE_CPU, readCpuinfoEntry, readCpuinfoX86 } from '../../../src/cpuinfo/index.js';

type Regs = [number, number, number, number];

/** Registers of "abcd" strings, as cpuid returns vendor and brand text (little-endian words). */
function text(s: string, words: number): number[] {
  const b = Buffer.alloc(words * 4);
  b.write(s, 'latin1');
  return Array.from({ length: words }, (_, i) => b.readUInt32LE(i * 4));
}

/** A CPU described by its cpuid leaves; leaves not listed read as zeros. */
function describedCpu(vendor: string, leaves: Record<string, Regs>, xcr0: bigint, brand = ''): CpuSource {
  const [ebx, edx, ecx] = text(vendor, 3) as [number, number, number];
  const brandRegs = text(brand, 12);
  const table = new Map<string, Regs>(Object.entries(leaves));
  return {
    cpuid(leaf, subleaf) {
      if (leaf === 0) return [table.get('0')?.[0] ?? 0, ebx, ecx, edx];
      if (leaf >= 0x80000002 && leaf <= 0x80000004) {
        const i = (leaf - 0x80000002) * 4;
        return brandRegs.slice(i, i + 4) as Regs;
      }
      return table.get(`${leaf.toString(16)}.${subleaf}`) ?? table.get(leaf.toString(16)) ?? [0, 0, 0, 0];
    },
    xgetbv(index) {
      if (index !== 0) throw new RangeError('only XCR0 here');
      return xcr0;
    },
  };
}

const bits = (...b: number[]): number => b.reduce((acc, x) => (acc | (1 << (x % 32))) >>> 0, 0);
const F = X86_FEATURE;

/** An Intel Xeon Gold 6148 (Skylake-SP, family 6 model 0x55) whose kernel left MPX off in XCR0. */
const skylake = describedCpu(
  'GenuineIntel',
  {
    '0': [0x16, 0, 0, 0],
    '1': [0x00050654, 0, bits(F.SSE3, F.FMA, F.XSAVE, F.OSXSAVE, F.AVX), bits(F.FPU, F.FXSR, F.SSE, F.SSE2, 31)],
    '7.0': [0, bits(F.AVX2, F.MPX, F.AVX512F), bits(F.PKU), 0],
    'd.0': [0x2ff, 2688, 2696, 0],
    'd.1': [0xf, 0, 0, 0],
    '80000000': [0x80000008, 0, 0, 0],
    '80000001': [0, 0, bits(F.LAHF_LM), bits(F.SYSCALL, 20, 29)],
  },
  0x2e7n,
  '      Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz',
);

t.test('an Intel CPU as CRIU 4.2 records it', async (t) => {
  const e = collectX86(skylake);
  t.equal(e.vendor_id, 1, 'INTEL');
  t.equal(e.cpu_family, 6);
  t.equal(e.model, 0x55, 'the extended model counts from family 6');
  t.equal(e.stepping, 4);
  t.equal(e.capability_ver, 2);
  t.equal(e.capability.length, 19);
  t.equal(e.model_id, 'Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz', 'right-justified brand trimmed');
  t.ok(hasFeature(e.capability, F.AVX512F) && hasFeature(e.capability, F.FMA) && hasFeature(e.capability, F.LAHF_LM));
  t.ok(hasFeature(e.capability, F.CPUID) && hasFeature(e.capability, F.NOPL), 'Linux-defined bits CRIU sets');
  t.ok(hasFeature(e.capability, F.REP_GOOD), 'REP_GOOD on Intel family 6');
  t.ok(hasFeature(e.capability, 31), 'CPUID 1 EDX bit 31 stays on Intel');
  t.equal(e.capability[10], 0xf, 'word 10 is CPUID 0xd.1 EAX');
  // 0x2ff, less CRIU's 0x10a (SSE and MPX bounds), less what XCR0 leaves off (MPX CSR).
  t.equal(e.xfeatures_mask, 0x2e5n);
  t.equal(e.xsave_size, 2688);
  t.equal(e.xsave_size_max, 2696);
});

t.test('an AMD family 0xf CPU, no XSAVE leaf', async (t) => {
  const k8 = describedCpu(
    'AuthenticAMD',
    {
      '0': [0x1, 0, 0, 0],
      '1': [0x00020f51, 0, bits(F.SSE3, F.XSAVE), bits(F.FPU, F.FXSR, F.SSE, F.SSE2, 31)],
      '80000000': [0x80000001, 0, 0, 0],
      '80000001': [0, 0, 0, bits(F['3DNOW'])],
    },
    0n,
  );
  const e = collectX86(k8);
  t.equal(e.vendor_id, 2, 'AMD');
  t.equal(e.cpu_family, 0xf, 'family 0xf + extended family 0');
  t.equal(e.model, 0x25, 'extended model counts from family 6 up');
  t.notOk(hasFeature(e.capability, 31), 'the nonstandard 3DNow bit of CPUID 1 EDX is cleared');
  t.notOk(hasFeature(e.capability, F.XSAVE), 'XSAVE is dropped without leaf 0xd');
  t.ok(hasFeature(e.capability, F.REP_GOOD), 'REP_GOOD on a K8 of revision F or later (CPUID 1 EAX >= 0xf58)');
  t.equal(e.xfeatures_mask, 0n);
  t.equal(e.xsave_size, 0);
  t.equal(e.model_id, undefined, 'no brand string leaves');
});

t.test('other vendors are refused', async (t) => {
  const via = describedCpu('CentaurHauls', { '0': [1, 0, 0, 0] }, 0n);
  t.equal(collectX86(via).vendor_id, 0, 'UNKNOWN');
  t.throws(() => readCpuinfoX86(via), UnsupportedError);
  t.throws(() => readCpuinfoX86(via), { message: /vendor "CentaurHauls" is not supported/ });
});

t.test('this CPU agrees with /proc/cpuinfo', async (t) => {
  const e = readCpuinfoX86();
  const entry = readCpuinfoEntry();
  t.same(entry, { x86_entry: [e] });
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const field = (name: string): string | undefined => new RegExp(`^${name}\\s*: (.*)$`, 'm').exec(cpuinfo)?.[1]?.trim();
  t.equal(e.vendor_id, field('vendor_id') === 'GenuineIntel' ? 1 : 2);
  t.equal(e.cpu_family, Number(field('cpu family')));
  t.equal(e.model, Number(field('model')));
  t.equal(e.stepping, Number(field('stepping')));
  // Features the kernel shows as it finds them in cpuid: each shown must be in our words.
  const flags = new Set((field('flags') ?? '').split(/\s+/));
  const plain: Record<string, string> = {
    fpu: 'FPU',
    tsc: 'TSC',
    cx8: 'CX8',
    cmov: 'CMOV',
    mmx: 'MMX',
    fxsr: 'FXSR',
    sse: 'SSE',
    sse2: 'SSE2',
    syscall: 'SYSCALL',
    lm: 'LM',
    nx: 'NX',
    pni: 'SSE3',
    pclmulqdq: 'PCLMULQDQ',
    ssse3: 'SSSE3',
    fma: 'FMA',
    cx16: 'CX16',
    sse4_1: 'SSE4_1',
    sse4_2: 'SSE4_2',
    movbe: 'MOVBE',
    popcnt: 'POPCNT',
    aes: 'AES',
    xsave: 'XSAVE',
    avx: 'AVX',
    f16c: 'F16C',
    rdrand: 'RDRAND',
    bmi1: 'BMI1',
    avx2: 'AVX2',
    bmi2: 'BMI2',
    avx512f: 'AVX512F',
    avx512dq: 'AVX512DQ',
    avx512bw: 'AVX512BW',
    avx512vl: 'AVX512VL',
    sha_ni: 'SHA_NI',
    adx: 'ADX',
    xsaveopt: 'XSAVEOPT',
    xsavec: 'XSAVEC',
    gfni: 'GFNI',
    vaes: 'VAES',
  };
  let compared = 0;
  for (const [flag, name] of Object.entries(plain)) {
    const bit = featureBit(name);
    t.not(bit, undefined, `${name} has a bit`);
    if (!flags.has(flag) || bit === undefined) continue;
    t.ok(hasFeature(e.capability, bit), `${flag} (${name}) is recorded`);
    compared++;
  }
  t.ok(compared >= 5, `compared ${compared} flags`);
  if (flags.has('xsave')) {
    t.ok(((e.xfeatures_mask ?? 0n) & 0x5n) === 0x5n, 'x87 and AVX state are recorded');
    t.ok((e.xsave_size ?? 0) >= 576 && (e.xsave_size ?? 0) <= (e.xsave_size_max ?? 0), 'sane XSAVE sizes');
  }
  t.same(readCpuinfoX86(NATIVE_CPU), e, 'stable between reads');
});
