/**
 * epoll (fd kind EVENTPOLL): file_entry { type: EVENTPOLL, id, epfd: { id, flags, fown, tfd[] } }
 * with one eventpoll_tfd_entry { id: 0, tfd, events, data, dev, inode, pos } per watched file,
 * embedded as CRIU 4.x does (the separate eventpoll-tfd.img is CRIU's old format).
 *
 * Dump reads the "tfd:" lines of /proc/PID/fdinfo/FD (fs/eventpoll.c ep_show_fdinfo):
 *
 *   tfd:       12 events:       19 data:             1234  pos:0 ino:40f sdev:10
 *              fd      hex events        hex data (u64)       decimal hex inode hex s_dev
 *
 * `tfd` is the fd NUMBER the watch was added with, in the dumped task; dev/inode/pos identify the
 * watched file in case that number was closed or reused since (CRIU uses them to find it with
 * kcmp; criu-ts records them but restores by number).
 *
 * Restore comes after every other kind (restoreOrder 100), when the watched files sit at their
 * fd numbers in the task: epoll_create1(0), then epoll_ctl(EPOLL_CTL_ADD, tfd, {events, data})
 * for each watch, all inside the task.
 */

import type { ImageEntry } from '../images/index.js';
import { fdInfoLines } from '../proc/fdinfo.js';
import { descriptionFlags, setStatusFlagsInTask } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import { FD_TYPES, type FdInfo, type FdKindModule } from './types.js';

/** epoll_ctl(2) op. uapi/linux/eventpoll.h. */
const EPOLL_CTL_ADD = 1;

/** One watch of an epoll instance, as in its fdinfo. */
export interface EpollWatch {
  tfd: number;
  events: number;
  data: bigint;
  pos: bigint;
  inode: bigint;
  dev: number;
}

const TFD_LINE =
  /^(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+pos:\s*(-?\d+)\s+ino:\s*([0-9a-f]+)\s+sdev:\s*([0-9a-f]+)/;

/** The watches listed in an epoll fd's fdinfo, in the kernel's order. */
export function parseEpollInfo(info: FdInfo): EpollWatch[] {
  return fdInfoLines(info, 'tfd').map((line) => {
    const m = TFD_LINE.exec(line);
    if (m === null) throw new Error(`Cannot parse the epoll fdinfo line "tfd: ${line}"`);
    return {
      tfd: Number(m[1]),
      events: parseInt(m[2] as string, 16) >>> 0,
      data: BigInt(`0x${m[3] as string}`),
      pos: BigInt(m[4] as string),
      inode: BigInt(`0x${m[5] as string}`),
      dev: parseInt(m[6] as string, 16) >>> 0,
    };
  });
}

/** struct epoll_event, packed on x86_64: u32 events, u64 data (12 bytes). */
function epollEvent(events: number, data: bigint): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt32LE(events >>> 0, 0);
  b.writeBigUInt64LE(BigInt.asUintN(64, data), 4);
  return b;
}

export const eventpollFile: FdKindModule = {
  type: FD_TYPES.EVENTPOLL,
  name: 'eventpoll',
  restoreOrder: 100,

  matches(input) {
    return input.link === 'anon_inode:[eventpoll]';
  },

  async dump(input, id, ctx) {
    const tfd = parseEpollInfo(input.fdinfo).map((w) => ({
      id: 0,
      tfd: w.tfd,
      events: w.events,
      data: w.data,
      dev: w.dev,
      inode: w.inode,
      pos: w.pos,
    }));
    return {
      type: FD_TYPES.EVENTPOLL,
      id,
      epfd: { id, flags: descriptionFlags(input.fdinfo.flags), fown: dumpFown(input, ctx), tfd },
    };
  },

  async restore(entry, ctx) {
    const epfd = entry['epfd'] as ImageEntry;
    const flags = Number(epfd['flags'] ?? 0);
    const { injector } = ctx;
    const fd = Number(injector.syscallOrThrow('epoll_create1', [0n]));
    for (const w of (epfd['tfd'] ?? []) as ImageEntry[]) {
      const ev = injector.pushData(epollEvent(Number(w['events']), BigInt(w['data'] as bigint | number)));
      injector.syscallOrThrow('epoll_ctl', [BigInt(fd), BigInt(EPOLL_CTL_ADD), BigInt(Number(w['tfd'])), ev]);
    }
    setStatusFlagsInTask(injector, fd, flags);
    restoreFown(injector, fd, epfd['fown'] as ImageEntry | undefined);
    return fd;
  },
};
