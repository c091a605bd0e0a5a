/**
 * --link-remap: an open file whose name was unlinked is linked back into its directory under a
 * hidden name at dump, instead of having its contents copied into a ghost image (ghost.ts). The
 * file keeps its identity (inode, other hard links, size): nothing is copied, and the dump
 * "modifies the filesystem till restore", as CRIU's manual says. Part of the REG kind.
 *
 * Images, as CRIU: files.img gets a second REG entry for the link (`reg_file_entry {id =
 * remap id, name = "<dir>/link_remap.<remap id>", flags 0, size, mode}`), remap-fpath.img a
 * `remap_file_path_entry {orig_id = the fd's reg id, remap_id, remap_type = LINKED}`. One link
 * per inode.
 *
 * Dump: linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, hidden name, AT_SYMLINK_FOLLOW) injected
 * into the task (its root and its view of the fd). The kernel refuses to link an inode without
 * links left (ENOENT) unless it was made by O_TMPFILE without O_EXCL: such a file falls back to
 * a ghost. A dump that fails later removes the links it made (removeLinkRemaps).
 *
 * Restore: the hidden link is linked to the original name again (when that is free), opened
 * there in the task and the original name unlinked, so that the task sees "<path> (deleted)" as
 * before; later descriptions of the same file are opened through /proc/self/fd of the first.
 * Once every file is open the hidden link is removed.
 *
 * Kernel interfaces: linkat(2) injected into the task; link(2) and unlink(2) from criu.
 */

import { linkSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { UnsupportedError, isErrno } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import { SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';
import { log } from '../log.js';
import { sharedMap } from './shared.js';
import { AT_FDCWD, openInTask, taskSyscallError } from './task-io.js';
import { FD_TYPES, type FdDumpInput, type FileDumpContext, type FileRestoreContext } from './types.js';

/** remap_type.LINKED of proto/remap-file-path.proto. */
export const REMAP_TYPE_LINKED = 0;

const AT_SYMLINK_FOLLOW = 0x400n;
const ENOENT = 2n;

/** shared-map keys. */
const BY_INODE = 'link-remap.byInode';
const CREATED = 'link-remap.created';
const FIRST_REG = 'link-remap.firstRegId';
const TO_REMOVE = 'link-remap.toRemove';

/**
 * Link the unlinked file behind `input` (reg file `regId`, originally `name`) back under a hidden
 * name and add its remap. Returns false when the kernel will not link it (no link left): the
 * caller saves it as a ghost instead.
 */
export async function dumpLinkRemap(
  input: FdDumpInput,
  regId: number,
  name: string,
  ctx: FileDumpContext,
): Promise<boolean> {
  const byInode = sharedMap<string, number>(ctx.shared, BY_INODE);
  const key = `${input.stat.dev}:${input.stat.ino}`;
  let remapId = byInode.get(key);
  if (remapId === undefined) {
    remapId = ctx.allocId();
    const hidden = path.posix.join(path.posix.dirname(name), `link_remap.${remapId}`);
    const inj = ctx.injector;
    const ret = inj.syscall(NR.linkat, [
      AT_FDCWD,
      inj.pushData(Buffer.from(`/proc/self/fd/${input.fd}\0`)),
      AT_FDCWD,
      inj.pushData(Buffer.from(`${hidden}\0`)),
      AT_SYMLINK_FOLLOW,
    ]);
    inj.resetScratch();
    if (ret === -ENOENT && input.stat.nlink === 0n) return false;
    if (ret < 0n && ret >= -4095n)
      throw new UnsupportedError(
        'link-remap',
        `Cannot dump fd ${input.fd} of task ${input.pid}: cannot link "${input.link}" back as "${hidden}"`,
        { cause: taskSyscallError('linkat', ret, [`"/proc/self/fd/${input.fd}"`, `"${hidden}"`]) },
      );
    sharedMap<string, string>(ctx.shared, CREATED).set(key, `/proc/${ctx.pid}/root${hidden}`);
    log().info(`Linked "${input.link}" (fd ${input.fd}) back as "${hidden}"`);
    byInode.set(key, remapId);
    const reg: ImageEntry = {
      id: remapId,
      flags: 0,
      pos: 0n,
      fown: { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 },
      name: hidden,
    };
    if (input.stat.isFile()) reg['size'] = input.stat.size;
    reg['mode'] = Number(input.stat.mode);
    await ctx.addEntry('FILES', { type: FD_TYPES.REG, id: remapId, reg });
  }
  await ctx.addEntry('REMAP_FPATH', { orig_id: regId, remap_id: remapId, remap_type: REMAP_TYPE_LINKED });
  return true;
}

/** Remove the links a failed dump made (its files context's shared state). */
export function removeLinkRemaps(shared: Map<string, unknown>): void {
  const created = sharedMap<string, string>(shared, CREATED);
  for (const p of created.values()) {
    try {
      unlinkSync(p);
    } catch (err) {
      log().warn(`Cannot remove the link-remap file "${p}": ${String(err)}`);
    }
  }
  created.clear();
}

/** The hidden link's path for reg file `regId`, when it was dumped with a LINKED remap. */
export async function linkedRemapOf(
  regId: number,
  ctx: FileRestoreContext,
): Promise<{ remapId: number; hidden: string } | undefined> {
  for (const { entry } of await ctx.entriesOf('REMAP_FPATH')) {
    if (Number(entry['orig_id']) !== regId || Number(entry['remap_type'] ?? REMAP_TYPE_LINKED) !== REMAP_TYPE_LINKED)
      continue;
    const remapId = Number(entry['remap_id']);
    const file = (await ctx.entriesOf('FILES')).find((f) => Number(f.entry['id']) === remapId)?.entry;
    const reg = file?.['reg'] as ImageEntry | undefined;
    if (reg === undefined)
      throw new UnsupportedError(
        'link-remap',
        `Cannot restore reg file ${regId}: its link-remap file ${remapId} is missing`,
      );
    return { remapId, hidden: String(reg['name']) };
  }
  return undefined;
}

/** Open reg file `regId` (originally `name`) through its hidden link; returns the fd in the task. */
export function restoreLinked(
  regId: number,
  remap: { remapId: number; hidden: string },
  name: string,
  flags: number,
  ctx: FileRestoreContext,
): number {
  const firstOwners = sharedMap<number, number>(ctx.shared, FIRST_REG);
  const first = firstOwners.get(remap.remapId);
  const firstFd = first === undefined ? undefined : ctx.fdOfFileId(first);
  if (firstFd !== undefined) return openInTask(ctx.injector, `/proc/self/fd/${firstFd}`, flags);
  const root = `/proc/${ctx.hostPid}/root`;
  // Under its own name again, so that the task sees "<name> (deleted)" as at dump; when the name
  // is taken (or its directory gone), the hidden one will do.
  let isRelinked = false;
  try {
    linkSync(root + remap.hidden, root + name);
    isRelinked = true;
  } catch (err) {
    if (!isErrno(err, 'EEXIST') && !isErrno(err, 'ENOENT')) throw err;
  }
  let fd: number;
  if (isRelinked) {
    try {
      fd = openInTask(ctx.injector, name, flags);
    } finally {
      unlinkSync(root + name);
    }
  } else fd = openInTask(ctx.injector, remap.hidden, flags);
  firstOwners.set(remap.remapId, regId);
  sharedMap<number, string>(ctx.shared, TO_REMOVE).set(remap.remapId, root + remap.hidden);
  return fd;
}

/** After every file is open: remove the hidden links (restoreLinked's). */
export function finishLinkRemaps(ctx: FileRestoreContext): void {
  const toRemove = sharedMap<number, string>(ctx.shared, TO_REMOVE);
  for (const p of toRemove.values()) {
    try {
      unlinkSync(p);
    } catch (err) {
      log().warn(`Cannot remove the link-remap file "${p}": ${String(err)}`);
    }
  }
  toRemove.clear();
}
