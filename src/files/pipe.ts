/**
 * Pipes (fd kind PIPE): `pipe_entry` in files.img, and the bytes buffered in the pipe as one
 * `pipe_data_entry` + raw payload in pipes-data.img (kind PIPES_DATA), once per pipe.
 *
 *   files.img:      file_entry { type: PIPE, id, pipe: { id, pipe_id = st_ino, flags, fown } }
 *   pipes-data.img: pipe_data_entry { pipe_id, bytes, size = F_GETPIPE_SZ } then `bytes` bytes
 *
 * Dump reads the buffered bytes without consuming them: tee(2) from criu's duplicate of the fd
 * into a pipe of criu's own, then read(2) from that. tee needs a readable end; for a write end
 * criu opens /proc/self/fd/N of its duplicate O_RDONLY | O_NONBLOCK, a new reader of the same
 * pipe. (CRIU dumps the data from read ends only and loses what sits in a pipe of which the task
 * has only the write end; criu-ts dumps it from whichever end comes first. The images are the
 * same shape.) Packet-mode pipes (O_DIRECT) are refused, as CRIU does.
 *
 * Restore runs inside the task: pipe2(2) once per pipe_id, F_SETPIPE_SZ to the dumped size (at
 * most fs.pipe-max-size, 1 MiB, without CAP_SYS_RESOURCE), write(2) of the data from the
 * injector's scratch mapping into the write end. The description takes the end of its access mode;
 * the other end is parked above the fd table, for the pipe's other description (in this process
 * or, through pidfd_getfd, another of the tree), and closed at the end if none claims it. Any
 * further description (a second open of one end, or one that was opened through /proc, which the
 * kernel marks O_LARGEFILE) is opened through /proc/self/fd/N of the first one, as CRIU's reopen
 * does.
 *
 * Shared with fifo.ts: the data dump (dumpPipeData) and refill (fillPipeInTask).
 */

