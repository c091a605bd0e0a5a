/**
 * /proc/PID/mountinfo: the mounts of the task's mount namespace, as it sees them (proc(5),
 * fs/proc_namespace.c show_mountinfo), one line each:
 *
 *   62 42 0:38 / /tmp/mi\040a\040b rw,relatime shared:1 - tmpfs my\040src rw,size=1024k
 *   |  |  |    | |                 |           |        | |     |         +- super options
 *   |  |  |    | |                 |           |        | |     +- source
 *   |  |  |    | |                 |           |        | +- fs type ("fuse.sshfs" style subtypes)
 *   |  |  |    | |                 |           |        +- separator
 *   |  |  |    | |                 |           +- optional fields: shared:N master:N
 *   |  |  |    | |                 |              propagate_from:N unbindable (zero or more)
 *   |  |  |    | |                 +- per-mount options
 *   |  |  |    | +- mount point (relative to the task's root)
 *   |  |  |    +- root of the mount within its filesystem
 *   |  |  +- st_dev major:minor (decimal)
 *   |  +- parent mount id (itself for the namespace root)
 *   +- mount id (the mnt_id of fdinfo)
 *
 * Root, mount point and source escape space, tab, newline and backslash as octal \040 \011 \012
 * \134 (seq_path / mangle); they are decoded here. Nothing else is escaped, so the fields split on
 * single spaces. Mount ids are unique per boot, not reused while the mount lives.
 */

import { readProcText, taskDir } from './read.js';

export interface MountInfo {
  mntId: number;
  parentMntId: number;
  major: number;
  minor: number;
  /** Root of the mount inside its filesystem ("/" unless a bind mount of a subtree). */
  root: string;
  mountPoint: string;
  /** Per-mount options: "rw,nosuid,relatime". */
  options: string;
  /** Peer group of a shared mount (shared:N), or 0. */
  sharedId: number;
  /** Peer group this slave receives from (master:N), or 0. */
  masterId: number;
  /** propagate_from:N: the nearest dominant peer group visible to this task, or 0. */
  propagateFrom: number;
  isUnbindable: boolean;
  fsType: string;
  /** "/dev/vda", "tmpfs", "none"… */
  source: string;
  /** Superblock options: "rw,size=1024k". */
  superOptions: string;
}

/** Undo the kernel's octal escapes (\040 space, \011 tab, \012 newline, \134 backslash). */
export function decodeMountField(s: string): string {
  return s.includes('\\') ? s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8))) : s;
}

function parseLine(line: string): MountInfo {
  const f = line.split(' ');
  const sep = f.indexOf('-', 6);
  if (f.length < 10 || sep < 0 || f.length < sep + 4)
    throw new Error(`Cannot parse mountinfo line: ${JSON.stringify(line)}`);
  const [mntId, parentMntId, dev, root, mountPoint, options] = f as [string, string, string, string, string, string];
  const colon = dev.indexOf(':');
  const info: MountInfo = {
    mntId: Number(mntId),
    parentMntId: Number(parentMntId),
    major: Number(dev.slice(0, colon)),
    minor: Number(dev.slice(colon + 1)),
    root: decodeMountField(root),
    mountPoint: decodeMountField(mountPoint),
    options,
    sharedId: 0,
    masterId: 0,
    propagateFrom: 0,
    isUnbindable: false,
    fsType: f[sep + 1] as string,
    source: decodeMountField(f[sep + 2] as string),
    // Super options never hold a space; join anyway so a future one would not be cut.
    superOptions: f.slice(sep + 3).join(' '),
  };
  for (const tag of f.slice(6, sep)) {
    const [name, value] = tag.split(':');
    if (name === 'shared') info.sharedId = Number(value);
    else if (name === 'master') info.masterId = Number(value);
    else if (name === 'propagate_from') info.propagateFrom = Number(value);
    else if (name === 'unbindable') info.isUnbindable = true;
  }
  return info;
}

export function parseMountinfo(text: string): MountInfo[] {
  const mounts: MountInfo[] = [];
  for (const line of text.split('\n')) if (line !== '') mounts.push(parseLine(line));
  return mounts;
}

/**
 * The mounts a task sees, in the namespace's list order (usually parents first, but not after a
 * mount was moved: sort by parentMntId when it matters), or null when the task is gone.
 */
export function readMountinfo(pid: number): MountInfo[] | null {
  const text = readProcText(`${taskDir(pid)}/mountinfo`);
  return text === null ? null : parseMountinfo(text);
}
