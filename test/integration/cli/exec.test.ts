/**
 * `criu exec -t PID SYSCALL ARGS...` as the manual describes it, on a running fixture that checks
 * itself afterwards.
 */
import { readdirSync, readFileSync } from 'node:fs';
import t from 'tap';
import { criuAsync } from '../../helpers/criu.js';
import { startFixture } from '../../helpers/fixture.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (CAP_SYS_PTRACE)';

function lowestFreeFd(pid: number): number {
  const used = new Set(readdirSync(`/proc/${pid}/fd`).map(Number));
  let fd = 0;
  while (used.has(fd)) fd++;
  return fd;
}

t.test('close, open with &path and getpid; the program keeps running correctly', { skip: needsRoot }, async (t) => {
  // Learn which fd open(2) will return in a fixture set up the same way.
  const fx0 = await startFixture('exec_target', ['idle', '--fd5']);
  await fx0.waitFor('READY');
  const expected = lowestFreeFd(fx0.pid) === 5 ? 6 : lowestFreeFd(fx0.pid);
  fx0.kill();

  const fx = await startFixture('exec_target', [
    'idle',
    '--fd5',
    '--expect-closed',
    '5',
    '--expect-path',
    `${expected}=/etc/hostname`,
    '--check-maps',
  ]);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const maps = readFileSync(`/proc/${fx.pid}/maps`, 'utf8');

  const close = await criuAsync(['exec', '-t', String(fx.pid), 'close', '5']);
  t.equal(close.status, 0, close.stderr);
  t.equal(close.stdout, '0\n');

  const open = await criuAsync(['exec', '-t', String(fx.pid), 'open', '&/etc/hostname', '0']);
  t.equal(open.status, 0, open.stderr);
  t.equal(open.stdout, `${expected}\n`, 'open returns the lowest free fd');

  const getpid = await criuAsync(['exec', '-t', String(fx.pid), 'getpid']);
  t.equal(getpid.stdout, `${fx.pid}\n`);

  // The manual's own spelling: options after the syscall belong to it; numbers in any base.
  const lseek = await criuAsync(['exec', '-t', String(fx.pid), 'lseek', String(expected), '0x2', '0']);
  t.equal(lseek.stdout, '2\n', 'lseek moved fd to offset 2');

  t.equal(readFileSync(`/proc/${fx.pid}/maps`, 'utf8'), maps, 'no leftover mapping');
  fx.write('go\n');
  const { code, output } = await fx.exited();
  t.match(output, /PASS/);
  t.equal(code, 0);
});

t.test('an error return prints -ERRNO (NAME) and exits 0', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['idle']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const r = await criuAsync(['exec', '-t', String(fx.pid), 'close', '1000']);
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stdout, '-9 (EBADF)\n');
  const enoent = await criuAsync(['exec', '-t', String(fx.pid), 'open', '&/no/such/file', '0']);
  t.equal(enoent.stdout, '-2 (ENOENT)\n');
  fx.write('go\n');
  t.equal((await fx.exited()).code, 0);
});

t.test('bad targets and bad calls give one error line and exit 1', { skip: needsRoot }, async (t) => {
  const missing = await criuAsync(['exec', '-t', '1073741800', 'getpid']);
  t.equal(missing.status, 1);
  t.equal(missing.stderr.trim().split('\n').length, 1, missing.stderr);
  t.match(missing.stderr, /no such process/);
  t.notMatch(missing.stderr, /\n\s+at /, 'no stack trace');

  const unknown = await criuAsync(['exec', '-t', String(process.pid), 'no_such_syscall']);
  t.equal(unknown.status, 1);
  t.match(unknown.stderr, /unknown syscall "no_such_syscall"/);

  const noPid = await criuAsync(['exec', 'getpid']);
  t.equal(noPid.status, 1);
  t.match(noPid.stderr, /-t/);
});
