// The XSAVE area <-> CRIU's fpregs fields, on the layouts of two real CPU families: Intel's (MPX
// between AVX and AVX-512) and AMD's (no MPX, AVX-512 right after AVX). A component must be read
// from and written to where the CPU keeps it, and the image names it by field either way.
import t from 'tap';
import type { CpuSource } from '../../../src/cpuinfo/collect.js';
import { decodeXsave, encodeXsave, xsaveLayout } from '../../../src/dump/xsave.js';

/** A CPU with XSAVE: XCR0 `xcr0` and CPUID 0xD sub-leaves {component: [size, offset]}. */
function cpu(xcr0: bigint, components: Record<number, [number, number]>): CpuSource {
  return {
    cpuid(leaf, sub) {
      if (leaf === 0) return [0xd, 0, 0, 0];
      if (leaf === 1) return [0, 0, 1 << 27, 0];
      if (leaf === 0xd && sub in components) {
        const [size, offset] = components[sub] as [number, number];
        return [size, offset, 0, 0];
      }
      return [0, 0, 0, 0];
    },
    xgetbv: () => xcr0,
  };
}

// CPUID 0xD as an Intel Skylake-SP reports it (MPX in XCR0), and as an AMD Zen 4/5 does.
const intel = cpu(0x2ffn, {
  2: [256, 576],
  3: [64, 960],
  4: [64, 1024],
  5: [64, 1088],
  6: [512, 1152],
  7: [1024, 1664],
  9: [8, 2688],
});
const amd = cpu(0x2e7n, { 2: [256, 576], 5: [64, 832], 6: [512, 896], 7: [1024, 1408], 9: [8, 2432] });

t.test('the layout comes from CPUID 0xD for the components XCR0 enables', async (t) => {
  t.same(
    xsaveLayout(amd).map((c) => `${c.field}@${c.offset}`),
    ['ymmh_space@576', 'opmask_reg@832', 'zmm_upper@896', 'hi16_zmm@1408', 'pkru@2432'],
  );
  t.same(
    xsaveLayout(intel).map((c) => `${c.field}@${c.offset}`),
    [
      'ymmh_space@576',
      'bndreg_state@960',
      'bndcsr_state@1024',
      'opmask_reg@1088',
      'zmm_upper@1152',
      'hi16_zmm@1664',
      'pkru@2688',
    ],
  );
  t.same(xsaveLayout(cpu(0x7n, {})), [], 'a component CPUID does not describe is left out');
});

for (const [name, source, size] of [
  ['AMD', amd, 2440],
  ['Intel', intel, 2696],
] as const) {
  t.test(`${name}: each field holds its component, and the area comes back byte for byte`, async (t) => {
    const layout = xsaveLayout(source);
    const area = Buffer.alloc(size);
    for (let i = 0; i < size; i++) area[i] = (i * 131 + 7) & 0xff;
    area.writeBigUInt64LE(0xe7n, 512); // xstate_bv
    area.fill(0, 520, 576); // xcomp_bv and the rest of the header
    const entry = decodeXsave(area, layout);
    const xsave = entry['xsave'] as Record<string, (number | bigint)[]>;
    const zmmUpper = layout.find((c) => c.field === 'zmm_upper');
    t.equal(xsave['zmm_upper']?.length, 64);
    t.equal(xsave['zmm_upper']?.[0], area.readBigUInt64LE(zmmUpper?.offset ?? -1), 'zmm_upper from its offset');
    t.equal(xsave['hi16_zmm']?.length, 128);
    t.equal(xsave['opmask_reg']?.length, 8);
    t.equal('bndreg_state' in xsave, name === 'Intel', 'MPX fields only where the CPU has MPX');
    const back = encodeXsave(entry, Buffer.alloc(size), layout);
    // Bytes outside every component (reserved, padding) are the base's, zeros here.
    const covered = (i: number): boolean =>
      i < 32 + 128 + 256 + 32 || (i >= 512 && i < 520) || layout.some((c) => i >= c.offset && i < c.offset + c.bytes);
    const mxcsrMask = (i: number): boolean => i >= 28 && i < 32; // read-only: the running CPU's
    let diff = 0;
    for (let i = 0; i < size; i++) {
      const want = covered(i) && !mxcsrMask(i) && !(i >= 416 && i < 512) ? area[i] : 0;
      if (back[i] !== want) diff++;
    }
    t.equal(diff, 0, 'every component is written back where it was read');
  });
}
