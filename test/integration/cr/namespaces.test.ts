/**
 * A tree's own namespaces (src/dump/namespaces.ts, src/restore/namespaces.ts).
 *
 * cr_sysvshm ns moves into UTS and IPC namespaces of its own (unshare), names its host, sets IPC
 * sysctls there and makes its System V segments, semaphore sets and a message queue in it; its
 * child shares both. After the restore each process checks the names, the sysctls, the segments,
 * that its namespaces are not init's and that the child's are its parent's; the parent checks the
 * semaphores' values and the queue's messages.
 *
 * Here: the images as crit reads them (the tree's own ids, utsns, ipcns-var, the segments in the
 * namespace's ipcns-shm, the semaphores and messages), nothing of it in this machine's names or segments before or after the
 * restore; `--namespaces uts,ipc` giving a task that shares criu's a copy of its own; images whose
 * tree had a PID namespace of its own but whose root is not 1 there refused by the restore in one
 * line, with no process made; and the same tree migrated between two hosts by criu-migrate.
 * PID namespaces: pid-ns.test.ts. The dump's refusals (network, mount namespaces, nested ones)
 * are in failures.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { readImage, writeImage, type ImageEntry } from '../../../src/images/index.js';
import { readShmSegments } from '../../../src/proc/sysvipc.js';
import { criuAsync, criuWatched, endExpectPass, restoreExpectPass, startWorkload, waitGone } from '../../helpers/cr.js';
import { migrateCheck } from '../../helpers/migrate.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid, unshare)';
const KEY_A = 0x5a000000;

function crit(file: string): { entries: Record<string, unknown>[] } {
  return JSON.parse(execFileSync('crit', ['decode', '-i', file], { encoding: 'utf8' })) as {
    entries: Record<string, unknown>[];
  };
}

/** This machine's segments with the key cr_sysvshm gives its segment A. */
function hostSegmentsOf(pid: number): number {
  return [...readShmSegments().values()].filter((s) => s.key === KEY_A + pid).length;
}

t.test('cr_sysvshm in UTS and IPC namespaces of its own: dump, images, restore', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_sysvshm', dir, ['ns']);
  t.teardown(() => w.kill());
  const host = hostname();
  t.equal(hostSegmentsOf(w.pid), 0, "its segments are not in this machine's IPC namespace");
  const images = path.join(dir, 'img');
  const d = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(d.status, 0, `dump: ${d.stderr}`);
  await waitGone(w.pid);

  const root = crit(path.join(images, 'inventory.img')).entries[0]?.['root_ids'] as Record<string, number>;
  const ids = crit(path.join(images, `ids-${w.pid}.img`)).entries[0] as Record<string, number>;
  t.not(ids['uts_ns_id'], root['uts_ns_id'], "the UTS namespace has an id other than criu's");
  t.not(ids['ipc_ns_id'], root['ipc_ns_id'], "the IPC namespace has an id other than criu's");
  t.equal(ids['net_ns_id'], root['net_ns_id'], "the network namespace has criu's id");
  const pstree = crit(path.join(images, 'pstree.img')).entries;
  t.equal(pstree.length, 2, 'two processes');
  const child = crit(path.join(images, `ids-${String(pstree[1]?.['pid'])}.img`)).entries[0] as Record<string, number>;
  t.same(
    [child['uts_ns_id'], child['ipc_ns_id']],
    [ids['uts_ns_id'], ids['ipc_ns_id']],
    "the child's namespaces are the root's",
  );
  t.same(
    crit(path.join(images, `utsns-${ids['uts_ns_id']}.img`)).entries,
    [{ nodename: 'cr-sysvshm-ns', domainname: 'criu-ts.test' }],
    'utsns: the host and domain names',
  );
  const v = crit(path.join(images, `ipcns-var-${ids['ipc_ns_id']}.img`)).entries[0] as Record<string, unknown>;
  t.same(
    [v['msg_ctlmax'], v['shm_ctlmni'], v['sem_ctls'], v['mq_queues_max']],
    [12345, 2345, [250, 32000, 40, 129], 77],
    'ipcns-var: the sysctls set in the namespace',
  );
  t.equal(
    crit(path.join(images, `ipcns-shm-${ids['ipc_ns_id']}.img`)).entries.length,
    4,
    'its four segments, one that no process attaches among them',
  );
  const sem = crit(path.join(images, `ipcns-sem-${ids['ipc_ns_id']}.img`)).entries;
  t.same(
    sem.map((e) => [e['nsems'], e['extra']]),
    [
      [3, [1, 5, 0]],
      [1, [7]],
    ],
    'ipcns-sem: both semaphore sets with their values',
  );
  const msg = crit(path.join(images, `ipcns-msg-${ids['ipc_ns_id']}.img`)).entries;
  t.same(
    msg.map((e) => [e['qbytes'], e['qnum']]),
    [[4096, 4]],
    'ipcns-msg: the queue, its limit and its four messages',
  );
  const texts = (msg[0]?.['extra'] as unknown[] | undefined) ?? [];
  t.same(texts[0], { mtype: 1, msize: 5 }, "the first message's header");
  t.equal(Buffer.from(String(texts[1]), 'base64').toString(), 'hello', 'and its text');

  await restoreExpectPass(t, w, images, dir, {
    whileRunning: () => {
      t.equal(hostname(), host, "this machine's host name is unchanged");
      t.equal(hostSegmentsOf(w.pid), 0, "nothing was made in this machine's IPC namespace");
    },
  });
});

