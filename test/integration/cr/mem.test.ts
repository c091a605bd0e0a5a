/**
 * Dump and restore of the memory workload (test/fixtures/cr_mem.c): every kind of mapping of the
 * issue's memory scope. The workload saves its smaps headers (= its maps lines) and VmFlags at
 * READY and compares them line by line after restore, and checks every mapping's contents. Both
 * ways of the issue: dump (the task is killed) then restore; dump --leave-running, kill the
 * original, then restore. Also: only present pages are in the pages image, and a mapping of a
 * deleted file is refused clearly, leaving the task as it was.
 */
import path from 'node:path';
import t, { type Test } from 'tap';
import { PAGE_SIZE, readImage } from '../../../src/images/index.js';
import { criuAsync, startWorkload, waitGone, type Workload } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

async function restoreAndCheck(t: Test, w: Workload, images: string): Promise<void> {
  const restored = criuAsync(['restore', '-D', images, '-v4']);
  const until = Date.now() + 20_000;
  while (Date.now() < until) {
    try {
      process.kill(w.pid, 0);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  await new Promise((r) => setTimeout(r, 300));
  process.kill(w.pid, 'SIGTERM');
  const r = await restored;
  t.match(w.report(), /PASS/, w.report());
  t.notMatch(w.report(), /FAIL/);
  t.equal(r.status, 0, `criu restore exits with the task's status (${r.stderr})`);
}

for (const mode of ['dump', 'leave-running'] as const) {
  t.test(`cr_mem survives ${mode} then restore`, { skip: needsRoot }, async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_mem', dir);
    t.teardown(() => w.kill());
    await w.waitFor('SPARSE');
    const m = /SPARSE ([0-9a-f]+) ([0-9a-f]+)/.exec(w.report());
    const sparse = { start: BigInt(`0x${m?.[1] ?? 0}`), end: BigInt(`0x${m?.[2] ?? 0}`) };
    const images = path.join(dir, 'img');
    const dump = await criuAsync([
      'dump',
      '-t',
      String(w.pid),
      '-D',
      images,
      '-v4',
      ...(mode === 'leave-running' ? ['-R'] : []),
    ]);
    t.equal(dump.status, 0, dump.stderr);
    if (mode === 'leave-running') w.kill();
    await waitGone(w.pid);

    // Only present pages: of the 64 MiB sparse mapping, the 64 touched pages.
    const pagemap = await readImage(path.join(images, `pagemap-${w.pid}.img`), 'PAGEMAP');
    let inSparse = 0;
    let total = 0;
    for (const { entry } of pagemap.records.slice(1)) {
      const vaddr = BigInt(entry['vaddr'] as bigint);
      const nr = Number(entry['nr_pages'] ?? 0);
      total += nr;
      if (vaddr >= sparse.start && vaddr < sparse.end) inSparse += nr;
    }
    t.equal(inSparse, 64, 'the sparse mapping dumps its 64 touched pages only');
    const { statSync } = await import('node:fs');
    t.equal(statSync(path.join(images, 'pages-1.img')).size, total * PAGE_SIZE, 'pages-1.img holds those pages');
    // 20 MiB of private anonymous memory, the rest a few MiB: not the sparse mapping's 64 MiB.
    t.ok(total * PAGE_SIZE < 24 << 20, `pages-1.img is small (${total} pages)`);

    await restoreAndCheck(t, w, images);
  });
}

t.test('a mapping of a deleted file is refused clearly and the task keeps running', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_mem', dir, ['deleted']);
  t.teardown(() => w.kill());
  await w.waitFor('SPARSE');
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  if (dump.status === 0) {
    // Dumped as a ghost: it must then restore.
    await waitGone(w.pid);
    await restoreAndCheck(t, w, images);
    return;
  }
  t.equal(dump.status, 1);
  t.match(dump.stderr, /deleted/, dump.stderr);
  t.equal(dump.stderr.trim().split('\n').length, 1, 'one line');
  process.kill(w.pid, 'SIGTERM');
  await w.waitFor('PASS', 10_000).catch(() => undefined);
  t.match(w.report(), /PASS/, w.report());
});
