/**
 * The soft-dirty tracker. Where the kernel has CONFIG_MEM_SOFT_DIRTY: written pages are reported,
 * clean ones not, new mappings whole. Where it lacks it (this project's machine), the bits cannot
 * be seen, so only the mechanics run: the backend opened directly (the chooser refuses it, see
 * track-uffd.test.ts), pagemap read, clear_refs written, new and absent memory returned, state kept.
 */
import t from 'tap';
import { freezeProcess, resumeProcess } from '../../../src/dump/freeze.js';
import { kerndat } from '../../../src/kerndat/index.js';
import { endTracking, openTracker, trackingKept, type AddrRange } from '../../../src/mem/track/index.js';
import { runsContain, runsFromRanges } from '../../../src/mem/track/ranges.js';
import { SoftDirtyTracker } from '../../../src/mem/track/soft-dirty.js';
import { lockTracking, trackDir } from '../../../src/mem/track/state.js';
import { startTimeOf } from '../../../src/mem/track/holder.js';
import { hex, privateRanges, TrackMem } from './track-harness.js';

const PAGE = 4096n;
const isRoot = process.getuid?.() === 0;

function pagesIn(answer: readonly AddrRange[], addr: bigint, nrPages: number): number[] {
  const runs = runsFromRanges(answer);
  const first = Number(addr / PAGE);
  const out: number[] = [];
  for (let i = 0; i < nrPages; i++) if (runsContain(runs, first + i)) out.push(i);
  return out;
}

async function frozen<T>(pid: number, f: () => Promise<T>): Promise<T> {
  const fr = freezeProcess(pid);
  try {
    return await f();
  } finally {
    resumeProcess(fr);
  }
}

t.test('soft-dirty mechanics', { skip: isRoot ? false : 'needs root (ptrace, clear_refs)' }, async (t) => {
  process.env['CRIU_TS_TRACK_DIR'] = t.testdir();
  const hasSoftDirty = kerndat().hasSoftDirty;
  const m = await TrackMem.start();
  t.teardown(() => m.fixture.kill());
  const a = await m.map(8);
  await m.cmd(`w ${hex(a)} 8`);
  const pid = m.pid;
  const startTime = startTimeOf(pid) ?? 0;
  const tracker = SoftDirtyTracker.open(
    { pid, targetStartTime: startTime, dir: trackDir(), lock: await lockTracking(pid) },
    null,
  );
  t.equal(tracker.fresh, true);
  const first = await frozen(pid, () => tracker.collect(privateRanges(pid)));
  t.same(pagesIn(first, a, 8), [0, 1, 2, 3, 4, 5, 6, 7], 'the first collect is whole');

  await m.cmd(`w ${hex(a + 3n * PAGE)} 1`);
  const b = await m.map(4);
  await m.cmd(`d ${hex(a + 6n * PAGE)} 1`);
  const second = await frozen(pid, () => tracker.collect(privateRanges(pid)));
  t.same(pagesIn(second, b, 4), [0, 1, 2, 3], 'a new mapping is whole');
  const inA = pagesIn(second, a, 8);
  t.ok(inA.includes(6), 'a dropped page is reported');
  if (hasSoftDirty) t.same(inA, [3, 6], 'the written page is reported, the clean ones are not');
  else t.same(inA, [6], 'without CONFIG_MEM_SOFT_DIRTY the write cannot be seen (why the chooser refuses it)');

  tracker.state = new Uint8Array([7]);
  await tracker.keep();
  t.same(trackingKept(pid), { kind: 'soft-dirty' }, 'kept, without a holder');
  if (hasSoftDirty) {
    const fr = freezeProcess(pid);
    try {
      const again = await openTracker({ pid, injector: fr.leader, choice: 'soft-dirty' });
      t.equal(again.fresh, false, 'the next invocation continues');
      t.same(again.state, new Uint8Array([7]));
      await again.end();
    } finally {
      resumeProcess(fr);
    }
  }
  await endTracking(pid);
  t.equal(trackingKept(pid), null);
  await m.quit();
});
