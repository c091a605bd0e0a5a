/**
 * File locks (src/files/file-locks.ts): a python3 process holds a shared flock, two POSIX record
 * locks on one file (a write lock on bytes 5-14, a read lock from 50 to the end) and an OFD write
 * lock. It compares the "lock:" lines of its fdinfo after the restore with those before (PASS or
 * FAIL). Without --file-locks the dump refuses it in one line, the task left as it was; with it,
 * filelocks.img holds the four locks as CRIU writes them (crit reads it), and the restore takes
 * them again. A restore whose lock someone else holds meanwhile fails in one line.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { readEntries } from '../../../src/images/index.js';
import { criuAsync, criuWatched, endExpectPass, startRestore, startWorkload, waitGone } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';
const crit = ['/usr/bin/crit', '/usr/sbin/crit'].find((p) => existsSync(p));

/** The workload: locks taken, then on SIGTERM its lock lines compared with those before. */
const LOCKER = `
import fcntl, os, struct, sys, signal, time
d = os.path.dirname(sys.argv[-1])
def state():
    out = []
    for fd in sorted(int(x) for x in os.listdir('/proc/self/fd')):
        try: text = open(f'/proc/self/fdinfo/{fd}').read()
        except OSError: continue
        out += [f'{fd} ' + ' '.join(l.split()[2:5] + l.split()[6:]) for l in text.splitlines() if l.startswith('lock:')]
    return out
f = open(os.path.join(d, 'flock'), 'w'); fcntl.flock(f, fcntl.LOCK_SH)
g = open(os.path.join(d, 'posix'), 'w+'); g.write('x' * 100); g.flush()
fcntl.lockf(g, fcntl.LOCK_EX, 10, 5); fcntl.lockf(g, fcntl.LOCK_SH, 0, 50)
h = open(os.path.join(d, 'ofd'), 'w')
fcntl.fcntl(h, 37, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0))  # F_OFD_SETLK
before = state()
got = []
signal.signal(signal.SIGTERM, lambda *a: got.append(1))
open(sys.argv[-1], 'a').write(f'READY {os.getpid()}\\n')
while not got: time.sleep(0.05)
after = state()
ok = before == after and len(before) == 4
open(sys.argv[-1], 'a').write('PASS\\n' if ok else f'FAIL: {before} -> {after}\\n')
`;

async function startLocker(t: Test, dir: string): Promise<Awaited<ReturnType<typeof startWorkload>>> {
  const w = await startWorkload('/usr/bin/python3', dir, ['-c', LOCKER]);
  t.teardown(() => w.kill());
  return w;
}

/** The locker, dumped with `lockFlag` (it is gone once this returns): its workload and images. */
async function dumpedLocker(
  t: Test,
  lockFlag: string,
): Promise<{ dir: string; w: Awaited<ReturnType<typeof startWorkload>>; images: string }> {
  const dir = t.testdir();
  const w = await startLocker(t, dir);
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, lockFlag]);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);
  return { dir, w, images };
}

t.test(
  'without --file-locks the dump refuses a task holding locks, and leaves it be',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const w = await startLocker(t, dir);
    const r = await criuWatched(['dump', '-t', String(w.pid), '-D', path.join(dir, 'img')], w.pid);
    t.equal(r.status, 1, 'dump exits 1');
    const lines = r.stderr.trim().split('\n');
    t.equal(lines.length, 1, `one line: ${r.stderr}`);
    t.match(lines[0], /Cannot dump fd \d+ of task \d+: it holds a file lock \(FLOCK READ\); with --file-locks \(-l\)/);
    t.notOk(r.wasTraced, 'the task was never seized');
    await endExpectPass(t, w);
  },
);

t.test('with --file-locks, the locks are dumped and taken again', { skip: needsRoot }, async (t) => {
  const { dir, w, images } = await dumpedLocker(t, '--file-locks');
  const locks = await readEntries(path.join(images, 'filelocks.img'), 'FILE_LOCKS');
  t.same(
    locks.map((l) => [l['flag'], l['type'], l['pid'], Number(l['start']), Number(l['len'])]),
    [
      [2, 0, w.pid, 0, 0], // flock, shared
      [1, 1, w.pid, 5, 10], // POSIX write lock, bytes 5-14
      [1, 0, w.pid, 50, 0], // POSIX read lock, 50 to the end
      [4, 1, w.pid, 0, 0], // OFD write lock
    ],
    'the four locks, as CRIU records them',
  );
  if (crit === undefined) t.pass('crit reads filelocks.img', { skip: 'crit is not installed' });
  else t.match(execFileSync(crit, ['show', path.join(images, 'filelocks.img')], { encoding: 'utf8' }), /"FILE_LOCKS"/);
  const restored = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
  t.equal(restored.pid, w.pid, 'restored with its PID');
  await endExpectPass(t, w);
  t.equal((await restored.done).status, 0);
});

t.test('a restore whose lock is held by someone else fails in one line', { skip: needsRoot }, async (t) => {
  const { dir, w, images } = await dumpedLocker(t, '-l');
  // Another process takes the file the flock was on, exclusively.
  const holder = spawn(
    '/usr/bin/python3',
    [
      '-c',
      'import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, 2); print("held", flush=True); time.sleep(60)',
      path.join(dir, 'flock'),
    ],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  t.teardown(() => holder.kill('SIGKILL'));
  await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
  const r = await criuWatched(['restore', '-D', images], w.pid);
  t.equal(r.status, 1, 'restore exits 1');
  const lines = r.stderr.trim().split('\n');
  t.equal(lines.length, 1, `one line: ${r.stderr}`);
  t.match(lines[0], /Cannot restore the flock lock of fd \d+ of task \d+: another process holds a lock on that file/);
  t.notOk(existsSync(`/proc/${w.pid}`), 'the process it had begun is gone');
});
