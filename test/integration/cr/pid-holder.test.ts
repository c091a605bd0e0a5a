/**
 * Restore right after a dump, while the dumped task still holds its PID: `criu dump` returns once
 * the task is sent SIGKILL (it does not wait for the kernel to free the task's memory), so the
 * PID can still be held by the exiting task, then by its zombie until its parent reaps it.
 * Restore waits for such a holder (src/restore/stub.ts, up to 5 s) and fails at once for a live one.
 *
 * The workload's parent here is a python3 that reaps it only after a delay, so the PID is held by
 * a zombie for that long whatever the timing of the kill.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { criuAsync, startRestore, waitGone } from '../../helpers/cr.js';
import { fixturePath } from '../../helpers/fixture.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** cr_basic started by a python3 that reaps it `reapAfterS` seconds after it ends. */
async function startLateReaped(
  dir: string,
  reapAfterS: number,
): Promise<{ pid: number; report: () => string; reapNow: () => void }> {
  const out = path.join(dir, 'report.txt');
  const py = [
    'import os, signal, sys, time',
    'pid = os.fork()',
    'if pid == 0:',
    '    os.execv(sys.argv[1], [sys.argv[1], sys.argv[2]])',
    'while True:',
    '    time.sleep(0.01)',
    '    st = open(f"/proc/{pid}/stat").read()',
    '    if st[st.rindex(")") + 2] == "Z": break',
    // SIGUSR1: reap now (a test done with the zombie does not wait out the delay).
    'signal.signal(signal.SIGUSR1, lambda *_: (os.waitpid(pid, 0), os._exit(0)))',
    'time.sleep(float(sys.argv[3]))',
    'os.waitpid(pid, 0)',
  ].join('\n');
  const p = spawn('python3', ['-c', py, fixturePath('cr_basic'), out, String(reapAfterS)], {
    stdio: 'ignore',
    detached: true,
  });
  p.unref();
  const report = (): string => (existsSync(out) ? readFileSync(out, 'utf8') : '');
  for (let i = 0; i < 1000 && !/READY (\d+)/.test(report()); i++) await sleep(10);
  const m = /READY (\d+)/.exec(report());
  if (m === null) throw new Error('cr_basic did not start');
  return { pid: Number(m[1]), report, reapNow: () => p.kill('SIGUSR1') };
}

t.test('restore waits for the dumped task to be reaped', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startLateReaped(dir, 1.5);
  t.teardown(() => {
    try {
      process.kill(w.pid, 'SIGKILL');
    } catch {
      // gone
    }
  });
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(dump.status, 0, dump.stderr);
  t.ok(existsSync(`/proc/${w.pid}`), 'the PID is still held (the zombie is not reaped yet)');
  const t0 = Date.now();
  const restored = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
  t.equal(restored.pid, w.pid, 'restored with its PID');
  t.ok(Date.now() - t0 >= 500, `restore waited for the PID (${Date.now() - t0} ms)`);
  process.kill(w.pid, 'SIGTERM');
  const r = await restored.done;
  t.match(w.report(), /PASS/, w.report());
  t.equal(r.status, 0, r.stderr);
});

t.test('restore gives up on a PID held by a zombie nobody reaps', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startLateReaped(dir, 30);
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(dump.status, 0, dump.stderr);
  const t0 = Date.now();
  const r = await criuAsync(['restore', '-D', images]);
  t.not(r.status, 0);
  t.match(r.stderr, new RegExp(`PID ${w.pid} is in use by a task that has not been reaped`));
  t.ok(Date.now() - t0 >= 4500, 'after waiting for it');
  t.equal(r.stderr.trim().split('\n').length, 1, `one error line: ${r.stderr}`);
  w.reapNow(); // instead of in 30 s
  await waitGone(w.pid);
});

t.test('restore fails at once when a live task holds the PID', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startLateReaped(dir, 0);
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '-R']);
  t.equal(dump.status, 0, dump.stderr);
  const t0 = Date.now();
  const r = await criuAsync(['restore', '-D', images]);
  t.not(r.status, 0);
  t.match(r.stderr, new RegExp(`PID ${w.pid} is in use$`, 'm'));
  t.ok(Date.now() - t0 < 4000, `at once (${Date.now() - t0} ms)`);
  process.kill(w.pid, 'SIGKILL');
  await waitGone(w.pid);
});
