import t from 'tap';
import { appendPagemapRuns, countRunPages, decodePagemapEntry } from '../../../src/proc/pagemap.js';

const PRESENT = 1n << 63n;
const SWAP = 1n << 62n;
const FILE = 1n << 61n;
const EXCL = 1n << 56n;

/** Runs of `entries` starting at page `first`, through the Uint32 view the reader decodes. */
function runsOf(entries: bigint[], first: number, filter = {}, runs: number[] = []): number[] {
  const words = new Uint32Array(BigUint64Array.from(entries).buffer);
  appendPagemapRuns(words, entries.length, first, filter, runs);
  return runs;
}

t.test('decodePagemapEntry', async (t) => {
  // A present, exclusively mapped anonymous page as read here with CAP_SYS_ADMIN.
  t.same(decodePagemapEntry(0x8100000000123456n), {
    isPresent: true,
    isSwapped: false,
    isFile: false,
    isExclusive: true,
    isSoftDirty: false,
    isUffdWp: false,
    pfn: 0x123456n,
  });
  t.equal(decodePagemapEntry(0xa000000000000000n).isFile, true, 'a present file page, PFN hidden');
  t.equal(decodePagemapEntry(SWAP | 0x3e1n).isSwapped, true);
  t.equal(decodePagemapEntry(1n << 55n).isSoftDirty, true);
  t.equal(decodePagemapEntry(1n << 57n).isUffdWp, true);
});

t.test('present and swapped pages make runs, holes split them', async (t) => {
  const e = [0n, PRESENT | EXCL, PRESENT, SWAP, 0n, 0n, PRESENT, 0n, PRESENT, PRESENT];
  t.same(runsOf(e, 100), [101, 3, 106, 1, 108, 2]);
  t.same(runsOf([], 5), []);
  t.same(runsOf([PRESENT, PRESENT], 0x7f0000000), [0x7f0000000, 2], 'page indices above 2^32');
});

t.test('a run continuing from the previous chunk is merged', async (t) => {
  const runs = runsOf([0n, PRESENT, PRESENT], 10);
  runsOf([PRESENT, 0n, PRESENT], 13, {}, runs);
  t.same(runs, [11, 3, 15, 1]);
  t.equal(countRunPages(runs), 4);
});

t.test('filters: file pages and the zero page', async (t) => {
  const zeroPfn = 0x1234567890; // above 2^32: both halves compared
  const e = [PRESENT | FILE, PRESENT, PRESENT | BigInt(zeroPfn), PRESENT | BigInt(zeroPfn + 1), SWAP | FILE];
  t.same(runsOf(e, 0), [0, 5], 'no filter');
  t.same(runsOf(e, 0, { skipFilePages: true }), [1, 3]);
  t.same(runsOf(e, 0, { zeroPfn }), [0, 2, 3, 2]);
  t.same(runsOf(e, 0, { skipFilePages: true, zeroPfn }), [1, 1, 3, 1]);
  t.same(runsOf([SWAP | BigInt(zeroPfn)], 0, { zeroPfn }), [0, 1], 'a swap entry is not the zero page');
});
