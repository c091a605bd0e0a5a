import t from 'tap';
import {
  decodeWaitStatus,
  describeWaitStatus,
  encodeWaitStatus,
  isGroupStop,
  isInterruptStop,
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
