/**
 * Mappings of unlinked files: a private or shared file mapping whose file was deleted
 * (/proc/PID/maps shows "<path> (deleted)"). Such a file is saved as a ghost (ghost.ts), as CRIU
 * does: its VMA refers to a reg_file_entry (by vma.shmid) with the original name, and
 * remap-fpath.img maps that entry to a ghost-file-<id>.img holding the contents. An inode both
 * mapped and open as an fd is one ghost.
 *
 * Dump (after the fds, sharing their ghost table): the file is reached through
 * /proc/PID/map_files/START-END (root only), read with pread, never changed.
 *
 * Restore (before the memory, which maps the files): each such ghost is recreated at its
 * original path (or CRIU's "<path>.cr.<id>.ghost" when that is taken); the VMAs map it by that
 * path, the fds of the same ghost open it there too, and it is unlinked once every file is
 * open, so that the task sees "<path> (deleted)" as before.
 *
 * Kernel interfaces: open(2)/fstat(2) of /proc/PID/map_files/*; unlink(2), rmdir(2).
 */

import { rmdirSync, statSync, unlinkSync, constants as fsc } from 'node:fs';
import { UnsupportedError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import { O_RDONLY } from '../kernel/constants.js';
import * as sys from '../sys/native.js';
import { DELETED_SUFFIX, GHOSTS_MATERIALIZED, REMAP_TYPE_GHOST, createGhost, dumpGhost } from './ghost.js';
import { sharedMap } from './shared.js';
import type { FdDumpInput, FileDumpContext } from './types.js';

/** A mapping of an unlinked file, as the mm dump found it. */
export interface DeletedMapping {
  /** The reg file entry the VMA refers to. */
  fileId: number;
  start: bigint;
  end: bigint;
  /** The original path, without " (deleted)". */
  path: string;
}

/** Save the contents of each deleted mapped file as a ghost of its reg entry. */
export async function dumpDeletedMappings(
  pid: number,
  mappings: readonly DeletedMapping[],
  ctx: FileDumpContext,
): Promise<void> {
  for (const m of mappings) {
    const mapFile = `/proc/${pid}/map_files/${m.start.toString(16)}-${m.end.toString(16)}`;
    let localFd: number;
    try {
      localFd = sys.open(mapFile, O_RDONLY, 0);
    } catch (err) {
      throw new UnsupportedError(
        'vma-deleted',
        `Cannot read the deleted file "${m.path}" mapped at 0x${m.start.toString(16)}`,
        {
          cause: err,
        },
      );
    }
    try {
      const stat = statSync(`/proc/self/fd/${localFd}`, { bigint: true });
      const input: FdDumpInput = {
        pid,
        fd: -1,
        link: `${m.path}${DELETED_SUFFIX}`,
        fdinfo: { pos: 0n, flags: O_RDONLY, mntId: 0, ino: stat.ino, raw: '' },
        stat,
        localFd,
      };
      await dumpGhost(input, m.fileId, ctx);
    } finally {
      sys.close(localFd);
    }
  }
}

/**
 * Recreate the ghosts the VMAs of `mm` map; returns, by reg file id, the path to map them by.
 * `shared` is the files restore's shared state (restoreGhost then opens the same files), and
 * `removeMaterializedGhosts(shared)` must follow once every file is open, on success or failure.
 */
export async function prepareDeletedMappings(
  mm: ImageEntry,
  remaps: readonly { entry: ImageEntry }[],
  regNames: ReadonlyMap<number, string>,
  imagesDir: string,
  shared: Map<string, unknown>,
): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  const materialized = sharedMap<number, string>(shared, GHOSTS_MATERIALIZED);
  const fileIds = new Set(((mm['vmas'] as ImageEntry[] | undefined) ?? []).map((v) => Number(v['shmid'])));
  for (const { entry } of remaps) {
    const regId = Number(entry['orig_id']);
    if (!fileIds.has(regId) || Number(entry['remap_type'] ?? 0) !== REMAP_TYPE_GHOST) continue;
    const name = regNames.get(regId);
    if (name === undefined) continue; // not a reg file: a memfd's or shmem's id
    const ghostId = Number(entry['remap_id']);
    let path = materialized.get(ghostId);
    if (path === undefined) {
      path = (await createGhost(ghostId, name, imagesDir)).created;
      materialized.set(ghostId, path);
    }
    out.set(regId, path);
  }
  return out;
}

/** Remove the ghosts prepareDeletedMappings recreated. */
export function removeMaterializedGhosts(shared: Map<string, unknown>): void {
  const materialized = sharedMap<number, string>(shared, GHOSTS_MATERIALIZED);
  for (const path of materialized.values()) {
    try {
      if ((statSync(path).mode & fsc.S_IFMT) === fsc.S_IFDIR) rmdirSync(path);
      else unlinkSync(path);
    } catch {
      // removed already
    }
  }
  materialized.clear();
}
