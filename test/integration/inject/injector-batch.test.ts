/**
 * Injector.runCalls: many syscalls in one resumption of the task (the batch loop), on real
 * processes (test/fixtures/exec_target.c). The results must be exactly those of the same calls
 * made one at a time, and the task must be left as it was (no mapping, registers intact).
 */
import { readFileSync } from 'node:fs';
import t, { type Test } from 'tap';
import { Injector, type InjectedCall } from '../../../src/inject/injector.js';
import { SYSCALLS_X86_64 as NR } from '../../../src/kernel/syscalls.js';
import { startFixture, type Fixture } from '../../helpers/fixture.js';
import { readStatus } from '../../../src/proc/status.js';

// The batch loop is an opt-in (src/inject/injector.ts): these tests are about it.
process.env['CRIU_TS_INJECT_BATCH'] = '1';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (CAP_SYS_PTRACE)';
const maps = (pid: number): string => readFileSync(`/proc/${pid}/maps`, 'utf8');
const sleepMs = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function expectPass(t: Test, fx: Fixture): Promise<void> {
  const { code, output } = await fx.exited(20_000);
  t.match(output, /PASS/, output);
  t.equal(code, 0, 'the fixture checked its state and passed');
}

/** The task is (still) stopped; once continued it checks itself and passes. */
async function expectStoppedThenPass(t: Test, fx: Fixture, why: string): Promise<void> {
  await sleepMs(100);
  t.equal(readStatus(fx.pid)?.state, 'T', why);
  process.kill(fx.pid, 'SIGCONT');
  fx.write('go\n');
  await expectPass(t, fx);
}

/** Every sigaction, getpid, a failing close and a prctl with an output buffer. */
const CALLS: InjectedCall[] = [
  ...Array.from({ length: 64 }, (_, i): InjectedCall => ({
    name: 'rt_sigaction',
    outBytes: 32,
    args: (out) => [BigInt(i + 1), 0n, out, 8n],
  })),
  { name: 'getpid', args: () => [] },
  { name: 'close', args: () => [999n] },
  { name: 'prctl', outBytes: 16, args: (out) => [16n /* PR_GET_NAME */, out, 0n, 0n, 0n] },
];

t.test('a batch gives the results of the same calls made one at a time', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['idle', '--check-maps']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const mapsBefore = maps(fx.pid);
  const inj = Injector.attach(fx.pid);
  let batched;
  const single: { ret: bigint; out: Buffer }[] = [];
  try {
    batched = inj.runCalls(CALLS);
    for (const c of CALLS) {
      const out = inj.pushData(Buffer.alloc(c.outBytes ?? 0));
      const ret = inj.syscall(NR[c.name], c.args(out));
      single.push({ ret, out: inj.readMemory(out, c.outBytes ?? 0) });
      inj.resetScratch();
    }
    t.not(maps(fx.pid), mapsBefore, 'the loop page is mapped while attached');
    t.equal(inj.runCalls([]).length, 0, 'an empty batch is nothing');
  } finally {
    inj.release();
  }
  t.equal(batched.length, CALLS.length);
  t.same(
    batched.map((r) => [r.ret, r.out.toString('hex')]),
    single.map((r) => [r.ret, r.out.toString('hex')]),
  );
  t.equal(batched[64]?.ret, BigInt(fx.pid), 'getpid');
  t.equal(batched[65]?.ret, -9n, 'a failed call is its -errno, not an exception');
  t.match(batched[66]?.out.toString('latin1') ?? '', /^exec_target/, 'output buffers come back');
  t.throws(() => inj.checkCall(CALLS[65] as InjectedCall, batched[65] as never), {
    code: 'ESYSCALL',
    errnoCode: 'EBADF',
  });
  t.equal(maps(fx.pid), mapsBefore, 'no mapping left behind');
  t.equal(readStatus(fx.pid)?.tracerPid, 0, 'not traced any more');
  fx.write('go\n');
  await expectPass(t, fx);
});

t.test('batches in a spinning task leave its registers intact', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['spin']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  await sleepMs(100);
  for (let i = 0; i < 10; i++) {
    const inj = Injector.attach(fx.pid);
    try {
      const res = inj.runCalls(CALLS);
      t.equal(res[64]?.ret, BigInt(fx.pid));
      // A second batch reuses the loop page; a short one after it too.
      t.equal(inj.runCalls([{ name: 'getpid', args: () => [] }])[0]?.ret, BigInt(fx.pid));
    } finally {
      inj.release();
    }
    await sleepMs(10);
  }
  fx.write('go\n');
  await expectPass(t, fx);
});

