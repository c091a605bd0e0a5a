/**
 * eventfd (fd kind EVENTFD): file_entry { type: EVENTFD, id, efd: { id, flags, fown, counter } }.
 *
 * Dump reads /proc/PID/fdinfo/FD: "eventfd-count:" (hex, the counter) and "eventfd-semaphore:"
 * (0/1, kernel 6.4+). EFD_SEMAPHORE is not an open flag, so CRIU loses it; criu-ts records it in
 * `flags` as bit 0, EFD_SEMAPHORE's value. That bit is O_WRONLY, which an eventfd's flags never
 * carry (always O_RDWR), and CRIU's restore only hands flags to fcntl(F_SETFL), which ignores the
 * access mode: the image stays CRIU-compatible.
 *
 * Restore: eventfd2(count, EFD_SEMAPHORE | EFD_NONBLOCK as recorded) inside the task; a counter
 * above 2^32-1 (eventfd2 takes an unsigned int) is added with an 8-byte write(2) instead.
 */

import type { ImageEntry } from '../images/index.js';
import { O_NONBLOCK } from '../kernel/constants.js';
import { fdInfoLines } from '../proc/fdinfo.js';
import { descriptionFlags, setStatusFlagsInTask } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import { FD_TYPES, type FdInfo, type FdKindModule } from './types.js';

/** eventfd2(2) flag. uapi/linux/eventfd.h. */
export const EFD_SEMAPHORE = 1;

/** The counter and semaphore mode from an eventfd's fdinfo. */
export function parseEventfdInfo(info: FdInfo): { counter: bigint; isSemaphore: boolean } {
  const count = fdInfoLines(info, 'eventfd-count')[0];
  if (count === undefined) throw new Error('No "eventfd-count" in the fdinfo of an eventfd');
  return {
    counter: BigInt(`0x${count}`),
    isSemaphore: fdInfoLines(info, 'eventfd-semaphore')[0] === '1',
  };
}

export const eventfdFile: FdKindModule = {
  type: FD_TYPES.EVENTFD,
  name: 'eventfd',
  restoreOrder: 10,

  matches(input) {
    return input.link === 'anon_inode:[eventfd]';
  },

  async dump(input, id, ctx) {
    const { counter, isSemaphore } = parseEventfdInfo(input.fdinfo);
    const flags = descriptionFlags(input.fdinfo.flags) | (isSemaphore ? EFD_SEMAPHORE : 0);
    return { type: FD_TYPES.EVENTFD, id, efd: { id, flags, fown: dumpFown(input, ctx), counter } };
  },

  async restore(entry, ctx) {
    const efd = entry['efd'] as ImageEntry;
    const flags = Number(efd['flags'] ?? 0);
    const counter = BigInt(efd['counter'] as bigint | number);
    const { injector } = ctx;
    const createFlags = flags & (EFD_SEMAPHORE | O_NONBLOCK);
    const initval = counter <= 0xffffffffn ? counter : 0n;
    const fd = Number(injector.syscallOrThrow('eventfd2', [initval, BigInt(createFlags)]));
    if (initval !== counter) {
      const buf = Buffer.alloc(8);
      buf.writeBigUInt64LE(counter);
      injector.syscallOrThrow('write', [BigInt(fd), injector.pushData(buf), 8n]);
    }
    setStatusFlagsInTask(injector, fd, flags, createFlags);
    restoreFown(injector, fd, efd['fown'] as ImageEntry | undefined);
    return fd;
  },
};
