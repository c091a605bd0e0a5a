/**
 * Every failure path of dump and restore (issue "Reliability"):
 * - a dump refused (an fd of an unsupported kind, a task with children) or failed (disk full) or
 *   interrupted (SIGINT, SIGTERM) leaves the task exactly as it was: not traced, same maps, same
 *   fds, same threads, and its own check (test/fixtures/cr_state.c) passes afterwards; the images
 *   dir holds no inventory.img and no temporary file; criu says why in one line and exits non-zero;
 * - a restore whose PID is taken, or whose images are corrupt, truncated or missing, fails with
 *   one line naming the reason (the file), creates no process at all (criu's children and the
 *   PID are watched while it runs) and leaves the images byte for byte as they were;
 * - dump of a missing PID, restore from an empty or missing dir: one line, non-zero.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import {
  closeSync,
  constants,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import {
  criuAsync,
  criuWatched,
  dirDigest,
  poll,
  signalTask,
  sleep,
  startCriu,
  startRestore,
  startWorkload,
  taskSnapshot,
  waitGone,
  waitPid,
  type WatchedRun,
  type Workload,
} from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

/** The error line: exactly one line on stderr, in criu's form. */
function oneErrorLine(t: Test, r: { stderr: string }, what: RegExp): void {
  const lines = r.stderr.trim().split('\n');
  t.equal(lines.length, 1, `one line on stderr: ${r.stderr}`);
  t.match(lines[0] ?? '', /^Error \(criu\): /);
  t.match(lines[0] ?? '', what);
}

/** Files a failed dump (or pre-dump) may leave in its images dir: its log, nothing else. */
function leftovers(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((n) => n !== 'dump.log' && n !== 'pre-dump.log') : [];
}

/** SIGTERM the workload and wait for its verdict. */
async function verdict(t: Test, w: Workload): Promise<void> {
  signalTask(w.pid, 'SIGTERM');
  await w.waitFor('PASS', 10_000).catch(() => undefined);
  t.match(w.report(), /PASS/, `the task's own check passes: ${w.report()}`);
  t.notMatch(w.report(), /FAIL/);
}

/** Prove the task is as before: untraced, same maps, fds and threads. */
function sameTask(t: Test, pid: number, before: ReturnType<typeof taskSnapshot>): void {
  const after = taskSnapshot(pid);
  t.ok(
    after.tracers.every((x) => x.endsWith(':0')),
    `no thread is traced (${after.tracers.join(' ')})`,
  );
  t.equal(after.maps, before.maps, 'same maps');
  t.same(after.fds, before.fds, 'same fds');
  t.same(after.threads, before.threads, 'same threads');
}

/** A dump refused before it touched the task: exit 1, one line saying `why`, the task as it was. */
async function refusedUntouched(
  t: Test,
  w: Workload,
  before: ReturnType<typeof taskSnapshot>,
  images: string,
  r: WatchedRun,
  why: RegExp,
): Promise<void> {
  t.equal(r.status, 1, 'dump exits 1');
  oneErrorLine(t, r, why);
  t.notOk(r.wasTraced, 'the task was never seized');
  sameTask(t, w.pid, before);
  t.same(leftovers(images), [], 'no image is left');
  await verdict(t, w);
}

