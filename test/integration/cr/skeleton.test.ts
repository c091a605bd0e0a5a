/**
 * Restoring into a pre-copied skeleton (src/restore/skeleton.ts), the destination side of live
 * migration: the pre-dumps' pages are read into a stub with the task's PID before the final
 * dump, and the final restore starts from that memory, reading only the final image's own pages.
 * Here on one host (the PID is free once the final dump has killed the task, so the skeleton is
 * built after it; a migration builds it on the other host while the task still runs).
 * cr_incr checks its memory after three steps of rewrites; cr_mem checks its maps line by line
 * and every kind of mapping.
 */
import path from 'node:path';
import t from 'tap';
import { readImage } from '../../../src/images/index.js';
import { preDump, type PreDumpStats } from '../../../src/dump/pre-dump.js';
import { dump } from '../../../src/dump/index.js';
import { restore } from '../../../src/restore/index.js';
import { Skeleton } from '../../../src/restore/skeleton.js';
import { startWorkload, waitGone, type Workload } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

async function restoredPages(dir: string): Promise<number> {
  const e = (await readImage(path.join(dir, 'stats-restore'), 'STATS')).records[0]?.entry['restore'] as
    Record<string, unknown> | undefined;
  return Number(e?.['pages_restored'] ?? -1);
}

async function migrateLike(
  w: Workload,
  root: string,
  between: (k: number) => Promise<void>,
): Promise<{ final: string; pre: PreDumpStats[]; progress: { done: number; total: number }[] }> {
  const pre: PreDumpStats[] = [];
  /** Each pre-dump's last memory progress report. */
  const progress: { done: number; total: number }[] = [];
  for (let k = 1; k <= 3; k++) {
    if (k > 1) await between(k - 1);
    const last = { done: -1, total: -1 };
    progress.push(last);
    pre.push(
      await preDump({
        pid: w.pid,
        imagesDir: path.join(root, String(k)),
        tracker: 'auto',
        onProgress: (what, done, total) => {
          if (what === 'memory') Object.assign(last, { done, total });
        },
        ...(k > 1 ? { prevImagesDir: `../${k - 1}` } : {}),
      }),
    );
  }
  await between(3);
  const final = path.join(root, '4');
  await dump({ pid: w.pid, imagesDir: final, prevImagesDir: '../3', trackMem: true, end: 'kill' });
  await waitGone(w.pid);
  return { final, pre, progress };
}

async function intoSkeleton(pid: number, root: string, pre: PreDumpStats[]): Promise<Skeleton> {
  const sk = Skeleton.create(pid, pre[0]?.anonVmas ?? []);
  for (let k = 1; k <= pre.length; k++)
    await sk.apply(path.join(root, String(k)), (pre[k - 1] as PreDumpStats).anonVmas);
  return sk;
}

t.test(
  'cr_incr: pre-dumps read into a skeleton, the final restore reads only the rest',
  { skip: needsRoot },
  async (t) => {
    const root = t.testdir();
    const w = await startWorkload('cr_incr', root, ['4096']);
    t.teardown(() => w.kill());
    const { final, pre, progress } = await migrateLike(w, root, async (k) => {
      process.kill(w.pid, 'SIGUSR1');
      await w.waitFor(`STEP ${k} `);
    });
    pre.forEach((p, k) => {
      // Progress counts what the iteration copies: it ends at 100%, however little that is.
      t.same(
        progress[k],
        { done: p.pagesWritten * 4096, total: p.pagesWritten * 4096 },
        `pre-dump ${k + 1}'s progress`,
      );
    });
    t.ok((pre[1]?.pagesWritten ?? 0) < 4096 / 2, 'the later pre-dumps copied a part of the memory');
    const sk = await intoSkeleton(w.pid, root, pre);
    await restore({ imagesDir: final, isDetached: true, skeleton: sk });
    const read = await restoredPages(final);
    t.ok(read > 0 && read < 1000, `the final restore read ${read} pages (of 4096+ in the task)`);
    await new Promise((r) => setTimeout(r, 100));
    process.kill(w.pid, 'SIGTERM');
    await w.waitFor('PASS 3 steps').catch(() => undefined);
    t.match(w.report(), /PASS 3 steps/, w.report());
    t.notMatch(w.report(), /FAIL/);
  },
);

t.test('cr_mem: every kind of mapping and its maps lines survive the skeleton path', { skip: needsRoot }, async (t) => {
  const root = t.testdir();
  const w = await startWorkload('cr_mem', root);
  t.teardown(() => w.kill());
  await w.waitFor('SPARSE');
  const { final, pre } = await migrateLike(w, root, async () => undefined);
  const sk = await intoSkeleton(w.pid, root, pre);
  await restore({ imagesDir: final, isDetached: true, skeleton: sk });
  await new Promise((r) => setTimeout(r, 100));
  process.kill(w.pid, 'SIGTERM');
  await w.waitFor('PASS').catch(() => undefined);
  t.match(w.report(), /PASS/, w.report());
  t.notMatch(w.report(), /FAIL/);
});

t.test('a skeleton whose PID is taken fails at once; abort kills it', { skip: needsRoot }, async (t) => {
  t.throws(() => Skeleton.create(process.pid, []), { message: /in use/ });
  const root = t.testdir();
  const w = await startWorkload('cr_incr', root, ['16']);
  const pid = w.pid;
  w.kill();
  await waitGone(pid);
  const sk = Skeleton.create(pid, []);
  sk.abort();
  await waitGone(pid);
});
