/**
 * Dump and restore of the core workload (test/fixtures/cr_basic.c): it checks its own memory,
 * files, pipe, signals, timers, limits, thread and PID after restore and reports PASS or FAIL.
 * Both ways of the issue: dump (the task is killed) then restore; and dump --leave-running, kill
 * the original, then restore.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { criuAsync, startRestore, startWorkload, waitGone } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

for (const mode of ['dump', 'leave-running'] as const) {
  t.test(`cr_basic survives ${mode} then restore`, { skip: needsRoot }, async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_basic', dir);
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
    if (mode === 'leave-running') {
      t.ok(readdirSync(`/proc/${w.pid}/task`).length === 2, 'the original still runs after -R');
      w.kill();
    }
    await waitGone(w.pid);
    for (const f of readdirSync(images)) {
      const mode = statSync(path.join(images, f)).mode & 0o777;
      t.equal(mode, 0o600, `${f} is 0600`);
    }
    t.equal(statSync(images).mode & 0o777, 0o700, 'the images dir is 0700');

    // Wait for the pidfile: the task is whole only once criu has written it.
    const restored = await startRestore(['-D', images, '-v4'], path.join(dir, 'restored.pid'));
    t.equal(restored.pid, w.pid, 'restored with its PID');
    process.kill(w.pid, 'SIGTERM');
    const r = await restored.done;
    t.match(w.report(), /PASS/, w.report());
    t.notMatch(w.report(), /FAIL/);
    t.equal(r.status, 0, `criu restore exits with the task's status (${r.stderr})`);
  });
}

t.test('images decode with crit, and crit x ps lists the task', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_basic', dir);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '-R']);
  t.equal(dump.status, 0, dump.stderr);
  for (const f of readdirSync(images).filter((n) => n.endsWith('.img') && !n.startsWith('pages-'))) {
    t.doesNotThrow(
      () => execFileSync('crit', ['decode', '-i', path.join(images, f)], { stdio: 'pipe' }),
      `crit decodes ${f}`,
    );
  }
  const ps = execFileSync('crit', ['x', images, 'ps'], { encoding: 'utf8' });
  t.match(ps, new RegExp(`^\\s*${w.pid}\\s+`, 'm'));
  t.match(ps, /cr_basic/);
});
