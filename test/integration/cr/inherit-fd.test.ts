/**
 * --inherit-fd: a task whose stdout was a pipe to its parent is restored writing into the pipe criu
 * got as its own fd 1, and carries on counting where it stopped.
 */
import { spawn } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { criuAsync } from '../../helpers/cr.js';
import { ROOT } from '../../helpers/fixture.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';
const COUNTER = 'import sys, time\ni = 0\nwhile True:\n    print(i, flush=True)\n    i += 1\n    time.sleep(0.05)\n';

t.test('a task writing to an external pipe is reconnected with --inherit-fd', { skip: needsRoot }, async (t) => {
  const images = path.join(t.testdir(), 'img');
  // Through a waiting shell, so that the task is not our child (its parent must reap it).
  // stdout of the task is a real pipe (to cat): Node's own stdio pipes are socketpairs.
  const sh = spawn('sh', ['-c', '(python3 -c "$0" </dev/null 2>/dev/null & echo "PID $!" >&2; wait) | cat', COUNTER], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => sh.kill('SIGKILL'));
  const pid = await new Promise<number>((resolve) =>
    sh.stderr.once('data', (d: Buffer) => resolve(Number(/PID (\d+)/.exec(String(d))?.[1]))),
  );
  let before = '';
  sh.stdout.setEncoding('utf8').on('data', (s: string) => (before += s));
  await new Promise((r) => setTimeout(r, 500));
  const pipeKey = readlinkSync(`/proc/${pid}/fd/1`);
  t.match(pipeKey, /^pipe:\[\d+\]$/);
  const dump = await criuAsync(['dump', '-t', String(pid), '-D', images]);
  t.equal(dump.status, 0, dump.stderr);
  await new Promise((r) => setTimeout(r, 200));
  const lastBefore = Number(before.trim().split('\n').pop());

  const restore = spawn(
    'sh',
    [
      '-c',
      '"$@" | cat; exit ${PIPESTATUS:-0}',
      'sh',
      'node',
      path.join(ROOT, 'bin/criu.js'),
      'restore',
      '-D',
      images,
      '--inherit-fd',
      `fd[1]:${pipeKey}`,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  });
  let after = '';
  restore.stdout.setEncoding('utf8').on('data', (s: string) => (after += s));
  const until = Date.now() + 10_000;
  while (after.split('\n').length < 5 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  const numbers = after.trim().split('\n').map(Number);
  t.ok(numbers.length >= 4, `the restored task writes into criu's stdout (${after.length} bytes)`);
  t.equal(numbers[0], lastBefore + 1, 'it counts on from where it was dumped');
  process.kill(pid, 'SIGKILL');
  await new Promise<void>((r) => restore.on('exit', () => r()));
});
