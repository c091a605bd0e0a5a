/**
 * Running the built `criu` executable (bin/criu.js over dist/) as a user would.
 */
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from './fixture.js';

const BIN = path.join(ROOT, 'bin/criu.js');

function assertBuilt(): void {
  if (!existsSync(path.join(ROOT, 'dist/src/cli/criu.js')))
    throw new Error('dist/ is not built: run "npm run build:ts" (npm test does it)');
}

/** Run `criu ARGS...` to completion. */
export function criu(
  args: readonly string[],
  options: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): SpawnSyncReturns<string> {
  assertBuilt();
  return spawnSync(BIN, args, {
    cwd: options.cwd ?? ROOT,
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 60_000,
    ...(options.env === undefined ? {} : { env: options.env }),
  });
}

/** Run `criu ARGS...` without blocking the event loop (fixtures keep talking meanwhile). */
export function criuAsync(
  args: readonly string[],
  options: { cwd?: string; /** Handed to criu as its fd 3 (--ps-socket 3, --status-fd 3). */ fd3?: number } = {},
): Promise<{ status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  assertBuilt();
  return new Promise((resolve) => {
    const stdio = options.fd3 === undefined ? ['ignore', 'pipe', 'pipe'] : ['ignore', 'pipe', 'pipe', options.fd3];
    const child = spawn(BIN, args, { cwd: options.cwd ?? ROOT, stdio: stdio as ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr }));
  });
}
