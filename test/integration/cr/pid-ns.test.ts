/**
 * A tree that is a PID namespace of its own (`unshare --pid --fork setsid PROGRAM`: its root is
 * pid 1 there), dumped by criu-ts with the pids as the namespace sees them, as CRIU writes a
 * container: pstree.img, core-<tid>, mm-, fs-, ids-, pagemap-<pid> of pid 1 and of its children's
 * pids there, and the tree's own pid_ns_id. Debian's crit reads them so; CRIU 3.17 restores them
 * in a new PID namespace, pid 1 again and the children with their pids, and the fixture's own
 * check passes; also from a pre-dump and a tracked dump on top of it. criu-ts restores them the
 * same way (both), and cr_tree (four processes sharing pipes, sockets, memory, a memfd and a file, with
 * a thread) passes its checks after a dump and restore by criu-ts in its namespace. A dump of a
 * process of such a namespace that is not its init, or of an init whose session leader is
 * outside it, or one a process joined from outside, is refused in one line, the tree running
 * on. A zombie comes back a zombie with its pid there. Two sources migrate trees with the same
 * pid to one DST at once, each into its own skeleton. criu-migrate moves such trees (cr_basic, cr_tree) between two simulated hosts (pid 1 again
 * on DST). Two such trees dumped with TCP
 * connections at once each have their own network lock, though both roots are 1.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { PE_PARENT, readImage, readPagemap, type ImageEntry } from '../../../src/images/index.js';
import { readStatus } from '../../../src/proc/status.js';
import { criuAsync, poll, sleep, waitGone } from '../../helpers/cr.js';
import { fixturePath } from '../../helpers/fixture.js';
import { criuRestoreDetached, realCriuMissing } from '../../helpers/real-criu.js';
import { hostPair, runMigrate, startAgent, tokenFile } from '../../helpers/migrate.js';
import { simHosts } from '../../../migrate/sim-hosts.js';
import { spawn } from 'node:child_process';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (namespaces, ptrace)';
const noCriu = needsRoot || realCriuMissing();
const crit = ['/usr/bin/crit', '/usr/sbin/crit'].find((p) => existsSync(p));

/** The host pids of the processes whose argv is exactly `argv`. */
function pidsOf(argv: readonly string[]): number[] {
  const want = `${argv.join('\0')}\0`;
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        return readFileSync(`/proc/${d}/cmdline`, 'utf8') === want;
      } catch {
        return false; // gone
      }
    })
    .map(Number);
}

/**
 * The one process running `argv`, once there is one; with `isInit`, the one that is pid 1 in its
 * namespace (its children may run the same program).
 */
async function hostPidOf(argv: readonly string[], isInit = true): Promise<number> {
  let found: number[] = [];
  const look = (): number[] => pidsOf(argv).filter((p) => !isInit || innerPid(p) === 1);
  await poll(() => (found = look()).length === 1, `one process running ${argv.join(' ')}`, 10_000);
  return found[0] as number;
}

/** Its pid as its innermost PID namespace sees it. */
const innerPid = (pid: number): number | undefined => readStatus(pid)?.nsPid.at(-1);

/**
 * Start `argv` in a PID namespace of its own, as its init (pid 1 there); with `isSessionLeader`
 * a session leader there (setsid), otherwise in the session of a shell outside. The host pid.
 */
async function startInPidNs(t: Test, argv: readonly string[], isSessionLeader = true): Promise<number> {
  const prefix = ['unshare', '--pid', '--fork', ...(isSessionLeader ? ['setsid'] : [])];
  const sh = spawn('sh', ['-c', '"$@" </dev/null >/dev/null 2>&1 & wait', 'sh', ...prefix, ...argv], {
    stdio: 'ignore',
    detached: true,
  });
  sh.unref();
  const pid = await hostPidOf(argv);
  t.teardown(() => {
    for (const p of pidsOf(argv)) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone meanwhile (children die with their init)
      }
    }
  });
  t.equal(innerPid(pid), 1, `pid 1 in its namespace (${pid} here)`);
  return pid;
}

/** cr_fpu (or `fixture`) as the init of a PID namespace of its own (startInPidNs), once READY. */
async function startInit(
  t: Test,
  dir: string,
  isSessionLeader = true,
  fixture = 'cr_fpu',
): Promise<{ pid: number; argv: string[]; out: string }> {
  const out = path.join(dir, 'report.txt');
  const argv = [fixturePath(fixture), out];
  const pid = await startInPidNs(t, argv, isSessionLeader);
  await poll(() => existsSync(out) && /READY 1\b/.test(readFileSync(out, 'utf8')), 'READY 1', 10_000);
  return { pid, argv, out };
}

