/**
 * Shared by the dirty-memory tracker tests: a driver for the track_mem fixture, a naive oracle
 * (every page's bytes, read with process_vm_readv), and a check of a tracker's answer against it.
 *
 * The oracle reads only pages the pagemap shows present (or really swapped): reading an absent
 * page would fault it in and change the very state under test. An absent page counts as zeros.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { PAGE_SIZE } from '../../../src/kernel/constants.js';
import { isUffdWpMarker } from '../../../src/mem/track/index.js';
import { runsContain, runsFromRanges, type AddrRange, type PageRuns } from '../../../src/mem/track/ranges.js';
import { readMaps } from '../../../src/proc/maps.js';
import { readSmaps } from '../../../src/proc/smaps.js';
import * as sys from '../../../src/sys/native.js';
import { startFixture, type Fixture } from '../../helpers/fixture.js';

const PAGE = BigInt(PAGE_SIZE);
const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

/** The track_mem fixture, one command and one answer at a time. */
export class TrackMem {
  private pos = 0;
  private constructor(readonly fixture: Fixture) {}

  static async start(): Promise<TrackMem> {
    const f = await startFixture('track_mem');
    await f.waitFor('READY\n');
    const d = new TrackMem(f);
    d.pos = f.output().indexOf('READY\n') + 6;
    return d;
  }

  get pid(): number {
    return this.fixture.pid;
  }

