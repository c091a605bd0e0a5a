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
 * kcmp; criu-ts records them but restores by number, so it checks with kcmp KCMP_EPOLL_TFD that
 * each number still holds its watched file, and refuses the dump otherwise).
 *
 * Restore comes after every other kind (restoreOrder 100), when the watched files sit at their
 * fd numbers in the task: epoll_create1(0), then epoll_ctl(EPOLL_CTL_ADD, tfd, {events, data})
 * for each watch, all inside the task. A watched epoll restored after this one (a number with
 * nothing there yet, EBADF) is added at the end (finishRestore), once every fd is in place.
 */

import { UnsupportedError, isErrno } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import * as sys from '../sys/native.js';
import { fdInfoLines } from '../proc/fdinfo.js';
import { descriptionFlags, setStatusFlagsInTask } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import {
  FD_TYPES,
  type FdDumpInput,
  type FdInfo,
  type FdKindModule,
  type FileDumpContext,
  type FileRestoreContext,
} from './types.js';

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

/**
 * Each watch must be on the file its fd number holds now: the restore adds the watch by that
 * number. A watch outlives the close of its fd while the file is open elsewhere (a dup, another
 * process): refused then, in one line, rather than watching whatever the number holds (kcmp
 * KCMP_EPOLL_TFD; `toff` counts the earlier watches of the same number, as the kernel does).
 * Checked before the tree is frozen, and again when dumped.
 */
function staleWatch(input: FdDumpInput): string | undefined {
  const seen = new Map<number, number>();
  for (const w of parseEpollInfo(input.fdinfo)) {
    const toff = seen.get(w.tfd) ?? 0;
    seen.set(w.tfd, toff + 1);
    let same: boolean;
    try {
      same = sys.kcmpEpollTfd(input.pid, input.pid, w.tfd, input.fd, w.tfd, toff) === 0;
    } catch (err) {
      if (!isErrno(err, 'EBADF')) throw err;
      same = false;
    }
    if (!same)
      return (
        `Cannot dump epoll fd ${input.fd} of task ${input.pid}: it watches a file that fd ${w.tfd} no longer holds ` +
        `(closed or replaced since it was added; the file is still open elsewhere)`
      );
  }
  return undefined;
}

export const eventpollFile: FdKindModule = {
  type: FD_TYPES.EVENTPOLL,
  name: 'eventpoll',
  restoreOrder: 100,

  matches(input) {
    return input.link === 'anon_inode:[eventpoll]';
  },

  refusal: staleWatch,

  async dump(input, id, ctx) {
    const stale = staleWatch(input);
    if (stale !== undefined) throw new UnsupportedError('fd-kind-eventpoll', stale);
    return epollEntry(input, id, ctx);
  },

  async restore(entry, ctx) {
    const epfd = entry['epfd'] as ImageEntry;
    const flags = Number(epfd['flags'] ?? 0);
    const { injector } = ctx;
    // Above the fd table: at a free number below, it could stand where a file it watches (another
    // epoll, not restored yet) is to go.
    const fd = ctx.parkFd(Number(injector.syscallOrThrow('epoll_create1', [0n])));
    const later: ImageEntry[] = [];
    for (const w of (epfd['tfd'] ?? []) as ImageEntry[]) {
      try {
        addWatch(ctx, fd, w);
      } catch (err) {
        if (!isErrno(err, 'EBADF')) throw err;
        later.push(w); // another epoll, placed after this one: finishRestore adds it
      }
    }
    if (later.length > 0) ctx.shared.set(`epoll-later:${String(epfd['id'])}`, later);
    setStatusFlagsInTask(injector, fd, flags);
    restoreFown(injector, fd, epfd['fown'] as ImageEntry | undefined);
    return fd;
  },

  async finishRestore(ctx) {
    for (const [key, value] of ctx.shared) {
      if (!key.startsWith('epoll-later:')) continue;
      const id = Number(key.slice('epoll-later:'.length));
      const fd = ctx.fdOfFileId(id);
      if (fd === undefined) throw new Error(`epoll file ${id} was not placed`);
      for (const w of value as ImageEntry[]) addWatch(ctx, fd, w);
      ctx.shared.delete(key);
    }
  },
};

/** The file entry of the epoll behind `input`, from its fdinfo (its watches as they are). */
export function epollEntry(input: FdDumpInput, id: number, ctx: FileDumpContext): ImageEntry {
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
}

/** epoll_ctl(EPOLL_CTL_ADD) of watch `w` (by its fd number) to epoll `fd`, in the task. */
function addWatch(ctx: FileRestoreContext, fd: number, w: ImageEntry): void {
  const ev = ctx.injector.pushData(epollEvent(Number(w['events']), BigInt(w['data'] as bigint | number)));
  ctx.injector.syscallOrThrow('epoll_ctl', [BigInt(fd), BigInt(EPOLL_CTL_ADD), BigInt(Number(w['tfd'])), ev]);
}
