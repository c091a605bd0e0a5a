/**
 * Dirty-memory tracking across criu-ts processes, and how it ends: keep() in one process and
 * open again in another (not fresh, the dirty set still right, the dumper's state bytes kept);
 * end() leaves no registration, no fd and no holder; the holder ends with the task; a criu-ts
 * killed mid-way leaves the task running; the lock; a task's own userfaultfd; stale state.
 */
import { spawn } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { freezeProcess, resumeProcess } from '../../../src/dump/freeze.js';
import { chooseTracker } from '../../../src/kerndat/index.js';
import {
  endTracking,
  openTracker,
  trackingKept,
  type AddrRange,
  type DirtyTracker,
} from '../../../src/mem/track/index.js';
import { runsContain, runsFromRanges } from '../../../src/mem/track/ranges.js';
import { fdTargets, hex, privateRanges, TrackMem, uffdWpVmas } from './track-harness.js';
import { decodeKeptRecord, type KeptRecord } from '../../../src/mem/track/state.js';

const PAGE = 4096n;
const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'track-child.ts');

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (ptrace, pidfd_getfd)';
  try {
    chooseTracker('uffd');
    return false;
  } catch (err) {
    return `the uffd tracker is unavailable: ${(err as Error).message}`;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface ChildAnswer {
  fresh: boolean;
  state: string | null;
  answer: [string, string][];
}

/** Run track-child.ts to its end; its JSON lines. */
function runChild(args: string[]): Promise<ChildAnswer[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`track-child ${args.join(' ')} exited ${code}: ${err}`));
      else
        resolve(
          out
            .trim()
            .split('\n')
            .map((l) => JSON.parse(l) as ChildAnswer),
        );
    });
  });
}

function keptRecord(dir: string, pid: number): KeptRecord {
  const rec = decodeKeptRecord(readFileSync(path.join(dir, `${pid}.json`), 'utf8'));
  if (typeof rec === 'string') throw new Error(rec);
  return rec;
}

function isRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) [ZX]/.test(stat);
  } catch {
    return false;
  }
}

async function waitGone(pid: number, timeoutMs = 5000): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (isRunning(pid)) {
    if (Date.now() > until) return false;
    await sleep(10);
  }
  return true;
}

/** The pages of `answer` inside [addr, addr + nrPages pages), as page numbers relative to addr. */
function pagesIn(answer: readonly AddrRange[] | [string, string][], addr: bigint, nrPages: number): number[] {
  const ranges = answer.map((r) =>
    Array.isArray(r) ? { start: BigInt(`0x${r[0]}`), end: BigInt(`0x${r[1]}`) } : (r as AddrRange),
  );
  const runs = runsFromRanges(ranges);
  const first = Number(addr / PAGE);
  const out: number[] = [];
  for (let i = 0; i < nrPages; i++) if (runsContain(runs, first + i)) out.push(i);
  return out;
}

async function openFrozen(pid: number): Promise<{ tracker: DirtyTracker; answer: AddrRange[] }> {
  const frozen = freezeProcess(pid);
  try {
    const tracker = await openTracker({ pid, injector: frozen.leader, choice: 'uffd' });
    return { tracker, answer: await tracker.collect(privateRanges(pid)) };
  } finally {
    resumeProcess(frozen);
  }
}