t.test('dump refuses a task holding an fd of an unsupported kind', { skip: needsRoot }, async (t) => {
  // A unix socket connected to a listener outside the task (this test's); a TCP connection (either
  // end); a listener with a connection waiting to be accepted, which would be lost.
  const outside = createServer();
  const listenPath = path.join(mkdtempSync(path.join(tmpdir(), 'cr-state-')), 'l.sock');
  await new Promise<void>((resolve) => outside.listen(listenPath, resolve));
  t.teardown(() => new Promise<void>((resolve) => outside.close(() => resolve())));
  const kinds: [string, (fd: number) => RegExp][] = [
    [
      `unix-ext=${listenPath}`,
      (fd) =>
        new RegExp(
          `fd ${fd} of task \\d+: the unix stream socket: it is connected to the unix stream socket ${listenPath} outside the task`,
        ),
    ],
    [
      'tcp-conn',
      (fd) =>
        new RegExp(
          `fd ${fd} of task \\d+: the TCP socket 127\\.0\\.0\\.1:\\d+ -> 127\\.0\\.0\\.1:\\d+: it is connected \\(ESTABLISHED\\); with --tcp-established the connection is dumped too`,
        ),
    ],
    [
      'tcp-waiting',
      (fd) =>
        new RegExp(
          `fd ${fd} of task \\d+: the TCP socket 127\\.0\\.0\\.1:\\d+: 1 connection\\(s\\) wait in its accept queue`,
        ),
    ],
  ];
  for (const [kind, expected] of kinds) {
    await t.test(kind.replace(/=.*/, ''), async (t) => {
      const dir = t.testdir();
      const w = await startWorkload('cr_state', dir, [kind]);
      t.teardown(() => w.kill());
      const before = taskSnapshot(w.pid);
      const sockets = before.fds.filter((f) => f.includes('socket:['));
      t.ok(sockets.length > 0, `the task holds a socket (${sockets.join(', ')})`);
      const images = path.join(dir, 'img');
      const r = await criuWatched(['dump', '-t', String(w.pid), '-D', images], w.pid);
      // The first socket the dump meets that it cannot take (tcp-conn: either end).
      const fds = sockets.map((s) => Number(s.split(' ')[0]));
      const refused = fds.find((fd) => expected(fd).test(r.stderr)) ?? fds[0] ?? -1;
      await refusedUntouched(t, w, before, images, r, expected(refused));
    });
  }
});

/**
 * cr_state with `args`, then `criu ACTION -t PID -D IMAGES OPTS...`: refused as refusedUntouched
 * says, `why` on its one line (a function of the workload and its snapshot, for an fd number).
 */
async function stateRefused(
  t: Test,
  args: readonly string[],
  why: RegExp | ((w: Workload, before: ReturnType<typeof taskSnapshot>) => RegExp),
  action = 'dump',
  opts: readonly string[] = [],
): Promise<void> {
  const dir = t.testdir();
  const w = await startWorkload('cr_state', dir, args);
  t.teardown(() => w.kill());
  const before = taskSnapshot(w.pid);
  const images = path.join(dir, 'img');
  const r = await criuWatched([action, '-t', String(w.pid), '-D', images, ...opts], w.pid);
  await refusedUntouched(t, w, before, images, r, typeof why === 'function' ? why(w, before) : why);
}

/** The number of the fd of `before` whose link includes `text`. */
const fdWith = (before: ReturnType<typeof taskSnapshot>, text: string): number =>
  Number(before.fds.find((f) => f.includes(text))?.split(' ')[0]);

t.test(
  'dump refuses a netlink socket of a protocol whose kernel side it cannot carry',
  { skip: needsRoot },
  async (t) => {
    // NETLINK_AUDIT (9): the kernel keeps the audit daemon's registration, made by a message.
    await stateRefused(t, ['netlink=9'], /fd \d+ of task \d+: a netlink socket of protocol 9, whose kernel side/);
  },
);

t.test('dump refuses a socket of another network namespace (passed over)', { skip: needsRoot }, async (t) => {
  // A restore would make it in criu's namespace; the diags do not even see it from here.
  for (const kind of ['netlink', 'packet', 'udp'])
    await t.test(kind, (t) =>
      stateRefused(
        t,
        [`otherns=${kind}`],
        /fd \d+ of task \d+: .*a (netlink |packet )?socket of another network namespace/,
      ),
    );
});

t.test('dump and pre-dump refuse a POSIX message queue before touching the task', { skip: needsRoot }, async (t) => {
  // Unlinked, it looks like a deleted regular file, and was once copied as one: restored, a plain file.
  for (const action of ['dump', 'pre-dump'])
    await t.test(action, (t) =>
      stateRefused(
        t,
        ['mqueue'],
        (w, before) =>
          new RegExp(
            `fd ${fdWith(before, `/cr-state-${w.pid} (deleted)`)} of task ${w.pid}.*a POSIX message queue \\(mq_open\\)`,
          ),
        action,
      ),
    );
});

