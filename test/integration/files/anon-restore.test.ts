/**
 * Restore of path-less fd kinds from image entries alone, in states the files_anon fixture does
 * not have: an absolute timer with unread expirations, an eventfd counter above 2^32, inotify wds
 * with a wide hole, two read descriptions of a pipe without its write end, a signal for SIGIO.
 * The entries are rebuilt inside an idle exec_target and checked from outside (fdinfo, and
 * criu's own duplicates of the fds).
 */
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import type { ImageEntry } from '../../../src/images/index.js';
import { eventfdFile } from '../../../src/files/eventfd.js';
import { inotifyFile } from '../../../src/files/inotify.js';
import { pipeFile } from '../../../src/files/pipe.js';
import { timerfdFile } from '../../../src/files/timerfd.js';
import { FD_TYPES, type FdKindModule } from '../../../src/files/types.js';
import * as sys from '../../../src/sys/native.js';
import { startFixture } from '../../helpers/fixture.js';
import { restoreFds, type DumpedFile } from './anon-harness.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (CAP_SYS_PTRACE)';
const fown = (signum = 0): ImageEntry => ({ uid: 0, euid: 0, signum, pid_type: 0, pid: 0 });
const file = (fd: number, id: number, mod: FdKindModule, entry: ImageEntry): DumpedFile => ({
  fd,
  id,
  mod,
  entry,
  flags: 0,
});

t.test('restore of states the fixture does not make', { skip: needsRoot }, async (t) => {
  const dir = t.testdir({});
  for (const d of ['w1', 'w5']) mkdirSync(join(dir, d));
  const data = Buffer.from('two readers');
  const files: DumpedFile[] = [
    file(30, 1, timerfdFile, {
      type: FD_TYPES.TIMERFD,
      id: 1,
      tfd: {
        id: 1,
        flags: 0o4002,
        fown: fown(),
        clockid: 0, // CLOCK_REALTIME
        ticks: 7n,
        settime_flags: 1, // TFD_TIMER_ABSTIME
        vsec: 500n,
        vnsec: 0n,
        isec: 0n,
        insec: 0n,
      },
    }),
    file(31, 2, eventfdFile, {
      type: FD_TYPES.EVENTFD,
      id: 2,
      efd: { id: 2, flags: 0o2, fown: fown(29), counter: 0x1_0000_0005n },
    }),
    file(32, 3, inotifyFile, {
      type: FD_TYPES.INOTIFY,
      id: 3,
      ify: {
        id: 3,
        flags: 0,
        fown: fown(),
        wd: [
          {
            id: 0,
            i_ino: 0n,
            mask: 0x100,
            ignored_mask: 0,
            s_dev: 0,
            wd: 5,
            f_handle: { bytes: 0, type: 0, handle: [], path: join(dir, 'w5') },
          },
          {
            id: 0,
            i_ino: 0n,
            mask: 0x200,
            ignored_mask: 0,
            s_dev: 0,
            wd: 1,
            f_handle: { bytes: 0, type: 0, handle: [], path: join(dir, 'w1') },
          },
        ],
      },
    }),
    file(33, 4, pipeFile, { type: FD_TYPES.PIPE, id: 4, pipe: { id: 4, pipe_id: 77, flags: 0, fown: fown() } }),
    file(34, 5, pipeFile, { type: FD_TYPES.PIPE, id: 5, pipe: { id: 5, pipe_id: 77, flags: 0o4000, fown: fown() } }),
  ];
  const fx = await startFixture('exec_target', ['idle']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  await restoreFds(fx.pid, {
    files,
    extras: new Map([['PIPES_DATA', [{ entry: { pipe_id: 77, bytes: data.length, size: 131072 }, extra: data }]]]),
  });
  const info = (fd: number): string => readFileSync(`/proc/${fx.pid}/fdinfo/${fd}`, 'utf8');

  const timer = info(30);
  t.match(timer, /clockid: 0\n/);
  t.match(timer, /ticks: 7\n/, 'unread expirations restored');
  t.match(timer, /settime flags: 01\n/, 'still an absolute timer');
  const left = Number(/it_value: \((\d+),/.exec(timer)?.[1]);
  t.ok(left > 490 && left <= 500, `time left ${left} s`);
  t.match(timer, /flags:\s+04002/);

  t.match(info(31), /eventfd-count:\s+100000005\n/, 'a counter above 2^32');
  t.match(info(31), /eventfd-semaphore: 0/);
  const pidfd = sys.pidfdOpen(fx.pid, 0);
  t.teardown(() => sys.close(pidfd));
  const efd = sys.pidfdGetfd(pidfd, 31, 0);
  t.equal(sys.fcntl(efd, 11 /* F_GETSIG */, 0), 29, 'F_SETSIG restored');
  sys.close(efd);

  const wds = info(32)
    .split('\n')
    .filter((l) => l.startsWith('inotify wd:'))
    .map((l) => /wd:([0-9a-f]+) .* mask:([0-9a-f]+)/.exec(l)?.slice(1, 3))
    .sort();
  t.same(wds, [
    ['1', '200'],
    ['5', '100'],
  ]);
  const ify = sys.pidfdGetfd(pidfd, 32, 0);
  t.teardown(() => sys.close(ify));
  t.match(info(32), /flags:\s+00?\n/, 'blocking, as recorded');
  sys.fcntl(ify, 4 /* F_SETFL */, 0o4000);
  // No IN_IGNORED left over from filling the holes: the queue is empty.
  t.throws(() => sys.read(ify, Buffer.alloc(4096), 0, 4096), { code: 'ESYSCALL', errnoCode: 'EAGAIN' });

  t.equal(statSync(`/proc/${fx.pid}/fd/33`).ino, statSync(`/proc/${fx.pid}/fd/34`).ino, 'one pipe');
  t.match(info(33), /flags:\s+0?0\n/);
  t.match(info(34), /flags:\s+0104000\n|flags:\s+04000\n/);
  const r = sys.pidfdGetfd(pidfd, 34, 0);
  t.teardown(() => sys.close(r));
  t.equal(sys.fcntl(r, 1032 /* F_GETPIPE_SZ */, 0), 131072);
  const back = Buffer.alloc(64);
  t.equal(sys.read(r, back, 0, 64), data.length);
  t.equal(back.subarray(0, data.length).toString(), data.toString());
  t.equal(sys.read(r, back, 0, 64), 0, 'EOF: no write end was left open');
  fx.write('go\n');
  const { output } = await fx.exited(10_000);
  t.match(output, /PASS/, 'the task runs on');
});
