/**
 * The kernel-object ids of src/dump/ids.ts as CRIU numbers them: this process's own (root_ids)
 * are 1 (pid 1, net 2, ...), a task that shares every namespace with it gets the same namespace
 * ids and 2 for its vm, files, fs and sighand; rootIds() alone is kobjIds()'s root.
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
  const { task, root } = kobjIds(process.pid);
  const expectRoot: Record<string, number> = { vm_id: 1, files_id: 1, fs_id: 1, sighand_id: 1 };
  for (const k of present) expectRoot[`${k}_ns_id`] = KINDS.indexOf(k) + 1;
  t.same(root, expectRoot, 'root_ids: 1 for the objects, CRIU order for the namespaces');
  t.same(rootIds(), root, 'rootIds() reads the same');
  const expectTask: Record<string, number> = { vm_id: 2, files_id: 2, fs_id: 2, sighand_id: 2 };
  for (const k of present) expectTask[`${k}_ns_id`] = KINDS.indexOf(k) + 1;
  t.same(task, expectTask, "shared namespaces carry criu's ids");
});
