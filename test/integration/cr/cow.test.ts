/**
 * Memory a parent and its child share copy-on-write stays shared across dump and restore
 * (src/restore/mm.ts inheritMemory): the child is forked once its parent's memory is restored,
 * and only the pages that differ from the parent's are written into it. cr_cow
 * (test/fixtures/cr_cow.c) shares seven pages in eight of 32 MiB with its child; the test counts
 * the page frames both map (/proc/PID/pagemap) before the dump and after the restore, and both
 * check their memory themselves. Reading the memory of a live tree (pre-dump, into a directory or
 * a page server, and dump --leave-running) leaves its sharing as it was (src/mem/task-memory.ts).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { criuAsync, dumpRestoreDetached, endExpectPass, restoreStat } from '../../helpers/cr.js';
import { sharedPages, startCow } from '../../helpers/frames.js';
import { startCriuPageServer } from '../../helpers/page-server.js';
import { freePort } from '../../helpers/real-criu.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid, page frames)';
t.test(
  'cr_cow: pre-dumps (into a directory, into a page server) and dump -R leave the tree sharing its memory',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const { w, p, c, at, pages, expected } = await startCow(t, dir);
    const stillShared = (after: string): void => {
      const now = sharedPages(p, c, at, pages);
      t.equal(now, expected, `after ${after}, P and C still share ${expected} pages (${now})`);
    };
    const pre1 = path.join(dir, 'pre1');
    const r1 = await criuAsync(['pre-dump', '-t', String(p), '-D', pre1]);
    t.equal(r1.status, 0, `pre-dump: ${r1.stderr}`);
    stillShared('a pre-dump');

    const srv = path.join(dir, 'srv');
    const port = freePort();
    const ps = await startCriuPageServer(t, dir, srv, port);
    t.equal(ps.status, 0, `page-server: ${ps.stderr}`);
    const local = path.join(dir, 'local');
    const r2 = await criuAsync([
      'pre-dump',
      '-t',
      String(p),
      '-D',
      local,
      '--page-server',
      '--address',
      '127.0.0.1',
      '--port',
      String(port),
    ]);
    t.equal(r2.status, 0, `pre-dump --page-server: ${r2.stderr}`);
    t.ok(existsSync(path.join(srv, `pagemap-${c}.img`)), "C's pages went to the page server");
    stillShared('a pre-dump into a page server');

    const d = await criuAsync(['dump', '-t', String(p), '-D', path.join(dir, 'img'), '-R']);
    t.equal(d.status, 0, `dump -R: ${d.stderr}`);
    stillShared('dump --leave-running');
    await endExpectPass(t, w);
  },
);

t.test(
  'cr_cow: the memory a parent and its child shared copy-on-write is shared again after the restore',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const { w, p, c, at, pages, expected } = await startCow(t, dir);

    const images = path.join(dir, 'img');
    if (!(await dumpRestoreDetached(t, dir, p, 'P', [c]))) return;

    const after = sharedPages(p, c, at, pages);
    t.equal(after, expected, `after the restore, P and C share ${expected} pages again (${after})`);
    const compared = await restoreStat(images, 'pages_compared');
    const skipped = await restoreStat(images, 'pages_skipped_cow');
    t.ok(compared >= pages, `stats-restore: ${compared} pages compared (C's ${pages} among them)`);
    t.ok(skipped >= expected, `stats-restore: ${skipped} pages left shared (${expected} of C's among them)`);
    await endExpectPass(t, w);
  },
);
