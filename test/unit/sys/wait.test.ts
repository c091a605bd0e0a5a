import t from 'tap';
import {
  decodeWaitStatus,
  describeWaitStatus,
  encodeWaitStatus,
  isGroupStop,
  isInterruptStop,
  pollSync,
  retrySync,
} from '../../../src/sys/wait.js';
import type { WaitStatus } from '../../../src/sys/wait.js';

// Status words as Linux builds them (kernel/exit.c, kernel/ptrace.c, kernel/signal.c).
const FIXTURES: [number, WaitStatus][] = [
  [0x0000, { kind: 'exited', exitCode: 0 }],
  [0x0300, { kind: 'exited', exitCode: 3 }],
  [0xff00, { kind: 'exited', exitCode: 255 }],
  [0x0009, { kind: 'signaled', signal: 9, coreDumped: false }],
  [0x008b, { kind: 'signaled', signal: 11, coreDumped: true }],
  [0x137f, { kind: 'stopped', signal: 19, event: 0, isSyscallStop: false }],
  [0x80057f, { kind: 'stopped', signal: 5, event: 128, isSyscallStop: false }],
  [0x80137f, { kind: 'stopped', signal: 19, event: 128, isSyscallStop: false }],
  [0x857f, { kind: 'stopped', signal: 5, event: 0, isSyscallStop: true }],
  [0x4057f, { kind: 'stopped', signal: 5, event: 4, isSyscallStop: false }],
  [0x6057f, { kind: 'stopped', signal: 5, event: 6, isSyscallStop: false }],
  [0xffff, { kind: 'continued' }],
];

t.test('decodes and re-encodes every kind of status word', async (t) => {
  for (const [word, want] of FIXTURES) {
    t.same(decodeWaitStatus(word), want, `0x${word.toString(16)}`);
    t.equal(encodeWaitStatus(want), word, `encode 0x${word.toString(16)}`);
  }
});

t.test('classifies seized-tracee stops', async (t) => {
  t.ok(isInterruptStop(decodeWaitStatus(0x80057f)));
  t.notOk(isGroupStop(decodeWaitStatus(0x80057f)));
  t.ok(isGroupStop(decodeWaitStatus(0x80137f)));
  t.notOk(isGroupStop(decodeWaitStatus(0x137f)), 'a signal-delivery stop is not a group stop');
  t.notOk(isInterruptStop(decodeWaitStatus(0x857f)));
});

t.test('describes statuses for messages', async (t) => {
  t.equal(describeWaitStatus(decodeWaitStatus(0x0300)), 'exited 3');
  t.equal(describeWaitStatus(decodeWaitStatus(0x008b)), 'killed by signal 11 (core dumped)');
  t.equal(describeWaitStatus(decodeWaitStatus(0x80057f)), 'stopped by signal 5 (event 128)');
  t.equal(describeWaitStatus(decodeWaitStatus(0x857f)), 'syscall-stop');
});

t.test('retrySync: again while transient, until its time is up; other errors at once', async (t) => {
  class Passing extends Error {}
  let calls = 0;
  const third = (): string => {
    if (++calls < 3) throw new Passing('not yet');
    return 'done';
  };
  t.equal(
    retrySync(third, (e) => e instanceof Passing, 1000),
    'done',
    'returns once the step succeeds',
  );
  t.equal(calls, 3);
  calls = 0;
  t.throws(
    () =>
      retrySync(
        () => {
          calls++;
          throw new Error('broken');
        },
        (e) => e instanceof Passing,
        1000,
      ),
    /broken/,
    'a lasting error is thrown at once',
  );
  t.equal(calls, 1);
  const t0 = Date.now();
  t.throws(
    () =>
      retrySync(
        () => {
          throw new Passing('never');
        },
        () => true,
        30,
        5,
      ),
    /never/,
    'a transient one past the time',
  );
  t.ok(Date.now() - t0 >= 30, 'after its time');
});

t.test('pollSync: true once the condition holds, false when the time is up', async (t) => {
  let n = 0;
  t.equal(
    pollSync(() => ++n === 4, 1000),
    true,
  );
  t.equal(n, 4);
  const t0 = Date.now();
  t.equal(
    pollSync(() => false, 30, 5),
    false,
  );
  t.ok(Date.now() - t0 >= 30, 'after its time');
});
