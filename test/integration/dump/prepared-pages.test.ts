/**
 * A pages file prepared ahead (src/mem/dump-pages.ts preparePagesFile: room allocated before the
 * copy) ends up holding exactly the pages written, whatever was reserved, and a discarded one
 * leaves nothing. The pages come from a mem_touch fixture (first byte of page i is i & 0xff).
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { copyBuffers } from '../../../src/mem/buffer-pool.js';
import { discardPagesFile, preparePagesFile, writePages } from '../../../src/mem/dump-pages.js';
import { startFixture } from '../../helpers/fixture.js';

const PAGE = 4096;
const needsRoot = process.getuid?.() === 0 ? false : 'needs root (process_vm_readv of another process)';

t.test('a pages file reserved larger than what is written is cut back to it', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('mem_touch', ['1']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const m = /READY ([0-9a-f]+) ([0-9a-f]+)/.exec(fx.output());
  if (m === null) throw new Error('no READY line');
  const nrPages = 256;
  const dir = t.testdir();
  const prepared = await preparePagesFile(dir, 1, 8 << 20);
  t.equal(prepared.allocatedBytes, 8 << 20, 'the room was allocated');
  // A prepared file always takes the asynchronous path, however small the copy.
  const res = await writePages(
    fx.pid,
    [{ vaddr: BigInt(`0x${m[1]}`), nrPages }],
    dir,
    1,
    undefined,
    undefined,
    false,
    prepared,
  );
  t.equal(res.pagesWritten, nrPages);
  const file = path.join(dir, 'pages-1.img');
  t.equal(statSync(file).size, nrPages * PAGE, 'exactly the pages written');
  const data = readFileSync(file);
  let bad = 0;
  for (let i = 0; i < nrPages; i++) if (data[i * PAGE] !== (i & 0xff)) bad++;
  t.equal(bad, 0, 'holding them');
  t.same(
    readdirSync(dir).filter((f) => f.includes('.tmp-')),
    [],
    'no temporary file left',
  );
  t.equal(statSync(file).mode & 0o777, 0o600);
});

t.test('a discarded prepared pages file leaves nothing', async (t) => {
  const dir = t.testdir();
  const prepared = await preparePagesFile(dir, 3, 1 << 20);
  t.ok(existsSync(prepared.tmp));
  await discardPagesFile(prepared);
  t.same(readdirSync(dir), []);
});

t.test(
  'a small copy holds every page, with fresh 1 MiB buffers or with the pooled ones',
  { skip: needsRoot },
  async (t) => {
    const fx = await startFixture('mem_touch', ['8']);
    t.teardown(() => fx.kill());
    await fx.waitFor('READY');
    const m = /READY ([0-9a-f]+) ([0-9a-f]+)/.exec(fx.output());
    if (m === null) throw new Error('no READY line');
    const start = BigInt(`0x${m[1]}`);
    // Runs of 3 pages every 5 over 8 MiB: ~4.8 MiB, several 1 MiB batches, runs cut between them.
    const runs: { vaddr: bigint; nrPages: number }[] = [];
    const pages: number[] = [];
    for (let i = 0; i + 3 <= 2048; i += 5) {
      runs.push({ vaddr: start + BigInt(i * PAGE), nrPages: 3 });
      pages.push(i, i + 1, i + 2);
    }
    const check = (dir: string, id: number, what: string): void => {
      const data = readFileSync(path.join(dir, `pages-${id}.img`));
      t.equal(data.length, pages.length * PAGE, `${what}: every page written`);
      let bad = 0;
      pages.forEach((p, k) => {
        if (data[k * PAGE] !== (p & 0xff)) bad++;
      });
      t.equal(bad, 0, `${what}: each page where the pagemap puts it`);
    };
    // As in a one-off command: no pooled copy buffers (the test above left its pair in the pool).
    while (copyBuffers.takeFree() !== null);
    const dir = t.testdir();
    t.equal((await writePages(fx.pid, runs, dir, 1)).pagesWritten, pages.length);
    check(dir, 1, 'fresh buffers');
    t.ok(copyBuffers.takeFree() === null, 'the fresh buffers were not pooled (not of the pool size)');
    copyBuffers.reserve(2);
    t.equal((await writePages(fx.pid, runs, dir, 2)).pagesWritten, pages.length);
    check(dir, 2, 'pooled buffers');
    const a = copyBuffers.takeFree();
    const b = copyBuffers.takeFree();
    t.ok(a !== null && b !== null, 'the pooled buffers are back in the pool');
  },
);
