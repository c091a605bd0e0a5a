/**
 * Dumping a task's address space description into `mm-<pid>.img` (mm_entry): the VMAs (from
 * /proc/PID/smaps), the mm fields (/proc/PID/stat, and brk by an injected brk(0)), the saved
 * auxv (/proc/PID/auxv), the exe link, dumpable and THP-disabled (injected prctls).
 *
 * File-backed VMAs refer to a reg_file_entry in files.img by id (vma.shmid), as CRIU does; those
 * entries are made here, one per path and open mode.
 */

import { readFileSync, readlinkSync, statSync } from 'node:fs';
import { TaskError, UnsupportedError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import { readAuxv, toSavedAuxv } from '../proc/auxv.js';
import { readSmaps } from '../proc/smaps.js';
import { readStat } from '../proc/stat.js';
import { classifyVma, VMA_AREA, type VmaInfo } from './vma.js';

export interface MmDump {
  entry: ImageEntry;
  vmas: VmaInfo[];
  /** reg file entries (file_entry with type REG) for the mapped files and the exe. */
  files: ImageEntry[];
}

const FD_TYPE_REG = 1;

/** Collect the mm of a frozen task. `allocId` numbers new file entries. */
export function dumpMm(pid: number, leader: Injector, allocId: () => number): MmDump {
  const smaps = readSmaps(pid);
  const stat = readStat(pid);
  const auxv = readAuxv(pid);
  if (smaps === null || stat === null || auxv === null)
    throw new TaskError(pid, `Task ${pid} exited while being dumped`);
  const files: ImageEntry[] = [];
  const fileIds = new Map<string, number>();
  const fileId = (path: string, flags: number): number => {
    const key = `${flags}:${path}`;
    const known = fileIds.get(key);
    if (known !== undefined) return known;
    let st;
    try {
      st = statSync(`/proc/${pid}/root${path}`, { bigint: true });
    } catch (err) {
      throw new UnsupportedError('vma-file', `Cannot dump the mapping of "${path}": the file cannot be reached`, {
        cause: err,
      });
    }
    const id = allocId();
    fileIds.set(key, id);
    files.push({
      type: FD_TYPE_REG,
      id,
      reg: {
        id,
        flags,
        pos: 0n,
        fown: { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 },
        name: path,
        size: st.size,
        mode: Number(st.mode),
      },
    });
    return id;
  };

  const vmas = smaps.map(classifyVma);
  const vmaEntries: ImageEntry[] = [];
  for (const v of vmas) {
    if (v.isDeleted && v.path !== undefined && !v.path.startsWith('/memfd:'))
      throw new UnsupportedError('vma-deleted', `Cannot dump the mapping of deleted file "${v.path}" yet`);
    if ((v.status & VMA_AREA.MEMFD) !== 0)
      throw new UnsupportedError('vma-memfd', `Cannot dump the shared memfd mapping "${v.path}" yet`);
    const e: ImageEntry = {
      start: v.start,
      end: v.end,
      pgoff: v.pgoff,
      shmid: v.path === undefined ? 0n : BigInt(fileId(v.path, v.fdflags)),
      prot: v.prot,
      flags: v.flags,
      status: v.status,
      fd: -1n,
    };
    if (v.path !== undefined) e['fdflags'] = v.fdflags;
    if (v.madv !== 0n) e['madv'] = v.madv;
    vmaEntries.push(e);
  }

  const exe = readlinkSync(`/proc/${pid}/exe`);
  if (exe.endsWith(' (deleted)'))
    throw new UnsupportedError('exe-deleted', `Cannot dump task ${pid}: its executable was deleted`);
  const brk = leader.syscallOrThrow('brk', [0n]);
  const PR_GET_DUMPABLE = 3n;
  const PR_GET_THP_DISABLE = 42n;
  const dumpable = Number(leader.syscallOrThrow('prctl', [PR_GET_DUMPABLE, 0n, 0n, 0n, 0n]));
  const thpDisabled = leader.syscallOrThrow('prctl', [PR_GET_THP_DISABLE, 0n, 0n, 0n, 0n]) !== 0n;
  const entry: ImageEntry = {
    mm_start_code: stat.startcode,
    mm_end_code: stat.endcode,
    mm_start_data: stat.start_data,
    mm_end_data: stat.end_data,
    mm_start_stack: stat.startstack,
    mm_start_brk: stat.start_brk,
    mm_brk: brk,
    mm_arg_start: stat.arg_start,
    mm_arg_end: stat.arg_end,
    mm_env_start: stat.env_start,
    mm_env_end: stat.env_end,
    exe_file_id: fileId(exe, 0),
    mm_saved_auxv: toSavedAuxv(auxv),
    vmas: vmaEntries,
    dumpable,
    thp_disabled: thpDisabled,
  };
  return { entry, vmas, files };
}

/** The umask, from /proc/PID/status (kernel >= 4.7). */
export function readUmask(pid: number): number {
  const m = /^Umask:\s*([0-7]+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? 0o22 : parseInt(m[1] as string, 8);
}
