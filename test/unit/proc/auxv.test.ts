import { existsSync, readFileSync } from 'node:fs';
import t from 'tap';
import { AT, auxvValue, parseAuxv, toSavedAuxv } from '../../../src/proc/auxv.js';

// /proc/PID/auxv of an `xxd` on this machine (kernel 6.18), 23 pairs with the AT_NULL one.
const SAMPLE = Buffer.from(
  '210000000000000000c08d63c37f00003300000000000000300d0000000000001000000000000000ffeb8b17000000000600000000000000001000000000000011000000000000006400000000000000030000000000000040505c100e5600000400000000000000380000000000000005000000000000000d00000000000000070000000000000000e08d63c37f0000080000000000000000000000000000000900000000000000f0765c100e5600000b0000000000000000000000000000000c0000000000000000000000000000000d0000000000000000000000000000000e0000000000000000000000000000001700000000000000000000000000000019000000000000001976cb80fe7f00001a0000000000000000000000000000001f00000000000000eb8fcb80fe7f00000f000000000000002976cb80fe7f00001b000000000000001c000000000000001c00000000000000200000000000000000000000000000000000000000000000',
  'hex',
);

t.test('pairs up to AT_NULL', async (t) => {
  t.equal(SAMPLE.length, 23 * 16);
  const pairs = parseAuxv(SAMPLE);
  t.equal(pairs.length, 22, 'AT_NULL is not a pair');
  t.same(pairs[0], [AT.AT_SYSINFO_EHDR, auxvValue(pairs, AT.AT_SYSINFO_EHDR)]);
  t.equal(auxvValue(pairs, AT.AT_PAGESZ), 4096n);
  t.equal(auxvValue(pairs, AT.AT_CLKTCK), 100n);
  t.equal(auxvValue(pairs, AT.AT_PHENT), 56n);
  t.equal(auxvValue(pairs, AT.AT_MINSIGSTKSZ), 3376n);
  t.same(pairs[21], [AT.AT_RSEQ_ALIGN, 32n]);
  t.equal(auxvValue(pairs, 99n), undefined);
});

const GOLDEN_MM = '/work/shared/golden/criu-4.2-basic/mm-26497.img.json';

t.test('mm_saved_auxv has the same shape as CRIU 4.2 writes', async (t) => {
  const saved = toSavedAuxv(parseAuxv(SAMPLE));
  t.equal(saved.length, 44);
  t.same(saved.slice(-4), [27n, 28n, 28n, 32n], 'ends with the last pair, not AT_NULL');
});

t.test(
  'CRIU 4.2 golden mm_saved_auxv',
  { skip: !existsSync(GOLDEN_MM) && `golden image missing: ${GOLDEN_MM}` },
  async (t) => {
    const saved = toSavedAuxv(parseAuxv(SAMPLE));
    const mm = (JSON.parse(readFileSync(GOLDEN_MM, 'utf8')) as { entries: { mm_saved_auxv: number[] }[] }).entries[0];
    t.equal(mm?.mm_saved_auxv.length, saved.length, 'CRIU wrote 22 pairs too, without AT_NULL');
    t.same(
      mm?.mm_saved_auxv.filter((_, i) => i % 2 === 0),
      saved.filter((_, i) => i % 2 === 0).map(Number),
      'the same types in the same order',
    );
  },
);

t.test('truncated vectors are rejected', async (t) => {
  t.throws(() => parseAuxv(SAMPLE.subarray(0, 40)), /not whole pairs/);
  t.throws(() => parseAuxv(SAMPLE.subarray(0, 32)), /no AT_NULL/);
});
