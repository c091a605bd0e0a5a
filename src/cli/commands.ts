/**
 * The command table of `criu`: one handler per command, taking the Options and returning the exit
 * code. The CLI dispatches through this table only; wiring a new command is one line here.
 * A command or option not built yet throws NotImplementedError (exit 2, one line).
 */

import type { CommandName, Options } from './options.js';

/** Where a command prints its results (stdout) and its one-line errors (stderr). */
export interface CliIo {
  stdout(text: string): void;
  stderr(text: string): void;
}

export type CommandHandler = (opts: Options, io: CliIo) => Promise<number>;

export const COMMAND_HANDLERS: Record<CommandName, CommandHandler> = {
  'pre-dump': async (opts, io) => (await import('./dump.js')).runPreDump(opts, io),
  dump: async (opts, io) => (await import('./dump.js')).runDump(opts, io),
  restore: async (opts, io) => (await import('./restore.js')).runRestore(opts, io),
  show: async (opts, io) => (await import('./show.js')).runShow(opts, io),
  // show and check are loaded on use: they pull in the image layer and the native addon, which
  // --help and usage errors do not need (and which must not break them when missing).
  check: async (opts, io) => (await import('./check.js')).runCheck(opts, io),
  'page-server': async (opts, io) => (await import('./page-server-cmd.js')).runPageServerCmd(opts, io),
  exec: async (opts, io) => (await import('./exec.js')).runExec(opts, io),
  service: async (opts, io) => (await import('./service.js')).runService(opts, io),
  swrk: async (opts, io) => (await import('./service.js')).runSwrk(opts, io),
  dedup: async (opts, io) => (await import('./dump.js')).runDedup(opts, io),
  'cpuinfo dump': async (opts, io) => (await import('../cpuinfo/cli.js')).runCpuinfoDump(opts, io),
  'cpuinfo check': async (opts, io) => (await import('../cpuinfo/cli.js')).runCpuinfoCheck(opts, io),
};