t.test('tracker lifecycle', { skip: skipReason() }, async (t) => {
  const dir = t.testdir();
  process.env['CRIU_TS_TRACK_DIR'] = dir;

  t.test('keep() in one process, open again in another: not fresh, right dirty set, state kept', async (t) => {
    const m = await TrackMem.start();
    t.teardown(() => m.fixture.kill());
    const a = await m.map(32);
    await m.cmd(`w ${hex(a)} 32`);
    const fdsBefore = fdTargets(m.pid);

    const [first] = await runChild([String(m.pid), 'keep', 'known pages v1']);
    t.equal(first?.fresh, true, 'the first pre-dump is fresh');
    t.same(pagesIn(first?.answer ?? [], a, 32).length, 32, 'and gets everything');
    t.same(trackingKept(m.pid), { kind: 'uffd' }, 'tracking is kept');
    const rec = keptRecord(dir, m.pid);
    t.ok(rec.holder !== null && isRunning(rec.holder.pid), 'a holder process holds the userfaultfd');
    const holderFds = fdTargets(rec.holder?.pid ?? 0);
    t.same([...holderFds.keys()].sort(), ['0', '1', '2', '3', '4'], 'the holder keeps no fd of ours');
    t.equal(holderFds.get('3'), 'anon_inode:[userfaultfd]');
    t.equal(holderFds.get('4'), 'anon_inode:[pidfd]');
    t.equal(statSync(path.join(dir, `${m.pid}.json`)).mode & 0o777, 0o600, 'the record is private');
    t.equal(statSync(dir).mode & 0o777, 0o700, 'so is its directory');
    t.same(fdTargets(m.pid), fdsBefore, 'the task has no new fd');
    t.ok(uffdWpVmas(m.pid).length > 0, 'its VMAs are registered');

    await m.cmd(`w ${hex(a + 3n * PAGE)} 1`);
    await m.cmd(`w ${hex(a + 17n * PAGE)} 2`);
    const [second] = await runChild([String(m.pid), 'keep', 'known pages v2']);
    t.equal(second?.fresh, false, 'the second pre-dump continues');
    t.equal(second?.state, 'known pages v1', 'with the state bytes of the first');
    t.same(pagesIn(second?.answer ?? [], a, 32), [3, 17, 18], 'and gets exactly the pages written since');

    await m.cmd(`w ${hex(a + 30n * PAGE)} 1`);
    const { tracker, answer } = await openFrozen(m.pid);
    t.equal(tracker.fresh, false);
    t.equal(Buffer.from(tracker.state ?? []).toString(), 'known pages v2');
    t.same(pagesIn(answer, a, 32), [30], 'the dump gets the page written since the second pre-dump');
    await tracker.end();
    t.same(uffdWpVmas(m.pid), [], 'end(): no VMA registered');
    t.same(fdTargets(m.pid), fdsBefore, 'end(): no fd left in the task');
    t.ok(await waitGone(rec.holder?.pid ?? 0), 'end(): the holder is gone');
    t.equal(trackingKept(m.pid), null, 'end(): nothing kept');
    await m.cmd(`w ${hex(a)} 32`);
    await m.quit();
  });

  t.test('the holder exits when the task does', async (t) => {
    const m = await TrackMem.start();
    await runChild([String(m.pid), 'keep']);
    const holder = keptRecord(dir, m.pid).holder;
    t.ok(holder !== null && isRunning(holder.pid), 'holder running');
    await m.quit();
    t.ok(await waitGone(holder?.pid ?? 0), 'holder gone after the task exited');
    t.equal(trackingKept(m.pid), null, 'nothing kept for a gone task');
    await endTracking(m.pid);
  });

  t.test('a criu-ts killed mid-way leaves the task running; endTracking cleans up', async (t) => {
    const m = await TrackMem.start();
    t.teardown(() => m.fixture.kill());
    const a = await m.map(16);
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, String(m.pid), 'loop'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const until = Date.now() + 20_000;
    while ((out.match(/LOOP/g) ?? []).length < 5 && Date.now() < until) await sleep(5);
    t.ok((out.match(/LOOP/g) ?? []).length >= 5, 'the child collects in a loop');
    child.kill('SIGKILL');
    await new Promise((r) => child.on('close', r));
    await m.cmd(`w ${hex(a)} 16`);
    t.match(await m.cmd(`r ${hex(a)} 16`), /^\d+$/, 'the task still runs and answers');
    t.same(trackingKept(m.pid), { kind: 'uffd' }, 'the kept tracking is still there');
    await endTracking(m.pid);
    t.equal(trackingKept(m.pid), null);
    t.same(uffdWpVmas(m.pid), [], 'no VMA registered after endTracking');
    t.same(
      [...fdTargets(m.pid).values()].filter((l) => l.includes('userfaultfd')),
      [],
      'no userfaultfd in the task',
    );
    await m.quit();
  });

  t.test('one criu-ts at a time per task', async (t) => {
    const m = await TrackMem.start();
    t.teardown(() => m.fixture.kill());
    const { tracker } = await openFrozen(m.pid);
    const frozen = freezeProcess(m.pid);
    try {
      await t.rejects(openTracker({ pid: m.pid, injector: frozen.leader, choice: 'uffd' }), {
        code: 'ETASK',
        message: /another criu process/,
      });
    } finally {
      resumeProcess(frozen);
    }
    await tracker.end();
    const again = await openFrozen(m.pid);
    t.equal(again.tracker.fresh, true, 'after end(), the next open starts afresh');
    await again.tracker.end();
    await m.quit();
  });

  t.test('a VMA the task registered with its own userfaultfd is always taken whole', async (t) => {
    const m = await TrackMem.start();
    t.teardown(() => m.fixture.kill());
    const own = await m.map(8);
    const mine = await m.map(8);
    await m.cmd(`w ${hex(own)} 8`);
    await m.cmd(`w ${hex(mine)} 8`);
    await m.cmd(`U ${hex(own)} 8`);
    const { tracker } = await openFrozen(m.pid);
    await m.cmd(`w ${hex(mine + PAGE)} 1`);
    const frozen = freezeProcess(m.pid);
    let answer: AddrRange[];
    try {
      answer = await tracker.collect(privateRanges(m.pid));
    } finally {
      resumeProcess(frozen);
    }
    t.same(pagesIn(answer, own, 8), [0, 1, 2, 3, 4, 5, 6, 7], 'the foreign VMA whole');
    t.same(pagesIn(answer, mine, 8), [1], 'ours tracked');
    await tracker.end();
    t.equal(uffdWpVmas(m.pid).length, 1, "the task's own registration stays");
    await m.cmd(`w ${hex(own)} 8`);
    await m.quit();
  });

  t.test('state left for a pid now used by another process is dropped', async (t) => {
    const m = await TrackMem.start();
    t.teardown(() => m.fixture.kill());
    writeFileSync(
      path.join(dir, `${m.pid}.json`),
      JSON.stringify({
        version: 1,
        kind: 'none',
        pid: m.pid,
        targetStartTime: 1,
        holder: null,
        armed: [],
        hasState: false,
      }),
    );
    t.equal(trackingKept(m.pid), null, 'not continued');
    const { tracker } = await openFrozen(m.pid);
    t.equal(tracker.fresh, true, 'a fresh start');
    await tracker.keep();
    t.same(trackingKept(m.pid), { kind: 'uffd' });
    await endTracking(m.pid);
    t.equal(trackingKept(m.pid), null);
    await endTracking(m.pid);
    t.pass('endTracking with nothing kept is a no-op');
    await m.quit();
  });
});
