/**
 * `criu dump` and `criu restore` of a process with 1 GiB of touched private anonymous memory
 * (test/fixtures/mem_touch), images on tmpfs (/dev/shm): wall time of each command (node start-up
 * included, as a user sees it), the frozen time and memory-dump time from stats-dump, the restore
 * time from stats-restore, GiB/s and the size of the pages image, next to memcpy bandwidth measured
 * in the same run. The restored workload checks every page and must report PASS.
 *
 * mem_touch waits for a line on stdin: its stdin is a FIFO opened read-write by the shell (so the
 * open does not block), which the FIFO fd kind restores by path; the bench writes the line into
 * the FIFO once the task is restored. Its stdout is a file: it reports READY and PASS there.
 */

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readImage } from '../src/images/index.js';
import { measureMemcpyGiBps } from './baseline.js';
import type { BenchOptions, BenchResult } from './run.js';
import { median as medianOf } from './stats.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MEM_TOUCH = path.join(ROOT, 'test/fixtures/bin/mem_touch');
const CRIU = path.join(ROOT, 'bin/criu.js');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function poll(check: () => boolean, what: string, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`dump-restore bench: timed out waiting for ${what}`);
    await sleep(5);
  }
}

interface Run {
  status: number | null;
  stderr: string;
  ms: number;
}

function runCriu(args: readonly string[], onSpawn?: () => void): Promise<Run> {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(CRIU, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.on('close', (status) => resolve({ status, stderr, ms: Number(process.hrtime.bigint() - t0) / 1e6 }));
    onSpawn?.();
  });
}

async function statsOf(file: string, kind: 'dump' | 'restore'): Promise<Record<string, number>> {
  const img = await readImage(file, 'STATS');
  const e = img.records[0]?.entry[kind] as Record<string, unknown> | undefined;
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(e ?? {})) out[k] = Number(v);
  return out;
}

export interface DumpRestoreNumbers {
  mib: number;
  dumpWallMs: number;
  frozenMs: number;
  memdumpMs: number;
  /** From spawning `criu restore` until the task runs (stats-restore appears; 5 ms polling). */
  restoreWallMs: number;
  /** From the start of `criu restore` until the task runs again (stats-restore restore_time). */
  restoreMs: number;
  pagesBytes: number;
}

/** One dump + restore of `mib` MiB; the images go under /dev/shm and are removed. */
export async function measureDumpRestore(mib: number): Promise<DumpRestoreNumbers> {
  const work = mkdtempSync('/dev/shm/criu-ts-bench-');
  const fifo = path.join(work, 'stdin.fifo');
  const out = path.join(work, 'out.txt');
  const images = path.join(work, 'img');
  let pid = 0;
  try {
    const mk = spawn('mkfifo', [fifo]);
    await new Promise((r) => mk.on('close', r));
    writeFileSync(out, '');
    const sh = spawn('sh', ['-c', '"$0" "$1" <>"$2" >"$3" 2>&1 & wait', MEM_TOUCH, String(mib), fifo, out], {
      stdio: 'ignore',
      detached: true,
    });
    sh.unref();
    const report = (): string => readFileSync(out, 'utf8');
    await poll(() => report().includes('READY'), 'mem_touch READY', 60_000);
    const m = /READY/.exec(report());
    if (m === null) throw new Error('mem_touch did not report READY');
    // mem_touch prints no pid: find it by its FIFO stdin.
    pid = await findPid(fifo);

    const dump = await runCriu(['dump', '-t', String(pid), '-D', images, '-o', path.join(work, 'dump.log')]);
    if (dump.status !== 0) throw new Error(`criu dump failed: ${dump.stderr}`);
    await poll(() => !existsSync(`/proc/${pid}`), 'the dumped task to be gone', 10_000);
    const ds = await statsOf(path.join(images, 'stats-dump'), 'dump');
    const pagesBytes = statSync(path.join(images, 'pages-1.img')).size;

    const tRestore = process.hrtime.bigint();
    const restoring = runCriu(['restore', '-D', images, '-o', path.join(work, 'restore.log')]);
    // The task runs again once stats-restore is written (criu then waits for it to end).
    await poll(() => existsSync(path.join(images, 'stats-restore')), 'stats-restore', 60_000);
    const restoreWallMs = Number(process.hrtime.bigint() - tRestore) / 1e6;
    const rs = await statsOf(path.join(images, 'stats-restore'), 'restore');
    writeFileSync(fifo, '\n');
    const restored = await restoring;
    if (restored.status !== 0 || !report().includes('PASS'))
      throw new Error(`restore failed (${restored.status}): ${restored.stderr} ${report()}`);
    return {
      mib,
      dumpWallMs: dump.ms,
      frozenMs: (ds['frozen_time'] ?? 0) / 1000,
      memdumpMs: (ds['memdump_time'] ?? 0) / 1000,
      restoreWallMs,
      restoreMs: (rs['restore_time'] ?? 0) / 1000,
      pagesBytes,
    };
  } finally {
    if (pid !== 0)
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    rmSync(work, { recursive: true, force: true });
  }
}

