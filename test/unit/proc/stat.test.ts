import t from 'tap';
import { parseStat } from '../../../src/proc/stat.js';

// Real /proc/PID/stat lines from this machine (kernel 6.18).
// `sleep` copied to "/tmp/x) y (z": comm holds spaces and both parentheses.
const ODD_COMM =
  '26867 (x) y (z) S 26866 26863 24564 0 -1 4194304 127 0 0 0 0 1 0 0 20 0 1 0 195073 2990080 402 18446744073709551615 94765283635200 94765283653129 140722313513232 0 0 0 0 6 0 1 0 0 17 1 0 0 0 0 0 94765283667216 94765283668480 94765572255744 140722313521694 140722313521710 140722313521710 140722313523179 0\n';
// A python3 process leader and its second thread (task/TID/stat).
const LEADER =
  '27170 (python3) R 27168 27168 24564 0 -1 4194304 2836 6518 7 0 7 6 13 17 20 0 2 0 197968 92495872 3352 18446744073709551615 94514573524992 94514573525333 140722351861904 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0 94514573536688 94514573537304 94515582554112 140722351863670 140722351863908 140722351863908 140722351865807 0\n';
const THREAD =
  '27211 (python3) S 27168 27168 24564 0 -1 4194368 4 6518 0 0 0 0 13 17 20 0 2 0 198011 92495872 3352 18446744073709551615 94514573524992 94514573525333 140722351861904 0 0 0 0 16781312 2 1 0 0 -1 0 0 0 0 0 0 94514573536688 94514573537304 94515582554112 140722351863670 140722351863908 140722351863908 140722351865807 0\n';

t.test('comm with spaces and parentheses', async (t) => {
  const s = parseStat(ODD_COMM);
  t.equal(s.pid, 26867);
  t.equal(s.comm, 'x) y (z');
  t.equal(s.state, 'S');
  t.equal(s.ppid, 26866);
  t.equal(s.pgrp, 26863);
  t.equal(s.session, 24564);
  t.equal(s.tty_nr, 0);
  t.equal(s.tpgid, -1);
  t.equal(s.flags, 4194304);
  t.equal(s.minflt, 127);
  t.equal(s.stime, 1);
  t.equal(s.priority, 20);
  t.equal(s.nice, 0);
  t.equal(s.num_threads, 1);
  t.equal(s.starttime, 195073);
  t.equal(s.vsize, 2990080);
  t.equal(s.rss, 402);
  t.equal(s.rsslim, 18446744073709551615n);
  t.equal(s.startcode, 94765283635200n);
  t.equal(s.endcode, 94765283653129n);
  t.equal(s.startstack, 140722313513232n);
  t.equal(s.sigignore, 6n, 'SIGINT and SIGQUIT, ignored by sh for a background job');
  t.equal(s.sigcatch, 0n);
  t.equal(s.exit_signal, 17);
  t.equal(s.processor, 1);
  t.equal(s.start_data, 94765283667216n);
  t.equal(s.end_data, 94765283668480n);
  t.equal(s.start_brk, 94765572255744n);
  t.equal(s.arg_start, 140722313521694n);
  t.equal(s.arg_end, 140722313521710n);
  t.equal(s.env_start, 140722313521710n);
  t.equal(s.env_end, 140722313523179n);
  t.equal(s.exit_code, 0);
});

t.test('leader and thread', async (t) => {
  const l = parseStat(LEADER);
  const th = parseStat(THREAD);
  t.equal(l.blocked, 0n);
  t.equal(l.sigignore, 16781312n);
  t.equal(l.sigcatch, 2n);
  t.equal(th.pid, 27211, 'a thread reports its tid');
  t.equal(th.ppid, l.ppid, 'ppid is the process parent');
  t.equal(th.num_threads, 2);
  t.equal(th.exit_signal, -1, 'non-leader threads have no exit signal');
  t.equal(th.processor, 0);
  t.equal(th.start_brk, l.start_brk);
});

t.test('malformed lines are rejected', async (t) => {
  t.throws(() => parseStat('12 sleep S 1 2 3\n'), /no "\(comm\)"/);
  t.throws(() => parseStat('12 (sleep) S 1 2 3\n'), /6 fields, expected 52/);
});
