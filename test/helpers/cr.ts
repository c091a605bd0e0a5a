/**
 * Checkpoint/restore test helpers: start a self-checking workload with /dev/null for stdio and a
 * report file (so nothing ties it to the test runner across a restore), dump it, restore it, and
 * read its verdict.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { readImage } from '../../src/images/index.js';
import { criuAsync } from './criu.js';
import { fixturePath, ROOT } from './fixture.js';
import type { Test } from 'tap';

export interface Workload {
  pid: number;
  outFile: string;
  /** Everything the workload reported so far. */
  report(): string;
  /** Resolves when the report contains `text`. */
  waitFor(text: string, timeoutMs?: number): Promise<void>;
  kill(): void;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function poll(check: () => boolean, what: string, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`Timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Start `program ARGS... OUTFILE` (a fixture name or a path) under a shell that waits for it, so
 * it is reaped as soon as it ends; the workload writes "READY <pid>" to OUTFILE.
 */
export async function startWorkload(
  program: string,
  dir: string,
  args: readonly string[] = [],
  readyTimeoutMs = 10_000,
): Promise<Workload> {
  const outFile = path.join(dir, 'report.txt');
  const bin = program.includes('/') ? program : fixturePath(program);
  const sh = spawn('sh', ['-c', '"$@" </dev/null >/dev/null 2>&1 & wait', 'sh', bin, ...args, outFile], {
    stdio: 'ignore',
    detached: true,
  });
  sh.unref();
  const report = (): string => (existsSync(outFile) ? readFileSync(outFile, 'utf8') : '');
  await poll(() => /READY (\d+)/.test(report()), `${program} to be READY`, readyTimeoutMs);
  const pid = Number(/READY (\d+)/.exec(report())?.[1]);
  return {
    pid,
    outFile,
    report,
    waitFor: (text, timeoutMs = 20_000) => poll(() => report().includes(text), `"${text}" in ${outFile}`, timeoutMs),
    kill: () => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    },
  };
}

/** Wait until no process has this pid (the dumped task was killed and reaped). */
export async function waitGone(pid: number, timeoutMs = 10_000): Promise<void> {
  await poll(() => !existsSync(`/proc/${pid}`), `pid ${pid} to be gone`, timeoutMs);
}

export { criuAsync, ROOT };

/** Wait until a process with this pid exists (a restored task is back). */
export async function waitPid(pid: number, timeoutMs = 10_000): Promise<void> {
  await poll(() => existsSync(`/proc/${pid}`), `pid ${pid} to exist`, timeoutMs);
}

/** What a failed dump must leave unchanged in a task, read from outside. */
export interface TaskSnapshot {
  /** TracerPid of every thread ("tid:tracer"). */
  tracers: string[];
  maps: string;
  /** "fd -> target" for every fd. */
  fds: string[];
  threads: number[];
}

export function taskSnapshot(pid: number): TaskSnapshot {
  const threads = readdirSync(`/proc/${pid}/task`)
    .map(Number)
    .sort((a, b) => a - b);
  const tracers = threads.map((tid) => {
    const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    return `${tid}:${/^TracerPid:\s*(\d+)/m.exec(status)?.[1] ?? '?'}`;
  });
  const fds = readdirSync(`/proc/${pid}/fd`)
    .map(Number)
    .sort((a, b) => a - b)
    .map((fd) => {
      try {
        return `${fd} -> ${readlinkSync(`/proc/${pid}/fd/${fd}`)}`;
      } catch {
        return `${fd} -> ?`;
      }
    });
  return { tracers, maps: readFileSync(`/proc/${pid}/maps`, 'utf8'), fds, threads };
}

/** The one-letter state of a task (R, S, T, t, Z...), or undefined when it is gone. */
export function taskState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

/** The system call number thread `tid` of `pid` is blocked in (/proc/.../syscall), or undefined. */
export function blockedSyscall(pid: number, tid = pid): number | undefined {
  try {
    const first = readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'utf8').split(' ')[0] ?? '';
    return /^\d+$/.test(first) ? Number(first) : undefined;
  } catch {
    return undefined;
  }
}

/** Wait until the main thread of `pid` sleeps in one of the system calls `nrs`. */
export async function waitInSyscall(pid: number, nrs: readonly number[], timeoutMs = 10_000): Promise<void> {
  await poll(
    () => {
      const nr = blockedSyscall(pid);
      return nr !== undefined && nrs.includes(nr) && taskState(pid) === 'S';
    },
    `pid ${pid} to block in syscall ${nrs.join('/')}`,
    timeoutMs,
  );
}

/** sha256 of every file in `dir`, by name (to prove a failed restore left the images as they were). */
export function dirDigest(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir).sort())
    out[name] = createHash('sha256')
      .update(readFileSync(path.join(dir, name)))
      .digest('hex');
  return out;
}

/**
 * Watch for `pid` to appear, polling /proc on every turn of the event loop until `stop()` is
 * called; `stop()` says whether it was ever seen.
 */
export function watchForPid(pid: number): { stop(): boolean } {
  let seen = false;
  let running = true;
  const tick = (): void => {
    if (!running) return;
    if (existsSync(`/proc/${pid}`)) seen = true;
    setImmediate(tick);
  };
  tick();
  return {
    stop: () => {
      running = false;
      if (existsSync(`/proc/${pid}`)) seen = true;
      return seen;
    },
  };
}

/** Send `signal` to `pid`, ignoring a task already gone. */
export function signalTask(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // gone
  }
}

export { sleep, poll };

export interface WatchedRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Every process criu had as a child at any moment of its run. */
  children: number[];
  /** Whether `watchPid` existed at any moment of the run. */
  sawPid: boolean;
  /** Whether `watchPid` had a tracer at any moment of the run. */
  wasTraced: boolean;
}

/**
 * Start `criu ARGS...` while watching, on every turn of the event loop, which children it has
 * (/proc/CRIU/task/N/children) and whether `watchPid` exists (to prove a failing restore created
 * no process at all) and whether `watchPid` is traced (to prove a refused dump never touched it).
 */
export function startCriu(args: readonly string[], watchPid?: number): { pid: number; done: Promise<WatchedRun> } {
  const child = spawn(path.join(ROOT, 'bin/criu.js'), args, {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const children = new Set<number>();
  let sawPid = false;
  let wasTraced = false;
  let running = true;
  const look = (): void => {
    if (!running) return;
    if (watchPid !== undefined) {
      try {
        const status = readFileSync(`/proc/${watchPid}/status`, 'utf8');
        sawPid = true;
        if (!/^TracerPid:\s*0$/m.test(status)) wasTraced = true;
      } catch {
        // not there
      }
    }
    try {
      for (const tid of readdirSync(`/proc/${child.pid}/task`)) {
        const list = readFileSync(`/proc/${child.pid}/task/${tid}/children`, 'utf8').trim();
        for (const c of list.split(/\s+/).filter((x) => x !== '')) children.add(Number(c));
      }
    } catch {
      // criu is exiting
    }
    setImmediate(look);
  };
  look();
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (x: string) => (stdout += x));
  child.stderr.setEncoding('utf8').on('data', (x: string) => (stderr += x));
  const done = new Promise<WatchedRun>((resolve) => {
    child.on('close', (status, signal) => {
      running = false;
      resolve({ status, signal, stdout, stderr, children: [...children], sawPid, wasTraced });
    });
  });
  return { pid: child.pid ?? -1, done };
}

/** `startCriu(...).done`. */
export function criuWatched(args: readonly string[], watchPid?: number): Promise<WatchedRun> {
  return startCriu(args, watchPid).done;
}

/**
 * Start `criu restore ARGS... --pidfile PIDFILE` and resolve once the restored task runs (criu
 * writes the pidfile after letting it go); `done` is criu's end.
 */
export async function startRestore(
  args: readonly string[],
  pidfile: string,
  timeoutMs = 20_000,
): Promise<{ pid: number; done: Promise<{ status: number | null; stderr: string }> }> {
  let ended: { status: number | null; stderr: string } | undefined;
  const done = criuAsync(['restore', ...args, '--pidfile', pidfile]).then((r) => (ended = r));
  await poll(
    () => ended !== undefined || (existsSync(pidfile) && readFileSync(pidfile, 'utf8').endsWith('\n')),
    `the pidfile ${pidfile}`,
    timeoutMs,
  );
  if (!existsSync(pidfile))
    throw new Error(`criu restore ended (${ended?.status}) without a pidfile: ${ended?.stderr}`);
  return { pid: Number(readFileSync(pidfile, 'utf8')), done };
}

/**
 * Restore `images` (criu restore -D IMAGES ARGS...), expect the workload back with its PID, run
 * `whileRunning` on it, end it with SIGTERM and expect its PASS and criu exiting 0.
 */
export async function restoreExpectPass(
  t: Test,
  w: Workload,
  images: string,
  dir: string,
  opts: { args?: readonly string[]; whileRunning?: () => void } = {},
): Promise<void> {
  const restored = await startRestore(['-D', images, ...(opts.args ?? [])], path.join(dir, 'restored.pid'));
  t.equal(restored.pid, w.pid, 'restored with its PID');
  opts.whileRunning?.();
  await endExpectPass(t, w);
  const r = await restored.done;
  t.equal(r.status, 0, `criu restore exits with the task's status (${r.stderr})`);
}

