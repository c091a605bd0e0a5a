/**
 * `criu dump -t PID -D DIR [-R | -s]`: maps the options to the dump library call.
 */

import { UsageError } from '../errors.js';
import { dump } from '../dump/index.js';
import type { CliIo } from './commands.js';
import { interruptSignal } from './launch.js';
import type { Options } from './options.js';
import { progressReporter } from './progress.js';

export async function runDump(opts: Options, io: CliIo): Promise<number> {
  if (opts.tree === undefined) throw new UsageError('dump needs the task to checkpoint: -t/--tree PID');
  if (opts.leaveRunning && opts.leaveStopped)
    throw new UsageError('-R/--leave-running and -s/--leave-stopped exclude each other');
  const progress = progressReporter(io);
  try {
    await dump({
      pid: opts.tree,
      imagesDir: opts.imagesDir,
      end: opts.leaveRunning ? 'leave-running' : opts.leaveStopped ? 'leave-stopped' : 'kill',
      signal: interruptSignal,
      onProgress: progress.update,
    });
  } finally {
    progress.done();
  }
  return 0;
}
