/**
 * The real CRIU on this machine: Debian's criu 3.17 (/usr/sbin/criu, installed by .ci/run for
 * crit). It runs with test/fixtures/compat/criu317.c preloaded, which shows it the kernel's vDSO
 * data areas as the single [vvar] it knows; without it, criu 3.17 stops at start-up on this kernel.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { FIXTURES_BIN } from './fixture.js';

export const REAL_CRIU = '/usr/sbin/criu';
const SHIM = path.join(FIXTURES_BIN, 'criu317-compat.so');

/** Why the real CRIU cannot be run here, or false when it can. */
export function realCriuMissing(): string | false {
  if (!existsSync(REAL_CRIU)) return `${REAL_CRIU} (Debian package criu 3.17) is not installed`;
  if (!existsSync(SHIM)) throw new Error(`${SHIM} is not built: run "npm run build:fixtures"`);
  return false;
}

export interface RealCriuRun {
  status: number | null;
  /** Its log (-o LOG in the working directory `cwd`), for messages. */
  stderr: string;
}

/** Start the real `criu ARGS...` in `cwd`; `exited` resolves with its status. */
export function startRealCriu(args: readonly string[], cwd: string): { pid: number; exited: Promise<number | null> } {
  const child = spawn(REAL_CRIU, args, {
    cwd,
    stdio: 'ignore',
    env: { ...process.env, LD_PRELOAD: SHIM },
  });
  const exited = new Promise<number | null>((resolve) => {
    child.on('exit', (code) => resolve(code));
    child.on('error', () => resolve(null));
  });
  return { pid: child.pid ?? -1, exited };
}

/** Run the real `criu ARGS...` to its end. */
export async function realCriu(args: readonly string[], cwd: string): Promise<number | null> {
  return startRealCriu(args, cwd).exited;
}

/**
 * Start the real `criu page-server` into `dir` (which must exist) on 127.0.0.1:`port`; resolves
 * once it listens. `exited` resolves with its status (it ends after one session).
 */
export async function startRealPageServer(
  dir: string,
  port: number,
): Promise<{ exited: Promise<number | null>; log: string }> {
  const log = path.join(dir, 'ps.log');
  const server = startRealCriu(
    ['page-server', '-D', dir, '--address', '127.0.0.1', '--port', String(port), '-v4', '-o', 'ps.log'],
    dir,
  );
  let ended = false;
  void server.exited.then(() => (ended = true));
  const until = Date.now() + 10_000;
  while (!(existsSync(log) && readFileSync(log, 'utf8').includes('Starting page server'))) {
    if (ended) throw new Error(`criu page-server ended before listening: ${logErrors(log)}`);
    if (Date.now() > until) throw new Error('criu page-server did not listen within 10 s');
    await new Promise((r) => setTimeout(r, 20));
  }
  return { exited: server.exited, log };
}

/** The last error and warning lines of a CRIU log, for a failed step's message. */
export function logErrors(log: string): string {
  if (!existsSync(log)) return `(no log at ${log})`;
  return readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => /Error|Warn/.test(l))
    .slice(-4)
    .join(' / ');
}

/** `--page-server --address 127.0.0.1 --port PORT`, as both CRIUs take it. */
export const toPageServer = (port: number): string[] => [
  '--page-server',
  '--address',
  '127.0.0.1',
  '--port',
  String(port),
];
