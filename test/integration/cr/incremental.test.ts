/**
 * Incremental dumps (issue #4): pre-dump ×3 then dump --track-mem, each continuing the previous
 * through --prev-images-dir, with the workload test/fixtures/cr_incr.c rewriting a known set of
 * pages between iterations. Each iteration must store exactly the pages rewritten since the
 * previous one (within the workload's big mapping; a few stack and libc pages elsewhere), mark
 * the rest PE_PARENT, and a restore from the final dump must give the workload back its memory,
 * also after `criu dedup` and with `restore --auto-dedup`. Ending: no tracking is left in the task
 * (no uffd-wp VMA flag, no extra fd) after the final dump.
 */
import { readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { PE_PARENT, PE_PRESENT, readPagemap } from '../../../src/images/index.js';
import { criuAsync, startWorkload, waitGone, waitPid, type Workload } from '../../helpers/cr.js';
import { spawnSync } from 'node:child_process';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';
const PAGES = 2048;
const PAGE = 4096n;

/** The workload's choice of pages for step k (cr_incr.c: hash % 8 == 0). */
function dirtied(i: number, k: number): boolean {
  let h = (Math.imul(i, 2654435761) ^ Math.imul((k + 0x9e3779b9) | 0, 40503)) >>> 0;
  h = (h ^ (h >>> 15)) >>> 0;
  h = Math.imul(h, 2246822519) >>> 0;
  h = (h ^ (h >>> 13)) >>> 0;
  return h % 8 === 0;
}

interface Counts {
  presentInMem: Set<number>;
  parentInMem: number;
  presentElsewhere: number;
}

async function pagemapCounts(dir: string, pid: number, mem: bigint, pages = PAGES): Promise<Counts> {
  const { runs } = await readPagemap(path.join(dir, `pagemap-${pid}.img`));
  const presentInMem = new Set<number>();
  let parentInMem = 0;
  let presentElsewhere = 0;
  for (const r of runs)
    for (let i = 0; i < r.nrPages; i++) {
      const addr = r.vaddr + BigInt(i) * PAGE;
      const inMem = addr >= mem && addr < mem + BigInt(pages) * PAGE;
      if ((r.flags & PE_PRESENT) !== 0) {
        if (inMem) presentInMem.add(Number((addr - mem) / PAGE));
        else presentElsewhere++;
      } else if ((r.flags & PE_PARENT) !== 0 && inMem) parentInMem++;
    }
  return { presentInMem, parentInMem, presentElsewhere };
}

async function step(w: Workload, k: number): Promise<void> {
  process.kill(w.pid, 'SIGUSR1');
  await w.waitFor(`STEP ${k} `);
}

function usesUffdWp(pid: number): boolean {
  return /^VmFlags:.*\buw\b/m.test(readFileSync(`/proc/${pid}/smaps`, 'utf8'));
}

async function restoreAndCheck(t: Test, w: Workload, images: string, extra: string[] = []): Promise<void> {
  const restored = criuAsync(['restore', '-D', images, ...extra]);
  await waitPid(w.pid, 20_000);
  await new Promise((r) => setTimeout(r, 200));
  process.kill(w.pid, 'SIGTERM');
  const r = await restored;
  t.equal(r.status, 0, `criu restore exits with the task's status (${r.stderr})`);
  t.match(w.report(), /PASS 3 steps/, w.report());
  t.notMatch(w.report(), /FAIL/);
}

function diskBytes(dir: string): number {
  return readdirSync(dir)
    .filter((n) => n.startsWith('pages-'))
    .reduce((n, f) => n + statSync(path.join(dir, f)).blocks * 512, 0);
}

for (const mode of ['dump', 'leave-running'] as const) {
  t.test(`pre-dump ×3 then dump --track-mem (${mode}), restore`, { skip: needsRoot }, async (t) => {
    const root = t.testdir();
    const w = await startWorkload('cr_incr', root, [String(PAGES)]);
    t.teardown(() => w.kill());
    const mem = BigInt(`0x${/MEM ([0-9a-f]+)/.exec(w.report())?.[1] ?? '0'}`);
    const dirs = ['1', '2', '3', '4'].map((d) => path.join(root, d));

    const pre1 = await criuAsync(['pre-dump', '-t', String(w.pid), '-D', dirs[0] as string, '--track-mem']);
    t.equal(pre1.status, 0, pre1.stderr);
    const c1 = await pagemapCounts(dirs[0] as string, w.pid, mem);
    t.equal(c1.presentInMem.size, PAGES, 'the first pre-dump takes every page');

    for (let k = 1; k <= 3; k++) {
      await step(w, k);
      const dir = dirs[k] as string;
      const args =
        k < 3
          ? ['pre-dump', '-t', String(w.pid), '-D', dir, '--prev-images-dir', '../' + String(k), '--track-mem']
          : [
              'dump',
              '-t',
              String(w.pid),
              '-D',
              dir,
              '--prev-images-dir',
              '../3',
              '--track-mem',
              ...(mode === 'leave-running' ? ['-R'] : []),
            ];
      const r = await criuAsync(args);
      t.equal(r.status, 0, `${args[0]} ${k + 1}: ${r.stderr}`);
      const c = await pagemapCounts(dir, w.pid, mem);
      const want = new Set<number>();
      for (let i = 0; i < PAGES; i++) if (dirtied(i, k)) want.add(i);
      t.same(
        [...c.presentInMem].sort((a, b) => a - b),
        [...want].sort((a, b) => a - b),
        `iteration ${k + 1} stores exactly the ${want.size} rewritten pages of the big mapping`,
      );
      t.equal(c.parentInMem, PAGES - want.size, 'the others are in the parent');
      t.ok(
        c.presentElsewhere >= 4 && c.presentElsewhere < 64,
        `${c.presentElsewhere} pages elsewhere (the new mapping, stack, libc)`,
      );
      t.equal(readlinkSync(path.join(dir, 'parent')), `../${k}`, 'the parent link');
    }
    const crit = spawnSync('crit', ['decode', '-i', path.join(dirs[3] as string, `pagemap-${w.pid}.img`)], {
      encoding: 'utf8',
    });
    t.equal(crit.status, 0, `crit decodes the final pagemap ${crit.stderr}`);
    t.match(crit.stdout, /"flags": (1|"PE_PARENT")\b/, 'PE_PARENT entries are there');

    if (mode === 'leave-running') {
      t.notOk(usesUffdWp(w.pid), 'no VMA is uffd-wp registered after the final dump');
      t.notOk(
        readdirSync(`/proc/${w.pid}/fd`).some((fd) =>
          /userfaultfd/.test(readFileSync(`/proc/${w.pid}/fdinfo/${fd}`, 'utf8') + ''),
        ),
        'no uffd left',
      );
      w.kill();
    }
    await waitGone(w.pid);

    // dedup: the parents give back what the final image no longer needs.
    const before = dirs.slice(0, 3).reduce((n, d) => n + diskBytes(d), 0);
    const dd = await criuAsync(['dedup', '-D', dirs[3] as string]);
    t.equal(dd.status, 0, dd.stderr);
    const after = dirs.slice(0, 3).reduce((n, d) => n + diskBytes(d), 0);
    t.ok(after < before, `chain on disk: ${before} bytes before dedup, ${after} after`);
    await restoreAndCheck(t, w, dirs[3] as string, ['--auto-dedup']);
    t.ok(
      diskBytes(dirs[3] as string) + dirs.slice(0, 3).reduce((n, d) => n + diskBytes(d), 0) < 64 * 4096,
      'restore --auto-dedup punched the restored pages',
    );
  });
}

t.test('--tracker none: every iteration takes every page, and the chain restores', { skip: needsRoot }, async (t) => {
  const root = t.testdir();
  const w = await startWorkload('cr_incr', root, ['256']);
  t.teardown(() => w.kill());
  const mem = BigInt(`0x${/MEM ([0-9a-f]+)/.exec(w.report())?.[1] ?? '0'}`);
  for (let k = 1; k <= 3; k++) {
    if (k > 1) await step(w, k - 1);
    const dir = path.join(root, String(k));
    const prev = k > 1 ? ['--prev-images-dir', `../${k - 1}`] : [];
    const cmd = k < 3 ? ['pre-dump'] : ['dump', '--track-mem'];
    const r = await criuAsync([...cmd, '-t', String(w.pid), '-D', dir, '--tracker', 'none', ...prev]);
    t.equal(r.status, 0, r.stderr);
    const c = await pagemapCounts(dir, w.pid, mem, 256);
    t.equal(c.presentInMem.size, 256, `iteration ${k} copies all 256 pages`);
    t.equal(c.parentInMem, 0, 'none in the parent');
  }
  await waitGone(w.pid);
  const restored = criuAsync(['restore', '-D', path.join(root, '3')]);
  await waitPid(w.pid, 20_000);
  await new Promise((r) => setTimeout(r, 200));
  process.kill(w.pid, 'SIGTERM');
  t.equal((await restored).status, 0);
  t.match(w.report(), /PASS 2 steps/, w.report());
});
