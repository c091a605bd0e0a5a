/**
 * The kernel-object ids of src/dump/ids.ts as CRIU numbers them: this process's own (root_ids)
 * are 1 (pid 1, net 2, ...), a task that shares every namespace with it gets the same namespace
 * ids and 2 for its vm, files, fs and sighand; the tree's own namespaces get 9 on, in CRIU's order;
 * rootIds() alone is kobjIds()'s root.
 */
import { readlinkSync } from 'node:fs';
import t from 'tap';
import { kobjIds, rootIds } from '../../../src/dump/ids.js';

const KINDS = ['pid', 'net', 'ipc', 'uts', 'time', 'mnt', 'user', 'cgroup'];
const present = KINDS.filter((k) => {
  try {
    readlinkSync(`/proc/self/ns/${k}`);
    return true;
  } catch {
    return false;
  }
});

t.test("this process's ids, and a task that shares its namespaces", async (t) => {
  const { task, root } = kobjIds(0, new Set());
  const expectRoot: Record<string, number> = { vm_id: 1, files_id: 1, fs_id: 1, sighand_id: 1 };
  for (const k of present) expectRoot[`${k}_ns_id`] = KINDS.indexOf(k) + 1;
  t.same(root, expectRoot, 'root_ids: 1 for the objects, CRIU order for the namespaces');
  t.same(rootIds(), root, 'rootIds() reads the same');
  const expectTask: Record<string, number> = { vm_id: 2, files_id: 2, fs_id: 2, sighand_id: 2 };
  for (const k of present) expectTask[`${k}_ns_id`] = KINDS.indexOf(k) + 1;
  t.same(task, expectTask, "shared namespaces carry criu's ids");
});

t.test("the tree's own namespaces: ids from 9, in CRIU's order, the same for every process", async (t) => {
  const a = kobjIds(0, new Set(['uts', 'ipc']));
  const b = kobjIds(3, new Set(['uts', 'ipc']));
  t.equal(a.task['ipc_ns_id'], 9, 'ipc comes first in the order: 9');
  t.equal(a.task['uts_ns_id'], 10, 'then uts: 10');
  t.equal(a.task['pid_ns_id'], 1, "a kind left to criu keeps criu's id");
  t.equal(b.task['ipc_ns_id'], 9, 'another process of the tree: the same ids');
  t.equal(b.task['vm_id'], 5, 'its own objects: 2 + its index');
});
