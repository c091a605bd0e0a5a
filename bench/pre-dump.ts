/**
 * Incremental memory: one pre-dump iteration of a process with 1 GiB of private anonymous memory
 * (test/fixtures/cr_incr) of which 1% of the pages are rewritten between iterations, next to a
 * full dump of the same process measured in the same run. Reports, from stats-dump: the frozen
 * time and the time copying memory, and the wall time of the `criu` command (node start-up
 * included, as a user sees it). Images on tmpfs (/dev/shm). Targets (issue #4): an iteration
 * freezes the task for under 20 ms and costs under 10% of a full dump.
 *
 * Order: a full dump -R (no tracker), pre-dump 1 (takes everything, arms the tracker), then two
 * rounds of "rewrite 1%, pre-dump", then the final dump --track-mem of the last 1%; the restored
 * process is not needed here (tests prove the images right).
 *
 * Then the same iterations made in this one process through criu-ts's API, as criu-migrate's
 * agent makes them (no node start-up per iteration): the median wall time of an iteration once
 * its code is compiled, next to the median of full dumps -R made the same way, and the first few
 * iterations one by one (V8 compiles as they run: a tool that iterates two or three times pays
 * those). And through CRIU's RPC, a pre-dump loop on one `criu swrk`. In both, each iteration's
 * pages file is removed once written (see dropPages: what this VM charges for memory not used
 * recently would otherwise fall on the iterations alone).
 */

import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readImage } from '../src/images/index.js';
import { dump, endTracking, preDump } from '../src/index.js';
import { ReqType, type CriuResp } from '../src/rpc/messages.js';
import { startSwrk } from '../test/helpers/rpc.js';
import type { BenchOptions, BenchResult } from './run.js';
import { median, timed } from './stats.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CR_INCR = path.join(ROOT, 'test/fixtures/bin/cr_incr');
const CRIU = path.join(ROOT, 'bin/criu.js');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function poll(check: () => boolean, what: string, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`pre-dump bench: timed out waiting for ${what}`);
    await sleep(5);
  }
}

function runCriu(args: readonly string[]): Promise<{ status: number | null; stderr: string; ms: number }> {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(CRIU, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.on('close', (status) => resolve({ status, stderr, ms: Number(process.hrtime.bigint() - t0) / 1e6 }));
  });
}

interface Iteration {
  what: string;
  wallMs: number;
  frozenMs: number;
  memdumpMs: number;
  pagesWritten: number;
  pagesParent: number;
}

async function measure(args: string[], what: string, dir: string): Promise<Iteration> {
  const r = await runCriu([...args, '-D', dir, '-o', path.join(dir, '..', `${path.basename(dir)}.log`)]);
  if (r.status !== 0) throw new Error(`${what} failed: ${r.stderr}`);
  const e = (await readImage(path.join(dir, 'stats-dump'), 'STATS')).records[0]?.entry['dump'] as Record<
    string,
    unknown
  >;
  const n = (k: string): number => Number(e[k] ?? 0);
  return {
    what,
    wallMs: r.ms,
    frozenMs: n('frozen_time') / 1000,
    memdumpMs: n('memdump_time') / 1000,
    pagesWritten: n('pages_written'),
    pagesParent: n('pages_skipped_parent'),
  };
}

/** cr_incr over `pages` pages, reporting to `out`: its pid, and a step (rewrite 1%, wait for it). */
async function startIncr(pages: number, out: string): Promise<{ pid: number; step: (k: number) => Promise<void> }> {
  const sh = spawn('sh', ['-c', '"$@" </dev/null >/dev/null 2>&1 & wait', 'sh', CR_INCR, String(pages), '100', out], {
    stdio: 'ignore',
    detached: true,
  });
  sh.unref();
  const report = (): string => (existsSync(out) ? readFileSync(out, 'utf8') : '');
  await poll(() => /READY (\d+)/.test(report()), 'cr_incr READY', 60_000);
  const pid = Number(/READY (\d+)/.exec(report())?.[1]);
  const step = async (k: number): Promise<void> => {
    process.kill(pid, 'SIGUSR1');
    await poll(() => report().includes(`STEP ${k} `), `step ${k}`, 60_000);
  };
  return { pid, step };
}

const killQuietly = (pid: number): void => {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
};

/**
 * Remove the pages files of a (pre-)dump directory, its pagemap and inventory kept: a migration
 * source keeps no pages (they went to the target), and the next iteration needs only the
 * inventory. Done after each iteration of the in-process and RPC loops so that, like the full
 * dumps they are compared with (each removed before the next), every iteration writes into memory
 * freed moments before. On this VM memory the guest has not used for a few seconds has been given
 * back to the host (free page reporting, page_reporting_order=11): storing a page there costs
 * ~12 µs instead of well under one, which kept images would charge to the iterations alone.
 */
function dropPages(dir: string): void {
  for (const f of readdirSync(dir)) if (/^pages-\d+\.img$/.test(f)) rmSync(path.join(dir, f));
}