t.test('dump refuses an epoll watching a file its fd number no longer holds', { skip: needsRoot }, async (t) => {
  // The watch outlives the close of its fd while a dup keeps the pipe open; a restore adds each
  // watch by its fd number, so it would watch nothing (or whatever the number holds by then).
  await stateRefused(
    t,
    ['epoll-stale'],
    (w, before) =>
      new RegExp(
        `Cannot dump epoll fd ${fdWith(before, '[eventpoll]')} of task ${w.pid}: it watches a file that fd \\d+ no longer holds`,
      ),
  );
});

t.test('dump and pre-dump refuse guard regions before touching the task', { skip: needsRoot }, async (t) => {
  // madvise(MADV_GUARD_INSTALL) marks pages whose access faults; no image carries them yet.
  for (const action of ['dump', 'pre-dump'])
    await t.test(action, (t) =>
      stateRefused(
        t,
        ['guard'],
        (w) =>
          new RegExp(
            `Cannot dump task ${w.pid}: its memory at 0x[0-9a-f]+ is a guard region \\(madvise MADV_GUARD_INSTALL\\)`,
          ),
        action,
      ),
    );
});

t.test(
  'dump and pre-dump refuse namespaces criu-ts cannot take, before touching the tree',
  { skip: needsRoot },
  async (t) => {
    // cr_state ns=KIND unshares that kind itself; child-ns=KIND makes its child do it.
    const cases: { args: string[]; opts: string[]; why: RegExp; actions: string[] }[] = [
      {
        args: ['ns=net'],
        opts: [],
        why: /Cannot dump tree \d+: it lives in a network namespace of its own, which criu-ts cannot dump yet/,
        actions: ['dump', 'pre-dump'],
      },
      { args: ['ns=mnt'], opts: [], why: /it lives in a mount namespace of its own/, actions: ['dump'] },
      {
        args: ['ns=pid'],
        opts: [],
        why: /process \d+ has unshared a PID namespace for its children; not supported/,
        actions: ['dump'],
      },
      {
        args: ['child-ns=uts'],
        opts: [],
        why: /process \d+ is in another UTS namespace than the tree's root; not supported/,
        actions: ['dump', 'pre-dump'],
      },
      {
        args: ['thread-ns=uts'],
        opts: [],
        why: /thread \d+ of process \d+ is in another UTS namespace than the tree's root; not supported/,
        actions: ['dump'],
      },
      {
        args: [],
        opts: ['--namespaces', 'net'],
        why: /--namespaces net: criu-ts cannot dump network namespaces yet/,
        actions: ['dump'],
      },
    ];
    for (const c of cases)
      for (const action of c.actions)
        await t.test(`${action} ${[...c.args, ...c.opts].join(' ')}`, (t) =>
          stateRefused(t, c.args, c.why, action, c.opts),
        );
  },
);

t.test('dump refuses a child sharing its fd table before touching the tree', { skip: needsRoot }, async (t) => {
  await stateRefused(
    t,
    ['shared-child'],
    /process \d+ shares its parent's fd table \(CLONE_FILES\); not supported yet/,
  );
});

/** Mount a tmpfs of `size` on `dir`; the reason it cannot, or undefined. */
function mountTmpfs(dir: string, size: string): string | undefined {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' });
    return undefined;
  } catch (err) {
    return `needs a tmpfs mount (${String(err).split('\n')[0]})`;
  }
}
const canMountTmpfs = ((): string | false => {
  if (needsRoot !== false) return needsRoot;
  const probe = mkdtempSync(path.join(tmpdir(), 'criu-ts-tmpfs-'));
  const why = mountTmpfs(probe, '64k');
  if (why === undefined) execFileSync('umount', [probe]);
  rmSync(probe, { recursive: true });
  return why ?? false;
})();

