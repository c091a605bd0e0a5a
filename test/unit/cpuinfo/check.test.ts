// The --cpu-cap comparison on synthetic CPU entries: each mode with feature bits removed from the
// target or added to the image, the mode arithmetic of criu(8), and malformed images.
import t from 'tap';
import { ImageError } from '../../../src/errors.js';
import { compareCpuinfo, formatCpuCaps, resolveCpuCaps } from '../../../src/cpuinfo/check.js';
import type { CpuinfoX86Entry } from '../../../src/cpuinfo/collect.js';
import { X86_FEATURE, featureName } from '../../../src/cpuinfo/features.js';
import type { ImageEntry } from '../../../src/images/index.js';

/** A plausible AVX-512 machine: FPU, FXSR, SSE..AVX2, AVX512F, XSAVE{,OPT,C}, OSXSAVE. */
function baseCpu(): CpuinfoX86Entry {
  const capability = new Array<number>(19).fill(0);
  const on = (bit: number): void => {
    const w = Math.floor(bit / 32);
    capability[w] = ((capability[w] ?? 0) | (1 << (bit % 32))) >>> 0;
  };
  const F = X86_FEATURE;
  [F.FPU, F.TSC, F.CX8, F.CMOV, F.MMX, F.FXSR, F.SSE, F.SSE2, F.SYSCALL, F.NOPL, F.CPUID, F.REP_GOOD].forEach(on);
  [F.SSE3, F.SSSE3, F.FMA, F.CX16, F.SSE4_1, F.SSE4_2, F.POPCNT, F.AES, F.XSAVE, F.OSXSAVE, F.AVX].forEach(on);
  [F.AVX2, F.BMI1, F.BMI2, F.AVX512F, F.AVX512DQ, F.AVX512BW, F.AVX512VL, F.XSAVEOPT, F.XSAVEC].forEach(on);
  on(4 * 32 + 31); // HYPERVISOR: a bit no instruction depends on
  return {
    vendor_id: 2,
    cpu_family: 25,
    model: 17,
    stepping: 1,
    capability_ver: 2,
    capability,
    model_id: 'Test CPU',
    xfeatures_mask: 0xe5n,
    xsave_size: 2440,
    xsave_size_max: 2440,
  };
}

const image = (x86: CpuinfoX86Entry): ImageEntry => ({ x86_entry: [{ ...x86, capability: [...x86.capability] }] });

function without(cpu: CpuinfoX86Entry, ...bits: number[]): CpuinfoX86Entry {
  const c = { ...cpu, capability: [...cpu.capability] };
  for (const bit of bits) {
    const w = Math.floor(bit / 32);
    c.capability[w] = ((c.capability[w] ?? 0) & ~(1 << (bit % 32))) >>> 0;
  }
  return c;
}

function withBits(cpu: CpuinfoX86Entry, ...bits: number[]): CpuinfoX86Entry {
  const c = { ...cpu, capability: [...cpu.capability] };
  for (const bit of bits) {
    const w = Math.floor(bit / 32);
    c.capability[w] = ((c.capability[w] ?? 0) | (1 << (bit % 32))) >>> 0;
  }
  return c;
}

t.test('the --cpu-cap mode arithmetic (criu(8), CRIU parse_cpu_cap)', async (t) => {
  const caps = (m: readonly string[] | string): string => formatCpuCaps(resolveCpuCaps(m));
  t.equal(caps(['fpu']), 'fpu', 'the default');
  t.equal(caps([]), 'fpu', 'nothing given: the default');
  t.equal(caps(['all']), 'fpu,cpu,ins', 'bare --cpu-cap');
  t.equal(caps(['cpu']), 'fpu,cpu', 'a mode adds to the default');
  t.equal(caps(['ins', '^fpu']), 'ins', '^ removes');
  t.equal(caps('ins,^fpu'), 'ins', 'one comma-separated string');
  t.equal(caps(['none']), 'none');
  t.equal(caps(['^none']), 'fpu,cpu,ins', '^none is all');
  t.equal(caps(['all', '^cpu']), 'fpu,ins');
  t.equal(caps(['none', 'ins']), 'ins', 'later words apply after none');
  t.throws(() => resolveCpuCaps(['sse']), RangeError);
});

t.test('the same CPU is compatible in every mode', async (t) => {
  for (const m of ['fpu', 'ins', 'cpu', 'all', 'none']) {
    t.same(compareCpuinfo(image(baseCpu()), [m], baseCpu()), [], m);
  }
});

t.test('fpu: FPU features, XSAVE components and sizes', async (t) => {
  const cpu = baseCpu();
  t.same(compareCpuinfo(image(cpu), ['fpu'], without(cpu, X86_FEATURE.FXSR)), [
    'the image needs FXSR, this CPU lacks it',
  ]);
  t.same(compareCpuinfo(image(cpu), ['fpu'], without(cpu, X86_FEATURE.OSXSAVE)), [
    'the image needs OSXSAVE, this CPU lacks it',
  ]);
  t.same(
    compareCpuinfo(image(cpu), ['fpu'], without(cpu, X86_FEATURE.AVX512F)),
    [],
    'an instruction feature is not fpu business',
  );
  t.same(compareCpuinfo(image({ ...cpu, xfeatures_mask: 0x2e5n }), ['fpu'], cpu), [
    'the image needs the PKRU state (XSAVE component 9), this CPU does not enable it',
  ]);
  t.same(
    compareCpuinfo(image({ ...cpu, xfeatures_mask: 0x5n }), ['fpu'], cpu),
    [],
    'fewer components in the image are fine',
  );
  t.same(compareCpuinfo(image({ ...cpu, xsave_size: 832 }), ['fpu'], cpu), [
    "the image's XSAVE area is 832 bytes, this CPU's 2440: they must be equal",
  ]);
  t.same(compareCpuinfo(image({ ...cpu, xsave_size_max: 2696 }), ['fpu'], cpu), [
    "the image's largest XSAVE area is 2696 bytes, this CPU's 2440: they must be equal",
  ]);
  const old = image(cpu);
  const x86 = (old['x86_entry'] as ImageEntry[])[0] as ImageEntry;
  delete x86['xfeatures_mask'];
  delete x86['xsave_size'];
  delete x86['xsave_size_max'];
  t.same(compareCpuinfo(old, ['fpu'], cpu), [], 'an image without the XSAVE fields takes this CPU values');
});

