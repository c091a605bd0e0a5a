/**
 * Programs no one here wrote survive dump then restore and keep working: a python3 script and a
 * node script (multi-threaded: libuv pool, V8 threads) that keep state in memory and append
 * progress to a file every 100 ms, a bash loop (its FIFO included), and `sleep 1000`.
 *
 * Each runs with /dev/null for stdio (a pipe to the test would come back as a new, disconnected
 * pipe). After restore: same PID, not traced, the progress counter carries on from where it was
 * (it does not start again) and the state digest is unchanged; then the program is asked to exit
 * (SIGTERM) and criu restore, its parent, exits with its status. Both ways: dump (the task is
 * killed), and dump --leave-running then kill the original before restoring.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import {
  blockedSyscall,
  criuAsync,
  poll,
  signalTask,
  sleep,
  startWorkload,
  taskSnapshot,
  taskState,
  waitGone,
  waitPid,
} from '../../helpers/cr.js';

import { PROGRAMS } from '../../helpers/programs.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

interface Tick {
  n: number;
  digest: string;
}
function ticks(text: string): Tick[] {
  return [...text.matchAll(/^TICK (\d+) (\S+)$/gm)].map((m) => ({ n: Number(m[1]), digest: String(m[2]) }));
}
function lastTick(text: string): number {
  return ticks(text).at(-1)?.n ?? 0;
}

for (const prog of PROGRAMS) {
  for (const mode of ['dump', 'leave-running'] as const) {
    t.test(`${prog.name} keeps its state and progress across ${mode} then restore`, { skip: needsRoot }, async (t) => {
      const dir = t.testdir();
      const w = await prog.start(dir);
      t.teardown(() => w.kill());
      const readyDigest = /READY \d+ (\S+)/.exec(w.report())?.[1] ?? '';
      await poll(() => lastTick(w.report()) >= 3, 'three ticks', 10_000);
      const tickBeforeDump = lastTick(w.report());
      const images = path.join(dir, 'img');
      const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, ...(mode === 'dump' ? [] : ['-R'])]);
      t.equal(dump.status, 0, `dump succeeds: ${dump.stderr}`);
      if (mode === 'leave-running') {
        const n = lastTick(w.report());
        await poll(() => lastTick(w.report()) > n + 1, 'the original to go on ticking after -R', 5000);
        t.pass('the original keeps running after -R');
        w.kill();
      }
      await waitGone(w.pid);
      const reportAtRestore = w.report();
      const lastOriginal = lastTick(reportAtRestore);

      const restored = criuAsync(['restore', '-D', images]);
      t.teardown(() => signalTask(w.pid, 'SIGKILL'));
      await waitPid(w.pid);
      await poll(
        () => ticks(w.report().slice(reportAtRestore.length)).length >= 5,
        'five ticks after restore',
        10_000,
      ).catch((err: unknown) => t.fail(String(err)));
      const after = ticks(w.report().slice(reportAtRestore.length));
      const first = after[0]?.n ?? -1;
      if (mode === 'dump') t.equal(first, lastOriginal + 1, 'the counter carries on from where it was dumped');
      else {
        t.ok(first > tickBeforeDump && first <= lastOriginal + 1, `the counter carries on (${first})`);
      }
      t.same(
        after.map((x) => x.n),
        after.map((_, i) => first + i),
        'and goes on counting',
      );
      t.ok(
        after.every((x) => x.digest === readyDigest),
        `the state digest is unchanged (${readyDigest})`,
      );
      const snap = taskSnapshot(w.pid);
      t.ok(
        snap.tracers.every((x) => x.endsWith(':0')),
        `no thread is traced (${snap.tracers.join(' ')})`,
      );
      signalTask(w.pid, 'SIGTERM');
      await w.waitFor('BYE', 10_000).catch((err: unknown) => t.fail(String(err)));
      t.match(w.report(), /^BYE \d+ /m, 'it exits cleanly when asked');
      const r = await restored;
      const status = prog.termStatus ?? 0;
      t.equal(r.status, status, `criu restore exits with its status ${status} (${r.stderr})`);
    });
  }
}

for (const mode of ['dump', 'leave-running'] as const) {
  t.test(`sleep 1000 sleeps on after ${mode} then restore, and can be killed`, { skip: needsRoot }, async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('/bin/sh', dir, ['-c', 'echo "READY $$" >"$0"; exec sleep 1000']);
    t.teardown(() => w.kill());
    await poll(() => readFileSync(`/proc/${w.pid}/comm`, 'utf8') === 'sleep\n', 'sleep to start', 5000);
    const images = path.join(dir, 'img');
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, ...(mode === 'dump' ? [] : ['-R'])]);
    t.equal(dump.status, 0, `dump succeeds: ${dump.stderr}`);
    if (mode === 'leave-running') {
      t.equal(taskState(w.pid), 'S', 'the original sleeps on after -R');
      w.kill();
    }
    await waitGone(w.pid);
    const restored = criuAsync(['restore', '-D', images]);
    t.teardown(() => signalTask(w.pid, 'SIGKILL'));
    await waitPid(w.pid);
    await sleep(1000);
    t.equal(readFileSync(`/proc/${w.pid}/comm`, 'utf8'), 'sleep\n', 'the restored task is sleep');
    t.equal(taskState(w.pid), 'S', 'still sleeping a second later');
    t.ok([35, 230].includes(blockedSyscall(w.pid) ?? -1), 'in nanosleep or clock_nanosleep');
    t.ok(
      taskSnapshot(w.pid).tracers.every((x) => x.endsWith(':0')),
      'not traced',
    );
    signalTask(w.pid, 'SIGTERM');
    const r = await restored;
    t.equal(r.status, 128 + 15, `criu restore exits 143: sleep was killed by SIGTERM (${r.stderr})`);
  });
}