// With a TCP connection (dumped in repair mode, under the network lock): it is let go again.
for (const withTcp of [false, true]) {
  const what = withTcp ? ' (a TCP connection: out of repair mode, the lock lifted)' : '';
  t.test(`dump on a full disk fails and leaves the task intact${what}`, { skip: canMountTmpfs }, async (t) => {
    const dir = t.testdir();
    // Outside the test dir: tap removes that before our teardown could unmount.
    const images = mkdtempSync(path.join(tmpdir(), 'criu-ts-full-'));
    const why = mountTmpfs(images, '256k');
    if (why !== undefined) throw new Error(why);
    t.teardown(() => {
      execFileSync('umount', ['-l', images]);
      rmSync(images, { recursive: true });
    });
    const w = await startWorkload('cr_state', dir, withTcp ? ['mem=8', 'tcp-conn'] : ['mem=8']);
    t.teardown(() => w.kill());
    const before = taskSnapshot(w.pid);
    const args = ['dump', '-t', String(w.pid), '-D', images, '-o', path.join(dir, 'dump.log')];
    const r = await criuWatched(withTcp ? [...args, '--tcp-established'] : args, w.pid);
    t.equal(r.status, 1, 'dump exits 1');
    oneErrorLine(t, r, /ENOSPC|no space/i);
    t.ok(r.wasTraced, 'the dump did get as far as seizing the task');
    sameTask(t, w.pid, before);
    t.same(readdirSync(images), [], 'nothing is left on the full disk: no inventory.img, no temporary file');
    const tables = spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout;
    t.notMatch(tables, new RegExp(`criu-ts-${w.pid}\\b`), 'no network lock left');
    await verdict(t, w); // its connection carries its byte on
  });
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  for (const when of ['seized', 'writing pages'] as const) {
    t.test(`dump interrupted by ${signal} once ${when} leaves the task intact`, { skip: needsRoot }, async (t) => {
      const dir = t.testdir();
      const w = await startWorkload('cr_state', dir, ['mem=512'], 60_000);
      t.teardown(() => w.kill());
      const before = taskSnapshot(w.pid);
      const images = path.join(dir, 'img');
      const criu = startCriu(['dump', '-t', String(w.pid), '-D', images], w.pid);
      t.teardown(() => signalTask(criu.pid, 'SIGKILL'));
      const traced = (): boolean => /^TracerPid:\s*[1-9]/m.test(readFileSync(`/proc/${w.pid}/status`, 'utf8'));
      if (when === 'seized') await poll(traced, 'the task to be seized', 20_000);
      else
        await poll(
          () => existsSync(images) && readdirSync(images).some((n) => n.startsWith('.pages-')),
          'the pages image to be started',
          20_000,
        );
      signalTask(criu.pid, signal);
      const r: WatchedRun = await criu.done;
      t.ok(r.status !== 0 && r.status !== null, `criu exits non-zero (${r.status})`);
      oneErrorLine(t, r, /interrupted/i);
      sameTask(t, w.pid, before);
      t.same(leftovers(images), [], 'no image is left (no inventory.img, no temporary file)');
      await verdict(t, w);
    });
  }
}

t.test('restore refuses a PID in use, and creates nothing', { skip: needsRoot }, async (t) => {
  await t.test('the original still runs after dump -R', async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_state', dir);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '-R']);
    t.equal(dump.status, 0, dump.stderr);
    const before = taskSnapshot(w.pid);
    const digest = dirDigest(images);
    const r = await criuWatched(['restore', '-D', images, '-o', path.join(dir, 'restore.log')]);
    t.equal(r.status, 1, 'restore exits 1');
    oneErrorLine(t, r, new RegExp(`${w.pid}.*in use`));
    t.same(r.children, [], 'criu created no process');
    sameTask(t, w.pid, before);
    t.same(dirDigest(images), digest, 'images unchanged');
    await verdict(t, w);
  });
  await t.test('restored twice', async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_state', dir);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
    t.equal(dump.status, 0, dump.stderr);
    await waitGone(w.pid);
    const first = await criuAsync(['restore', '-D', images, '-d']);
    t.equal(first.status, 0, `the first restore succeeds: ${first.stderr}`);
    await waitPid(w.pid);
    const before = taskSnapshot(w.pid);
    const r = await criuWatched(['restore', '-D', images]);
    t.equal(r.status, 1, 'the second restore exits 1');
    oneErrorLine(t, r, new RegExp(`${w.pid}.*in use`));
    t.same(r.children, [], 'criu created no process');
    sameTask(t, w.pid, before);
    await verdict(t, w);
  });
});

