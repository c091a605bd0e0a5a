/**
 * The process tree a dump or pre-dump takes: a process and its descendants, parents first, and
 * what criu-ts refuses in one, checked before anything is frozen (and again once frozen, for a
 * process forked meanwhile). A zombie child (exited, not reaped) is part of the tree: dumped as
 * its exit status, restored as a zombie again (as CRIU does). Refused:
 *   - a child that shares its parent's address space (vfork, CLONE_VM), fd table, fs or signal
 *     handlers (kcmp(2) says so);
 *   - a process in a session that is neither its own nor its parent's, or in a process group
 *     whose leader is neither in the tree nor its parent's group: clone, setsid and setpgid could
 *     not make those again (restore checks the same on any images: src/restore/images.ts);
 *   - a memfd mapped by two processes (restored, they would be two).
 */

import { UnsupportedError } from '../errors.js';
import { readTree } from '../proc/children.js';
import { readStat } from '../proc/stat.js';
import * as sys from '../sys/native.js';
import { isZombie } from './freeze.js';
import { VMA_AREA, type VmaInfo } from './vma.js';

export interface TreeMember {
  pid: number;
  /** The parent's pid; 0 for the tree's root. */
  ppid: number;
  /** Exited, not reaped: nothing of it is dumped but its exit status. */
  isZombie?: boolean;
}

/** kcmp(2) types of the objects a clone can share without CLONE_THREAD. uapi/linux/kcmp.h. */
const SHARED_OBJECTS = [
  { type: 1, what: 'address space (vfork or CLONE_VM)' },
  { type: 2, what: 'fd table (CLONE_FILES)' },
  { type: 3, what: 'cwd and root (CLONE_FS)' },
  { type: 4, what: 'signal handlers (CLONE_SIGHAND)' },
];

/** Process `pid` and its descendants, parents first, with the refusals above (but memory). */
export function readDumpTree(pid: number): TreeMember[] {
  const tree: TreeMember[] = readTree(pid).map((t) => (t.ppid !== 0 && isZombie(t.pid) ? { ...t, isZombie: true } : t));
  refuseTreeShape(pid, tree);
  return tree;
}

/** The refusals above but zombies and memory, for the members of a tree (read or frozen). */
export function refuseTreeShape(pid: number, tree: readonly TreeMember[]): void {
  if (tree.length < 2) return;
  const refuse = (why: string): never => {
    throw new UnsupportedError('process-tree', `Cannot dump tree ${pid}: ${why}`);
  };
  const stats = new Map(tree.map((t) => [t.pid, readStat(t.pid)]));
  for (const t of tree.slice(1)) {
    for (const o of SHARED_OBJECTS) {
      let same: number;
      try {
        same = sys.kcmp(t.ppid, t.pid, o.type, 0n, 0n);
      } catch {
        continue; // gone: the freeze finds out
      }
      if (same === 0) refuse(`process ${t.pid} shares its parent's ${o.what}; not supported yet`);
    }
    const st = stats.get(t.pid);
    const parent = stats.get(t.ppid);
    if (st == null || parent == null) continue;
    if (st.session !== parent.session && st.session !== t.pid)
      refuse(`process ${t.pid} is in session ${st.session}, neither its own nor its parent's; not supported yet`);
    const leader = stats.get(st.pgrp);
    if (st.pgrp !== parent.pgrp && st.pgrp !== t.pid && (leader == null || leader.session !== st.session))
      refuse(`process ${t.pid} is in process group ${st.pgrp}, whose leader is outside the tree; not supported yet`);
  }
}

/**
 * A memfd mapped by more than one process of the tree would be restored as separate copies:
 * refused. `first` maps each such object to its first mapper. (Shared anonymous memory is made
 * by one process and mapped from it by the others: src/restore/mm.ts.)
 */
export function refuseSharedMemory(pid: number, vmas: readonly VmaInfo[], first: Map<number, number>): void {
  for (const v of vmas) {
    if (v.inode === 0 || (v.status & VMA_AREA.MEMFD) === 0) continue;
    const other = first.get(v.inode);
    if (other === undefined) first.set(v.inode, pid);
    else if (other !== pid)
      throw new UnsupportedError(
        'process-tree',
        `Cannot dump task ${pid}: it maps a memfd (inode ${v.inode}) that process ${other} maps too; memfds mapped by several processes are not supported yet`,
      );
  }
}
