/**
 * A separate "criu" process for the tracker lifecycle tests (run with `node --import tsx`):
 *
 *   track-child.ts PID keep [STATE]   freeze, open, collect, set state to STATE (if given), keep
 *   track-child.ts PID loop           freeze, open, collect, keep; then open again and collect on
 *                                     the running task without end, printing LOOP each time
 *
 * Prints one JSON line {fresh, state, answer: [[start, end] hex…]} per collect.
 */
import { freezeProcess, resumeProcess } from '../../../src/dump/freeze.js';
import { openTracker, type DirtyTracker } from '../../../src/mem/track/index.js';
import { privateRanges } from './track-harness.js';

const pid = Number(process.argv[2]);
const mode = process.argv[3];

async function openFrozen(): Promise<{ tracker: DirtyTracker; answer: string[][] }> {
  const frozen = freezeProcess(pid);
  try {
    const tracker = await openTracker({ pid, injector: frozen.leader, choice: 'uffd' });
    const answer = await tracker.collect(privateRanges(pid));
    return { tracker, answer: answer.map((r) => [r.start.toString(16), r.end.toString(16)]) };
  } finally {
    resumeProcess(frozen);
  }
}

function report(tracker: DirtyTracker, answer: string[][]): void {
  const state = tracker.state === null ? null : Buffer.from(tracker.state).toString('utf8');
  process.stdout.write(`${JSON.stringify({ fresh: tracker.fresh, state, answer })}\n`);
}

const { tracker, answer } = await openFrozen();
report(tracker, answer);
if (mode === 'keep') {
  const next = process.argv[4];
  if (next !== undefined) tracker.state = Buffer.from(next, 'utf8');
  await tracker.keep();
} else if (mode === 'loop') {
  await tracker.keep();
  const again = await openFrozen();
  for (;;) {
    await again.tracker.collect(privateRanges(pid));
    process.stdout.write('LOOP\n');
    await new Promise((r) => setTimeout(r, 1));
  }
} else throw new Error(`unknown mode ${mode}`);
