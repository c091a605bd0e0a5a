import t from 'tap';
import { isUffdWpMarker } from '../../../src/mem/track/markers.js';
import { appendSoftDirtyRuns } from '../../../src/mem/track/soft-dirty.js';

const PRESENT = 1n << 63n;
const SWAPPED = 1n << 62n;
const SOFT_DIRTY = 1n << 55n;
const UFFD_WP = 1n << 57n;

function words(entries: bigint[]): Uint32Array {
  const w = new Uint32Array(entries.length * 2);
  entries.forEach((e, i) => {
    w[2 * i] = Number(e & 0xffffffffn);
    w[2 * i + 1] = Number(e >> 32n);
  });
  return w;
}

t.test('soft-dirty: soft-dirty or absent pages are reported, clean present or swapped ones are not', async (t) => {
  const entries = [
    PRESENT | 0x1234n, // clean
    PRESENT | SOFT_DIRTY | 0x1235n,
    PRESENT | SOFT_DIRTY,
    0n, // absent: dropped by MADV_DONTNEED, or never there
    SWAPPED | 0x40n, // clean swapped
    SWAPPED | SOFT_DIRTY | 0x41n,
    PRESENT,
    0n,
  ];
  const runs: number[] = [];
  appendSoftDirtyRuns(words(entries), entries.length, 100, runs);
  t.same(runs, [101, 104, 105, 106, 107, 108]);
  appendSoftDirtyRuns(words([SOFT_DIRTY | PRESENT, PRESENT]), 2, 108, runs);
  t.same(runs, [101, 104, 105, 106, 107, 109], 'a run continuing the previous call merges');
});

t.test('uffd-wp markers are told from swapped pages', async (t) => {
  t.ok(isUffdWpMarker(0x420000000000003fn), 'marker as this kernel shows it');
  t.notOk(isUffdWpMarker(SWAPPED | UFFD_WP | (0x1234n << 5n) | 1n), 'a swapped, write-protected page');
  t.notOk(isUffdWpMarker(SWAPPED | 0x3fn), 'no uffd-wp bit');
  t.notOk(isUffdWpMarker(PRESENT | UFFD_WP | 0x1fn), 'a present page');
  t.notOk(isUffdWpMarker(0n));
});
