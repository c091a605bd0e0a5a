/**
 * The pids of a dumped tree as its PID namespace sees them. CRIU's images hold those (pstree,
 * core-<tid>, mm-<pid>, pagemap-<pid>, a timer's thread, a lock's owner): a tree whose root is
 * the init of a PID namespace of its own (`unshare --pid --fork`) is written with its root as
 * pid 1, as CRIU writes a container. criu reads everything else through its own pids (ptrace,
 * /proc): the translation is the last entry of NSpid in /proc/PID/status, at the level of the
 * root's namespace. With criu's own namespace a pid is itself.
 */

import { readStat } from '../proc/stat.js';
import { readStatus } from '../proc/status.js';

export interface TreePids {
  /** Whether the tree has a PID namespace of its own. */
  readonly isOwn: boolean;
  /**
   * Task `hostPid` (a process or a thread, as criu sees it) as the tree's namespace sees it; 0
   * for 0, for a task outside the namespace, or one gone.
   */
  vpid(hostPid: number): number;
  /** The process group and session of process `hostPid`, as the tree's namespace sees them. */
  groupsOf(hostPid: number): { pgid: number; sid: number } | null;
}

/** The identity: a tree in criu's PID namespace. */
const CRIU_PIDS: TreePids = {
  isOwn: false,
  vpid: (pid) => pid,
  groupsOf(pid) {
    const st = readStat(pid);
    return st === null ? null : { pgid: st.pgrp, sid: st.session };
  },
};

/**
 * The pids of the tree of `root`, which is the init of a PID namespace of its own when `isOwn`.
 * Read once per task, then kept.
 */
export function treePids(root: number, isOwn: boolean): TreePids {
  if (!isOwn) return CRIU_PIDS;
  const level = (readStatus(root)?.nsPid.length ?? 1) - 1;
  const known = new Map<number, number>([[0, 0]]);
  return {
    isOwn,
    vpid(hostPid) {
      let v = known.get(hostPid);
      if (v === undefined) {
        const ns = readStatus(hostPid)?.nsPid ?? [];
        v = ns.length > level ? (ns[level] as number) : 0;
        known.set(hostPid, v);
      }
      return v;
    },
    groupsOf(hostPid) {
      const st = readStatus(hostPid);
      return st === null ? null : { pgid: st.nsPgid[level] ?? 0, sid: st.nsSid[level] ?? 0 };
    },
  };
}
