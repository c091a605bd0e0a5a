/**
 * Random memory layouts (test/fixtures/cr_vmamix.c): for each seed the fixture fills a window of
 * its address space with private and shared anonymous memory, private and shared file mappings
 * and memfd mappings, holes and reserved (PROT_NONE) pieces, split by mprotect, with madvise
 * (DONTNEED, DONTDUMP, HUGEPAGE, WIPEONFORK, DONTFORK), mlock and an mremap; with an odd seed a
 * child shares it (copy on write, or shared), and with a seed of 3 mod 4 a grandchild too. After the restore each process compares its maps
 * line by line (protections, offsets, paths, VmFlags) and the contents of every area of the
 * window, and the parent checks which of the child's writes it sees (shared memory) and which it
 * does not (private memory). Seeds go through a dump, through two pre-dumps (the memory changed
 * in between: new areas, unmapped ones, new writes) and a --track-mem dump, and through
 * criu-migrate. A failure names its seed: `cr_vmamix SEED OUTFILE` sets the same layout up again.
 */
import path from 'node:path';
import t from 'tap';
import { criuAsync, dumpRestoreCheck, restoreExpectPass, startWorkload, waitGone } from '../../helpers/cr.js';
import { migrateCheck } from '../../helpers/migrate.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid, namespaces)';

const DUMPED = Array.from({ length: 16 }, (_, i) => i + 1);
const PRE_DUMPED = [201, 202, 203, 204];
const MIGRATED = [301, 302, 303, 304];

for (const seed of DUMPED)
  t.test(`seed ${seed}: dump, then restore; the memory comes back as it was`, { skip: needsRoot }, (t) =>
    dumpRestoreCheck(t, 'cr_vmamix', [String(seed)]),
  );

for (const seed of PRE_DUMPED)
  t.test(
    `seed ${seed}: pre-dump, change, pre-dump, change, dump --track-mem, then restore`,
    { skip: needsRoot },
    async (t) => {
      const dir = t.testdir();
      const w = await startWorkload('cr_vmamix', dir, [String(seed)]);
      t.teardown(() => w.kill());
      const steps = ['pre1', 'pre2', 'img'];
      for (const [k, step] of steps.entries()) {
        const chain = k === 0 ? [] : ['--prev-images-dir', `../${steps[k - 1]}`];
        const cmd = step === 'img' ? ['dump', '--track-mem'] : ['pre-dump', '--track-mem'];
        const r = await criuAsync([...cmd, '-t', String(w.pid), '-D', path.join(dir, step), ...chain]);
        t.equal(r.status, 0, `${step}: ${r.stderr}`);
        if (step === 'img') break;
        process.kill(w.pid, 'SIGUSR1');
        await w.waitFor(`CHANGED ${k + 1}`);
      }
      await waitGone(w.pid);
      await restoreExpectPass(t, w, path.join(dir, 'img'), dir);
    },
  );

for (const seed of MIGRATED)
  t.test(`seed ${seed}: criu-migrate; the memory comes back as it was on DST`, { skip: needsRoot }, (t) =>
    migrateCheck(t, 'cr_vmamix', [String(seed)]),
  );
