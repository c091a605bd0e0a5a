/**
 * System V shared memory across dump and restore (src/dump/sysv-shm.ts, src/restore/sysv-shm.ts).
 * cr_sysvshm (test/fixtures/cr_sysvshm.c) and its child attach three segments: one split by an
 * mprotect and attached twice by the child, one attached read-only, one removed (IPC_RMID)
 * while attached. They check the segments themselves after the restore: ids, keys, sizes,
 * owners, modes, attachment counts, contents, their maps lines, and that they still share them.
 *
 * Here: the segments are in ipcns-shm-<id>.img as crit reads it, and leave with the killed tree;
 * a segment attached by a process outside the tree is refused and the tree runs on; a restore
 * next to the running original is refused in one line (the ids are taken); a restore that fails
 * after making the segments removes them.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { readShmSegments } from '../../../src/proc/sysvipc.js';
import {
  criuAsync,
  endExpectPass,
  restoreExpectPass,
  startWorkload,
  waitGone,
  type Workload,
} from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid, shm_next_id)';

interface Ids {
  a: number;
  b: number;
  c: number;
}

async function start(t: Test, dir: string, args: string[] = []): Promise<{ w: Workload; ids: Ids }> {
  const w = await startWorkload('cr_sysvshm', dir, args);
  const m = /SHM A=(\d+) B=(\d+) C=(\d+)/.exec(w.report());
  const ids = { a: Number(m?.[1]), b: Number(m?.[2]), c: Number(m?.[3]) };
  // Whatever happens, the segments do not outlive the test (C goes with its last attachment).
  t.teardown(() => {
    w.kill();
    for (const id of [ids.a, ids.b]) {
      try {
        execFileSync('ipcrm', ['-m', String(id)], { stdio: 'ignore' });
      } catch {
        // removed already
      }
    }
  });
  return { w, ids };
}

t.test(
  'cr_sysvshm: dump, the segments in the images and gone with the tree, restore',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const { w, ids } = await start(t, dir);
    const before = readShmSegments();
    const a = before.get(ids.a);
    t.ok(a !== undefined && before.has(ids.b) && before.has(ids.c), 'the three segments exist');
    const images = path.join(dir, 'img');
    const d = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
    t.equal(d.status, 0, `dump: ${d.stderr}`);
    await waitGone(w.pid);
    const after = readShmSegments();
    t.notOk(after.has(ids.a) || after.has(ids.b) || after.has(ids.c), 'the dump removed them with the tree');

    const name = readdirSync(images).find((n) => /^ipcns-shm-\d+\.img$/.test(n)) as string;
    t.ok(name, 'an ipcns-shm image');
    const decoded = JSON.parse(
      execFileSync('crit', ['decode', '-i', path.join(images, name)], { encoding: 'utf8' }),
    ) as {
      entries: { desc: Record<string, number>; size: number; extra: string }[];
    };
    t.same(
      decoded.entries.map((e) => e.desc['id']),
      [ids.a, ids.b, ids.c].sort((x, y) => x - y),
      'crit reads one entry per segment',
    );
    const ea = decoded.entries.find((e) => e.desc['id'] === ids.a);
    t.same(
      { key: ea?.desc['key'], uid: ea?.desc['uid'], gid: ea?.desc['gid'], mode: ea?.desc['mode'], size: ea?.size },
      { key: a?.key, uid: 65534, gid: 65534, mode: 0o640, size: 3 * 4096 + 100 },
      "A's entry: key, owner, mode, size",
    );
    t.equal(Buffer.from(ea?.extra ?? '', 'base64').length, 3 * 4096 + 100, "A's contents follow its entry");
    const ec = decoded.entries.find((e) => e.desc['id'] === ids.c);
    t.equal((ec?.desc['mode'] ?? 0) & 0o1000, 0o1000, 'C is marked removed (SHM_DEST)');

    await restoreExpectPass(t, w, images, dir);
  },
);

t.test('a segment attached outside the tree is refused; the tree runs on', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const { w, ids } = await start(t, dir, ['outside']);
  const orphan = Number(/ORPHAN (\d+)/.exec(w.report())?.[1]);
  t.teardown(() => process.kill(orphan, 'SIGKILL'));
  const d = await criuAsync(['dump', '-t', String(w.pid), '-D', path.join(dir, 'img')]);
  t.equal(d.status, 1, 'dump fails');
  t.match(d.stderr, new RegExp(`segment ${ids.a} .*attached 3 time\\(s\\) outside the dumped tree`));
  t.equal(d.stderr.trim().split('\n').length, 1, `one line: ${d.stderr}`);
  t.ok(readShmSegments().has(ids.a), 'the segment is still there');
  await endExpectPass(t, w);
});

t.test(
  'a restore next to the running original is refused; a failed restore removes what it made',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const { w, ids } = await start(t, dir);
    const images = path.join(dir, 'img');
    const d = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '-R']);
    t.equal(d.status, 0, `dump -R: ${d.stderr}`);
    t.ok(readShmSegments().has(ids.a), 'dump -R leaves the segments to the running tree');
    const r = await criuAsync(['restore', '-D', images]);
    t.equal(r.status, 1, 'restore fails');
    t.match(r.stderr, /id \d+ is in use here/);
    t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    await endExpectPass(t, w);
    await waitGone(w.pid);
    t.notOk(readShmSegments().has(ids.a), 'the original removed its segments when it ended');

    // The file the workload held is gone: the restore fails once the segments exist.
    rmSync(`${w.outFile}.held`);
    const f = await criuAsync(['restore', '-D', images, '-v4', '-o', 'failed.log']);
    t.equal(f.status, 1, `the restore fails: ${f.stderr}`);
    t.match(
      readFileSync(path.join(images, 'failed.log'), 'utf8'),
      /Made 3 System V shared memory segment/,
      'after making the segments',
    );
    const left = readShmSegments();
    t.notOk(left.has(ids.a) || left.has(ids.b) || left.has(ids.c), 'and removes the segments it made');
  },
);
