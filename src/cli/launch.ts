/**
 * What every criu-ts executable does before its command runs.
 */

import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

/**
 * `criu show ... | head` closes stdout early: end quietly with the exit code so far, as a C tool
 * killed by SIGPIPE would, instead of an unhandled EPIPE stack.
 */
export function exitOnClosedStdout(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(typeof process.exitCode === 'number' ? process.exitCode : 0);
    throw err;
  });
}

/** True when the module at `moduleUrl` is the script node was started with (`tsx src/cli/x.ts`). */
export function isMainModule(moduleUrl: string): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return pathToFileURL(realpathSync(script)).href === moduleUrl;
  } catch {
    return false;
  }
}

const interruption = new AbortController();

/**
 * Aborted when the user interrupts criu (SIGINT, SIGTERM, SIGHUP). Long commands watch it and
 * leave their target as it was before returning.
 */
export const interruptSignal: AbortSignal = interruption.signal;

/**
 * Catch SIGINT, SIGTERM and SIGHUP instead of dying at once: a task seized for injection or
 * dumping must be released before criu exits, and the injection engine runs synchronously, so the
 * handler only records the signal (and aborts `interruptSignal`). Returns the exit code to use
 * when a signal came (128 + its number), or undefined.
 */
export function deferTerminationSignals(): () => number | undefined {
  let received: NodeJS.Signals | undefined;
  const numbers: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (received === undefined) {
        received = sig;
        interruption.abort(new Error(`Interrupted by ${sig}`));
      }
    });
  }
  return () => (received === undefined ? undefined : 128 + (numbers[received] ?? 0));
}
