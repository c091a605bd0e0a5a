import t from 'tap';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { PE_PARENT, PE_PRESENT, pagemapEntry, writeImage, writeParentLink } from '../../../src/images/index.js';
import { PageChain } from '../../../src/mem/page-chain.js';
import { dedupChain, punchRestored } from '../../../src/mem/dedup.js';
import { ImageError } from '../../../src/errors.js';

const PAGE = 4096;
const BASE = 0x7f0000000000n;

/** A page whose bytes say which image and page it came from. */
function page(tag: string, index: number): Buffer {
  return Buffer.alloc(PAGE, `${tag}:${index};`);
}

/** Write one level: runs of [pageIndex, nrPages, flags]; present pages get data tagged with `tag`. */
async function level(dir: string, tag: string, runs: [number, number, number][], parent?: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const data: Buffer[] = [];
  for (const [start, n, flags] of runs)
    if ((flags & PE_PRESENT) !== 0) for (let i = 0; i < n; i++) data.push(page(tag, start + i));
  writeFileSync(path.join(dir, 'pages-1.img'), Buffer.concat(data));
  await writeImage(path.join(dir, 'pagemap-42.img'), 'PAGEMAP', [
    { entry: { pages_id: 1 } },
    ...runs.map(([start, n, flags]) => ({
      entry: pagemapEntry({ vaddr: BASE + BigInt(start * PAGE), nrPages: n, flags }),
    })),
  ]);
  if (parent !== undefined) await writeParentLink(dir, parent);
}

/** What each page of the top image reads as, through the chain. */
async function contents(dir: string): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  for (const s of await (await PageChain.open(dir, 'pagemap-42.img')).sources()) {
    const bytes = readFileSync(s.file).subarray(Number(s.fileOffset), Number(s.fileOffset) + s.nrPages * PAGE);
    for (let i = 0; i < s.nrPages; i++) {
      const idx = Number((s.vaddr - BASE) / BigInt(PAGE)) + i;
      out.set(
        idx,
        bytes
          .subarray(i * PAGE, i * PAGE + 16)
          .toString()
          .split(';')[0] as string,
      );
    }
  }
  return out;
}

t.test('pages resolve through a chain of three images', async (t) => {
  const root = t.testdir();
  await level(path.join(root, '1'), 'A', [[0, 10, PE_PRESENT]]);
  await level(
    path.join(root, '2'),
    'B',
    [
      [0, 2, PE_PARENT],
      [2, 2, PE_PRESENT],
      [4, 6, PE_PARENT],
    ],
    '../1',
  );
  await level(
    path.join(root, '3'),
    'C',
    [
      [0, 3, PE_PARENT],
      [3, 1, PE_PRESENT],
      [4, 4, PE_PARENT],
      [12, 1, PE_PRESENT],
    ],
    '../2',
  );
  const got = await contents(path.join(root, '3'));
  t.same(Object.fromEntries(got), {
    0: 'A:0',
    1: 'A:1',
    2: 'B:2',
    3: 'C:3',
    4: 'A:4',
    5: 'A:5',
    6: 'A:6',
    7: 'A:7',
    12: 'C:12',
  });
});

t.test('a page missing from the parent, a missing parent, a truncated parent: clear errors', async (t) => {
  const root = t.testdir();
  await level(path.join(root, '1'), 'A', [[0, 2, PE_PRESENT]]);
  await level(path.join(root, '2'), 'B', [[0, 3, PE_PARENT]], '../1');
  await t.rejects(contents(path.join(root, '2')), {
    name: 'ImageError',
    message: /0x7f0000002000.*parent does not have it/,
  });
  await level(path.join(root, 'x'), 'X', [[0, 1, PE_PARENT]]);
  await t.rejects(contents(path.join(root, 'x')), { message: /has no parent/ });
  await level(path.join(root, '3'), 'C', [[0, 2, PE_PARENT]], '../1');
  writeFileSync(path.join(root, '1', 'pages-1.img'), Buffer.alloc(PAGE));
  const err = await contents(path.join(root, '3')).catch((e: unknown) => e);
  t.ok(err instanceof ImageError && /truncated/.test(err.message), 'truncated parent pages file');
});

t.test('dedup punches every ancestor page the top image does not use', async (t) => {
  const root = t.testdir();
  const N = 256;
  await level(path.join(root, '1'), 'A', [[0, N, PE_PRESENT]]);
  // The second rewrites half, the third rewrites another quarter: a quarter of A stays in use.
  await level(
    path.join(root, '2'),
    'B',
    [
      [0, N / 2, PE_PRESENT],
      [N / 2, N / 2, PE_PARENT],
    ],
    '../1',
  );
  await level(
    path.join(root, '3'),
    'C',
    [
      [0, N / 4, PE_PARENT],
      [N / 4, N / 4, PE_PRESENT],
      [N / 2, N / 2, PE_PARENT],
    ],
    '../2',
  );
  const before = await contents(path.join(root, '3'));
  const blocks = (d: string): number => statSync(path.join(root, d, 'pages-1.img')).blocks * 512;
  const used1 = blocks('1');
  t.ok(used1 >= N * PAGE, 'the first image uses its space');
  const punched = await dedupChain(path.join(root, '3'));
  t.equal(punched, (N / 2) * PAGE + (N / 4) * PAGE, 'A loses its first half, B its second quarter');
  t.ok(blocks('1') <= (N / 2) * PAGE, `A on disk after dedup: ${blocks('1')} bytes`);
  t.ok(blocks('2') <= (N / 4) * PAGE + PAGE, `B on disk after dedup: ${blocks('2')} bytes`);
  t.equal(statSync(path.join(root, '1', 'pages-1.img')).size, N * PAGE, 'sizes are kept');
  t.same(await contents(path.join(root, '3')), before, 'the top image reads the same');
  const restored = await (await PageChain.open(path.join(root, '3'), 'pagemap-42.img')).sources();
  t.equal(punchRestored(restored), N * PAGE, 'restore --auto-dedup punches every restored page');
  t.ok(blocks('3') + blocks('2') + blocks('1') <= 3 * PAGE, 'nothing is left on disk');
});
