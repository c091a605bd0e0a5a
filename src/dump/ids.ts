/**
 * task_kobj_ids_entry: the ids of a task's shared kernel objects, in ids-<pid>.img and as the
 * inventory's root_ids, numbered as CRIU numbers them so that CRIU can restore our images.
 *
 * CRIU numbers the objects it meets from 1: its own (root_ids) come first, so they are vm, files,
 * fs and sighand 1 and, for namespaces, pid 1, net 2, ipc 3, uts 4, time 5, mnt 6, user 7, cgroup 8;
 * the dumped tasks' vm, files, fs and sighand follow in tree order (2 for the first, 3 for the
 * next...), one of each per process (criu-ts refuses tasks that share them). A namespace the tree
 * leaves to criu has criu's id, which tells a restore to leave it alone; one the tree takes as its
 * own (namespaces.ts) gets the next id, 9 on, the same for every process of the tree (they all
 * share the root's), and its images are named by it. A namespace kind this kernel lacks gets no
 * id, as CRIU does.
 *
 * Image kinds: IDS (and INVENTORY's root_ids).
 */

import { readNamespaces } from '../proc/misc.js';
import type { ImageEntry } from '../images/index.js';
import { NS_KINDS, type NsKind } from './namespaces.js';

export interface KobjIds {
  /** ids-<pid>.img's entry. */
  task: ImageEntry;
  /** The inventory's root_ids: criu's own. */
  root: ImageEntry;
}

/**
 * The ids of the `index`-th process of the dumped tree (0: its root), whose namespaces of kinds
 * `own` are the tree's own, and of this process, as CRIU would write them.
 */
export function kobjIds(index: number, own: ReadonlySet<NsKind>): KobjIds {
  const mine = readNamespaces(process.pid);
  const self = 2 + index;
  const task: ImageEntry = { vm_id: self, files_id: self, fs_id: self, sighand_id: self };
  let next = NS_KINDS.length + 1;
  NS_KINDS.forEach((kind, i) => {
    if (mine?.get(kind) === undefined) return;
    task[`${kind}_ns_id`] = own.has(kind) ? next++ : i + 1;
  });
  return { task, root: rootIds(mine) };
}

/**
 * The inventory's root_ids: this process's own (a pre-dump, which writes no ids-<pid>.img, needs
 * only these). `mine`: this process's namespaces when already read.
 */
export function rootIds(mine = readNamespaces(process.pid)): ImageEntry {
  const root: ImageEntry = { vm_id: 1, files_id: 1, fs_id: 1, sighand_id: 1 };
  NS_KINDS.forEach((kind, i) => {
    if (mine?.get(kind) !== undefined) root[`${kind}_ns_id`] = i + 1;
  });
  return root;
}
