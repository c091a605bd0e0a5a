/**
 * The REG fd kind: every fd opened by path on a regular file, a directory or a device file
 * (/dev/null, /dev/zero, /dev/urandom...; terminals excepted: see tty.ts), as CRIU dumps them:
 * `file_entry {type REG, reg: reg_file_entry}` in files.img.
 *
 *   reg_file_entry { id, flags (the fdinfo flags without O_CLOEXEC: access mode, O_APPEND,
 *                    O_NONBLOCK, O_DIRECT, O_LARGEFILE...), pos, fown, name (the path, as in the
 *                    task's root), size (regular files only), mode (st_mode) }
 *
 * Unlinked files ("<path> (deleted)" with no link left) are dumped as ghosts: see ghost.ts; with
 * --link-remap, linked back under a hidden name (link-remap.ts). With --evasive-devices a device
 * node that was deleted or replaced is dumped by another path to the device (evasive.ts).
 *
 * Dump reads everything from outside: readlink and fdinfo (given), stat of the path through
 * /proc/PID/root to check that the name still leads to the same inode (else the fd is refused:
 * its name would open something else), fown (fown.ts). Restore injects openat(2), lseek(2) (also
 * for O_APPEND files, as CRIU) and the fown fcntls into the task, then checks what it opened
 * (stat of /proc/PID/fd/N): same file type, and for a regular file the same size as at dump: a
 * file that changed size is refused, as CRIU does ("File ... has bad size"), except a write-only
 * O_APPEND one (a log: CRIU records no size for it either).
 *
 * Directories are opened with their own flags: O_DIRECTORY is not added, so that F_GETFL reads as
 * before; the type check makes sure the path is still a directory.
 *
 * Image kinds: FILES (reg), REMAP_FPATH and GHOST_FILE through ghost.ts.
 */

