import t from 'tap';
import {
  countPages,
  formatRuns,
  intersectRuns,
  normalizeRuns,
  parseRuns,
  rangesFromRuns,
  runsContain,
  runsFromRanges,
  subtractRuns,
  unionRuns,
  type PageRuns,
} from '../../../src/mem/track/ranges.js';

/** A naive model: the set of pages, as a boolean array over [0, SPAN). */
const SPAN = 200;
function toBits(runs: PageRuns): boolean[] {
  const bits = new Array<boolean>(SPAN).fill(false);
  for (let i = 0; i < runs.length; i += 2)
    for (let p = runs[i] as number; p < (runs[i + 1] as number); p++) bits[p] = true;
  return bits;
}
function fromBits(bits: boolean[]): PageRuns {
  const out: PageRuns = [];
  for (let p = 0; p < SPAN; p++) {
    if (!bits[p]) continue;
    if (out.length > 0 && out[out.length - 1] === p) out[out.length - 1] = p + 1;
    else out.push(p, p + 1);
  }
  return out;
}
function randomPairs(rnd: () => number): number[] {
  const pairs: number[] = [];
  const n = Math.floor(rnd() * 8);
  for (let i = 0; i < n; i++) {
    const a = Math.floor(rnd() * SPAN);
    pairs.push(a, Math.min(SPAN, a + Math.floor(rnd() * 30)));
  }
  return pairs;
}
/** The same pairs in order of their start (overlapping, touching and empty ones kept): as scans report. */
function byStart(pairs: readonly number[]): number[] {
  const out: [number, number][] = [];
  for (let i = 0; i < pairs.length; i += 2) out.push([pairs[i] as number, pairs[i + 1] as number]);
  return out.sort((x, y) => x[0] - y[0]).flat();
}
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296;
}

t.test('normalize, union, intersect, subtract agree with a naive page set', async (t) => {
  const rnd = lcg(7);
  let nrCases = 0;
  let nrBad = 0;
  for (let i = 0; i < 2000; i++) {
    const pa = randomPairs(rnd);
    const pb = randomPairs(rnd);
    const a = normalizeRuns(pa);
    const b = normalizeRuns(pb);
    const ba = toBits(a);
    const bb = toBits(b);
    const cases: [string, PageRuns, PageRuns][] = [
      ['normalize', a, fromBits(ba)],
      ['normalize in address order', normalizeRuns(byStart(pa)), fromBits(ba)],
      ['union', unionRuns(a, b), fromBits(ba.map((x, k) => x || (bb[k] as boolean)))],
      ['intersect', intersectRuns(a, b), fromBits(ba.map((x, k) => x && (bb[k] as boolean)))],
      ['subtract', subtractRuns(a, b), fromBits(ba.map((x, k) => x && !(bb[k] as boolean)))],
    ];
    for (const [name, got, want] of cases) {
      nrCases++;
      if (JSON.stringify(got) !== JSON.stringify(want)) {
        t.same(got, want, `${name} of ${JSON.stringify(pa)} and ${JSON.stringify(pb)}`);
        return;
      }
    }
    for (let p = 0; p < SPAN; p += 7) if (runsContain(a, p) !== ba[p]) nrBad++;
    if (countPages(a) !== ba.filter(Boolean).length) nrBad++;
  }
  t.equal(nrCases, 10000, 'all cases agree');
  t.equal(nrBad, 0, 'runsContain and countPages agree');
});

t.test('touching runs merge; empty ones vanish', async (t) => {
  t.same(normalizeRuns([5, 10, 0, 5, 20, 20, 12, 15]), [0, 10, 12, 15]);
  t.same(normalizeRuns([0, 5, 3, 4, 5, 9, 9, 9, 12, 15]), [0, 9, 12, 15]);
  t.same(unionRuns([0, 2], [2, 4]), [0, 4]);
  t.same(subtractRuns([0, 10], [0, 10]), []);
  t.same(subtractRuns([0, 10], [2, 3, 5, 6]), [0, 2, 3, 5, 6, 10]);
  t.same(intersectRuns([0, 10], [10, 20]), []);
});

t.test('address ranges convert both ways, and must be page-aligned', async (t) => {
  const ranges = [
    { start: 0x7f0000003000n, end: 0x7f0000005000n },
    { start: 0x7f0000001000n, end: 0x7f0000003000n },
    { start: 0x1000n, end: 0x1000n },
  ];
  const runs = runsFromRanges(ranges);
  t.same(runs, [0x7f0000001, 0x7f0000005]);
  t.same(rangesFromRuns(runs), [{ start: 0x7f0000001000n, end: 0x7f0000005000n }]);
  t.throws(() => runsFromRanges([{ start: 0x1001n, end: 0x2000n }]), RangeError);
  t.throws(() => runsFromRanges([{ start: 0x3000n, end: 0x2000n }]), RangeError);
});

t.test('runs format as hex for the state file and parse back', async (t) => {
  const runs = [0x7ffd1c5e0, 0x7ffd1c601, 0x55a000000, 0x55a000010].slice(2).concat([0x7ffd1c5e0, 0x7ffd1c601]);
  const text = formatRuns(runs);
  t.same(text, ['55a000000000-55a000010000', '7ffd1c5e0000-7ffd1c601000']);
  t.same(parseRuns(text), runs);
  t.equal(parseRuns(['55a000000001-55a000010000']), null, 'unaligned');
  t.equal(parseRuns(['zz']), null);
  t.equal(parseRuns([42]), null);
});
