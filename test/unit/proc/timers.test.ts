import t from 'tap';
import { parseTimers } from '../../../src/proc/timers.js';

// /proc/PID/timers of a python3 that created five timers with timer_create (kernel 6.18):
// SIGEV_SIGNAL on CLOCK_MONOTONIC, SIGEV_NONE, SIGEV_THREAD_ID, SIGEV_SIGNAL with an RT signal on
// CLOCK_BOOTTIME, and a NULL sigevent (SIGALRM to the process). Newest first.
const SAMPLE = `ID: 4
signal: 14/0000000000000000
notify: signal/pid.26779
ClockID: 0
ID: 3
signal: 34/0000000000001234
notify: signal/pid.26779
ClockID: 7
ID: 2
signal: 12/0000000000001234
notify: signal/tid.26779
ClockID: 0
ID: 1
signal: 0/0000000000001234
notify: none/pid.26779
ClockID: 0
ID: 0
signal: 10/0000000000001234
notify: signal/pid.26779
ClockID: 1
`;

t.test('every timer', async (t) => {
  const timers = parseTimers(SAMPLE);
  t.same(
    timers.map((x) => x.id),
    [4, 3, 2, 1, 0],
  );
  t.same(timers[0], {
    id: 4,
    signo: 14,
    sigevValue: 0n,
    notify: 'signal',
    isThreadId: false,
    notifyPid: 26779,
    clockId: 0,
  });
  t.equal(timers[1]?.signo, 34);
  t.equal(timers[1]?.clockId, 7);
  t.equal(timers[2]?.isThreadId, true);
  t.equal(timers[3]?.notify, 'none');
  t.equal(timers[4]?.sigevValue, 0x1234n);
});

t.test('no timers, and broken text', async (t) => {
  t.same(parseTimers(''), []);
  t.throws(() => parseTimers('ID: 1\nsignal: 14/00\n'), /not whole entries/);
  t.throws(() => parseTimers('ID: 1\nsignal: 14/00\nnotify: bogus/pid.1\nClockID: 0\n'), /unknown notify/);
  t.throws(() => parseTimers('ID: x\nsignal: 14/00\nnotify: none/pid.1\nClockID: 0\n'), /Cannot parse timers entry/);
});