/** Full dumps (-R) and pre-dump iterations measured in the process that makes them. */
const API_FULL_DUMPS = 3;
const API_ITERATIONS = 16;
/**
 * Iterations of a process's first few that still run code V8 is compiling (it compiles a function
 * better after it has run a few times): reported one by one, and left out of the steady median.
 */
const WARMING = 4;

/** "1st 102 ms = 31.6%, then 55, 48, 24 ms" */
function warmingLine(ms: readonly number[], pct: (ms: number) => string): string {
  const [first = 0, ...rest] = ms.slice(0, WARMING);
  return `the first ${WARMING} iterations (code still compiling): ${first.toFixed(1)} ms = ${pct(first)}, then ${rest.map((x) => x.toFixed(1)).join(', ')} ms`;
}

/**
 * The iterations made in this process through the API (as criu-migrate's agent makes them): the
 * first of each kind compiles its code; a long-running agent pays that once, so the median of the
 * later ones is what an iteration costs it.
 */
async function inProcess(pages: number, work: string): Promise<string[]> {
  const { pid, step } = await startIncr(pages, path.join(work, 'out-api.txt'));
  try {
    const dir = (name: string): string => path.join(work, `api-${name}`);
    const fulls: { ms: number; frozenMs: number }[] = [];
    for (let i = 0; i <= API_FULL_DUMPS; i++) {
      const full = await timed(() => dump({ pid, imagesDir: dir('full'), end: 'leave-running' }));
      // The first compiles the code and probes the kernel: not counted.
      if (i > 0) fulls.push({ ms: full.ms, frozenMs: full.r.frozenTimeUs / 1000 });
      rmSync(dir('full'), { recursive: true, force: true });
    }
    await preDump({ pid, imagesDir: dir('1'), tracker: 'auto' });
    dropPages(dir('1'));
    const its: { ms: number; copied: number; copyMs: number }[] = [];
    for (let k = 1; k <= API_ITERATIONS; k++) {
      await step(k);
      const it = await timed(() =>
        preDump({ pid, imagesDir: dir(String(k + 1)), prevImagesDir: `../api-${k}`, tracker: 'auto' }),
      );
      its.push({ ms: it.ms, copied: it.r.pagesWritten, copyMs: it.r.memdumpTimeUs / 1000 });
      dropPages(dir(String(k + 1)));
    }
    await endTracking(pid);
    const fullMs = median(fulls.map((f) => f.ms));
    const warm = its.slice(WARMING);
    const pct = (ms: number): string => `${((ms / fullMs) * 100).toFixed(1)}%`;
    const warmMs = median(warm.map((i) => i.ms));
    const bestMs = Math.min(...warm.map((i) => i.ms));
    return [
      `in one process (the API, as criu-migrate's agent), pages files dropped once written:`,
      `  full dump -R:  wall ${fullMs.toFixed(0)} ms (median of ${fulls.length}; ${fulls.map((f) => f.ms.toFixed(0)).join(', ')}), frozen ${median(fulls.map((f) => f.frozenMs)).toFixed(0)} ms`,
      `  pre-dump, 1% rewritten, steady: wall ${warmMs.toFixed(1)} ms = ${pct(warmMs)} of the full dump ` +
        `(median of iterations ${WARMING + 1}-${its.length}; best ${bestMs.toFixed(1)} ms = ${pct(bestMs)}), ` +
        `of it copying ${median(warm.map((i) => i.copyMs)).toFixed(1)} ms; ${median(warm.map((i) => i.copied))} pages written`,
      `  ${warmingLine(
        its.map((i) => i.ms),
        pct,
      )}`,
    ];
  } finally {
    killQuietly(pid);
  }
}

/** Full dumps and loop iterations measured through RPC. */
const RPC_FULL_DUMPS = 3;
const RPC_ITERATIONS = 16;

/**
 * The iterations through CRIU's RPC, as p.haul-style tools drive them: one `criu swrk`, PRE_DUMP
 * after PRE_DUMP on its connection, then the final DUMP. Next to it, what such a tool pays for a
 * full dump: a `criu swrk` of its own with one DUMP (node's start included), median of three.
 */