/** cr_fpu's verdict in `out` (after a SIGTERM) is PASS. */
async function passes(t: Test, out: string, what: string, pid?: number): Promise<void> {
  try {
    await poll(() => /PASS|FAIL/.test(readFileSync(out, 'utf8')), 'the verdict', 20_000);
  } catch (err) {
    // Say where the process is, if it never answered.
    const st = pid === undefined ? undefined : readStatus(pid);
    throw new Error(`${String(err)} (${st === null || st === undefined ? 'gone' : `state ${st.state}`})`, {
      cause: err,
    });
  }
  t.match(readFileSync(out, 'utf8'), /PASS/, what);
}

/** `nft list tables`. */
function nftTablesText(): string {
  return execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' });
}

/** The pstree entries of a dump as [pid, ppid, pgid, sid, threads...]. */
async function pstreeOf(images: string): Promise<number[][]> {
  const { records } = await readImage(path.join(images, 'pstree.img'), 'PSTREE');
  return records.map(({ entry: e }) => [
    Number(e['pid']),
    Number(e['ppid']),
    Number(e['pgid']),
    Number(e['sid']),
    ...((e['threads'] ?? []) as number[]).map(Number),
  ]);
}

/** Who restores: criu-ts, or the real CRIU (Debian's 3.17). */
type Restorer = 'criu-ts' | 'CRIU 3.17';
const RESTORERS: readonly Restorer[] = ['criu-ts', 'CRIU 3.17'];
const skipFor = (by: Restorer): string | false => (by === 'criu-ts' ? needsRoot : noCriu);

/**
 * Restore `images` detached with `by`; the root's pid here (it is 1 in its new namespace), or
 * undefined after a failure of `t`. `argv`: the root's command line, to find it after CRIU.
 */
async function restoreBy(t: Test, by: Restorer, images: string, argv: readonly string[]): Promise<number | undefined> {
  if (by === 'CRIU 3.17') return (await criuRestoreDetached(t, images)) ? hostPidOf(argv) : undefined;
  const pidfile = path.join(images, 'restored.pid');
  const r = await criuAsync(['restore', '-D', images, '-d', '--pidfile', pidfile]);
  if (!t.equal(r.status, 0, `criu-ts restore: ${r.stderr}`)) return undefined;
  return Number(readFileSync(pidfile, 'utf8'));
}

/**
 * Restore `images` with `by`: the root is 1 again, and after a SIGTERM its verdict in `out`
 * (every process's) is PASS.
 */
async function restoreAndPass(
  t: Test,
  by: Restorer,
  images: string,
  argv: readonly string[],
  out: string,
  what: string,
): Promise<void> {
  const restored = await restoreBy(t, by, images, argv);
  if (restored === undefined) return;
  t.equal(innerPid(restored), 1, 'pid 1 again, in a new PID namespace');
  process.kill(restored, 'SIGTERM');
  await passes(t, out, what, restored);
}

for (const by of RESTORERS)
  t.test(
    `cr_fpu as the init of its PID namespace: dumped as pid 1, ${by} restores it there`,
    { skip: skipFor(by) },
    async (t) => {
      const dir = t.testdir();
      const { pid, argv, out } = await startInit(t, dir);
      const images = path.join(dir, 'img');
      const d = await criuAsync(['dump', '-t', String(pid), '-D', images]);
      t.equal(d.status, 0, d.stderr);
      await waitGone(pid);
      t.same(await pstreeOf(images), [[1, 0, 1, 1, 1]], 'pstree: pid 1, its own session and group, thread 1');
      for (const f of ['core-1.img', 'mm-1.img', 'fs-1.img', 'ids-1.img', 'pagemap-1.img'])
        t.ok(existsSync(path.join(images, f)), f);
      const ids = (await readImage(path.join(images, 'ids-1.img'), 'IDS')).records[0]?.entry as ImageEntry;
      const inventory = (await readImage(path.join(images, 'inventory.img'), 'INVENTORY')).records[0]
        ?.entry as ImageEntry;
      t.not(ids['pid_ns_id'], (inventory['root_ids'] as ImageEntry)['pid_ns_id'], "the tree's own PID namespace");
      if (crit !== undefined) {
        const shown = JSON.parse(
          execFileSync(crit, ['show', path.join(images, 'pstree.img')], { encoding: 'utf8' }),
        ) as {
          entries: ImageEntry[];
        };
        t.same(shown.entries, [{ pid: 1, ppid: 0, pgid: 1, sid: 1, threads: [1] }], "Debian's crit reads it so");
      }
      await restoreAndPass(t, by, images, argv, out, 'its registers are as they were');
    },
  );

