/**
 * Restart rules: a task dumped while blocked in a system call resumes that call after restore as
 * if nothing had happened (test/fixtures/cr_restart.c checks itself): a relative nanosleep neither
 * returns early nor fails, a read on an empty pipe, a futex wait and an epoll_wait without timeout
 * return what the second thread (itself restored in its polling sleep) gives them, never EINTR.
 * Each mode under dump then restore, and dump --leave-running (the original, whose calls were
 * interrupted by the freeze, is killed) then restore.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { criuAsync, signalTask, startWorkload, waitGone, waitInSyscall, waitPid } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

/** x86_64 numbers of the calls each mode blocks in (glibc may use either form). */
const BLOCKED_IN = {
  nanosleep: [35, 230], // nanosleep, clock_nanosleep
  pipe: [0], // read
  futex: [202],
  epoll: [232, 281, 441], // epoll_wait, epoll_pwait, epoll_pwait2
} as const;

for (const [kind, nrs] of Object.entries(BLOCKED_IN)) {
  for (const mode of ['dump', 'leave-running'] as const) {
    t.test(`a task blocked in ${kind} resumes it after ${mode} then restore`, { skip: needsRoot }, async (t) => {
      const dir = t.testdir();
      const w = await startWorkload('cr_restart', dir, [kind]);
      t.teardown(() => w.kill());
      await waitInSyscall(w.pid, nrs);
      const images = path.join(dir, 'img');
      const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, ...(mode === 'dump' ? [] : ['-R'])]);
      t.equal(dump.status, 0, `dump succeeds: ${dump.stderr}`);
      if (mode === 'leave-running') {
        t.notMatch(w.report(), /PASS|FAIL/, 'the original is still blocked after -R');
        w.kill();
      }
      await waitGone(w.pid);
      t.notMatch(w.report(), /PASS|FAIL/, 'the original never got past its call');

      const restored = criuAsync(['restore', '-D', images]);
      t.teardown(() => signalTask(w.pid, 'SIGKILL'));
      await waitPid(w.pid);
      if (kind !== 'nanosleep') {
        // Still blocked once restored: the call was made again, not ended.
        await waitInSyscall(w.pid, nrs, 5000).catch((err: unknown) => t.fail(String(err)));
        t.notMatch(w.report(), /PASS|FAIL/, 'still blocked after restore');
        writeFileSync(`${w.outFile}.go`, '');
      }
      await w.waitFor('PASS', 15_000).catch(() => undefined);
      t.match(w.report(), /PASS/, w.report());
      t.notMatch(w.report(), /FAIL/);
      const r = await restored;
      t.equal(r.status, 0, `criu restore exits with the task's status 0 (${r.stderr})`);
    });
  }
}
