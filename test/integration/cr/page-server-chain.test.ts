/**
 * Incremental dumps through the page server (issue #4): `criu page-server` on 127.0.0.1 receives
 * the pages of pre-dump ×2 and the final dump (each into its own directory, chained with
 * --prev-images-dir on the server side), the other images stay local as in CRIU; the final
 * directory plus the local images restore the workload, which checks its memory itself; the same
 * with --auto-dedup on the servers, which punch the parents' superseded pages (measured in disk
 * blocks). With a token, a dump without it is refused and the task keeps running. --ps-socket on
 * both ends: the pages go through a connection someone else made.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { PE_PARENT, PE_PRESENT, readPagemap } from '../../../src/images/index.js';
import { connectedPair } from '../../helpers/page-server.js';
import { criuAsync, poll, startWorkload, taskSnapshot, waitGone, waitPid } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

let nextPort = 27000 + (process.pid % 1000) * 3;

/** 512-byte blocks the pages files of `dir` hold on disk (punched holes hold none). */
function pagesBlocks(dir: string): number {
  return readdirSync(dir)
    .filter((f) => /^pages-\d+\.img$/.test(f))
    .reduce((n, f) => n + statSync(path.join(dir, f)).blocks, 0);
}

/** Start `criu page-server -d` for one session into `dir`; resolves once it listens. */
async function pageServer(dir: string, extra: string[] = []): Promise<number> {
  const port = nextPort++;
  const r = await criuAsync([
    'page-server',
    '-D',
    dir,
    '--port',
    String(port),
    '--address',
    '127.0.0.1',
    '-d',
    ...extra,
  ]);
  if (r.status !== 0) throw new Error(`criu page-server: ${r.stderr}`);
  return port;
}

for (const isDedup of [false, true]) {
  const dedup = isDedup ? ' with --auto-dedup on the server' : '';
  t.test(`pre-dump ×2 and dump through the page server${dedup}, then restore`, { skip: needsRoot }, async (t) => {
    const root = t.testdir();
    const w = await startWorkload('cr_incr', root, ['1024']);
    t.teardown(() => w.kill());
    const srv = (n: number): string => path.join(root, `srv${n}`);
    const local = (n: number): string => path.join(root, `local${n}`);
    for (let n = 1; n <= 3; n++) {
      if (n > 1) {
        process.kill(w.pid, 'SIGUSR1');
        await w.waitFor(`STEP ${n - 1} `);
      }
      const parentArgs = n > 1 ? ['--prev-images-dir', `../srv${n - 1}`] : [];
      const port = await pageServer(srv(n), isDedup ? [...parentArgs, '--auto-dedup'] : parentArgs);
      // Blocks of every ancestor's pages files: a page a dump supersedes may live further back.
      const ancestorBlocks = (): number =>
        Array.from({ length: n - 1 }, (_, k) => pagesBlocks(srv(k + 1))).reduce((x, y) => x + y, 0);
      const before = ancestorBlocks();
      const cmd = n < 3 ? ['pre-dump'] : ['dump', '--track-mem'];
      const r = await criuAsync([
        ...cmd,
        '-t',
        String(w.pid),
        '-D',
        local(n),
        '--page-server',
        '--address',
        '127.0.0.1',
        '--port',
        String(port),
      ]);
      t.equal(r.status, 0, `${cmd[0]} ${n}: ${r.stderr}`);
      t.notOk(
        readdirSync(local(n)).some((f) => /^pages-|^pagemap-\d/.test(f)),
        'no task pages in the local directory',
      );
      const { runs } = await readPagemap(path.join(srv(n), `pagemap-${w.pid}.img`));
      const present = runs.filter((r) => (r.flags & PE_PRESENT) !== 0).reduce((s, r) => s + r.nrPages, 0);
      const parent = runs.filter((r) => (r.flags & PE_PARENT) !== 0).reduce((s, r) => s + r.nrPages, 0);
      if (n === 1) t.ok(present >= 1024 && parent === 0, `first: ${present} pages sent`);
      else t.ok(present < 400 && parent > 800, `iteration ${n}: ${present} pages sent, ${parent} in the parent`);
      if (n > 1) {
        // The server dedups once the session is over, just after the dump returns. A page sent
        // now supersedes its older copy (a few are new pages, with no older copy).
        const atLeast = before - (present * 8) / 2;
        if (isDedup) await poll(() => ancestorBlocks() <= atLeast, 'the superseded pages punched', 5000);
        const after = ancestorBlocks();
        if (isDedup) t.ok(after <= atLeast, `ancestors' pages: ${before} -> ${after} blocks for ${present} pages sent`);
        else t.equal(after, before, 'without --auto-dedup the ancestors keep their pages');
      }
    }
    await waitGone(w.pid);
    // The final directory: the server's pages next to the dump's other images.
    cpSync(local(3), srv(3), { recursive: true });
    const restored = criuAsync(['restore', '-D', srv(3)]);
    await waitPid(w.pid);
    await new Promise((r) => setTimeout(r, 200));
    process.kill(w.pid, 'SIGTERM');
    const r = await restored;
    t.equal(r.status, 0, r.stderr);
    t.match(w.report(), /PASS 2 steps/, w.report());
  });
}