t.test('restore refuses a FIFO that someone else holds with other bytes in it', { skip: needsRoot }, async (t) => {
  // The dumped bytes would mix with the holder's. (The holder with the same bytes, the frozen
  // original of a migration between two hosts of one machine, is taken as the FIFO's own:
  // test/integration/cr/fdmix.test.ts migrates FIFOs with bytes in them.)
  const dir = t.testdir();
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const script = [
    'import os, sys, time',
    `fd = os.open(${JSON.stringify(fifo)}, os.O_RDWR)`,
    'os.write(fd, b"dumped")',
    'open(sys.argv[-1], "a").write(f"READY {os.getpid()}\\n")',
    'time.sleep(1000)',
  ].join('\n');
  const w = await startWorkload('/usr/bin/python3', dir, ['-c', script]);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);
  const holder = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
  t.teardown(() => closeSync(holder));
  writeSync(holder, 'other');
  const r = await criuWatched(['restore', '-D', images], w.pid);
  t.equal(r.status, 1, 'restore exits 1');
  oneErrorLine(
    t,
    r,
    new RegExp(`FIFO ${fifo}: someone else has it open, with 5 bytes in it that are not the 6 dumped`),
  );
  t.notOk(existsSync(`/proc/${w.pid}`), 'the process it had begun is gone');
  const left = Buffer.alloc(16);
  t.equal(readSync(holder, left), 5, 'the holder reads its own bytes, and only those');
  t.equal(left.subarray(0, 5).toString(), 'other');
});

interface Corruption {
  name: string;
  /** The file the error must name. */
  file: (pid: number) => string;
  apply: (dir: string, pid: number) => void;
}

const flipBytes = (file: string, from: number, to: number): void => {
  const b = readFileSync(file);
  for (let i = from; i < Math.min(to, b.length); i++) b[i] = (b[i] ?? 0) ^ 0xff;
  writeFileSync(file, b);
};

const corruptions: Corruption[] = [
  {
    name: 'core-PID.img truncated',
    file: (pid) => `core-${pid}.img`,
    apply: (dir, pid) => {
      const f = path.join(dir, `core-${pid}.img`);
      truncateSync(f, Math.floor(readFileSync(f).length / 2));
    },
  },
  {
    name: 'mm-PID.img garbled',
    file: (pid) => `mm-${pid}.img`,
    apply: (dir, pid) => {
      const f = path.join(dir, `mm-${pid}.img`);
      const b = readFileSync(f);
      b.fill(0xff, 12); // after the magics and the entry size: no valid protobuf field
      writeFileSync(f, b);
    },
  },
  {
    name: 'pages-1.img deleted',
    file: () => 'pages-1.img',
    apply: (dir) => rmSync(path.join(dir, 'pages-1.img')),
  },
  {
    name: 'pages-1.img truncated',
    file: () => 'pages-1.img',
    apply: (dir) => {
      const f = path.join(dir, 'pages-1.img');
      truncateSync(f, readFileSync(f).length - 8192);
    },
  },
  {
    name: 'pagemap-PID.img truncated',
    file: (pid) => `pagemap-${pid}.img`,
    apply: (dir, pid) => {
      const f = path.join(dir, `pagemap-${pid}.img`);
      truncateSync(f, readFileSync(f).length - 3);
    },
  },
  {
    name: 'pstree.img with a wrong magic',
    file: () => 'pstree.img',
    apply: (dir) => flipBytes(path.join(dir, 'pstree.img'), 4, 8),
  },
  {
    name: 'inventory.img with a wrong magic',
    file: () => 'inventory.img',
    apply: (dir) => flipBytes(path.join(dir, 'inventory.img'), 0, 4),
  },
  {
    name: 'files.img deleted',
    file: () => 'files.img',
    apply: (dir) => rmSync(path.join(dir, 'files.img')),
  },
];

