/**
 * task_kobj_ids_entry: the ids of a task's shared kernel objects, in ids-<pid>.img and as the
 * inventory's root_ids, numbered as CRIU numbers them so that CRIU can restore our images.
 *
 * CRIU numbers the objects it meets from 1: its own (root_ids) come first, so they are vm, files,
 * fs and sighand 1 and, for namespaces, pid 1, net 2, ipc 3, uts 4, time 5, mnt 6, user 7, cgroup 8;
 * the dumped tasks' vm, files, fs and sighand follow in tree order (2 for the first, 3 for the
 * next...), one of each per process (criu-ts refuses tasks that share them). A namespace the task shares with the dumper has
 * the dumper's id, which tells a restore to leave it alone; one it does not share gets an id of its
 * own (criu-ts does not dump namespaces, and a restore by CRIU would ask for their images).
 * A namespace kind this kernel lacks gets no id, as CRIU does.
 *
 * Image kinds: IDS (and INVENTORY's root_ids).
 */

import { readNamespaces } from '../proc/misc.js';
import type { ImageEntry } from '../images/index.js';

/** The namespace kinds of task_kobj_ids_entry, in the order CRIU numbers them. */
const NS_KINDS = ['pid', 'net', 'ipc', 'uts', 'time', 'mnt', 'user', 'cgroup'] as const;

export interface KobjIds {
  /** ids-<pid>.img's entry. */
  task: ImageEntry;
  /** The inventory's root_ids: criu's own. */
  root: ImageEntry;
}

/**
 * The ids of task `pid`, the `index`-th of the dumped tree (0: its root), and of this process,
 * as CRIU would write them.
 */
export function kobjIds(pid: number, index = 0): KobjIds {
  const mine = readNamespaces(process.pid);
  const its = readNamespaces(pid);
  const own = 2 + index;
  const task: ImageEntry = { vm_id: own, files_id: own, fs_id: own, sighand_id: own };
  let next = NS_KINDS.length + 1;
  NS_KINDS.forEach((kind, i) => {
    const ours = mine?.get(kind);
    if (ours === undefined) return;
    const theirs = its?.get(kind);
    task[`${kind}_ns_id`] = theirs === undefined || theirs.inode === ours.inode ? i + 1 : next++;
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