async function viaRpc(pages: number, work: string): Promise<string[]> {
  const { pid, step } = await startIncr(pages, path.join(work, 'out-rpc.txt'));
  const fds: number[] = [];
  const dirFd = (name: string): number => {
    const dir = path.join(work, `rpc-${name}`);
    mkdirSync(dir, { recursive: true });
    const fd = openSync(dir, 'r');
    fds.push(fd);
    return fd;
  };
  /** Milliseconds one request took; a failed one ends the bench. */
  const request = async (fn: () => Promise<CriuResp>): Promise<number> => {
    const { ms, r } = await timed(fn);
    if (!r.success) throw new Error(`RPC request failed: ${r.cr_errmsg ?? '?'}`);
    return ms;
  };
  try {
    const fulls: number[] = [];
    for (let i = 0; i < RPC_FULL_DUMPS; i++) {
      const fd = dirFd(`full${i}`);
      const one = startSwrk();
      fulls.push(
        await request(() => one.call({ type: ReqType.DUMP, opts: { images_dir_fd: fd, pid, leave_running: true } })),
      );
      await one.exited;
      one.close();
      rmSync(path.join(work, `rpc-full${i}`), { recursive: true, force: true });
    }
    const c = startSwrk();
    const opts = (k: number): { images_dir_fd: number; pid: number; parent_img?: string } => ({
      images_dir_fd: dirFd(String(k)),
      pid,
      ...(k > 1 ? { parent_img: `../rpc-${k - 1}` } : {}),
    });
    const first = await request(() => c.call({ type: ReqType.PRE_DUMP, opts: opts(1) }));
    dropPages(path.join(work, 'rpc-1'));
    const its: number[] = [];
    for (let k = 1; k <= RPC_ITERATIONS; k++) {
      await step(k);
      its.push(await request(() => c.call({ type: ReqType.PRE_DUMP, opts: opts(k + 1) })));
      dropPages(path.join(work, `rpc-${k + 1}`));
    }
    await step(RPC_ITERATIONS + 1);
    const last = RPC_ITERATIONS + 2;
    const final = await request(() => c.call({ type: ReqType.DUMP, opts: { ...opts(last), track_mem: true } }));
    await c.exited;
    c.close();
    const fullMs = median(fulls);
    const warm = its.slice(WARMING);
    const pct = (ms: number): string => `${((ms / fullMs) * 100).toFixed(1)}%`;
    return [
      `through RPC (criu swrk, CRIU's pre-dump loop on one connection), pages files dropped once written:`,
      `  full dump (a criu swrk of its own, leave_running): ${fullMs.toFixed(0)} ms (median of ${fulls.length}; ${fulls.map((f) => f.toFixed(0)).join(', ')})`,
      `  pre-dump, 1% rewritten, steady: ${median(warm).toFixed(1)} ms = ${pct(median(warm))} of that full dump ` +
        `(median of iterations ${WARMING + 1}-${its.length}; best ${Math.min(...warm).toFixed(1)} ms = ${pct(Math.min(...warm))})`,
      `  the first pre-dump (everything, criu swrk starting): ${first.toFixed(0)} ms; ${warmingLine(its, pct)}`,
      `  the final dump (1% rewritten, task killed): ${final.toFixed(0)} ms`,
    ];
  } finally {
    for (const fd of fds) closeSync(fd);
    killQuietly(pid);
  }
}

export async function preDumpBench(opts: BenchOptions): Promise<BenchResult> {
  const mib = opts.isQuick ? 256 : 1024;
  const pages = (mib << 20) / 4096;
  const work = mkdtempSync('/dev/shm/criu-ts-bench-pre-');
  const out = path.join(work, 'out.txt');
  let pid = 0;
  try {
    const incr = await startIncr(pages, out);
    pid = incr.pid;
    const step = incr.step;
    const t = String(pid);
    const full = await measure(['dump', '-t', t, '-R'], 'full dump -R', path.join(work, 'full'));
    const its: Iteration[] = [];
    its.push(await measure(['pre-dump', '-t', t], 'pre-dump 1 (everything)', path.join(work, '1')));
    for (let k = 1; k <= 2; k++) {
      await step(k);
      its.push(
        await measure(
          ['pre-dump', '-t', t, '--prev-images-dir', `../${k}`],
          `pre-dump ${k + 1} (1% rewritten)`,
          path.join(work, String(k + 1)),
        ),
      );
    }
    await step(3);
    its.push(
      await measure(
        ['dump', '-t', t, '--prev-images-dir', '../3', '--track-mem'],
        'final dump (1% rewritten)',
        path.join(work, '4'),
      ),
    );
    const fmt = (i: Iteration): string =>
      `${i.what.padEnd(26)} frozen ${i.frozenMs.toFixed(1).padStart(7)} ms, copy ${i.memdumpMs.toFixed(1).padStart(7)} ms, wall ${i.wallMs.toFixed(0).padStart(5)} ms, ${i.pagesWritten} pages written, ${i.pagesParent} in parent`;
    const lines = [
      `${mib} MiB, 1% of pages rewritten between iterations, images on /dev/shm`,
      fmt(full),
      ...its.map(fmt),
    ];
    for (const i of its.slice(1, 3))
      lines.push(
        `${i.what}: frozen ${((i.frozenMs / full.frozenMs) * 100).toFixed(1)}% of the full dump's; frozen+copy ${(((i.frozenMs + i.memdumpMs) / (full.frozenMs + 0.001)) * 100).toFixed(1)}% of its frozen time; wall ${((i.wallMs / full.wallMs) * 100).toFixed(0)}% (node start-up included)`,
      );
    killQuietly(pid);
    pid = 0;
    // GBs of images left in /dev/shm slow down every fresh page on this kind of VM: gone first.
    for (const d of ['full', '1', '2', '3', '4']) rmSync(path.join(work, d), { recursive: true, force: true });
    lines.push(...(await inProcess(pages, work)));
    for (const d of readdirSync(work))
      if (d.startsWith('api-')) rmSync(path.join(work, d), { recursive: true, force: true });
    lines.push(...(await viaRpc(pages, work)));
    return { name: 'pre-dump', lines };
  } finally {
    if (pid !== 0) killQuietly(pid);
    rmSync(work, { recursive: true, force: true });
  }
}
