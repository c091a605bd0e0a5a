/**
 * --evasive-devices (test/fixtures/cr_evasive.c): a device node deleted after it was opened, and
 * one replaced by a new node of the same device, are refused without the option; with it the
 * first is dumped by /dev's path to the device, the second by its (new) own name, and both work
 * after restore. Both ways: dump then restore, and dump -R, kill, restore.
 */
import { readlinkSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { criuAsync, startRestore, startWorkload, waitGone } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid, mknod)';

for (const mode of ['dump', 'leave-running'] as const) {
  t.test(
    `--evasive-devices: replaced and deleted device nodes survive ${mode} then restore`,
    { skip: needsRoot },
    async (t) => {
      const dir = t.testdir();
      const w = await startWorkload('cr_evasive', dir);
      t.teardown(() => w.kill());

      const refused = await criuAsync(['dump', '-t', String(w.pid), '-D', path.join(dir, 'refused')]);
      t.not(refused.status, 0, 'without --evasive-devices the dump is refused');
      t.match(refused.stderr, /use --evasive-devices/);

      const images = path.join(dir, 'img');
      const dump = await criuAsync([
        'dump',
        '--evasive-devices',
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

      const restored = await startRestore(['-D', images, '-v4'], path.join(dir, 'restored.pid'));
      t.equal(restored.pid, w.pid, 'restored with its PID');
      t.equal(readlinkSync(`/proc/${w.pid}/fd/43`), '/dev/null', 'the deleted node is replaced by /dev/null');
      t.equal(
        readlinkSync(`/proc/${w.pid}/fd/44`),
        path.join(dir, 'myzero'),
        'the replaced node is opened by its name',
      );
      process.kill(w.pid, 'SIGTERM');
      const r = await restored.done;
      t.match(w.report(), /PASS/, w.report());
      t.notMatch(w.report(), /FAIL/);
      t.equal(r.status, 0, r.stderr);
    },
  );
}
