/**
 * The process tree a dump or pre-dump takes: a process and its descendants, parents first, and
 * what criu-ts refuses in one, checked before anything is frozen (and again once frozen, for a
 * process forked meanwhile). A zombie child (exited, not reaped) is part of the tree: dumped as
 * its exit status, restored as a zombie again (as CRIU does). Refused:
 *   - a child that shares its parent's address space (vfork, CLONE_VM), fd table, fs or signal
 *     handlers (kcmp(2) says so);
 *   - a process in a session that is neither its own nor its parent's, or in a process group
 *     whose leader is neither in the tree nor its parent's group: clone, setsid and setpgid could
 *     not make those again (src/images/pstree-shape.ts; restore checks the same on any images).
 */

import { UnsupportedError } from '../errors.js';
import { KCMP_FILES, KCMP_FS, KCMP_SIGHAND, KCMP_VM } from '../kernel/constants.js';
import { readTree } from '../proc/children.js';
import { findGuardPage } from '../proc/pagemap.js';
import { readStat, type TaskStat } from '../proc/stat.js';
import { pstreeShapeProblem } from '../images/pstree-shape.js';
import * as sys from '../sys/native.js';
import { freezeTree, hasExited, isZombie, resumeTree, type FrozenTree } from './freeze.js';
import { retrySync } from '../sys/wait.js';
import { checkFds } from '../files/index.js';
import type { FileOptions } from '../files/types.js';
import { releaseTcpRepair } from '../files/inet-socket.js';
import type { ImageEntry } from '../images/index.js';
import { TASK_STATE } from '../images/task-state.js';

/** UnsupportedError.feature of a vfork child (a shared address space). */
const VFORK = 'vfork';

export interface TreeMember {
  pid: number;
  /** The parent's pid; 0 for the tree's root. */
  ppid: number;
  /** Exited, not reaped: nothing of it is dumped but its exit status. */
  isZombie?: boolean;
}

/**
 * The objects a clone can share without CLONE_THREAD, by kcmp(2) type. A shared address space
 * is usually a vfork child (posix_spawn, a shell's), there only until it calls execve: refused
 * with its own feature name, which the freeze waits out (freezeDumpTree).
 */
const SHARED_OBJECTS = [
  { type: KCMP_VM, what: 'address space (vfork or CLONE_VM)', feature: VFORK },
  { type: KCMP_FILES, what: 'fd table (CLONE_FILES)', feature: 'process-tree' },
  { type: KCMP_FS, what: 'cwd and root (CLONE_FS)', feature: 'process-tree' },
  { type: KCMP_SIGHAND, what: 'signal handlers (CLONE_SIGHAND)', feature: 'process-tree' },
];

/** How long a dump waits for a vfork child to execve (or exit) before refusing it. */
const VFORK_WAIT_MS = 1000;

/** Process `pid` and its descendants, parents first, with the refusals above. */
export function readDumpTree(pid: number): TreeMember[] {
  return untilNoVfork(() => {
    const tree: TreeMember[] = readTree(pid).map((t) =>
      t.ppid !== 0 && isZombie(t.pid) ? { ...t, isZombie: true } : t,
    );
    refuseTreeShape(pid, tree);
    return tree;
  });
}

/**
 * Freeze the tree of `pid` (freeze.ts) and check its shape again, frozen. A vfork child caught
 * before its execve is let go with the rest of the tree, and the freeze tried again.
 */
export function freezeDumpTree(pid: number): FrozenTree {
  return untilNoVfork(() => {
    const tree = freezeTree(pid);
    try {
      refuseTreeShape(pid, [...tree.tasks, ...tree.zombies]);
    } catch (err) {
      resumeTree(tree.tasks);
      throw err;
    }
    return tree;
  });
}

/** `step`, again while it meets a vfork child, for up to VFORK_WAIT_MS. */
function untilNoVfork<T>(step: () => T): T {
  return retrySync(step, (err) => err instanceof UnsupportedError && err.feature === VFORK, VFORK_WAIT_MS, 2);
}

/**
 * Refuse, before anything is frozen, a tree whose memory holds guard regions (madvise
 * MADV_GUARD_INSTALL): no image carries them yet (the dump's pagemap read refuses them too, once
 * frozen, should one appear meanwhile).
 */
export function checkTreeMemory(tree: readonly TreeMember[]): void {
  for (const t of tree) {
    if (t.isZombie === true) continue;
    const page = findGuardPage(t.pid);
    if (page !== undefined)
      throw new UnsupportedError(
        'guard-region',
        `Cannot dump task ${t.pid}: its memory at 0x${page.toString(16)} is a guard region (madvise ` +
          'MADV_GUARD_INSTALL), which criu-ts cannot dump yet',
      );
  }
}

/**
 * Check every fd of the tree's live processes (files/index.ts checkFds), with `options` for all
 * (treePids set for a tree). A child that exited since the tree was read is skipped: the freeze
 * reads the tree again.
 */
export function checkTreeFds(tree: readonly TreeMember[], options: FileOptions): void {
  for (const t of tree) {
    if (t.isZombie === true) continue;
    try {
      checkFds(t.pid, options);
    } catch (err) {
      if (t.ppid === 0 || !hasExited(t.pid)) throw err;
    }
  }
}

/** The refusals above, for the members of a tree (read or frozen). */
export function refuseTreeShape(pid: number, tree: readonly TreeMember[]): void {
  if (tree.length < 2) return;
  const refuse = (why: string, feature = 'process-tree'): never => {
    throw new UnsupportedError(feature, `Cannot dump tree ${pid}: ${why}`);
  };
  for (const t of tree.slice(1)) {
    for (const o of SHARED_OBJECTS) {
      let same: number;
      try {
        same = sys.kcmp(t.ppid, t.pid, o.type, 0n, 0n);
      } catch {
        continue; // gone: the freeze finds out
      }
      if (same === 0) refuse(`process ${t.pid} shares its parent's ${o.what}; not supported yet`, o.feature);
    }
  }
  // Sessions and groups as restore can make them (a process gone meanwhile is the freeze's to see).
  const shapes = tree.flatMap((t) => {
    const st = readStat(t.pid);
    return st === null ? [] : [{ pid: t.pid, ppid: t.ppid, sid: st.session, pgid: st.pgrp }];
  });
  const problem = pstreeShapeProblem(shapes);
  if (problem !== undefined) refuse(`${problem}; not supported yet`);
}

/** Undo --tcp-established in every process of the tree (repair mode off, locks lifted). */
export function releaseTree(shared: Map<string, unknown>, tasks: readonly { pid: number }[]): void {
  for (const t of tasks) releaseTcpRepair(shared, t.pid);
}

/** The core of a zombie: its task core only, with the exit status to die of again. */
export function zombieCore(st: TaskStat): ImageEntry {
  return {
    mtype: 1,
    tc: {
      task_state: TASK_STATE.DEAD,
      exit_code: st.exit_code,
      personality: 0,
      flags: 0,
      blk_sigset: 0n,
      comm: st.comm,
    },
  };
}
