/**
 * A pty pair the task owns entirely (test/fixtures/cr_pty.c: master, slave as its controlling
 * terminal) needs no --shell-job: dump then restore, and dump -R, kill, restore; the pty keeps
 * its index, termios, window size and controlling-terminal role.
 */
import path from 'node:path';
import t from 'tap';
import { criuAsync, startRestore, startWorkload, waitGone } from '../../helpers/cr.js';
import { holdPtys } from '../../helpers/job-pty.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

for (const mode of ['dump', 'leave-running'] as const) {
  t.test(`a pty pair the task owns survives ${mode} then restore, without -j`, { skip: needsRoot }, async (t) => {
    await holdPtys(t);
    const dir = t.testdir();
    const w = await startWorkload('cr_pty', dir);
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
    if (mode === 'leave-running') w.kill();
    await waitGone(w.pid);

    const restored = await startRestore(['-D', images, '-v4'], path.join(dir, 'restored.pid'));
    t.equal(restored.pid, w.pid, 'restored with its PID');
    process.kill(w.pid, 'SIGTERM');
    const r = await restored.done;
    t.match(w.report(), /PASS/, w.report());
    t.notMatch(w.report(), /FAIL/);
    t.equal(r.status, 0, r.stderr);
  });
}
