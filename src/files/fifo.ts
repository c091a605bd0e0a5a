/**
 * Named pipes (fd kind FIFO), as CRIU stores them: the path and open flags in a REG file entry of
 * their own (a file id no fd uses), the FIFO entry pointing at it, the buffered bytes in
 * fifo-data.img (kind FIFO_DATA, same layout as pipes-data.img), once per FIFO:
 *
 *   files.img:     file_entry { type: REG,  id: R, reg: { id: R, flags, pos: 0, fown, name, mode } }
 *                  file_entry { type: FIFO, id,    fifo: { id, pipe_id = st_ino, regf_id: R } }
 *   fifo-data.img: pipe_data_entry { pipe_id, bytes, size } then `bytes` bytes
 *
 * The REG entry is added to files.img through ctx.addEntry('FILES', ...), before the FIFO entry
 * the module returns (CRIU's order); restore finds it with ctx.entriesOf('FILES').
 *
 * Dump: the data with tee(2), as for pipes (pipe.ts). Restore, inside the task: open the path
 * O_RDWR first (on Linux that never blocks, and it is both a reader and a writer), refill the data
 * through it the first time this FIFO is met, open the path with the dumped flags (which cannot
 * block now), close the O_RDWR fd. The FIFO must exist at its path (a deleted one is refused at
 * dump). A FIFO that holds bytes when it is opened has another holder: not refilled when they are
 * the dumped ones (the original, frozen, in a migration between hosts of one machine), refused
 * when they are not.
 */

import { UnsupportedError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import { F_GETPIPE_SZ, O_RDWR } from '../kernel/constants.js';
import * as sys from '../sys/native.js';
import { descriptionFlags } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import { dumpPipeData, fillPipeInTask, findPipeData, peekPipe, pipeIdOf } from './pipe.js';
import { closeInTask, openInTask } from './task-io.js';
import { FD_TYPES, type FdKindModule } from './types.js';

/** S_IFMT and S_IFIFO. uapi/linux/stat.h. */
const S_IFMT = 0o170000n;
const S_IFIFO = 0o010000n;

function subMessage(entry: ImageEntry, name: string): ImageEntry {
  const sub = entry[name];
  if (typeof sub !== 'object' || sub === null || Array.isArray(sub) || sub instanceof Uint8Array)
    throw new Error(`File entry ${String(entry['id'])} has no ${name} sub-message`);
  return sub as ImageEntry;
}

/**
 * Whether the FIFO (at fd `fd` of task `pid`) holds bytes already: someone else has it open and
 * they are its own, not to be written twice. The frozen original of a migration between two
 * hosts of one machine is such a holder, and then they are the dumped bytes: true. Other bytes
 * would mix with the dumped ones: the restore fails in one line.
 */
function holdsAlready(pid: number, fd: number, path: string, dumped: Uint8Array): boolean {
  const pidfd = sys.pidfdOpen(pid, 0);
  let local = -1;
  try {
    local = sys.pidfdGetfd(pidfd, fd, 0);
    const held = peekPipe(local, sys.fcntl(local, F_GETPIPE_SZ, 0), `FIFO ${path}`);
    if (held.length === 0) return false;
    if (Buffer.from(dumped).equals(held)) return true;
    throw new UnsupportedError(
      'fifo',
      `Cannot restore FIFO ${path}: someone else has it open, with ${held.length} bytes in it that are not the ${dumped.length} dumped`,
    );
  } finally {
    if (local >= 0) sys.close(local);
    sys.close(pidfd);
  }
}

export const fifoFile: FdKindModule = {
  type: FD_TYPES.FIFO,
  name: 'fifo',
  restoreOrder: 10,

  matches(input) {
    return (input.stat.mode & S_IFMT) === S_IFIFO && !input.link.startsWith('pipe:');
  },

  async dump(input, id, ctx) {
    if (!input.link.startsWith('/') || input.link.endsWith(' (deleted)'))
      throw new UnsupportedError('deleted FIFO', `Cannot dump fd ${input.fd}: FIFO ${input.link} has no path`);
    const regfId = ctx.allocId();
    const reg: ImageEntry = {
      id: regfId,
      flags: descriptionFlags(input.fdinfo.flags),
      pos: 0n,
      fown: dumpFown(input, ctx),
      name: input.link,
      mode: Number(input.stat.mode),
    };
    await ctx.addEntry('FILES', { type: FD_TYPES.REG, id: regfId, reg });
    await dumpPipeData(input, ctx, 'FIFO_DATA');
    return { type: FD_TYPES.FIFO, id, fifo: { id, pipe_id: pipeIdOf(input), regf_id: regfId } };
  },

  async restore(entry, ctx) {
    const fifo = subMessage(entry, 'fifo');
    const pipeId = Number(fifo['pipe_id']);
    const regfId = Number(fifo['regf_id']);
    const files = await ctx.entriesOf('FILES');
    const regEntry = files.find((f) => Number(f.entry['id']) === regfId)?.entry;
    if (regEntry === undefined)
      throw new Error(`FIFO file ${String(fifo['id'])}: no REG file entry ${regfId} for its path`);
    const reg = subMessage(regEntry, 'reg');
    const path = String(reg['name']);
    const flags = Number(reg['flags'] ?? 0);
    const { injector } = ctx;

    const both = openInTask(injector, path, O_RDWR);
    try {
      const key = `fifo:${pipeId}`;
      if (!ctx.shared.has(key)) {
        const pd = await findPipeData(ctx, 'FIFO_DATA', pipeId);
        if (pd !== undefined && !holdsAlready(ctx.hostPid, both, path, pd.data))
          fillPipeInTask(injector, both, pd.sizeBytes, pd.data);
        ctx.shared.set(key, true);
      }
      const fd = openInTask(injector, path, flags);
      restoreFown(injector, fd, reg['fown'] as ImageEntry | undefined);
      return fd;
    } finally {
      closeInTask(injector, both);
    }
  },
};