/** The pid of the mem_touch whose stdin is `fifo`. */
async function findPid(fifo: string): Promise<number> {
  const { readdirSync, readlinkSync } = await import('node:fs');
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readlinkSync(`/proc/${name}/fd/0`) === fifo && readlinkSync(`/proc/${name}/exe`) === MEM_TOUCH)
        return Number(name);
    } catch {
      // not ours, or gone
    }
  }
  throw new Error('dump-restore bench: cannot find mem_touch');
}

export async function dumpRestoreBench(opts: BenchOptions): Promise<BenchResult> {
  const mib = opts.isQuick ? 256 : 1024;
  // This VM's timings wander by tens of percent from run to run: best and median of five.
  const rounds = opts.isQuick ? 1 : 5;
  const memcpy = measureMemcpyGiBps(256 << 20, 5);
  const all: DumpRestoreNumbers[] = [];
  for (let i = 0; i < rounds; i++) all.push(await measureDumpRestore(mib));
  const best = (f: (n: DumpRestoreNumbers) => number): number => Math.min(...all.map(f));
  const median = (f: (n: DumpRestoreNumbers) => number): number => medianOf(all.map(f));
  const gib = mib / 1024;
  const rate = (ms: number): string => `${(gib / (ms / 1000)).toFixed(2)} GiB/s`;
  const pagesBytes = all[0]?.pagesBytes ?? 0;
  return {
    name: `dump/restore of ${mib} MiB of anonymous memory, images on /dev/shm (best of ${rounds}; median in brackets)`,
    lines: [
      `memcpy: ${memcpy.toFixed(2)} GiB/s`,
      `dump:    wall ${best((n) => n.dumpWallMs).toFixed(0)} ms [${median((n) => n.dumpWallMs).toFixed(0)}] (${rate(best((n) => n.dumpWallMs))}), frozen ${best((n) => n.frozenMs).toFixed(0)} ms, memory ${best((n) => n.memdumpMs).toFixed(0)} ms (${rate(best((n) => n.memdumpMs))})`,
      `restore: wall ${best((n) => n.restoreWallMs).toFixed(0)} ms [${median((n) => n.restoreWallMs).toFixed(0)}] (${rate(best((n) => n.restoreWallMs))}), until running ${best((n) => n.restoreMs).toFixed(0)} ms [${median((n) => n.restoreMs).toFixed(0)}] (${rate(best((n) => n.restoreMs))})`,
      `pages image: ${(pagesBytes / (1 << 20)).toFixed(1)} MiB for ${mib} MiB touched`,
      `CRIU 4.2 here: dump ~600 ms, restore 600-1100 ms for 1 GiB`,
    ],
  };
}
