/**
 * Restoring into a pre-copied skeleton (src/restore/skeleton.ts), the destination side of live
 * migration: the pre-dumps' pages are read into a stub with the task's PID before the final
 * dump, and the final restore starts from that memory, reading only the final image's own pages.
 * Here on one host (the PID is free once the final dump has killed the task, so the skeleton is
 * built after it; a migration builds it on the other host while the task still runs).
 * cr_incr checks its memory after three steps of rewrites; cr_mem checks its maps line by line
 * and every kind of mapping; cr_tree (four processes) checks its tree, and the memory its
 * processes share or hold apart; cr_cow's parent and child share 28 of their 32 MiB
 * copy-on-write, in the skeleton and in the restored tree as on the source. The files a process
 * maps are mapped ahead too, and the final restore keeps them unless the file changed.
 */
import { copyFileSync, readFileSync, renameSync, statSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { createLogger, setLogger } from '../../../src/log.js';
import { preDump, type PreDumpStats, type ProcessLayout } from '../../../src/dump/pre-dump.js';
import { dump } from '../../../src/dump/index.js';
import { restore } from '../../../src/restore/index.js';
import { Skeleton } from '../../../src/restore/skeleton.js';
import { endExpectPass, restoreStat, signalTask, startWorkload, waitGone, type Workload } from '../../helpers/cr.js';
import { sharedPages, startCow } from '../../helpers/frames.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

async function restoredPages(dir: string): Promise<number> {
  const n = await restoreStat(dir, 'pages_restored');
  return Number.isNaN(n) ? -1 : n;
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

async function intoSkeleton(root: string, pre: PreDumpStats[], shape = pre[0]?.processes ?? []): Promise<Skeleton> {
  const sk = await Skeleton.create(shape);
  for (let k = 1; k <= pre.length; k++)
    if (sk.fits((pre[k - 1] as PreDumpStats).processes))
      await sk.apply(path.join(root, String(k)), (pre[k - 1] as PreDumpStats).processes);
  return sk;
}

/** A process alone, with no memory of its own yet: the skeleton of `pid` for the failure cases. */
function alone(pid: number): ProcessLayout[] {
  return [{ pid, ppid: 0, pgid: pid, sid: pid, anonVmas: [], fileVmas: [] }];
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
    const sk = await intoSkeleton(root, pre);
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
  const sk = await intoSkeleton(root, pre);
  await restore({ imagesDir: final, isDetached: true, skeleton: sk });
  await new Promise((r) => setTimeout(r, 100));
  process.kill(w.pid, 'SIGTERM');
  await w.waitFor('PASS').catch(() => undefined);
  t.match(w.report(), /PASS/, w.report());
  t.notMatch(w.report(), /FAIL/);
});

t.test(
  'files mapped ahead: the final restore keeps them, and maps anew a file replaced since',
  { skip: needsRoot },
  async (t) => {
    const root = t.testdir();
    const w = await startWorkload('cr_mem', root);
    t.teardown(() => w.kill());
    await w.waitFor('SPARSE');
    const { final, pre } = await migrateLike(w, root, async () => undefined);
    const sk = await Skeleton.create((pre[0] as PreDumpStats).processes);
    let ahead = 0;
    for (let k = 1; k <= pre.length; k++)
      ahead += (await sk.apply(path.join(root, String(k)), (pre[k - 1] as PreDumpStats).processes)).fileVmasMapped;
    t.ok(ahead >= 10, `the program's and its libraries' VMAs are mapped ahead (${ahead})`);
    // Its private file mapping's file is replaced (same contents, another inode) before the restore.
    const priv = `${w.outFile}.private`;
    copyFileSync(priv, `${priv}.new`);
    renameSync(`${priv}.new`, priv);
    const logFile = path.join(root, 'restore.log');
    const old = setLogger(createLogger({ level: 3, file: logFile, isPerPid: false }));
    try {
      await restore({ imagesDir: final, isDetached: true, skeleton: sk });
    } finally {
      setLogger(old)?.close();
    }
    const m = /Files mapped ahead: (\d+) VMAs kept, (\d+) unmapped/.exec(readFileSync(logFile, 'utf8'));
    t.ok(Number(m?.[1]) >= 10, `the restore kept them (${m?.[0]})`);
    t.equal(Number(m?.[2]), 1, 'but the one of the replaced file');
    const line = readFileSync(`/proc/${w.pid}/maps`, 'utf8')
      .split('\n')
      .find((l) => l.endsWith('.private'));
    t.match(line, new RegExp(` ${statSync(priv).ino} +${priv}$`), `the file at the path now is mapped: ${line}`);
    signalTask(w.pid, 'SIGKILL'); // its own maps check would see the new inode
  },
);

t.test('a skeleton whose PID is taken fails at once; abort kills it', { skip: needsRoot }, async (t) => {
  await t.rejects(Skeleton.create(alone(process.pid)), { message: /in use/ });
  const root = t.testdir();
  const w = await startWorkload('cr_incr', root, ['16']);
  const pid = w.pid;
  w.kill();
  await waitGone(pid);
  const sk = await Skeleton.create(alone(pid));
  sk.abort();
  await waitGone(pid);
});

/** cr_tree's four processes (R, its children A and B, A's child G), from its TREE line. */
async function startTree(t: Test, root: string): Promise<{ w: Workload; pids: number[] }> {
  const w = await startWorkload('cr_tree', root);
  const m = /^TREE R=(\d+) A=(\d+) B=(\d+) G=(\d+)$/m.exec(w.report());
  if (m === null) throw new Error(`cr_tree wrote no TREE line: ${w.report()}`);
  const pids = m.slice(1).map(Number);
  t.teardown(() => pids.forEach((pid) => signalTask(pid, 'SIGKILL')));
  return { w, pids };
}

t.test(
  "cr_tree: a skeleton of the four processes; the final restore takes each one's stub and memory",
  { skip: needsRoot },
  async (t) => {
    const root = t.testdir();
    const { w, pids } = await startTree(t, root);
    const [r, a, b, g] = pids as [number, number, number, number];
    const { final, pre } = await migrateLike(w, root, async () => undefined);
    for (const pid of pids) await waitGone(pid);
    const reported = (pre[0] as PreDumpStats).processes;
    const byPid = (x: number[], y: number[]): number => (x[0] as number) - (y[0] as number);
    t.same(
      reported.map((p) => [p.pid, p.ppid, p.pgid, p.sid]).sort(byPid),
      [
        [r, 0, r, r],
        [a, r, r, r],
        [b, r, b, r],
        [g, a, b, r],
      ].sort(byPid),
      "each pre-dump reports the tree's shape: parents, groups, session",
    );
    t.ok(
      reported.every((p, i) => p.ppid === 0 || reported.slice(0, i).some((q) => q.pid === p.ppid)),
      'parents first',
    );
    const sk = await intoSkeleton(root, pre);
    const inSkeleton = pids.map((pid) => sk.task(pid)?.mappedRuns.reduce((n, x) => n + x.end - x.start, 0) ?? 0);
    t.ok(
      inSkeleton.every((n) => n > 0),
      `each process's skeleton holds its pre-copied memory (${inSkeleton.join(', ')} pages)`,
    );
    const full = pre[0]?.pagesWritten ?? 0;
    await restore({ imagesDir: final, isDetached: true, skeleton: sk });
    const read = await restoredPages(final);
    t.ok(read >= 0 && read < full / 4, `the final restore read ${read} pages (the first pre-dump copied ${full})`);
    await endExpectPass(t, w);
  },
);

t.test(
  'cr_tree: a skeleton of another shape (the root alone) is dropped; the tree is restored from the images',
  { skip: needsRoot },
  async (t) => {
    const root = t.testdir();
    const { w, pids } = await startTree(t, root);
    const { final, pre } = await migrateLike(w, root, async () => undefined);
    for (const pid of pids) await waitGone(pid);
    const [first] = (pre[0] as PreDumpStats).processes;
    const sk = await intoSkeleton(root, pre, first === undefined ? [] : [first]);
    await restore({ imagesDir: final, isDetached: true, skeleton: sk });
    const read = await restoredPages(final);
    const full = pre[0]?.pagesWritten ?? 0;
    t.ok(read >= full / 2, `the final restore read ${read} pages itself (the first pre-dump copied ${full})`);
    await endExpectPass(t, w);
  },
);

t.test(
  'cr_cow: the skeleton forks the child from its parent and keeps what they share copy-on-write',
  { skip: needsRoot },
  async (t) => {
    const root = t.testdir();
    const { w, p, c, at, pages, expected } = await startCow(t, root);
    const { final, pre } = await migrateLike(w, root, async () => undefined);
    await waitGone(c);
    const sk = await intoSkeleton(root, pre);
    const inSkeleton = sharedPages(p, c, at, pages);
    t.equal(inSkeleton, expected, `the skeletons of P and C share ${expected} pages (${inSkeleton})`);
    await restore({ imagesDir: final, isDetached: true, skeleton: sk });
    const restored = sharedPages(p, c, at, pages);
    t.equal(restored, expected, `restored into them, P and C still share ${expected} pages (${restored})`);
    await endExpectPass(t, w);
  },
);
