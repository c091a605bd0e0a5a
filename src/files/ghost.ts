/**
 * Ghost files: regular files (and directories) that were unlinked while open, "/path (deleted)"
 * with no link left. Part of the REG kind (src/files/reg.ts), as in CRIU.
 *
 * Dump: the contents are read with pread through a read-only reopening of criu's duplicate of
 * the fd (/proc/self/fd/N: the task's own description may be write-only; its position is not
 * touched) and saved in `ghost-file-<ghost id>.img`: a `ghost_file_entry` head (uid, gid,
 * mode, dev, ino, atim, mtim, size, chunks = true) then one `ghost_chunk_entry {len, off}` plus
 * `len` raw bytes per run of non-zero 4 KiB blocks (holes and zero blocks are not stored: the
 * file is truncated to `size` at restore). `remap-fpath.img` gets `remap_file_path_entry
 * {orig_id = reg file id, remap_id = ghost id, remap_type = GHOST}`; the reg entry keeps the
 * original name without " (deleted)". One ghost per inode: several descriptions of the same
 * deleted file share it.
 *
 * Restore: the file is created again at its original path (or, when that name is taken, at
 * "<path>.cr.<ghost id>.ghost", CRIU's naming), filled, given its mode, owner and times, opened in
 * the task, and unlinked at once, so the task sees "<path> (deleted)" as before. Later
 * descriptions of the same ghost are opened through /proc/self/fd of the first one.
 *
 * Limits, as CRIU's --ghost-limit default: contents up to 1 MiB; other file types (devices,
 * sockets, FIFOs) are refused; files unlinked but still linked elsewhere need --link-remap (link-remap.ts).
 *
 * Kernel interfaces: pread(2) on the duplicate; open/pwrite/fchown/fchmod/futimes/unlink/mkdir/
 * rmdir from criu's process; openat(2) injected into the task.
 */

import {
  closeSync,
  fchmodSync,
  fchownSync,
  futimesSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  rmdirSync,
  unlinkSync,
} from 'node:fs';
import { constants as fsc } from 'node:fs';
import { join } from 'node:path';
import { ImageError, UnsupportedError, isErrno } from '../errors.js';
import { imageFileName, readImage, type ImageEntry } from '../images/index.js';
import { O_CREAT, O_EXCL, O_WRONLY } from '../kernel/constants.js';
import * as sys from '../sys/native.js';
import { kdev } from './dev.js';
import { imageSinkOf, type ImageRecordOut } from './image-sink.js';
import { openInTask } from './task-io.js';
import type { FdDumpInput, FileDumpContext, FileRestoreContext } from './types.js';
import { sharedMap } from './shared.js';

/** CRIU's default --ghost-limit. */
export const GHOST_LIMIT_BYTES = 1 << 20;
/** remap_type.GHOST of proto/remap-file-path.proto. */
export const REMAP_TYPE_GHOST = 1;
/** remap_type.LINKED (link-remap.ts). */
const REMAP_TYPE_LINKED = 0;

const BLOCK = 4096;

/** The kernel's mark on the link of an unlinked file. */
export const DELETED_SUFFIX = ' (deleted)';

/** Runs of non-zero blocks of `data`, as [offset, length) pairs. */
export function dataChunks(data: Buffer): { off: number; len: number }[] {
  const out: { off: number; len: number }[] = [];
  for (let off = 0; off < data.length; off += BLOCK) {
    const end = Math.min(off + BLOCK, data.length);
    let isZero = true;
    for (let i = off; i < end; i++)
      if (data[i] !== 0) {
        isZero = false;
        break;
      }
    if (isZero) continue;
    const last = out[out.length - 1];
    if (last !== undefined && last.off + last.len === off) last.len += end - off;
    else out.push({ off, len: end - off });
  }
  return out;
}

const ghostWhat = (input: FdDumpInput): string =>
  input.fd < 0
    ? `the mapping of ${input.link} in task ${input.pid}`
    : `fd ${input.fd} of task ${input.pid} (${input.link})`;

/**
 * Why the deleted regular file behind `input` cannot be a ghost (its contents are over the ghost
 * limit), or undefined. reg.ts asks this before the task is frozen as well.
 */
export function ghostLimitRefusal(input: FdDumpInput): string | undefined {
  const st = input.stat;
  if ((Number(st.mode) & fsc.S_IFMT) !== fsc.S_IFREG || st.size <= BigInt(GHOST_LIMIT_BYTES)) return undefined;
  return `Cannot dump ${ghostWhat(input)}: the deleted file holds ${st.size} bytes, more than the ghost limit of ${GHOST_LIMIT_BYTES}`;
}

