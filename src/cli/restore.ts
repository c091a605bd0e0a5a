/**
 * `criu restore -D DIR [-d] [--pidfile F]`: maps the options to the restore library call. Without
 * -d criu stays the restored task's parent and exits with its exit status (128 + the signal when
 * it was killed), as CRIU does.
 */

import { UsageError } from '../errors.js';
import { restore, type RestoreOptions } from '../restore/index.js';
import type { CliIo } from './commands.js';
import type { Options } from './options.js';
import { actionOption } from '../actions.js';

/** The restore library call's options for `opts` (also an RPC RESTORE's). */
export function restoreOptions(opts: Options): RestoreOptions {
  if (opts.restoreSibling && !opts.restoreDetached)
    throw new UsageError('-S/--restore-sibling needs -d/--restore-detached: criu cannot wait for a sibling');
  return {
    isSibling: opts.restoreSibling,
    isLeftStopped: opts.leaveStopped,
    inheritFds: opts.inheritFds,
    imagesDir: opts.imagesDir,
    isDetached: opts.restoreDetached,
    cpuCap: opts.cpuCap,
    isShellJob: opts.shellJob,
    isTcpClose: opts.tcpClose,
    autoDedup: opts.autoDedup,
    ...(opts.pidfile === undefined ? {} : { pidfile: opts.pidfile }),
    ...actionOption(opts),
  };
}

export async function runRestore(opts: Options, _io: CliIo): Promise<number> {
  const result = await restore(restoreOptions(opts));
  if (result.exit === undefined) return 0;
  return 'code' in result.exit ? result.exit.code : 128 + result.exit.signal;
}