t.test(
  'cr_basic as the init of its PID namespace (a thread, a pending signal, timers): criu-ts restores it',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const { pid, argv, out } = await startInit(t, dir, true, 'cr_basic');
    const images = path.join(dir, 'img');
    const d = await criuAsync(['dump', '-t', String(pid), '-D', images]);
    t.equal(d.status, 0, d.stderr);
    await waitGone(pid);
    t.same(await pstreeOf(images), [[1, 0, 1, 1, 1, 2]], 'pstree: pid 1 and its thread 2');
    // It checks its memory, files, pipe, handlers, its pending SIGUSR2, itimer, limits, its
    // thread (tid 2 there, its name), its pid.
    await restoreAndPass(t, 'criu-ts', images, argv, out, 'its state is as it was');
  },
);

for (const [i, by] of RESTORERS.entries())
  t.test(
    `a shell and its two children in a PID namespace: ${by} restores them as 1, 2 and 3`,
    { skip: skipFor(by) },
    async (t) => {
      const dir = t.testdir();
      const argv = ['sh', '-c', `sleep ${3601 + 2 * i} & sleep ${3602 + 2 * i} & wait`];
      const pid = await startInPidNs(t, argv);
      const childrenOf = (p: number): number[] =>
        readFileSync(`/proc/${p}/task/${p}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
      const isSleep = (c: number): boolean => readFileSync(`/proc/${c}/cmdline`, 'utf8').startsWith('sleep\0');
      await poll(() => childrenOf(pid).length === 2 && childrenOf(pid).every(isSleep), 'the two sleeps', 10_000);
      /** Each child of the shell: its pid in the namespace and its command line. */
      const tree = (p: number): string[] =>
        childrenOf(p)
          .map((c) => `${innerPid(c)} ${readFileSync(`/proc/${c}/cmdline`, 'utf8').replaceAll('\0', ' ').trim()}`)
          .sort();
      const before = tree(pid);
      t.same(
        before.map((l) => l.split(' ')[0]),
        ['2', '3'],
        'the children are 2 and 3 there',
      );
      const images = path.join(dir, 'img');
      const d = await criuAsync(['dump', '-t', String(pid), '-D', images]);
      t.equal(d.status, 0, d.stderr);
      await waitGone(pid);
      const pstree = await pstreeOf(images);
      t.same(
        pstree.map((e) => e.slice(0, 4)),
        [
          [1, 0, 1, 1],
          [2, 1, 1, 1],
          [3, 1, 1, 1],
        ],
        'pstree: the pids, parents, groups and session of the namespace',
      );
      for (const p of [1, 2, 3]) t.ok(existsSync(path.join(images, `core-${p}.img`)), `core-${p}.img`);
      const restored = await restoreBy(t, by, images, argv);
      if (restored === undefined) return;
      t.equal(innerPid(restored), 1, 'the shell is pid 1 again');
      t.same(tree(restored), before, 'its children are back with their pids and command lines');
    },
  );

for (const by of RESTORERS)
  t.test(
    `a pre-dump and a tracked dump of a PID namespace: ${by} restores the chain`,
    { skip: skipFor(by) },
    async (t) => {
      const dir = t.testdir();
      const { pid, argv, out } = await startInit(t, dir);
      const pre = await criuAsync(['pre-dump', '-t', String(pid), '-D', path.join(dir, 'd1')]);
      t.equal(pre.status, 0, pre.stderr);
      t.ok(existsSync(path.join(dir, 'd1', 'pagemap-1.img')), "the pre-dump's pagemap-1.img");
      const images = path.join(dir, 'd2');
      const d = await criuAsync(['dump', '-t', String(pid), '-D', images, '--prev-images-dir', '../d1', '--track-mem']);
      t.equal(d.status, 0, d.stderr);
      const { runs } = await readPagemap(path.join(images, 'pagemap-1.img'));
      t.ok(
        runs.some((r) => (r.flags & PE_PARENT) !== 0),
        'pages left to the parent',
      );
      await waitGone(pid);
      await restoreAndPass(t, by, images, argv, out, 'its registers are as they were');
    },
  );

t.test(
  'cr_tree in a PID namespace of its own: criu-ts dumps and restores its four processes, each with its pid there',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const out = path.join(dir, 'report.txt');
    const argv = [fixturePath('cr_tree'), out];
    // cr_tree makes itself a session leader (setsid) in its namespace.
    const pid = await startInPidNs(t, argv, false);
    await poll(() => existsSync(out) && /READY 1\n/.test(readFileSync(out, 'utf8')), 'READY 1', 10_000);
    const tree = /^TREE R=1 A=(\d+) B=(\d+) G=(\d+)$/m.exec(readFileSync(out, 'utf8'));
    t.ok(tree !== null, 'the tree as its namespace sees it');
    const images = path.join(dir, 'img');
    const d = await criuAsync(['dump', '-t', String(pid), '-D', images]);
    t.equal(d.status, 0, d.stderr);
    await waitGone(pid);
    t.same(
      (await pstreeOf(images)).map((e) => e[0]).sort(),
      ['1', tree?.[1], tree?.[2], tree?.[3]].map(Number).sort(),
      'pstree: R, A, B and G as the namespace saw them',
    );
    // Each process checks its pid, parent, group and session, memory, files and its peers'.
    await restoreAndPass(t, 'criu-ts', images, argv, out, 'R, A, B and G pass their checks');
    t.notMatch(readFileSync(out, 'utf8'), /FAIL/);
  },
);

t.test(
  'two trees in PID namespaces of their own, both pid 1, with TCP connections: each keeps its own network lock',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const trees = await Promise.all(
      ['a', 'b'].map(async (name) => {
        const out = path.join(dir, `${name}.txt`);
        const argv = [fixturePath('cr_state'), 'tcp-conn', out];
        const pid = await startInPidNs(t, argv);
        await poll(() => existsSync(out) && /READY 1\n/.test(readFileSync(out, 'utf8')), `${name} READY 1`, 10_000);
        return { name, out, argv, pid, images: path.join(dir, name) };
      }),
    );
    const locks = (): string[] => [...nftTablesText().matchAll(/table inet (criu-ts-\S+)/g)].map((m) => m[1] as string);
    const before = new Set(locks());
    const lockOf: string[] = [];
    for (const tree of trees) {
      const d = await criuAsync(['dump', '-t', String(tree.pid), '-D', tree.images, '--tcp-established']);
      t.equal(d.status, 0, d.stderr);
      await waitGone(tree.pid);
      const made = locks().filter((l) => !before.has(l) && !lockOf.includes(l));
      t.equal(made.length, 1, `${tree.name}'s dump made one lock table: ${made.join(' ')}`);
      lockOf.push(made[0] ?? '?');
    }
    t.not(lockOf[0], lockOf[1], 'one table each, though both roots are 1');
    for (const [i, tree] of trees.entries()) {
      const restored = await restoreBy(t, 'criu-ts', tree.images, tree.argv);
      if (restored === undefined) return;
      t.notOk(locks().includes(lockOf[i] as string), `${tree.name}'s restore lifted its lock`);
      if (i === 0) t.ok(locks().includes(lockOf[1] as string), "and left the other tree's");
      process.kill(restored, 'SIGTERM');
      await poll(() => /PASS|FAIL/.test(readFileSync(tree.out, 'utf8')), 'the verdict', 10_000);
      t.match(readFileSync(tree.out, 'utf8'), /PASS/, `${tree.name}'s connection carries its bytes`);
    }
  },
);