t.test('a page server with a token refuses a dump without it; the task runs on', { skip: needsRoot }, async (t) => {
  const root = t.testdir();
  const w = await startWorkload('cr_incr', root, ['64']);
  t.teardown(() => w.kill());
  const port = await pageServer(path.join(root, 'srv'), ['--token', 'sesame']);
  const r = await criuAsync([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(root, 'local'),
    '--page-server',
    '--address',
    '127.0.0.1',
    '--port',
    String(port),
  ]);
  t.not(r.status, 0, 'refused');
  t.equal(r.stderr.trim().split('\n').length, 1, `one error line: ${r.stderr}`);
  process.kill(w.pid, 'SIGUSR1');
  await w.waitFor('STEP 1 ');
  const port2 = await pageServer(path.join(root, 'srv2'), ['--token', 'sesame']);
  const ok = await criuAsync([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(root, 'local2'),
    '--page-server',
    '--address',
    '127.0.0.1',
    '--port',
    String(port2),
    '--token',
    'sesame',
  ]);
  t.equal(ok.status, 0, ok.stderr);
  process.kill(w.pid, 'SIGTERM');
  await w.waitFor('PASS 1 steps');
});

t.test(
  'a page server that runs out of disk fails the dump; the task is resumed intact',
  { skip: needsRoot },
  async (t) => {
    const root = t.testdir();
    // Outside the test dir: tap removes that before later teardowns run.
    const small = mkdtempSync(path.join(tmpdir(), 'criu-ts-small-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', small]);
    t.teardown(() => {
      execFileSync('umount', ['-l', small]);
      rmSync(small, { recursive: true, force: true });
    });
    const w = await startWorkload('cr_incr', root, ['1024']);
    t.teardown(() => w.kill());
    const before = taskSnapshot(w.pid);
    const port = await pageServer(path.join(small, 'srv'));
    const r = await criuAsync([
      'dump',
      '-t',
      String(w.pid),
      '-D',
      path.join(root, 'local'),
      '--page-server',
      '--address',
      '127.0.0.1',
      '--port',
      String(port),
    ]);
    t.not(r.status, 0, 'the dump fails');
    t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    t.same(taskSnapshot(w.pid), before, 'the task is as it was: running, not traced, same maps and fds');
    t.notOk(existsSync(path.join(root, 'local', 'inventory.img')), 'no complete dump is left locally');
    process.kill(w.pid, 'SIGUSR1');
    await w.waitFor('STEP 1 ');
    process.kill(w.pid, 'SIGTERM');
    await w.waitFor('PASS 1 steps');
  },
);

t.test('--ps-socket on both ends: a dump through a connection made by someone else', { skip: needsRoot }, async (t) => {
  const root = t.testdir();
  const w = await startWorkload('cr_incr', root, ['256']);
  t.teardown(() => w.kill());
  const { client, accepted } = await connectedPair();
  const srv = path.join(root, 'srv');
  const local = path.join(root, 'local');
  mkdirSync(srv);
  const server = criuAsync(['page-server', '-D', srv, '--ps-socket', '3'], { fd3: accepted.fd });
  const dump = criuAsync(['dump', '-t', String(w.pid), '-D', local, '--page-server', '--ps-socket', '3'], {
    fd3: client.fd,
  });
  // Each criu has its own copy now; ours go (the sockets stay open in them).
  accepted.close();
  client.close();
  const [d, s] = await Promise.all([dump, server]);
  t.equal(d.status, 0, `dump: ${d.stderr}`);
  t.equal(s.status, 0, `page-server: ${s.stderr}`);
  t.ok(existsSync(path.join(srv, `pagemap-${w.pid}.img`)), 'the pages went through the socket');
  await waitGone(w.pid);
  cpSync(local, srv, { recursive: true });
  const restored = criuAsync(['restore', '-D', srv]);
  await waitPid(w.pid);
  await new Promise((r) => setTimeout(r, 200));
  process.kill(w.pid, 'SIGTERM');
  const r = await restored;
  t.equal(r.status, 0, r.stderr);
  t.match(w.report(), /PASS 0 steps/, w.report());
});
