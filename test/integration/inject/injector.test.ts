/**
 * The injection engine on real processes: each fixture (test/fixtures/exec_target.c) is busy in a
 * given way while we run syscalls inside it, then checks its own state and prints PASS or FAIL.
 */
import { readFileSync, readdirSync } from 'node:fs';
import t, { type Test } from 'tap';
import { Injector, injectSyscall } from '../../../src/inject/injector.js';
import { SYSCALLS_X86_64 as NR } from '../../../src/kernel/syscalls.js';
import { TaskError } from '../../../src/errors.js';
import { startFixture, type Fixture } from '../../helpers/fixture.js';
import { readStatus } from '../../../src/proc/status.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (CAP_SYS_PTRACE)';

async function expectPass(t: Test, fx: Fixture): Promise<void> {
  const { code, output } = await fx.exited(20_000);
  t.match(output, /PASS/, output);
  t.equal(code, 0, 'the fixture checked its state and passed');
}

const sleepMs = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const maps = (pid: number): string => readFileSync(`/proc/${pid}/maps`, 'utf8');
const fds = (pid: number): string[] => readdirSync(`/proc/${pid}/fd`).sort();

t.test('getpid, close and open run inside the task; maps and fds are as before', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['idle', '--fd5', '--expect-closed', '5', '--check-maps']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const mapsBefore = maps(fx.pid);
  t.equal(injectSyscall(fx.pid, NR.getpid, []), BigInt(fx.pid));
  t.equal(injectSyscall(fx.pid, NR.close, [5n]), 0n);
  const fdsBefore = fds(fx.pid);
  const fd = injectSyscall(fx.pid, NR.open, [Buffer.from('/etc/hostname\0'), 0n]);
  t.ok(fd >= 0n, `open returned ${fd}`);
  t.equal(readFileSync(`/proc/${fx.pid}/fdinfo/${fd}`, 'utf8').includes('flags:'), true);
  t.equal(injectSyscall(fx.pid, NR.close, [fd]), 0n);
  t.same(fds(fx.pid), fdsBefore, 'no fd left behind');
  t.equal(maps(fx.pid), mapsBefore, 'no scratch mapping left behind');
  t.equal(readStatus(fx.pid)?.tracerPid, 0, 'not traced any more');
  fx.write('go\n');
  await expectPass(t, fx);
});

t.test('an error return is a result, not an exception', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['idle']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  t.equal(injectSyscall(fx.pid, NR.close, [99n]), -9n, 'EBADF');
  const inj = Injector.attach(fx.pid);
  try {
    t.throws(() => inj.syscallOrThrow('close', [99n]), { code: 'ESYSCALL', errnoCode: 'EBADF' });
  } finally {
    inj.release();
  }
  fx.write('go\n');
  await expectPass(t, fx);
});

t.test('scratch memory carries in-memory arguments and is removed on release', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['idle', '--check-maps']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const before = maps(fx.pid);
  const inj = Injector.attach(fx.pid);
  try {
    const big = Buffer.alloc(10_000, 0x61);
    const addr = inj.pushData(big);
    t.same(inj.readMemory(addr, big.length), big);
    const second = inj.pushData(Buffer.from('hello\0'));
    t.same(inj.readMemory(second, 6), Buffer.from('hello\0'));
    t.not(maps(fx.pid), before, 'the scratch mapping exists while attached');
  } finally {
    inj.release();
  }
  t.equal(maps(fx.pid), before);
  fx.write('go\n');
  await expectPass(t, fx);
});

// Blocking syscalls: the interrupted call must go on as if nothing happened (restart rules).
for (const [mode, args] of [
  ['sleep', ['2']],
  ['idle', []],
  ['epoll', []],
  ['futex', []],
] as const) {
  t.test(`a task blocked in ${mode} carries on correctly`, { skip: needsRoot }, async (t) => {
    const fx = await startFixture('exec_target', [mode, ...args]);
    t.teardown(() => fx.kill());
    await fx.waitFor('READY');
    await sleepMs(200);
    for (let i = 0; i < 5; i++) t.equal(injectSyscall(fx.pid, NR.getppid, []) > 0n, true);
    t.equal(injectSyscall(fx.pid, NR.getpid, []), BigInt(fx.pid));
    if (mode !== 'sleep') fx.write('go\n');
    await expectPass(t, fx);
  });
}

t.test('registers survive: a spinning loop checks ten registers every turn', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['spin']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  await sleepMs(100);
  for (let i = 0; i < 20; i++) {
    t.equal(injectSyscall(fx.pid, NR.getpid, []), BigInt(fx.pid));
    await sleepMs(10);
  }
  fx.write('go\n');
  await expectPass(t, fx);
});

t.test('a multi-threaded task: the other threads keep working', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['threads']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const inj = Injector.attach(fx.pid);
  try {
    for (let i = 0; i < 50; i++) inj.syscall(NR.getpid, []);
    t.equal(inj.syscall(NR.gettid, []), BigInt(fx.pid), 'runs in the main thread');
  } finally {
    inj.release();
  }
  // A worker thread can be chosen too.
  const tids = readdirSync(`/proc/${fx.pid}/task`)
    .map(Number)
    .filter((n) => n !== fx.pid);
  const worker = tids[0] as number;
  const inj2 = Injector.attach(fx.pid, { tid: worker });
  try {
    t.equal(inj2.syscall(NR.gettid, []), BigInt(worker));
  } finally {
    inj2.release();
  }
  fx.write('go\n');
  await expectPass(t, fx);
});

t.test('a signal sent while attached is delivered after release, once', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['idle', '--expect-signals', '1']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const inj = Injector.attach(fx.pid);
  try {
    process.kill(fx.pid, 'SIGUSR1');
    inj.syscall(NR.getpid, []);
    inj.syscall(NR.getpid, []);
  } finally {
    inj.release();
  }
  await sleepMs(100);
  fx.write('go\n');
  await expectPass(t, fx);
});

t.test('a stopped task stays stopped, then continues correctly', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['idle']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  process.kill(fx.pid, 'SIGSTOP');
  await sleepMs(100);
  t.equal(readStatus(fx.pid)?.state, 'T');
  const inj = Injector.attach(fx.pid);
  t.equal(inj.seizeState, 'group-stop');
  try {
    t.equal(inj.syscall(NR.getpid, []), BigInt(fx.pid));
  } finally {
    inj.release();
  }
  await sleepMs(100);
  t.equal(readStatus(fx.pid)?.state, 'T', 'still stopped after release');
  process.kill(fx.pid, 'SIGCONT');
  fx.write('go\n');
  await expectPass(t, fx);
});

t.test('a task that dies meanwhile gives a clear error, no hang', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['idle']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const inj = Injector.attach(fx.pid, { timeoutMs: 2000 });
  fx.kill();
  await sleepMs(100);
  t.throws(() => inj.syscall(NR.getpid, []), TaskError);
  t.doesNotThrow(() => inj.release());
  const { code } = await fx.exited();
  t.not(code, 0);
});

t.test('seizing a missing or already traced task is a clear error', { skip: needsRoot }, async (t) => {
  t.throws(() => Injector.attach(0x3ffffff0), { code: 'ETASK', message: /no such process/ });
  const fx = await startFixture('exec_target', ['idle']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const inj = Injector.attach(fx.pid);
  try {
    // A second seize from the same tracer is refused by the kernel as well.
    t.throws(() => Injector.attach(fx.pid), { code: 'ETASK', message: /Cannot seize task/ });
  } finally {
    inj.release();
  }
  fx.write('go\n');
  await expectPass(t, fx);
});