/**
 * Save the deleted file behind `input` (reg file `regId`) as a ghost, once per inode, and add its
 * remap entry. Throws UnsupportedError for what cannot be a ghost.
 */
export async function dumpGhost(input: FdDumpInput, regId: number, ctx: FileDumpContext): Promise<void> {
  const st = input.stat;
  const type = Number(st.mode) & fsc.S_IFMT;
  const what = ghostWhat(input);
  if (type !== fsc.S_IFREG && type !== fsc.S_IFDIR)
    throw new UnsupportedError(
      'ghost-file',
      type === fsc.S_IFCHR || type === fsc.S_IFBLK
        ? `Cannot dump ${what}: the device node was deleted (use --evasive-devices)`
        : `Cannot dump ${what}: an unlinked file of this type is not supported`,
    );
  const overLimit = ghostLimitRefusal(input);
  if (overLimit !== undefined) throw new UnsupportedError('ghost-file', overLimit);
  const ghosts = sharedMap<string, number>(ctx.shared, 'ghost.byInode');
  const key = `${st.dev}:${st.ino}`;
  let ghostId = ghosts.get(key);
  if (ghostId === undefined) {
    ghostId = ghosts.size + 1;
    ghosts.set(key, ghostId);
    await imageSinkOf(ctx).writeImage('GHOST_FILE', ghostId, ghostRecords(input));
  }
  await ctx.addEntry('REMAP_FPATH', { orig_id: regId, remap_id: ghostId, remap_type: REMAP_TYPE_GHOST });
}

