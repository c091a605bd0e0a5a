/**
 * Mappings of deleted files (test/fixtures/cr_vma_deleted.c): a private and a shared mapping of
 * unlinked files, the shared one also open as an fd, survive dump then restore and dump -R, kill,
 * restore; their contents are saved as ghost files, recreated for the restore and removed again.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { criuAsync, startRestore, startWorkload, waitGone } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

for (const mode of ['dump', 'leave-running'] as const) {
  t.test(`mappings of deleted files survive ${mode} then restore`, { skip: needsRoot }, async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_vma_deleted', dir);
    t.teardown(() => w.kill());
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
    const ghosts = readdirSync(images).filter((n) => n.startsWith('ghost-file-'));
    t.equal(ghosts.length, 2, `one ghost per deleted file (${ghosts.join(', ')})`);
    t.ok(existsSync(path.join(images, 'remap-fpath.img')), 'remap-fpath.img names them');
    if (mode === 'leave-running') w.kill();
    await waitGone(w.pid);

    const restored = await startRestore(['-D', images, '-v4'], path.join(dir, 'restored.pid'));
    t.equal(restored.pid, w.pid, 'restored with its PID');
    t.notOk(
      existsSync(path.join(dir, 'priv.bin')) || existsSync(path.join(dir, 'shared.bin')),
      'the recreated files are gone',
    );
    process.kill(w.pid, 'SIGTERM');
    const r = await restored.done;
    t.match(w.report(), /PASS/, w.report());
    t.notMatch(w.report(), /FAIL/);
    t.equal(r.status, 0, r.stderr);
  });
}
