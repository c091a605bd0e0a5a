/**
 * The options of dump and restore (test/fixtures/cr_state.c checks itself on SIGTERM):
 * - restore --pidfile F writes the restored PID into F;
 * - restore -d returns at once, the task running on without criu;
 * - restore without -d stays the task's parent and exits with its status: its exit code, or
 *   128 + the signal that killed it;
 * - dump -s leaves the task stopped (state T, not traced) once the images are complete, and it
 *   carries on after SIGCONT; restore -s leaves the restored task stopped the same way.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import {
  criuAsync,
  poll,
  signalTask,
  sleep,
  startRestore,
  startWorkload,
  taskSnapshot,
  taskState,
  waitGone,
  type Workload,
} from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

/** Start cr_state with `args`, dump it (killing it) into DIR/img; returns the workload. */
async function dumped(t: Test, args: string[] = []): Promise<{ w: Workload; dir: string; images: string }> {
  const dir = t.testdir();
  const w = await startWorkload('cr_state', dir, args);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(dump.status, 0, `dump succeeds: ${dump.stderr}`);
  await waitGone(w.pid);
  return { w, dir, images };
}

async function verdict(t: Test, w: Workload): Promise<void> {
  await w.waitFor('PASS', 10_000).catch(() => undefined);
  t.match(w.report(), /PASS/, `the task's own check passes: ${w.report()}`);
  t.notMatch(w.report(), /FAIL/);
}

const notTraced = (pid: number): boolean => taskSnapshot(pid).tracers.every((x) => x.endsWith(':0'));

t.test('restore --pidfile writes the pid', { skip: needsRoot }, async (t) => {
  const { w, dir, images } = await dumped(t);
  const pidfile = path.join(dir, 'restored.pid');
  const r = await startRestore(['-D', images], pidfile);
  t.teardown(() => signalTask(w.pid, 'SIGKILL'));
  t.equal(readFileSync(pidfile, 'utf8'), `${w.pid}\n`, 'the pidfile holds the PID and a newline');
  signalTask(w.pid, 'SIGTERM');
  await verdict(t, w);
  t.equal((await r.done).status, 0);
});

t.test('restore -d returns at once, the task running', { skip: needsRoot }, async (t) => {
  const { w, images } = await dumped(t);
  const r = await criuAsync(['restore', '-D', images, '-d']);
  t.teardown(() => signalTask(w.pid, 'SIGKILL'));
  t.equal(r.status, 0, `criu restore -d exits 0: ${r.stderr}`);
  t.ok(existsSync(`/proc/${w.pid}`), 'the task runs after criu is gone');
  t.ok(['S', 'R'].includes(taskState(w.pid) ?? '?'), `running or sleeping (${taskState(w.pid)})`);
  t.ok(notTraced(w.pid), 'not traced');
  signalTask(w.pid, 'SIGTERM');
  await verdict(t, w);
});

t.test('restore without -d exits with the task exit code', { skip: needsRoot }, async (t) => {
  const { w, dir, images } = await dumped(t, ['exit=3']);
  const r = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
  t.teardown(() => signalTask(w.pid, 'SIGKILL'));
  signalTask(w.pid, 'SIGTERM');
  await verdict(t, w);
  t.equal((await r.done).status, 3, 'criu restore exits 3, as the task did');
});

t.test('restore without -d exits 137 when the task is killed by SIGKILL', { skip: needsRoot }, async (t) => {
  const { w, dir, images } = await dumped(t);
  const r = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
  t.teardown(() => signalTask(w.pid, 'SIGKILL'));
  signalTask(w.pid, 'SIGKILL');
  t.equal((await r.done).status, 128 + 9, 'criu restore exits 128 + SIGKILL');
});

/** The task stays stopped: a SIGTERM does nothing until SIGCONT, then it checks itself. */
async function stoppedThenContinues(t: Test, w: Workload): Promise<void> {
  await poll(() => taskState(w.pid) === 'T', 'the task to be stopped', 5000).catch(() => undefined);
  t.equal(taskState(w.pid), 'T', 'the task is stopped (T)');
  t.ok(notTraced(w.pid), 'not traced');
  signalTask(w.pid, 'SIGTERM');
  await sleep(300);
  t.equal(taskState(w.pid), 'T', 'still stopped: the SIGTERM waits');
  t.notMatch(w.report(), /PASS|FAIL/, 'the task did not run');
  signalTask(w.pid, 'SIGCONT');
  await verdict(t, w);
}

t.test('dump -s leaves the task stopped, and it continues after SIGCONT', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_state', dir);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '-s']);
  t.equal(dump.status, 0, `dump -s succeeds: ${dump.stderr}`);
  t.ok(existsSync(path.join(images, 'inventory.img')), 'the dump is complete');
  await stoppedThenContinues(t, w);
});

t.test(
  'restore -s leaves the restored task stopped',
  {
    skip: needsRoot,
  },
  async (t) => {
    const { w, dir, images } = await dumped(t);
    const r = await startRestore(['-D', images, '-s'], path.join(dir, 'restored.pid'));
    t.teardown(() => signalTask(w.pid, 'SIGKILL'));
    await stoppedThenContinues(t, w);
    t.equal((await r.done).status, 0);
  },
);