t.test('ins: the image instruction features must be here; more here is fine', async (t) => {
  const cpu = baseCpu();
  const img = withBits(cpu, X86_FEATURE.AVX512_VNNI);
  t.same(compareCpuinfo(image(img), ['ins', '^fpu'], cpu), ['the image needs AVX512_VNNI, this CPU lacks it']);
  t.same(compareCpuinfo(image(img), ['fpu'], cpu), [], 'the default mode does not look at it');
  t.same(compareCpuinfo(image(cpu), ['ins'], withBits(cpu, X86_FEATURE.AVX512_VNNI)), [], 'a richer target');
  t.same(
    compareCpuinfo(image(cpu), ['ins'], without(cpu, X86_FEATURE.AVX512F, X86_FEATURE.FMA)),
    ['the image needs FMA, this CPU lacks it', 'the image needs AVX512F, this CPU lacks it'],
    'FMA counts although CRIU leaves it out; in bit order',
  );
  t.same(compareCpuinfo(image(cpu), ['ins'], without(cpu, 4 * 32 + 31)), [], 'HYPERVISOR is no instruction');
});

t.test('cpu: every word equal, both ways', async (t) => {
  const cpu = baseCpu();
  t.same(compareCpuinfo(image(cpu), ['cpu', '^fpu'], without(cpu, 4 * 32 + 31)), [
    'the image needs HYPERVISOR, this CPU lacks it',
  ]);
  t.same(compareCpuinfo(image(cpu), ['cpu', '^fpu'], withBits(cpu, X86_FEATURE.PKU)), [
    "this CPU has PKU, the image's CPU did not",
  ]);
  t.same(compareCpuinfo(image(withBits(cpu, 18 * 32 + 1)), ['cpu', '^fpu'], cpu), [
    'the image needs word 18 bit 1, this CPU lacks it',
  ]);
});

t.test('all: fpu + ins + cpu, each mismatch once', async (t) => {
  const cpu = baseCpu();
  const res = compareCpuinfo(image(cpu), ['all'], without(cpu, X86_FEATURE.FXSR));
  t.same(res, ['the image needs FXSR, this CPU lacks it'], 'FXSR is fpu, ins and cpu business: said once');
  const res2 = compareCpuinfo(image({ ...cpu, xsave_size: 1 }), ['all'], without(cpu, X86_FEATURE.AVX2, 4 * 32 + 31));
  t.same(res2, [
    "the image's XSAVE area is 1 bytes, this CPU's 2440: they must be equal",
    'the image needs AVX2, this CPU lacks it',
    'the image needs HYPERVISOR, this CPU lacks it',
  ]);
});

t.test('none checks nothing, not even the image', async (t) => {
  const cpu = baseCpu();
  t.same(compareCpuinfo(image(cpu), ['none'], without(cpu, X86_FEATURE.FPU, X86_FEATURE.FXSR)), []);
  t.same(compareCpuinfo({}, ['none'], cpu), []);
  t.same(compareCpuinfo({}, ['^fpu'], cpu), []);
});

t.test('capability_ver 1 images: the later words come from this CPU (as CRIU)', async (t) => {
  const cpu = withBits(baseCpu(), 18 * 32 + 2);
  const v1 = { ...cpu, capability_ver: 1, capability: cpu.capability.slice(0, 12) };
  t.same(compareCpuinfo(image(v1), ['all'], cpu), []);
});

t.test('malformed images throw ImageError', async (t) => {
  const cpu = baseCpu();
  const bad = (img: ImageEntry, re: RegExp, what: string): void => {
    t.throws(() => compareCpuinfo(img, ['fpu'], cpu, 'x/cpuinfo.img'), ImageError, what);
    t.throws(() => compareCpuinfo(img, ['fpu'], cpu, 'x/cpuinfo.img'), { message: re }, what);
  };
  bad({}, /x\/cpuinfo.img.*expected one x86 CPU entry: it has 0/, 'no x86 entry');
  bad({ x86_entry: [cpu, cpu] }, /it has 2 x86 CPU entries/, 'two entries');
  bad({ ppc64_entry: [{ endian: 1 }] }, /it describes a ppc64 CPU/, 'another architecture');
  bad(image({ ...cpu, vendor_id: 0 }), /unknown CPU vendor 0/, 'unknown vendor');
  bad(image({ ...cpu, capability_ver: 3 }), /unknown capability version 3/, 'unknown version');
  bad(image({ ...cpu, capability: cpu.capability.slice(0, 18) }), /version 2 has 19 words, the image 18/, 'short');
});

t.test('feature names', async (t) => {
  t.equal(featureName(X86_FEATURE.AVX512F), 'AVX512F');
  t.equal(featureName(X86_FEATURE.SSE4_2), 'SSE4_2');
  t.equal(featureName(1 * 32 + 29), 'LM');
  t.equal(featureName(2 * 32 + 5), 'word 2 bit 5');
});
