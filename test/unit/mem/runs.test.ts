import t from 'tap';
import { intersect, normalize, subtract, type Run } from '../../../src/mem/runs.js';

/** The runs as a set of page indexes, the naive way. */
function pages(runs: readonly Run[]): Set<number> {
  const s = new Set<number>();
  for (const r of runs) for (let i = r.start; i < r.end; i++) s.add(i);
  return s;
}

function randomRuns(rand: () => number, max: number): Run[] {
  const out: Run[] = [];
  const n = Math.floor(rand() * 8);
  for (let i = 0; i < n; i++) {
    const start = Math.floor(rand() * max);
    out.push({ start, end: start + 1 + Math.floor(rand() * 10) });
  }
  return out;
}

t.test('normalize merges overlapping and touching runs', async (t) => {
  t.same(
    normalize([
      { start: 5, end: 7 },
      { start: 0, end: 2 },
      { start: 2, end: 3 },
      { start: 6, end: 9 },
      { start: 4, end: 4 },
    ]),
    [
      { start: 0, end: 3 },
      { start: 5, end: 9 },
    ],
  );
});

t.test('intersect and subtract agree with set arithmetic on random inputs', async (t) => {
  let seed = 12345;
  const rand = (): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x80000000;
  };
  for (let round = 0; round < 500; round++) {
    const a = normalize(randomRuns(rand, 60));
    const b = normalize(randomRuns(rand, 60));
    const pa = pages(a);
    const pb = pages(b);
    const inter = intersect(a, b);
    const diff = subtract(a, b);
    t.same(
      [...pages(inter)].sort((x, y) => x - y),
      [...pa].filter((p) => pb.has(p)).sort((x, y) => x - y),
    );
    t.same(
      [...pages(diff)].sort((x, y) => x - y),
      [...pa].filter((p) => !pb.has(p)).sort((x, y) => x - y),
    );
    t.same(normalize(inter), inter, 'intersection is normalized');
    t.same(normalize(diff), diff, 'difference is normalized');
  }
});
