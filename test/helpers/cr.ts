/**
 * Checkpoint/restore test helpers: start a self-checking workload with /dev/null for stdio and a
 * report file (so nothing ties it to the test runner across a restore), dump it, restore it, and
 * read its verdict.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { criuAsync } from './criu.js';
import { fixturePath, ROOT } from './fixture.js';

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
export async function startWorkload(program: string, dir: string, args: readonly string[] = []): Promise<Workload> {
  const outFile = path.join(dir, 'report.txt');
  const bin = program.includes('/') ? program : fixturePath(program);
  const sh = spawn('sh', ['-c', '"$@" </dev/null >/dev/null 2>&1 & wait', 'sh', bin, ...args, outFile], {
    stdio: 'ignore',
    detached: true,
  });
  sh.unref();
  const report = (): string => (existsSync(outFile) ? readFileSync(outFile, 'utf8') : '');
  await poll(() => /READY (\d+)/.test(report()), `${program} to be READY`, 10_000);
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
