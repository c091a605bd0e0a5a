/**
 * signalfd (fd kind SIGNALFD): file_entry { type: SIGNALFD, id, sgfd: { id, flags, fown, sigmask } }.
 *
 * Dump reads "sigmask:" of /proc/PID/fdinfo/FD (fs/signalfd.c: the signals the fd accepts, 16 hex
 * digits, bit n-1 for signal n). Restore: signalfd4(-1, &mask, 8, SFD_NONBLOCK as recorded)
 * inside the task.
 */

import type { ImageEntry } from '../images/index.js';
import { O_NONBLOCK } from '../kernel/constants.js';
import { fdInfoLines } from '../proc/fdinfo.js';
import { descriptionFlags, setStatusFlagsInTask } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import { FD_TYPES, type FdInfo, type FdKindModule } from './types.js';

/** The accepted-signal mask from a signalfd's fdinfo. */
export function parseSignalfdInfo(info: FdInfo): bigint {
  const mask = fdInfoLines(info, 'sigmask')[0];
  if (mask === undefined || !/^[0-9a-f]+$/.test(mask)) throw new Error('No "sigmask" in the fdinfo of a signalfd');
  return BigInt(`0x${mask}`);
}

export const signalfdFile: FdKindModule = {
  type: FD_TYPES.SIGNALFD,
  name: 'signalfd',
  restoreOrder: 10,

  matches(input) {
    return input.link === 'anon_inode:[signalfd]';
  },

  async dump(input, id, ctx) {
    return {
      type: FD_TYPES.SIGNALFD,
      id,
      sgfd: {
        id,
        flags: descriptionFlags(input.fdinfo.flags),
        fown: dumpFown(input, ctx),
        sigmask: parseSignalfdInfo(input.fdinfo),
      },
    };
  },

  async restore(entry, ctx) {
    const sgfd = entry['sgfd'] as ImageEntry;
    const flags = Number(sgfd['flags'] ?? 0);
    const { injector } = ctx;
    const mask = Buffer.alloc(8);
    mask.writeBigUInt64LE(BigInt(sgfd['sigmask'] as bigint | number));
    const createFlags = flags & O_NONBLOCK;
    const fd = Number(injector.syscallOrThrow('signalfd4', [-1n, injector.pushData(mask), 8n, BigInt(createFlags)]));
    setStatusFlagsInTask(injector, fd, flags, createFlags);
    restoreFown(injector, fd, sgfd['fown'] as ImageEntry | undefined);
    return fd;
  },
};