t.test('restore of corrupt images fails before any process exists', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_state', dir);
  t.teardown(() => w.kill());
  const good = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', good]);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);
  rmSync(path.join(good, 'dump.log'));
  for (const c of corruptions) {
    await t.test(c.name, async (t) => {
      const images = path.join(dir, c.name.replace(/\W+/g, '-'));
      cpSync(good, images, { recursive: true });
      c.apply(images, w.pid);
      const digest = dirDigest(images);
      const r = await criuWatched(
        ['restore', '-D', images, '-o', path.join(dir, `${path.basename(images)}.log`)],
        w.pid,
      );
      t.equal(r.status, 1, 'restore exits 1');
      oneErrorLine(t, r, new RegExp(c.file(w.pid).replace(/\./g, '\\.')));
      t.notOk(r.sawPid, `PID ${w.pid} never appeared`);
      t.same(r.children, [], 'criu created no process');
      t.same(dirDigest(images), digest, 'the images are unchanged, byte for byte');
      signalTask(w.pid, 'SIGKILL');
    });
  }
  // The untouched images do restore: the failures above came from the damage alone.
  const r = await startRestore(['-D', good], path.join(dir, 'good.pid'));
  t.teardown(() => signalTask(w.pid, 'SIGKILL'));
  await verdict(t, w);
  t.equal((await r.done).status, 0, 'the intact images restore');
});

t.test('dump of a missing PID, restore from an empty or missing dir', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  let free = 30_000;
  while (existsSync(`/proc/${free}`)) free++;
  const dump = await criuAsync(['dump', '-t', String(free), '-D', path.join(dir, 'img')]);
  t.equal(dump.status, 1, 'dump of a missing pid exits 1');
  oneErrorLine(t, dump, new RegExp(`${free}.*no such process`));
  t.same(leftovers(path.join(dir, 'img')), [], 'and writes no image');

  const empty = path.join(dir, 'empty');
  mkdirSync(empty);
  const r1 = await criuAsync(['restore', '-D', empty]);
  t.equal(r1.status, 1, 'restore from an empty dir exits 1');
  oneErrorLine(t, r1, /inventory\.img/);

  const r2 = await criuAsync(['restore', '-D', path.join(dir, 'missing')]);
  t.equal(r2.status, 1, 'restore from a missing dir exits 1');
  oneErrorLine(t, r2, /missing/);
});

t.test(
  'a SIGTERM sent to the task while it is being restored is not lost',
  {
    skip: needsRoot,
  },
  async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_state', dir);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
    t.equal(dump.status, 0, dump.stderr);
    await waitGone(w.pid);
    for (const delayMs of [0, 50, 100, 150, 200, 300, 500]) {
      const criu = startCriu(['restore', '-D', images, '-o', path.join(dir, `restore-${delayMs}.log`)]);
      await waitPid(w.pid).catch(() => undefined);
      await sleep(delayMs);
      signalTask(w.pid, 'SIGTERM');
      const timeout = sleep(20_000).then(() => 'hung' as const);
      const r = await Promise.race([criu.done, timeout]);
      if (r === 'hung') {
        signalTask(w.pid, 'SIGKILL');
        await criu.done;
        t.fail(`SIGTERM ${delayMs} ms after the PID appeared was lost: the task ran on`);
      } else {
        // Either the half-restored task died of it (restore fails, exit 1) or it ran and handled
        // it (exit 0, its check passed).
        t.ok(r.status === 0 || r.status === 1, `criu restore ends (${r.status}) after SIGTERM at ${delayMs} ms`);
      }
      signalTask(w.pid, 'SIGKILL');
      await waitGone(w.pid).catch(() => undefined);
    }
  },
);