import { statSync, statfsSync, constants as fsc, type BigIntStats } from 'node:fs';
import { ImageError, UnsupportedError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import { O_ACCMODE, O_APPEND, O_CLOEXEC, O_WRONLY } from '../kernel/constants.js';
import { devMajor } from './dev.js';
import { evasiveDeviceName } from './evasive.js';
import { dumpFown, restoreFown } from './fown.js';
import { DELETED_SUFFIX, dumpGhost, ghostIdOf, ghostLimitRefusal, restoreGhost } from './ghost.js';
import { dumpLinkRemap, finishLinkRemaps, linkedRemapOf, restoreLinked } from './link-remap.js';
import { closeInTask, openInTask, seekInTask } from './task-io.js';
import {
  FD_TYPES,
  type FdDumpInput,
  type FdKindModule,
  type FileDumpContext,
  type FileOptions,
  type FileRestoreContext,
} from './types.js';

/**
 * Terminal character devices (include/uapi/linux/major.h): PTY_MASTER 2, PTY_SLAVE 3, TTY 4,
 * TTYAUX 5 (/dev/tty, /dev/console, /dev/ptmx), UNIX98_PTY_MASTER 128-135, UNIX98_PTY_SLAVE
 * 136-143.
 */
export function isTtyRdev(rdev: bigint): boolean {
  const major = devMajor(rdev);
  return (major >= 2 && major <= 5) || (major >= 128 && major <= 143);
}

const fileType = (mode: bigint | number): number => Number(mode) & fsc.S_IFMT;

/** True for the file types REG handles: regular files, directories, non-terminal devices. */
export function isRegKind(stat: BigIntStats): boolean {
  const type = fileType(stat.mode);
  if (type === fsc.S_IFREG || type === fsc.S_IFDIR || type === fsc.S_IFBLK) return true;
  return type === fsc.S_IFCHR && !isTtyRdev(stat.rdev);
}

const isDeviceNode = (st: BigIntStats): boolean =>
  fileType(st.mode) === fsc.S_IFCHR || fileType(st.mode) === fsc.S_IFBLK;

/** statfs f_type of the mqueue filesystem. uapi/linux/magic.h. */
const MQUEUE_MAGIC = 0x19800202;
const mqueueRefusal = (input: FdDumpInput): string =>
  `Cannot dump fd ${input.fd} of task ${input.pid}: a POSIX message queue (mq_open), which criu-ts cannot dump yet`;

/**
 * A POSIX message queue: a regular file of the mqueue filesystem, its link "/NAME" (or
 * "/NAME (deleted)" once unlinked) relative to a mount the task may not even see. Reopening that
 * path, or copying it as a deleted file, would give back a plain file.
 */
function isMqueue(input: FdDumpInput): boolean {
  try {
    return statfsSync(`/proc/self/fd/${input.localFd}`).type === MQUEUE_MAGIC;
  } catch {
    return false;
  }
}

/** A memfd's link: "/memfd:NAME (deleted)" (memfd.ts handles those). */
export function isMemfdLink(link: string): boolean {
  return link.startsWith('/memfd:') && link.endsWith(DELETED_SUFFIX);
}

/** Is this fd an unlinked file? Throws for an unlinked name whose inode is still linked elsewhere. */
function isGhost(input: FdDumpInput, isLinkRemap: boolean): boolean {
  if (!input.link.endsWith(DELETED_SUFFIX)) return false;
  // A real name may end in " (deleted)" too: believe the link count, then the name.
  if (input.stat.nlink === 0n) return true;
  if (sameInode(input, input.link)) return false;
  if (isLinkRemap) return true;
  throw new UnsupportedError(
    'link-remap',
    `Cannot dump fd ${input.fd} of task ${input.pid}: "${input.link}" was unlinked but still has other links (use --link-remap)`,
  );
}

/** Does `path`, resolved in the task's root, lead to the fd's inode? */
function sameInode(input: FdDumpInput, path: string): boolean {
  try {
    const st = statSync(`/proc/${input.pid}/root${path}`, { bigint: true });
    return st.dev === input.stat.dev && st.ino === input.stat.ino;
  } catch {
    return false;
  }
}

export const regFile: FdKindModule = {
  type: FD_TYPES.REG,
  name: 'reg',
  restoreOrder: 0,

  matches(input: FdDumpInput): boolean {
    // memfd_secret(2) fds look like deleted regular files but cannot be read: not ours.
    if (input.link === '/secretmem (deleted)') return false;
    return input.link.startsWith('/') && !isMemfdLink(input.link) && isRegKind(input.stat);
  },

  refusal(input: FdDumpInput, options: FileOptions): string | undefined {
    if (isMqueue(input)) return mqueueRefusal(input);
    // A deleted file too big to be a ghost: refused before the freeze. (With --link-remap it may
    // be linked back instead of copied; the dump finds out.)
    const isUnlinked = input.link.endsWith(DELETED_SUFFIX) && input.stat.nlink === 0n;
    return isUnlinked && options.isLinkRemap !== true ? ghostLimitRefusal(input) : undefined;
  },

  async dump(input: FdDumpInput, id: number, ctx: FileDumpContext): Promise<ImageEntry> {
    if (isMqueue(input)) throw new UnsupportedError('mqueue', mqueueRefusal(input));
    // --evasive-devices: a device node deleted or replaced is dumped by another path to the device.
    const evasive = evasiveDeviceName(input, ctx.options ?? {});
    const ghost = evasive === undefined && isGhost(input, ctx.options?.isLinkRemap === true);
    const name = evasive ?? (ghost ? input.link.slice(0, -DELETED_SUFFIX.length) : input.link);
    if (evasive === undefined && !ghost && !sameInode(input, name))
      throw new UnsupportedError(
        'reg-file-path',
        `Cannot dump fd ${input.fd} of task ${input.pid}: "${name}" no longer leads to the open file (renamed over or mounted over)${isDeviceNode(input.stat) ? '; use --evasive-devices' : ''}`,
      );
    const reg: ImageEntry = {
      id,
      flags: input.fdinfo.flags & ~O_CLOEXEC,
      pos: input.fdinfo.pos,
      fown: dumpFown(input, ctx),
      name,
    };
    // As CRIU (should_check_size): no size for a write-only O_APPEND file (a log the task, or
    // anyone else, appends to), so that it may grow between dump and restore.
    const isLog = (input.fdinfo.flags & O_ACCMODE) === O_WRONLY && (input.fdinfo.flags & O_APPEND) !== 0;
    if (fileType(input.stat.mode) === fsc.S_IFREG && !isLog) reg['size'] = input.stat.size;
    reg['mode'] = Number(input.stat.mode);
    // --link-remap: linked back under a hidden name when the kernel allows (link-remap.ts), else a copy.
    const isLinked = ghost && ctx.options?.isLinkRemap === true && (await dumpLinkRemap(input, id, name, ctx));
    if (ghost && !isLinked) await dumpGhost(input, id, ctx);
    return { type: FD_TYPES.REG, id, reg };
  },

  async restore(entry: ImageEntry, ctx: FileRestoreContext): Promise<number> {
    const reg = entry['reg'] as ImageEntry | undefined;
    if (reg === undefined)
      throw new ImageError('files.img', `file ${String(entry['id'])} of type REG has no reg entry`);
    const id = Number(reg['id']);
    const name = String(reg['name']);
    const flags = Number(reg['flags']);
    const linked = await linkedRemapOf(id, ctx);
    const ghostId = linked === undefined ? await ghostIdOf(id, ctx) : undefined;
    const fd =
      linked !== undefined
        ? restoreLinked(id, linked, name, flags, ctx)
        : ghostId === undefined
          ? openInTask(ctx.injector, name, flags)
          : await restoreGhost(id, ghostId, name, flags, ctx);
    try {
      checkOpened(ctx.hostPid, fd, reg, ghostId !== undefined);
      seekInTask(ctx.injector, fd, BigInt(reg['pos'] as bigint));
      restoreFown(ctx.injector, fd, reg['fown'] as ImageEntry | undefined);
    } catch (err) {
      closeInTask(ctx.injector, fd);
      throw err;
    }
    return fd;
  },

  async finishRestore(ctx: FileRestoreContext): Promise<void> {
    finishLinkRemaps(ctx);
  },
};

/** Refuse a file that is not what was dumped: another file type, or a regular file of another size. */
function checkOpened(pid: number, fd: number, reg: ImageEntry, isGhostFile: boolean): void {
  const st = statSync(`/proc/${pid}/fd/${fd}`, { bigint: true });
  const name = String(reg['name']);
  const mode = reg['mode'];
  if (mode !== undefined && fileType(Number(mode)) !== fileType(st.mode))
    throw new ImageError(
      'files.img',
      `reg file ${String(reg['id'])} "${name}" is of another file type than at dump (mode 0${st.mode.toString(8)}, dumped 0${Number(mode).toString(8)})`,
    );
  const size = reg['size'];
  if (!isGhostFile && size !== undefined && fileType(st.mode) === fsc.S_IFREG && st.size !== BigInt(size as bigint))
    throw new ImageError(
      'files.img',
      `reg file ${String(reg['id'])} "${name}" has size ${st.size}, the dump recorded ${String(size)}: the file changed since`,
    );
}
