/**
 * Changed credentials (uids, gids, groups, capability sets, bounding set) and the per-thread
 * no_new_privs bit survive dump and restore. cr_creds sets no_new_privs in its main thread only
 * (after its thread exists); `cr_creds nonnp` in neither. A run from an image whose bits were
 * swapped between the threads proves the fixture sees a wrong restore and that the restore follows
 * the image thread by thread.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { readEntries, writeImage, type ImageEntry } from '../../../src/images/index.js';
import { criuAsync, startRestore, startWorkload, waitGone } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';
const crit = ['/usr/bin/crit', '/usr/sbin/crit'].find((p) => existsSync(p));

interface Cores {
  /** The core-TID.img files, the leader's first. */
  files: string[];
  /** Their creds_entry, in the same order. */
  creds: ImageEntry[];
}

async function readCores(images: string, pid: number): Promise<Cores> {
  const names = readdirSync(images)
    .filter((f) => /^core-\d+\.img$/.test(f))
    .sort((a, b) => (a === `core-${pid}.img` ? -1 : b === `core-${pid}.img` ? 1 : a.localeCompare(b)));
  const files = names.map((f) => path.join(images, f));
  const creds: ImageEntry[] = [];
  for (const f of files) {
    const core = (await readEntries(f, 'CORE'))[0];
    creds.push((core?.['thread_core'] as ImageEntry | undefined)?.['creds'] as ImageEntry);
  }
  return { files, creds };
}

/**
 * Dump `cr_creds ARGS`, let `onImages` look at (or change) the images, restore, and return the
 * fixture's report and the exit status of `criu restore` (it waits for the task: the fixture's own).
 */
async function dumpRestore(
  t: Test,
  args: readonly string[],
  onImages: (images: string, cores: Cores) => Promise<void>,
): Promise<{ report: string; status: number | null; stderr: string }> {
  const dir = t.testdir();
  const w = await startWorkload('cr_creds', dir, args);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);
  const cores = await readCores(images, w.pid);
  t.equal(cores.files.length, 2, 'two threads dumped');
  await onImages(images, cores);
  const restored = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
  process.kill(w.pid, 'SIGTERM');
  const r = await restored.done;
  await waitGone(w.pid); // it exits after its verdict
  return { report: w.report(), status: r.status, stderr: r.stderr };
}

t.test('cr_creds keeps its credentials and no_new_privs per thread', { skip: needsRoot }, async (t) => {
  const { report, status, stderr } = await dumpRestore(t, [], async (_images, cores) => {
    t.equal(cores.creds[0]?.['no_new_privs'], 1, 'leader: no_new_privs 1 in the image');
    t.equal(cores.creds[1]?.['no_new_privs'], undefined, 'thread: no field (CRIU writes it only when set)');
    if (crit === undefined) return;
    // Debian's crit 3.17 does not know field 18: it must still decode the core, the rest intact.
    for (const f of cores.files) {
      const r = spawnSync(crit, ['decode', '-i', f], { encoding: 'utf8' });
      t.equal(r.status, 0, `crit decode ${path.basename(f)}: ${r.stderr}`);
      const creds = (JSON.parse(r.stdout) as { entries: { thread_core: { creds: Record<string, unknown> } }[] })
        .entries[0]?.thread_core.creds;
      t.equal(creds?.['euid'], 1001, `crit reads the creds of ${path.basename(f)}`);
    }
  });
  t.match(report, /PASS/, report);
  t.equal(status, 0, stderr);
});

t.test('cr_creds without no_new_privs is restored without it', { skip: needsRoot }, async (t) => {
  const { report, status, stderr } = await dumpRestore(t, ['nonnp'], async (_images, cores) => {
    t.same(
      cores.creds.map((c) => c['no_new_privs']),
      [undefined, undefined],
      'no no_new_privs in the image',
    );
  });
  t.match(report, /PASS/, report);
  t.equal(status, 0, stderr);
});

t.test('the bits swapped in the image are what the threads get', { skip: needsRoot }, async (t) => {
  const { report, status } = await dumpRestore(t, [], async (_images, cores) => {
    for (const [i, f] of cores.files.entries()) {
      const core = (await readEntries(f, 'CORE'))[0] as ImageEntry;
      const creds = { ...((core['thread_core'] as ImageEntry)['creds'] as ImageEntry) };
      if (i === 0) delete creds['no_new_privs'];
      else creds['no_new_privs'] = 1;
      await writeImage(f, 'CORE', [{ ...core, thread_core: { ...(core['thread_core'] as ImageEntry), creds } }]);
    }
  });
  t.match(report, /FAIL: main: no_new_privs is 0, not 1/, report);
  t.match(report, /FAIL: thread: no_new_privs is 1, not 0/, report);
  t.notMatch(report, /PASS/);
  t.equal(status, 1, "criu restore passes on the fixture's failure");
});
