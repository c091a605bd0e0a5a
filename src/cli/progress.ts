/**
 * A progress line for long work, on stderr and only when stderr is a terminal: "memory 512/1024
 * MiB", redrawn at most ten times a second and erased when done.
 */

import type { CliIo } from './commands.js';

export interface Progress {
  update: (what: string, done: number, total: number) => void;
  done: () => void;
}

export function progressReporter(io: CliIo, isTty: boolean = process.stderr.isTTY === true): Progress {
  if (!isTty) return { update: () => undefined, done: () => undefined };
  let last = 0;
  let shown = false;
  const mib = (n: number): string => (n / (1 << 20)).toFixed(0);
  return {
    update: (what, done, total) => {
      const now = Date.now();
      if (now - last < 100 && done < total) return;
      last = now;
      shown = true;
      io.stderr(`\r${what} ${mib(done)}/${mib(total)} MiB`);
    },
    done: () => {
      if (shown) io.stderr('\r\x1b[K');
    },
  };
}