function ghostRecords(input: FdDumpInput): ImageRecordOut[] {
  const st = input.stat;
  const timeval = (ns: bigint): ImageEntry => ({ tv_sec: ns / 1_000_000_000n, tv_usec: (ns % 1_000_000_000n) / 1000n });
  const head: ImageEntry = {
    uid: Number(st.uid),
    gid: Number(st.gid),
    mode: Number(st.mode),
    dev: kdev(st.dev),
    ino: st.ino,
    atim: timeval(st.atimeNs),
    mtim: timeval(st.mtimeNs),
    chunks: true,
  };
  if ((Number(st.mode) & fsc.S_IFMT) !== fsc.S_IFREG) return [{ entry: head }];
  const size = Number(st.size);
  head['size'] = BigInt(size);
  const data = Buffer.alloc(size);
  // A fresh read-only description of the same inode: the task's may be write-only (a deleted
  // log file its stdout goes to, say), and pread on that fails with EBADF.
  const fd = openSync(`/proc/self/fd/${input.localFd}`, 'r');
  try {
    for (let done = 0; done < size;) {
      const n = sys.pread(fd, data, done, size - done, BigInt(done));
      if (n === 0) break; // shrank meanwhile: the rest reads as zeros, as a hole would
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  const records: ImageRecordOut[] = [{ entry: head }];
  for (const c of dataChunks(data))
    records.push({ entry: { len: BigInt(c.len), off: BigInt(c.off) }, extra: data.subarray(c.off, c.off + c.len) });
  return records;
}

/** The ghost id a reg file id was remapped to, or undefined for a plain file. */
export async function ghostIdOf(regId: number, ctx: FileRestoreContext): Promise<number | undefined> {
  for (const { entry } of await ctx.entriesOf('REMAP_FPATH')) {
    if (Number(entry['orig_id']) !== regId) continue;
    const type = Number(entry['remap_type'] ?? 0);
    if (type === REMAP_TYPE_LINKED) continue; // link-remap.ts
    if (type !== REMAP_TYPE_GHOST)
      throw new UnsupportedError(
        'remap-procfs',
        `Cannot restore reg file ${regId}: remaps of /proc files are not supported`,
      );
    return Number(entry['remap_id']);
  }
  return undefined;
}

/**
 * Open reg file `regId` (name `path`, open flags `flags`) from ghost `ghostId` in the task;
 * returns the fd there.
 */
export async function restoreGhost(
  regId: number,
  ghostId: number,
  path: string,
  flags: number,
  ctx: FileRestoreContext,
): Promise<number> {
  const firstOwners = sharedMap<number, number>(ctx.shared, 'ghost.firstRegId');
  const first = firstOwners.get(ghostId);
  const firstFd = first === undefined ? undefined : ctx.fdOfFileId(first);
  if (firstFd !== undefined) return openInTask(ctx.injector, `/proc/self/fd/${firstFd}`, flags);
  // Recreated already for a mapping (vma-ghost.ts), which removes it once every file is open.
  const materialized = sharedMap<number, string>(ctx.shared, GHOSTS_MATERIALIZED).get(ghostId);
  if (materialized !== undefined) {
    const fd = openInTask(ctx.injector, materialized, flags);
    firstOwners.set(ghostId, regId);
    return fd;
  }
  const { created, isDir } = await createGhost(ghostId, path, ctx.imagesDir);
  const remove = (): void => (isDir ? rmdirSync(created) : unlinkSync(created));
  let fd: number;
  try {
    fd = await openInTask(ctx.injector, created, flags);
  } catch (err) {
    remove();
    throw err;
  }
  firstOwners.set(ghostId, regId);
  // In a tree, another process may open the same deleted file: left for it, and removed with the
  // mappings' ghosts once every process has its files.
  if (ctx.tree !== undefined) sharedMap<number, string>(ctx.shared, GHOSTS_MATERIALIZED).set(ghostId, created);
  else remove();
  return fd;
}

/** shared-map key: ghost id → the path it was recreated at and left for others to open. */
export const GHOSTS_MATERIALIZED = 'ghost.materialized';

/**
 * Recreate ghost `ghostId` (originally at `path`) from its image in `imagesDir`; returns the path
 * used and whether it is a directory. The caller removes it.
 */
export async function createGhost(
  ghostId: number,
  path: string,
  imagesDir: string,
): Promise<{ created: string; isDir: boolean }> {
  const file = imageFileName('GHOST_FILE', ghostId);
  const { records } = await readImage(join(imagesDir, file), 'GHOST_FILE');
  const [head, ...chunks] = records;
  if (head === undefined) throw new ImageError(file, 'the ghost file image has no head entry', 8);
  const mode = Number(head.entry['mode']);
  const isDir = (mode & fsc.S_IFMT) === fsc.S_IFDIR;
  const created = isDir ? createGhostDir(path, ghostId, mode) : createGhostFile(path, ghostId, head, chunks, file);
  return { created, isDir };
}

/** Create the file at `path`, or at CRIU's ghost name when taken; returns the path used. */
function createGhostFile(
  path: string,
  ghostId: number,
  head: { entry: ImageEntry; extra?: Buffer },
  chunks: readonly { entry: ImageEntry; extra?: Buffer }[],
  file: string,
): string {
  let used = path;
  let fd: number;
  try {
    fd = sys.open(used, O_CREAT | O_EXCL | O_WRONLY, 0o600);
  } catch (err) {
    if (!isErrno(err, 'EEXIST')) throw err;
    used = `${path}.cr.${ghostId.toString(16)}.ghost`;
    fd = sys.open(used, O_CREAT | O_EXCL | O_WRONLY, 0o600);
  }
  try {
    if (head.entry['chunks'] === true) {
      for (const c of chunks) {
        const data = c.extra ?? Buffer.alloc(0);
        sys.pwrite(fd, data, 0, data.length, BigInt(c.entry['off'] as bigint));
      }
    } else if (head.extra !== undefined) {
      sys.pwrite(fd, head.extra, 0, head.extra.length, 0n);
    }
    const size = head.entry['size'];
    if (size !== undefined) ftruncateSync(fd, Number(size));
    applyAttrs(fd, head.entry);
  } catch (err) {
    closeSync(fd);
    unlinkSync(used);
    throw new ImageError(file, `cannot recreate the deleted file "${path}"`, undefined, { cause: err });
  }
  closeSync(fd);
  return used;
}

function createGhostDir(path: string, ghostId: number, mode: number): string {
  let used = path;
  try {
    mkdirSync(used, mode & 0o7777);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    used = `${path}.cr.${ghostId.toString(16)}.ghost`;
    mkdirSync(used, mode & 0o7777);
  }
  return used;
}

function applyAttrs(fd: number, head: ImageEntry): void {
  fchownSync(fd, Number(head['uid']), Number(head['gid']));
  fchmodSync(fd, Number(head['mode']) & 0o7777);
  const secs = (t: ImageEntry | undefined): number | undefined =>
    t === undefined ? undefined : Number(t['tv_sec']) + Number(t['tv_usec']) / 1e6;
  const atime = secs(head['atim'] as ImageEntry | undefined);
  const mtime = secs(head['mtim'] as ImageEntry | undefined);
  if (atime !== undefined && mtime !== undefined) futimesSync(fd, atime, mtime);
}