t.test('rt_sigprocmask is refused in a batch (it changes what release restores)', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['idle']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const inj = Injector.attach(fx.pid);
  try {
    t.throws(() => inj.runCalls([{ name: 'rt_sigprocmask', args: () => [0n, 0n, 0n, 8n] }]), RangeError);
  } finally {
    inj.release();
  }
  fx.write('go\n');
  await expectPass(t, fx);
});

t.test('a stopped task stays stopped after a batch, then continues correctly', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['idle', '--check-maps']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  process.kill(fx.pid, 'SIGSTOP');
  await sleepMs(100);
  t.equal(readStatus(fx.pid)?.state, 'T');
  const inj = Injector.attach(fx.pid);
  t.equal(inj.seizeState, 'group-stop');
  try {
    t.equal(inj.runCalls(CALLS)[64]?.ret, BigInt(fx.pid));
  } finally {
    inj.release();
  }
  await expectStoppedThenPass(t, fx, 'still stopped after release');
});

t.test('a SIGSTOP sent during a batch is kept for after release', { skip: needsRoot }, async (t) => {
  const fx = await startFixture('exec_target', ['idle']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const inj = Injector.attach(fx.pid);
  try {
    // Queued while the task is in our stop: seen by the batch's resumption, not by the task.
    process.kill(fx.pid, 'SIGSTOP');
    t.equal(inj.runCalls(CALLS)[64]?.ret, BigInt(fx.pid));
  } finally {
    inj.release();
  }
  await expectStoppedThenPass(t, fx, 'stopped by the deferred SIGSTOP');
});

t.test(
  'without the opt-in, runCalls makes single calls: no code page, the same results',
  { skip: needsRoot },
  async (t) => {
    const fx = await startFixture('exec_target', ['idle', '--check-maps']);
    t.teardown(() => fx.kill());
    await fx.waitFor('READY');
    const mapsBefore = maps(fx.pid);
    const saved = process.env['CRIU_TS_INJECT_BATCH'];
    delete process.env['CRIU_TS_INJECT_BATCH'];
    const inj = Injector.attach(fx.pid);
    try {
      const res = inj.runCalls(CALLS);
      t.equal(res[64]?.ret, BigInt(fx.pid), 'getpid');
      t.equal(res[65]?.ret, -9n, 'a failed call is its -errno');
      t.match(res[66]?.out.toString('latin1') ?? '', /^exec_target/, 'output buffers come back');
      const extra = maps(fx.pid)
        .split('\n')
        .filter((l) => !mapsBefore.includes(l) && / r-xp /.test(l));
      t.same(extra, [], 'no executable page of ours in the task');
    } finally {
      inj.release();
      process.env['CRIU_TS_INJECT_BATCH'] = saved;
    }
    t.equal(maps(fx.pid), mapsBefore, 'no mapping left behind');
  },
);

/** Run `fn` with the batch loop's opt-in off: runCalls then chains single calls (rawSyscalls). */
async function withoutLoop(fn: () => Promise<void>): Promise<void> {
  const saved = process.env['CRIU_TS_INJECT_BATCH'];
  delete process.env['CRIU_TS_INJECT_BATCH'];
  try {
    await fn();
  } finally {
    process.env['CRIU_TS_INJECT_BATCH'] = saved;
  }
}

t.test('chained single calls: a SIGSTOP met mid-chain is kept for after release', { skip: needsRoot }, async (t) => {
  await withoutLoop(async () => {
    const fx = await startFixture('exec_target', ['idle']);
    t.teardown(() => fx.kill());
    await fx.waitFor('READY');
    const inj = Injector.attach(fx.pid);
    let res;
    try {
      const single = inj.runCalls(CALLS);
      // The SIGSTOP is pending when the chain resumes the task: its first stop is the signal's,
      // not a syscall stop. The call is finished step by step, the rest chained again.
      process.kill(fx.pid, 'SIGSTOP');
      res = inj.runCalls(CALLS);
      t.same(
        res.map((r) => [r.ret, r.out.toString('hex')]),
        single.map((r) => [r.ret, r.out.toString('hex')]),
        'the same results as without the stop',
      );
    } finally {
      inj.release();
    }
    t.equal(res[64]?.ret, BigInt(fx.pid));
    await expectStoppedThenPass(t, fx, 'stopped by the deferred SIGSTOP');
  });
});

t.test('chained single calls: a task killed meanwhile is a TaskError, no hang', { skip: needsRoot }, async (t) => {
  await withoutLoop(async () => {
    const fx = await startFixture('exec_target', ['idle']);
    t.teardown(() => fx.kill());
    await fx.waitFor('READY');
    const inj = Injector.attach(fx.pid, { timeoutMs: 2000 });
    process.kill(fx.pid, 'SIGKILL');
    await sleepMs(100);
    t.throws(() => inj.runCalls(CALLS), /exited/);
    t.doesNotThrow(() => inj.release());
  });
});