  /** Send one command; resolves with what follows "OK " or rejects with the ERR line. */
  async cmd(line: string, timeoutMs = 10_000): Promise<string> {
    this.fixture.write(`${line}\n`);
    const until = Date.now() + timeoutMs;
    for (;;) {
      const out = this.fixture.output();
      const nl = out.indexOf('\n', this.pos);
      if (nl >= 0) {
        const answer = out.slice(this.pos, nl);
        this.pos = nl + 1;
        // The shell's "PID n" line may come after the fixture's READY.
        if (/^PID \d+$/.test(answer)) continue;
        if (!answer.startsWith('OK')) throw new Error(`track_mem "${line}": ${answer}`);
        return answer.slice(3);
      }
      if (Date.now() > until) throw new Error(`track_mem "${line}": no answer; output: ${out}`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** `m N`: a fresh mapping of N pages; its address. */
  async map(nrPages: number): Promise<bigint> {
    return BigInt(`0x${await this.cmd(`m ${nrPages}`)}`);
  }

  async quit(): Promise<void> {
    this.fixture.write('q\n');
    await this.fixture.exited();
  }
}

export const hex = (a: bigint): string => a.toString(16);

/** Every private writable mapping of the task (what a dump copies), but the vDSO areas. */
export function privateRanges(pid: number): AddrRange[] {
  const maps = readMaps(pid);
  if (maps === null) throw new Error(`task ${pid} is gone`);
  return maps
    .filter((m) => m.isWrite && !m.isShared && !/^\[(vvar|vvar_vclock|vdso|vsyscall)\]$/.test(m.path))
    .map((m) => ({ start: m.start, end: m.end }));
}

/** The contents of every page of some ranges: page index → bytes (absent pages are left out). */
export type Snapshot = { runs: PageRuns; pages: Map<number, Buffer> };

/** Read every present page of `ranges` in task `pid` (which should be frozen). */
export function snapshot(pid: number, ranges: readonly AddrRange[]): Snapshot {
  const runs = runsFromRanges(ranges);
  const pages = new Map<number, Buffer>();
  const pm = sys.open(`/proc/${pid}/pagemap`, 0, 0);
  try {
    for (let i = 0; i < runs.length; i += 2) {
      const first = runs[i] as number;
      const n = (runs[i + 1] as number) - first;
      const entries = Buffer.alloc(n * 8);
      sys.pread(pm, entries, 0, n * 8, BigInt(first) * 8n);
      const data = Buffer.alloc(n * PAGE_SIZE);
      const iov: bigint[] = [];
      const at: number[] = [];
      for (let p = 0; p < n; p++) {
        const e = entries.readBigUInt64LE(p * 8);
        const isPresent = (e >> 63n) & 1n;
        const isSwapped = (e >> 62n) & 1n;
        if (isPresent === 0n && (isSwapped === 0n || isUffdWpMarker(e))) continue;
        iov.push(BigInt(first + p) * PAGE, PAGE);
        at.push(p);
      }
      // One page per iovec entry, at most 1024 entries per call (IOV_MAX).
      for (let k = 0; k < at.length; k += 1024) {
        const part = at.slice(k, k + 1024);
        const buf = Buffer.alloc(part.length * PAGE_SIZE);
        const got = sys.processVmReadv(pid, buf, 0, BigUint64Array.from(iov.slice(2 * k, 2 * (k + part.length))));
        if (got !== buf.length) throw new Error(`short process_vm_readv: ${got} of ${buf.length}`);
        part.forEach((p, j) => buf.copy(data, p * PAGE_SIZE, j * PAGE_SIZE, (j + 1) * PAGE_SIZE));
        for (const p of part) pages.set(first + p, data.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE));
      }
    }
  } finally {
    sys.close(pm);
  }
  return { runs, pages };
}

export interface Verdict {
  /** Pages whose contents changed (or which are new) but that no answer reported. */
  missed: number[];
  /** Pages that changed. */
  nrChanged: number;
  /** Pages reported that did not change (within the current ranges). */
  nrFalsePositives: number;
  /** Of those, the ones present now (the others cost a dumper nothing: nothing to copy). */
  nrFalsePositivesPresent: number;
  nrReported: number;
}

/**
 * Compare two snapshots with the union of the tracker's answers in between: every page of `after`
 * that is new or whose bytes differ from `before` must have been reported.
 */
export function judge(before: Snapshot, after: Snapshot, answers: readonly AddrRange[][]): Verdict {
  const reported = runsFromRanges(answers.flat());
  const missed: number[] = [];
  let nrChanged = 0;
  let nrReportedHere = 0;
  let nrFalsePositivesPresent = 0;
  for (let i = 0; i < after.runs.length; i += 2) {
    for (let p = after.runs[i] as number; p < (after.runs[i + 1] as number); p++) {
      const isNew = !runsContain(before.runs, p);
      const old = before.pages.get(p) ?? ZERO_PAGE;
      const now = after.pages.get(p) ?? ZERO_PAGE;
      const isChanged = isNew || !old.equals(now);
      const isReported = runsContain(reported, p);
      if (isReported) nrReportedHere++;
      if (isReported && !isChanged && after.pages.has(p)) nrFalsePositivesPresent++;
      if (isChanged) {
        nrChanged++;
        if (!isReported) missed.push(p);
      }
    }
  }
  return {
    missed,
    nrChanged,
    nrFalsePositives: nrReportedHere - (nrChanged - missed.length),
    nrFalsePositivesPresent,
    nrReported: nrReportedHere,
  };
}

/** VMAs of the task with VmFlags `uw` (registered for userfaultfd write-protection). */
export function uffdWpVmas(pid: number): AddrRange[] {
  return (readSmaps(pid) ?? []).filter((e) => e.vmFlags.has('uw')).map((e) => ({ start: e.start, end: e.end }));
}

/** The targets of the task's fds, by fd number. */
export function fdTargets(pid: number): Map<string, string> {
  const out = new Map<string, string>();
  const dir = `/proc/${pid}/fd`;
  for (const name of readdirSync(dir)) {
    try {
      out.set(name, readlinkSync(`${dir}/${name}`));
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

/** A seeded PRNG (mulberry32): the same seed, the same rounds. */
export function prng(seed: number): { next(): number; int(n: number): number } {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n: number) => Math.floor(next() * n) };
}