// cr_tree makes itself a session leader (setsid) in its namespace.
for (const { fixture, setsid } of [
  { fixture: 'cr_basic', setsid: 'setsid' },
  { fixture: 'cr_tree', setsid: '' },
])
  t.test(
    `criu-migrate moves ${fixture} with its PID namespace: pid 1 there on DST, its check passes`,
    { skip: needsRoot },
    async (t) => {
      const { src, dst, dir, a, b } = await hostPair(t, ['-v4']);
      const report = path.join(dir, 'report.txt');
      const bin = fixturePath(fixture);
      const started = await src.exec(
        `unshare --pid --fork ${setsid} '${bin}' '${report}' </dev/null >/dev/null 2>&1 &`,
      );
      t.equal(started.status, 0, started.stderr);
      await poll(() => existsSync(report) && /READY 1\n/.test(readFileSync(report, 'utf8')), 'READY 1', 10_000);
      // The init: the oldest process running it (cr_tree's children run it too).
      const pid = Number((await src.exec(`pgrep -o -f '^${bin} ${report}$'`)).stdout.trim());
      t.ok(pid > 1, `the init of its PID namespace is ${pid} on SRC`);
      const r = await runMigrate(['--json', '--token-file', tokenFile(dir), a.target, b.target, String(pid)]);
      if (!t.equal(r.status, 0, `criu-migrate: ${r.stderr}`)) return;
      const dstPid = (JSON.parse(r.stdout) as Record<string, number>)['dst_pid'] as number;
      const nsPid = await dst.exec(`grep NSpid /proc/${dstPid}/status`);
      t.match(nsPid.stdout, /\t1\n$/, `pid 1 in a new PID namespace on DST (${dstPid} there)`);
      t.not((await src.exec(`test -e /proc/${pid}`)).status, 0, 'gone from SRC');
      // The pre-copy went into a skeleton in the new namespace, which the final restore took.
      t.match(b.stderr(), /Pre-copy pages-1: \d+ pages read into task/, "DST's skeleton took the pre-copy");
      t.notMatch(b.stderr(), /is not the pre-copied one/, 'and the final restore took the skeleton');
      t.equal((await dst.exec(`kill -TERM ${dstPid}`)).status, 0);
      await poll(() => /PASS|FAIL/.test(readFileSync(report, 'utf8')), 'the verdict', 20_000);
      t.match(readFileSync(report, 'utf8'), /PASS/, 'its state is as it was (each process checks its own)');
      t.notMatch(readFileSync(report, 'utf8'), /FAIL/);
    },
  );