/** End workload `w` with SIGTERM and expect `pass` (its PASS line) and no FAIL in its report. */
export async function endExpectPass(t: Test, w: Workload, pass = /PASS/): Promise<void> {
  process.kill(w.pid, 'SIGTERM');
  await poll(() => pass.test(w.report()) || /FAIL/.test(w.report()), `${w.pid}'s verdict`, 10_000).catch(
    () => undefined,
  );
  const hasVerdict = pass.test(w.report()) || /FAIL/.test(w.report());
  t.match(w.report(), pass, hasVerdict ? w.report() : `${w.report()}(no verdict: ${taskFacts(w.pid)})`);
  t.notMatch(w.report(), /FAIL/);
}

/** What a task that does not answer is doing: its state, signals and system call, for a failure's message. */
function taskFacts(pid: number): string {
  const status = readProcFile(`/proc/${pid}/status`);
  if (status === '') return `task ${pid} is gone`;
  const field = (name: string): string => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '?';
  const syscall = readProcFile(`/proc/${pid}/syscall`).trim().split(' ')[0] ?? '?';
  return (
    `task ${pid} state ${field('State')}, TracerPid ${field('TracerPid')}, SigPnd ${field('SigPnd')}, ` +
    `ShdPnd ${field('ShdPnd')}, SigBlk ${field('SigBlk')}, SigCgt ${field('SigCgt')}, Seccomp ${field('Seccomp')}, ` +
    `syscall ${syscall}`
  );
}