// python3 workloads with a deleted 2 MiB file (over the 1 MiB ghost limit) and, for the second,
// 256 MiB of touched memory so that the page copy takes a while. The first keeps the file open:
// criu refuses the fd before it touches the task. The second only maps it (mmap through ctypes,
// the fd closed): the mapping is found once the task is frozen and the page copy has started, and
// the dump fails beside the copy. On SIGTERM each checks its data and reports.
/**
 * A python3 workload script: `setup` (with `path`, big.bin beside the report), then READY and a
 * wait for SIGTERM, then PASS or FAIL as the python expression `check` says.
 */
const pythonWorkload = (setup: string, check: string): string => String.raw`
import ctypes, os, signal, sys, time
out = open(sys.argv[1], 'a', buffering=1)
path = os.path.join(os.path.dirname(sys.argv[1]), 'big.bin')
${setup}
done = False
def term(*_):
    global done
    done = True
signal.signal(signal.SIGTERM, term)
out.write('READY %d\n' % os.getpid())
while not done:
    time.sleep(0.02)
out.write('PASS\n' if ${check} else 'FAIL\n')
`;

const GHOST_OPEN = pythonWorkload(
  String.raw`
f = open(path, 'w+b')
f.write(bytes(range(256)) * (8 << 10))
f.flush()
os.unlink(path)`,
  'f.seek(0) == 0 and f.read(256) == bytes(range(256))',
);

const GHOST_MAPPED = pythonWorkload(
  String.raw`
with open(path, 'wb') as f:
    f.write(bytes(range(256)) * (8 << 10))
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(path, os.O_RDWR)
addr = libc.mmap(None, 2 << 20, 3, 1, fd, 0)  # PROT_READ | PROT_WRITE, MAP_SHARED
os.close(fd)
os.unlink(path)
m = (ctypes.c_ubyte * (2 << 20)).from_address(addr)
mem = bytearray(b'\x5a' * (256 << 20))`,
  'mem.count(0x5a) == len(mem) and bytes(m[:256]) == bytes(range(256)) and m[(2 << 20) - 1] == 255',
);

async function ghostWorkload(t: Test, dir: string, source: string): Promise<Workload> {
  const script = path.join(dir, 'ghost.py');
  writeFileSync(script, source);
  const w = await startWorkload('/usr/bin/env', dir, ['-i', 'python3', script], 30_000);
  t.teardown(() => w.kill());
  return w;
}

t.test(
  'dump refuses an open deleted file over the ghost limit before touching the task',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const w = await ghostWorkload(t, dir, GHOST_OPEN);
    const before = taskSnapshot(w.pid);
    const images = path.join(dir, 'img');
    const r = await criuWatched(['dump', '-t', String(w.pid), '-D', images, '-o', path.join(dir, 'dump.log')], w.pid);
    const why = /Cannot dump fd \d+ of task \d+ \(.*big\.bin \(deleted\)\): .* more than the ghost limit/;
    await refusedUntouched(t, w, before, images, r, why);
  },
);

t.test('a dump that fails beside the page copy leaves the task intact', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await ghostWorkload(t, dir, GHOST_MAPPED);
  const before = taskSnapshot(w.pid);
  t.match(before.maps, /big\.bin \(deleted\)/, 'the deleted file is mapped');
  t.notMatch(before.fds.join('\n'), /big\.bin/, 'and open by no fd');
  const images = path.join(dir, 'img');
  const r = await criuWatched(['dump', '-t', String(w.pid), '-D', images, '-v4', '-o', 'dump.log'], w.pid);
  t.equal(r.status, 1, 'dump exits 1');
  oneErrorLine(t, r, /Cannot dump the mapping of .*big\.bin \(deleted\) in task \d+: .* more than the ghost limit/);
  t.ok(r.wasTraced, 'the dump did get as far as seizing the task');
  const log = readFileSync(path.join(images, 'dump.log'), 'utf8');
  const copyAt = log.indexOf('dump: memory copy');
  t.ok(copyAt >= 0 && copyAt < log.indexOf('ghost limit'), 'it failed once the page copy had started');
  sameTask(t, w.pid, before);
  t.same(leftovers(images), [], 'no image is left (no inventory.img, no temporary file)');
  await verdict(t, w);
});