t.test('a zombie of a PID namespace comes back a zombie, with its pid there', { skip: needsRoot }, async (t) => {
  const dir = t.testdir({ 'zombie.py': 'import os, time\nif os.fork() == 0:\n    os._exit(3)\ntime.sleep(3641)\n' });
  const argv = ['/usr/bin/python3', path.join(dir, 'zombie.py')];
  const pid = await startInPidNs(t, argv);
  const childrenOf = (p: number): number[] =>
    readFileSync(`/proc/${p}/task/${p}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  await poll(() => childrenOf(pid).some((c) => readStatus(c)?.state === 'Z'), 'the zombie', 10_000);
  const zombie = innerPid(childrenOf(pid)[0] as number);
  const images = path.join(dir, 'img');
  const d = await criuAsync(['dump', '-t', String(pid), '-D', images]);
  t.equal(d.status, 0, d.stderr);
  await waitGone(pid);
  t.same(
    (await pstreeOf(images)).map((e) => e.slice(0, 2)),
    [
      [1, 0],
      [zombie, 1],
    ],
    'pstree: the init and its zombie, as the namespace saw them',
  );
  const restored = await restoreBy(t, 'criu-ts', images, argv);
  if (restored === undefined) return;
  t.equal(innerPid(restored), 1, 'pid 1 again');
  const [child] = childrenOf(restored);
  t.equal(readStatus(child as number)?.state, 'Z', 'its child is a zombie again');
  t.equal(innerPid(child as number), zombie, `with its pid there (${zombie})`);
});

t.test(
  'two sources migrate trees with the same pid, each in its PID namespace, to one DST at once',
  { skip: needsRoot },
  async (t) => {
    const hosts = await simHosts(['src', 'src2', 'dst'], { t });
    const [src1, src2, dst] = hosts;
    if (src1 === undefined || src2 === undefined || dst === undefined) throw new Error('no hosts');
    const dir = t.testdir();
    const agents = await Promise.all(hosts.map((h) => startAgent(t, h, dir)));
    const bin = fixturePath('cr_basic');
    // The same pid on both sources: each host's PID namespace counts from 20000 here.
    const sources = await Promise.all(
      [src1, src2].map(async (h) => {
        const report = path.join(dir, `${h.name}.txt`);
        const r = await h.exec(
          `echo 19999 > /proc/sys/kernel/ns_last_pid; unshare --pid --fork setsid '${bin}' '${report}' </dev/null >/dev/null 2>&1 &`,
        );
        t.equal(r.status, 0, r.stderr);
        await poll(() => existsSync(report) && /READY 1\n/.test(readFileSync(report, 'utf8')), 'READY 1', 10_000);
        const pid = Number((await h.exec(`pgrep -o -f '^${bin} ${report}$'`)).stdout.trim());
        return { host: h, report, pid };
      }),
    );
    t.equal(sources[0]?.pid, sources[1]?.pid, `the same pid on both sources (${sources[0]?.pid})`);
    const dstAgent = agents[2]?.target as string;
    const runs = await Promise.all(
      sources.map((s, i) =>
        runMigrate(['--json', '--token-file', tokenFile(dir), agents[i]?.target as string, dstAgent, String(s.pid)]),
      ),
    );
    for (const [i, s] of sources.entries()) {
      const r = runs[i] as Awaited<ReturnType<typeof runMigrate>>;
      if (!t.equal(r.status, 0, `${s.host.name}'s criu-migrate: ${r.stderr}`)) continue;
      const dstPid = (JSON.parse(r.stdout) as Record<string, number>)['dst_pid'] as number;
      t.equal((await dst.exec(`kill -TERM ${dstPid}`)).status, 0, `${s.host.name}'s tree runs on DST`);
      await poll(() => /PASS|FAIL/.test(readFileSync(s.report, 'utf8')), 'the verdict', 20_000);
      t.match(readFileSync(s.report, 'utf8'), /PASS/, `${s.host.name}'s tree has its own memory on DST`);
      t.notMatch(readFileSync(s.report, 'utf8'), /FAIL/);
    }
  },
);