import { UnsupportedError, isErrno } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import {
  F_GETPIPE_SZ,
  F_SETPIPE_SZ,
  O_CLOEXEC,
  O_DIRECT,
  O_LARGEFILE,
  O_NONBLOCK,
  O_RDONLY,
  O_WRONLY,
  SPLICE_F_NONBLOCK,
} from '../kernel/constants.js';
import * as sys from '../sys/native.js';
import { descriptionFlags, setStatusFlagsInTask } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import { closeInTask, feedInTask, openInTask } from './task-io.js';
import { SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';
import {
  FD_TYPES,
  type FdDumpInput,
  type FdKindModule,
  type FileDumpContext,
  type FileRestoreContext,
} from './types.js';

/** The access mode bits of open flags. uapi/asm-generic/fcntl.h. */
export const O_ACCMODE = 3;

/** The pipe_id CRIU records: the pipe's inode number, as u32. */
export function pipeIdOf(input: FdDumpInput): number {
  return Number(input.stat.ino & 0xffffffffn);
}

/** The data of one pipe as dumped: the pipe_data_entry and its payload. */
export interface PipeData {
  pipeId: number;
  /** F_GETPIPE_SZ of the pipe, bytes. */
  sizeBytes: number;
  data: Buffer;
}

/**
 * Read the bytes buffered in the pipe (or FIFO) behind `input` without consuming them. Returns
 * null when another fd of this dump already had them dumped (key `kindName:pipeId` in ctx.shared).
 */
export function readPipeData(input: FdDumpInput, shared: Map<string, unknown>, kindName: string): PipeData | null {
  const pipeId = pipeIdOf(input);
  const key = `${kindName}:${pipeId}`;
  if (shared.has(key)) return null;
  const isWriteOnly = (input.fdinfo.flags & O_ACCMODE) === O_WRONLY;
  // A new reader of the same pipe: it never blocks and never takes data by itself.
  const readFd = isWriteOnly
    ? sys.open(`/proc/self/fd/${input.localFd}`, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0)
    : input.localFd;
  try {
    const sizeBytes = sys.fcntl(readFd, F_GETPIPE_SZ, 0);
    const data = peekPipe(readFd, sizeBytes, `pipe ${pipeId}`);
    shared.set(key, true);
    return { pipeId, sizeBytes, data };
  } finally {
    if (readFd !== input.localFd) sys.close(readFd);
  }
}

/**
 * The bytes buffered in the pipe (of `sizeBytes`) that `readFd`, a readable end in criu's own
 * process, reads, without consuming them: tee(2) into a pipe of criu's own, then read(2).
 */
export function peekPipe(readFd: number, sizeBytes: number, what: string): Buffer {
  const [stealR, stealW] = sys.pipe2(O_CLOEXEC | O_NONBLOCK);
  try {
    if (sys.fcntl(stealW, F_GETPIPE_SZ, 0) < sizeBytes) sys.fcntl(stealW, F_SETPIPE_SZ, sizeBytes);
    let bytes = 0;
    try {
      bytes = sys.tee(readFd, stealW, sizeBytes, SPLICE_F_NONBLOCK);
    } catch (err) {
      if (!isErrno(err, 'EAGAIN')) throw err; // EAGAIN: the pipe is empty
    }
    const data = Buffer.alloc(bytes);
    for (let off = 0; off < bytes;) {
      const n = sys.read(stealR, data, off, bytes - off);
      if (n <= 0) throw new Error(`Short read of the data of ${what}: ${off} of ${bytes} bytes`);
      off += n;
    }
    return data;
  } finally {
    sys.close(stealR);
    sys.close(stealW);
  }
}

/** Dump the pipe's data into image `kindName` (PIPES_DATA or FIFO_DATA), once per pipe. */
export async function dumpPipeData(input: FdDumpInput, ctx: FileDumpContext, kindName: string): Promise<void> {
  const pd = readPipeData(input, ctx.shared, kindName);
  if (pd === null) return;
  await ctx.addEntry(kindName, { pipe_id: pd.pipeId, bytes: pd.data.length, size: pd.sizeBytes }, pd.data);
}

/** The data entry of a pipe in image `kindName` of the restore, or undefined. */
export async function findPipeData(
  ctx: FileRestoreContext,
  kindName: string,
  pipeId: number,
): Promise<{ sizeBytes: number; data: Uint8Array } | undefined> {
  for (const { entry, extra } of await ctx.entriesOf(kindName)) {
    if (Number(entry['pipe_id']) !== pipeId) continue;
    const bytes = Number(entry['bytes'] ?? 0);
    const data = extra ?? new Uint8Array(0);
    if (data.length !== bytes)
      throw new Error(`Pipe data of pipe ${pipeId} in ${kindName} has ${data.length} bytes, the entry says ${bytes}`);
    return { sizeBytes: Number(entry['size'] ?? 0), data };
  }
  return undefined;
}

/**
 * Give the pipe behind fd `writeFd` of the task its dumped size and data. The fd must be a
 * blocking write end (or an O_RDWR FIFO) with a reader, so the write cannot fail or fall short:
 * the data never exceeds the size it was dumped from.
 */
export function fillPipeInTask(injector: Injector, writeFd: number, sizeBytes: number, data: Uint8Array): void {
  const fd = BigInt(writeFd);
  if (sizeBytes > 0 && Number(injector.syscallOrThrow('fcntl', [fd, BigInt(F_GETPIPE_SZ)])) < sizeBytes) {
    try {
      injector.syscallOrThrow('fcntl', [fd, BigInt(F_SETPIPE_SZ), BigInt(sizeBytes)]);
    } catch (err) {
      if (isErrno(err, 'EPERM'))
        throw new UnsupportedError(
          'pipe size',
          `Cannot restore a pipe of ${sizeBytes} bytes: above fs.pipe-max-size and no CAP_SYS_RESOURCE`,
          { cause: err },
        );
      throw err;
    }
  }
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  feedInTask(injector, buf, 'a pipe (write)', (addr, len) => injector.syscall(NR.write, [fd, addr, BigInt(len)]));
}

/** pipe2(fds, 0) inside the task: [read end, write end]. */
export function pipeInTask(injector: Injector): [number, number] {
  const addr = injector.pushData(Buffer.alloc(8));
  injector.syscallOrThrow('pipe2', [addr, 0n]);
  const fds = injector.readMemory(addr, 8);
  return [fds.readInt32LE(0), fds.readInt32LE(4)];
}

/**
 * Open another description of the pipe that fd `baseFd` of the task is an end of, with the access
 * mode of `flags`: /proc/self/fd/N reopens the pipe. Opened non-blocking (a blocking open of a
 * pipe waits for the other side), then given its real flags. A write end needs a reader to open
 * non-blocking: when none is left, a short-lived one is made.
 */
function reopenPipeInTask(injector: Injector, baseFd: number, flags: number): number {
  const path = `/proc/self/fd/${baseFd}`;
  const mode = flags & O_ACCMODE;
  let fd: number;
  try {
    fd = openInTask(injector, path, mode | O_NONBLOCK);
  } catch (err) {
    if (mode !== O_WRONLY || !isErrno(err, 'ENXIO')) throw err;
    const reader = openInTask(injector, path, O_RDONLY | O_NONBLOCK);
    try {
      fd = openInTask(injector, path, mode | O_NONBLOCK);
    } finally {
      closeInTask(injector, reader);
    }
  }
  setStatusFlagsInTask(injector, fd, flags, O_NONBLOCK);
  return fd;
}

/**
 * The ends pipe2 made that no description took yet, by access mode, each parked above the fd
 * table of process `pid`; `takenHere` marks one claimed in that process itself (its parked fd was
 * moved to its place), so that finishRestore closes only the others.
 */
interface PipeSpares {
  pid: number;
  ends: Map<number, { fd: number; taken: boolean; takenHere: boolean }>;
}

/** What restore remembers of a pipe once created: the first description restored and its fd. */
interface PipeRestoreState {
  fileId: number;
  fd: number;
  spares?: PipeSpares;
}

/** What the other processes of a tree know of a pipe made by one of them. */
interface TreePipe {
  fileId: number;
  spares: PipeSpares;
}

/**
 * A description pipe(2) makes: O_RDONLY or O_WRONLY without O_LARGEFILE. One opened through
 * /proc/PID/fd/N has O_LARGEFILE, which no fcntl can set or clear: the restore makes each kind the
 * way it was made.
 */
function isPipe2End(flags: number): boolean {
  const mode = flags & O_ACCMODE;
  return (flags & O_LARGEFILE) === 0 && (mode === O_RDONLY || mode === O_WRONLY);
}

/** Claim the spare end of `mode` made by pipe2 for this description, if one is left. */
function claimSpare(ctx: FileRestoreContext, spares: PipeSpares | undefined, flags: number): number | undefined {
  const end = isPipe2End(flags) ? spares?.ends.get(flags & O_ACCMODE) : undefined;
  if (spares === undefined || end === undefined || end.taken) return undefined;
  end.taken = true;
  let fd: number;
  if (spares.pid === ctx.pid) {
    end.takenHere = true;
    fd = end.fd;
  } else if (ctx.tree !== undefined) {
    fd = ctx.tree.takeFrom(spares.pid, end.fd);
  } else return undefined;
  setStatusFlagsInTask(ctx.injector, fd, flags);
  return fd;
}

function pipeOf(entry: ImageEntry): ImageEntry {
  const pe = entry['pipe'];
  if (typeof pe !== 'object' || pe === null || Array.isArray(pe) || pe instanceof Uint8Array)
    throw new Error(`File entry ${String(entry['id'])} of type PIPE has no pipe sub-message`);
  return pe as ImageEntry;
}

export const pipeFile: FdKindModule = {
  type: FD_TYPES.PIPE,
  name: 'pipe',
  restoreOrder: 10,

  matches(input) {
    return input.link.startsWith('pipe:');
  },

  async dump(input, id, ctx) {
    const flags = descriptionFlags(input.fdinfo.flags);
    if (flags & O_DIRECT)
      throw new UnsupportedError('packet-mode pipe', `Cannot dump fd ${input.fd}: a packet-mode (O_DIRECT) pipe`);
    const pipeId = pipeIdOf(input);
    await dumpPipeData(input, ctx, 'PIPES_DATA');
    return { type: FD_TYPES.PIPE, id, pipe: { id, pipe_id: pipeId, flags, fown: dumpFown(input, ctx) } };
  },

  async restore(entry, ctx) {
    const pe = pipeOf(entry);
    const pipeId = Number(pe['pipe_id']);
    const flags = Number(pe['flags'] ?? 0);
    const fileId = Number(pe['id']);
    const key = `pipe:${pipeId}`;
    const { injector } = ctx;
    const known = ctx.shared.get(key) as PipeRestoreState | undefined;
    // In a tree, the pipe may have been made by another process: this description is the end it
    // kept aside, or is opened again from the pipe there.
    const madeElsewhere = ctx.tree?.shared.get(key) as TreePipe | undefined;
    const elsewhere = madeElsewhere === undefined ? undefined : ctx.tree?.fdOfFileId(madeElsewhere.fileId);
    let fd: number;
    if (known === undefined && madeElsewhere !== undefined && ctx.tree !== undefined) {
      const spare = claimSpare(ctx, madeElsewhere.spares, flags);
      if (spare !== undefined) fd = spare;
      else {
        if (elsewhere === undefined)
          throw new Error(
            `Pipe ${pipeId}: the description it was made for (file ${madeElsewhere.fileId}) is not placed`,
          );
        const theirs = ctx.tree.takeFrom(elsewhere.pid, elsewhere.fd);
        try {
          fd = reopenPipeInTask(injector, theirs, flags);
        } finally {
          closeInTask(injector, theirs);
        }
      }
      ctx.shared.set(key, { fileId, fd } satisfies PipeRestoreState);
    } else if (known === undefined) {
      const [r, w] = pipeInTask(injector);
      try {
        const pd = await findPipeData(ctx, 'PIPES_DATA', pipeId);
        if (pd !== undefined) fillPipeInTask(injector, w, pd.sizeBytes, pd.data);
      } catch (err) {
        closeInTask(injector, r);
        closeInTask(injector, w);
        throw err;
      }
      const ends = new Map([
        [O_RDONLY, r],
        [O_WRONLY, w],
      ]);
      const own = isPipe2End(flags) ? flags & O_ACCMODE : undefined;
      fd = own === undefined ? reopenPipeInTask(injector, r, flags) : (ends.get(own) ?? r);
      if (own !== undefined) {
        ends.delete(own);
        setStatusFlagsInTask(injector, fd, flags);
      }
      // The ends not taken wait, parked, for the descriptions they were made for (the other end,
      // here or in another process of the tree); finishRestore closes those never claimed.
      const spares: PipeSpares = { pid: ctx.pid, ends: new Map() };
      for (const [mode, end] of ends) spares.ends.set(mode, { fd: ctx.parkFd(end), taken: false, takenHere: false });
      ctx.shared.set(key, { fileId, fd, spares } satisfies PipeRestoreState);
      ctx.tree?.shared.set(key, { fileId, spares } satisfies TreePipe);
    } else {
      fd =
        claimSpare(ctx, known.spares ?? madeElsewhere?.spares, flags) ??
        reopenPipeInTask(injector, ctx.fdOfFileId(known.fileId) ?? known.fd, flags);
    }
    restoreFown(injector, fd, pe['fown'] as ImageEntry | undefined);
    return fd;
  },

  async finishRestore(ctx) {
    // The ends pipe2 made that no description claimed, and this process's copies of those
    // another process took.
    for (const [key, value] of ctx.shared) {
      if (!key.startsWith('pipe:')) continue;
      for (const end of (value as PipeRestoreState).spares?.ends.values() ?? [])
        if (!end.takenHere) closeInTask(ctx.injector, end.fd);
    }
  },
};