t.test("--namespaces uts,ipc: a task sharing criu's gets a copy of its own", { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_state', dir, []);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const d = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '-n', 'uts,ipc']);
  t.equal(d.status, 0, `dump: ${d.stderr}`);
  await waitGone(w.pid);
  t.ok(
    readdirSync(images).some((n) => /^utsns-\d+\.img$/.test(n)),
    'a utsns image',
  );
  await restoreExpectPass(t, w, images, dir, {
    whileRunning: () => {
      for (const kind of ['uts', 'ipc'])
        t.not(
          readlinkSync(`/proc/${w.pid}/ns/${kind}`),
          readlinkSync(`/proc/self/ns/${kind}`),
          `a ${kind} namespace of its own`,
        );
      const named = execFileSync('nsenter', ['-t', String(w.pid), '-u', 'hostname'], { encoding: 'utf8' }).trim();
      t.equal(named, hostname(), "named as criu's was");
    },
  });
});

t.test(
  'a restore refuses a PID namespace whose root is not 1 in the images, in one line',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_state', dir, []);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    const d = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '-R']);
    t.equal(d.status, 0, `dump -R: ${d.stderr}`);
    // A PID namespace of its own, but the root's pid is not 1 (not its init).
    const idsFile = path.join(images, `ids-${w.pid}.img`);
    const ids = (await readImage(idsFile, 'IDS')).records[0]?.entry as ImageEntry;
    await writeImage(idsFile, 'IDS', [{ entry: { ...ids, pid_ns_id: 11 } }]);
    const before = readFileSync(idsFile);
    const r = await criuWatched(['restore', '-D', images], w.pid);
    t.equal(r.status, 1, 'restore exits 1');
    t.match(
      r.stderr,
      /Cannot restore the tree of \d+: it had a PID namespace of its own, whose init \(the root\) must be 1 in the images/,
    );
    t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    t.same(r.children, [], 'no process was made');
    t.same(readFileSync(idsFile), before, 'the images are as they were');
    await endExpectPass(t, w);
  },
);

t.test('criu-migrate moves cr_sysvshm with its UTS and IPC namespaces', { skip: needsRoot }, async (t) => {
  const { dstStderr } = await migrateCheck(t, 'cr_sysvshm', ['ns'], ['-v3']);
  t.match(dstStderr, /UTS namespace made \(host name "cr-sysvshm-ns"\)/, "DST's agent made the UTS namespace");
  t.notMatch(dstStderr, /restoring it from the images/, 'into the pre-copied skeleton, made in the new namespaces');
});