/**
 * The plain round trip of a self-checking workload: start it (with `args`), dump it (killed),
 * restore it, expect its PID back, SIGTERM it, and expect PASS in its report and criu exiting 0.
 */
export async function dumpRestoreCheck(t: Test, program: string, args: readonly string[] = []): Promise<void> {
  const dir = t.testdir();
  const w = await startWorkload(program, dir, args);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);
  await restoreExpectPass(t, w, images, dir);
}

/**
 * Dump process `pid` (its tree) into DIR/img; once it and `others` are gone, `onDumped`; then
 * restore it detached, expect its pid back, and wait for criu's end (it writes stats-restore after
 * the pidfile: before the test directory goes). `onDumped` may be async. False, after a failed
 * assertion, if the dump failed.
 */
export async function dumpRestoreDetached(
  t: Test,
  dir: string,
  pid: number,
  name: string,
  others: readonly number[] = [],
  onDumped?: () => unknown,
): Promise<boolean> {
  const images = path.join(dir, 'img');
  const r = await criuAsync(['dump', '-t', String(pid), '-D', images]);
  if (!t.equal(r.status, 0, `dump: ${r.stderr}`)) return false;
  for (const p of [pid, ...others]) await waitGone(p);
  await onDumped?.();
  const restored = await startRestore(['-D', images, '-d'], path.join(dir, 'restored.pid'));
  t.equal(restored.pid, pid, `${name} restored with its pid`);
  const ended = await restored.done;
  t.equal(ended.status, 0, `criu restore -d exits 0 (${ended.stderr})`);
  return true;
}

/** Wait until `pid` has ended: gone, or a zombie its parent (init, often) has not reaped yet. */
export async function waitEnded(pid: number, timeoutMs = 10_000): Promise<void> {
  await poll(
    () => !existsSync(`/proc/${pid}`) || /\) Z/.test(readProcFile(`/proc/${pid}/stat`)),
    `${pid} to end`,
    timeoutMs,
  );
}

function readProcFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** A counter of the restore_stats entry criu restore leaves in `imagesDir`/stats-restore (NaN when absent). */
export async function restoreStat(imagesDir: string, field: string): Promise<number> {
  const e = (await readImage(path.join(imagesDir, 'stats-restore'), 'STATS')).records[0]?.entry['restore'] as
    Record<string, unknown> | undefined;
  return Number(e?.[field]);
}

/**
 * Dump workload `w` (killed) into DIR/img and read its files.img through crit: the `key`
 * sub-entries (isk, nlsk, psk...) of its file entries, in order.
 */
export async function dumpFileEntries(
  t: Test,
  w: Workload,
  dir: string,
  key: string,
): Promise<{ images: string; entries: Record<string, unknown>[] }> {
  const images = path.join(dir, 'img');
  const d = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(d.status, 0, `dump: ${d.stderr}`);
  await waitGone(w.pid);
  const files = JSON.parse(
    execFileSync('crit', ['decode', '-i', path.join(images, 'files.img')], { encoding: 'utf8' }),
  ) as { entries: Record<string, Record<string, unknown> | undefined>[] };
  return { images, entries: files.entries.flatMap((e) => (e[key] === undefined ? [] : [e[key]])) };
}

/** A dump of workload `w` fails with exit 1 and `why` as its one line; `w` runs on and passes its check. */
export async function expectDumpRefused(t: Test, w: Workload, dir: string, why: RegExp): Promise<void> {
  const d = await criuAsync(['dump', '-t', String(w.pid), '-D', path.join(dir, 'img')]);
  t.equal(d.status, 1, 'dump fails');
  t.match(d.stderr, why);
  t.equal(d.stderr.trim().split('\n').length, 1, `one line: ${d.stderr}`);
  await endExpectPass(t, w);
}
