/**
 * --link-remap (test/fixtures/cr_link_remap.c): an open file unlinked from its name but linked
 * elsewhere is refused without it; with it the dump links the file back under a hidden name
 * (remap LINKED, no ghost copy), restore opens that inode again and removes the link. Both ways:
 * dump then restore, and dump -R, kill, restore. Also the O_TMPFILE file (no link left, linkable),
 * and a dump that fails once the links are made (a full disk) removes them.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { readImage } from '../../../src/images/index.js';
import { criuAsync, startRestore, startWorkload, waitGone } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

const hiddenLinks = (dir: string): string[] => readdirSync(dir).filter((n) => n.startsWith('link_remap.'));

for (const mode of ['dump', 'leave-running'] as const) {
  t.test(`--link-remap: unlinked open files survive ${mode} then restore`, { skip: needsRoot }, async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_link_remap', dir);
    t.teardown(() => w.kill());

    const refused = await criuAsync(['dump', '-t', String(w.pid), '-D', path.join(dir, 'no-remap')]);
    t.not(refused.status, 0, 'without --link-remap the dump is refused');
    t.match(
      refused.stderr,
      /fd 41 of task \d+: ".*data\.bin \(deleted\)" was unlinked but still has other links \(use --link-remap\)/,
    );
    t.same(hiddenLinks(dir), [], 'and no link is left behind');

    const images = path.join(dir, 'img');
    const dump = await criuAsync([
      'dump',
      '--link-remap',
      '-t',
      String(w.pid),
      '-D',
      images,
      '-v4',
      ...(mode === 'leave-running' ? ['-R'] : []),
    ]);
    t.equal(dump.status, 0, dump.stderr);
    t.equal(
      hiddenLinks(dir).length,
      2,
      `the files are linked back under hidden names (${hiddenLinks(dir).join(', ')})`,
    );
    t.same(
      readdirSync(images).filter((n) => n.startsWith('ghost-file-')),
      [],
      'nothing is copied',
    );
    const remaps = (await readImage(path.join(images, 'remap-fpath.img'), 'REMAP_FPATH')).records.map((r) => r.entry);
    t.equal(remaps.length, 2, 'one remap per file');
    t.ok(
      remaps.every((e) => Number(e['remap_type'] ?? 0) === 0),
      'of type LINKED',
    );
    if (mode === 'leave-running') w.kill();
    await waitGone(w.pid);

    const restored = await startRestore(['-D', images, '-v4'], path.join(dir, 'restored.pid'));
    t.equal(restored.pid, w.pid, 'restored with its PID');
    t.same(hiddenLinks(dir), [], 'restore removed the hidden links');
    t.notOk(existsSync(path.join(dir, 'data.bin')), 'and the original name is unlinked again');
    process.kill(w.pid, 'SIGTERM');
    const r = await restored.done;
    t.match(w.report(), /PASS/, w.report());
    t.notMatch(w.report(), /FAIL/);
    t.equal(r.status, 0, r.stderr);
  });
}

/** Mount a tmpfs of `size` on `dir`; the reason it cannot, or undefined. */
function mountTmpfs(dir: string, size: string): string | undefined {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' });
    return undefined;
  } catch (err) {
    return `needs a tmpfs mount (${String(err).split('\n')[0]})`;
  }
}
const canMountTmpfs = ((): string | false => {
  if (needsRoot !== false) return needsRoot;
  const probe = mkdtempSync(path.join(tmpdir(), 'criu-ts-tmpfs-'));
  const why = mountTmpfs(probe, '64k');
  if (why === undefined) execFileSync('umount', [probe]);
  rmSync(probe, { recursive: true });
  return why ?? false;
})();

t.test('a --link-remap dump that fails removes the links it made', { skip: canMountTmpfs }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_link_remap', dir);
  t.teardown(() => w.kill());
  // Images on a tmpfs too small for the pages: the dump fails after the files are dumped.
  const images = mkdtempSync(path.join(tmpdir(), 'criu-ts-link-remap-full-'));
  const why = mountTmpfs(images, '32k');
  if (why !== undefined) throw new Error(why);
  t.teardown(() => {
    execFileSync('umount', ['-l', images]);
    rmSync(images, { recursive: true });
  });
  const log = path.join(dir, 'dump.log');
  const dump = await criuAsync(['dump', '--link-remap', '-t', String(w.pid), '-D', images, '-v4', '-o', log]);
  t.equal(dump.status, 1, 'the dump fails');
  t.match(dump.stderr, /ENOSPC|no space/i);
  t.match(
    readFileSync(log, 'utf8'),
    /Linked ".*data\.bin \(deleted\)" \(fd 41\) back as ".*link_remap\.\d+"/,
    'after linking',
  );
  t.same(hiddenLinks(dir), [], 'no link_remap file is left');
  process.kill(w.pid, 'SIGTERM');
  await w.waitFor('PASS', 10_000).catch(() => undefined);
  t.match(w.report(), /PASS/, `the task is intact: ${w.report()}`);
});