t.test('dump refuses a process of a PID namespace that is not its init', { skip: needsRoot }, async (t) => {
  const argv = ['sh', '-c', 'sleep 3621 & wait'];
  const pid = await startInPidNs(t, argv);
  const child = await hostPidOf(['sleep', '3621'], false);
  const dir = t.testdir();
  const d = await criuAsync(['dump', '-t', String(child), '-D', path.join(dir, 'img')]);
  t.equal(d.status, 1, 'dump exits 1');
  t.match(d.stderr, /it lives in a PID namespace of its own without being its init \(it is 2 there\)/);
  t.equal(d.stderr.trim().split('\n').length, 1, `one line: ${d.stderr}`);
  await sleep(100);
  t.match(readStatus(child)?.state, /S/, 'the child sleeps on, untouched');
  t.equal(readStatus(child)?.tracerPid, 0, 'not traced');
  t.ok(existsSync(`/proc/${pid}`), 'its init too');
});

t.test('dump refuses a PID namespace that a process joined from outside (setns)', { skip: needsRoot }, async (t) => {
  const pid = await startInPidNs(t, ['sh', '-c', 'sleep 3611 & wait']);
  const joiner = spawn('nsenter', ['-t', String(pid), '-p', '--', 'sleep', '3612'], { stdio: 'ignore' });
  t.teardown(() => {
    for (const p of pidsOf(['sleep', '3612'])) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    joiner.kill('SIGKILL');
  });
  const joined = await hostPidOf(['sleep', '3612'], false);
  t.ok((innerPid(joined) ?? 0) > 1, 'the joiner has a pid in the namespace');
  const d = await criuAsync(['dump', '-t', String(pid), '-D', path.join(t.testdir(), 'img')]);
  t.equal(d.status, 1, 'dump exits 1');
  t.match(
    d.stderr,
    new RegExp(`process ${joined} is in its PID namespace without being of the tree \\(it joined it with setns\\)`),
  );
  t.equal(d.stderr.trim().split('\n').length, 1, `one line: ${d.stderr}`);
  t.equal(readStatus(pid)?.tracerPid, 0, 'the tree runs on, not traced');
});

t.test('dump refuses an init whose session leader is outside its PID namespace', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const { pid, out } = await startInit(t, dir, false);
  const d = await criuAsync(['dump', '-t', String(pid), '-D', path.join(dir, 'img')]);
  t.equal(d.status, 1, 'dump exits 1');
  t.match(
    d.stderr,
    /the session leader of process \d+ is outside the tree's PID namespace; start its init as a session leader there \(setsid\)/,
  );
  t.equal(d.stderr.trim().split('\n').length, 1, `one line: ${d.stderr}`);
  process.kill(pid, 'SIGTERM');
  await passes(t, out, 'it runs on, its check passes');
});
