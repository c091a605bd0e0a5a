/**
 * sweepStaleTracking (src/mem/track/index.ts): the tracking state kept for tasks that are gone is
 * removed and their holders stopped (a pre-dumped tree's short-lived children leave many); the
 * state of a live task is kept, and so is a record another criu process holds the lock of.
 */
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { freezeProcess, resumeProcess } from '../../../src/dump/freeze.js';
import { chooseTracker } from '../../../src/kerndat/index.js';
import { openTracker, sweepStaleTracking, trackingKept } from '../../../src/mem/track/index.js';
import { encodeKeptRecord, lockTracking, readKept } from '../../../src/mem/track/state.js';
import { privateRanges, TrackMem } from './track-harness.js';

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (ptrace, userfaultfd in another task)';
  try {
    return chooseTracker('uffd') === 'uffd' ? false : 'needs userfaultfd write-protect tracking';
  } catch (err) {
    return String(err);
  }
}

const isRunning = (pid: number): boolean => existsSync(`/proc/${pid}`);

/** Open, collect and keep a uffd tracker of `pid`: its record and a holder process stay. */
async function keepTracking(pid: number): Promise<void> {
  const frozen = freezeProcess(pid);
  try {
    const tracker = await openTracker({ pid, injector: frozen.leader, choice: 'uffd' });
    await tracker.collect(privateRanges(pid));
    await tracker.keep();
  } finally {
    resumeProcess(frozen);
  }
}

t.test('the state of gone tasks is swept, a live task keeps its own', { skip: skipReason() }, async (t) => {
  const dir = t.testdir();
  process.env['CRIU_TS_TRACK_DIR'] = dir;
  t.teardown(() => delete process.env['CRIU_TS_TRACK_DIR']);
  const live = await TrackMem.start();
  const doomed = await TrackMem.start();
  t.teardown(() => {
    live.fixture.kill();
    doomed.fixture.kill();
  });
  await keepTracking(live.pid);
  await keepTracking(doomed.pid);
  const holder = (pid: number): number => {
    const found = readKept(dir, pid);
    return found === null || typeof found === 'string' ? 0 : (found.rec.holder?.pid ?? 0);
  };
  const doomedHolder = holder(doomed.pid);
  t.ok(doomedHolder > 0 && isRunning(doomedHolder), 'the doomed task has a holder process');
  // A record of a pid no task has (as a crashed criu would leave), and one locked by "another criu".
  const ghostPid = 4_000_000;
  writeFileSync(
    path.join(dir, `${ghostPid}.json`),
    encodeKeptRecord({ kind: 'none', pid: ghostPid, targetStartTime: 1, holder: null, armed: [], hasState: false }),
  );
  const lockedPid = 4_000_001;
  writeFileSync(
    path.join(dir, `${lockedPid}.json`),
    encodeKeptRecord({ kind: 'none', pid: lockedPid, targetStartTime: 1, holder: null, armed: [], hasState: false }),
  );
  const lock = await lockTracking(lockedPid);
  t.teardown(() => lock.release());

  doomed.fixture.kill();
  await new Promise((r) => setTimeout(r, 100));
  const removed = await sweepStaleTracking();
  t.equal(removed, 2, 'two records removed: the killed task and the pid no task has');
  t.notOk(existsSync(path.join(dir, `${doomed.pid}.json`)), "the killed task's record is gone");
  t.notOk(existsSync(path.join(dir, `${ghostPid}.json`)), 'so is the record of a pid no task has');
  t.notOk(isRunning(doomedHolder), "and the killed task's holder");
  t.ok(existsSync(path.join(dir, `${lockedPid}.json`)), 'a record another criu process holds is left alone');
  t.same(trackingKept(live.pid), { kind: 'uffd' }, 'the live task keeps its tracking');
  t.ok(isRunning(holder(live.pid)), 'and its holder');
});
