/**
 * Live migration that fails must leave the source as it was (issue #5): the DST agent killed in
 * the middle, the data connection (SRC's dump -> DST's page server) cut while the control channel
 * stays up, DST's disk full, a wrong token. Each time criu-migrate exits non-zero with one line
 * naming the reason, the workload keeps running on SRC with its counter going on, no dirty-memory
 * tracking is left in it (no uffd-wp VMA, no holder process), and its own check of its memory
 * passes when it is finally stopped. A controller that goes away with the source frozen (during
 * the final dump, before or after DST's restore) leaves it to SRC's agent, which asks DST's how
 * the migration ended: one copy runs on, whichever host it is on; with DST's agent restarted in
 * between too, and an SRC agent that stops before DST answers leaves the source stopped.
 */
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  statSync,
  watch,
  writeFileSync,
  type FSWatcher,
} from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { AgentClient } from '../../../migrate/agent-client.js';
import type { ParamsOf } from '../../../migrate/protocol.js';
import { simHosts, type SimHost } from '../../../migrate/sim-hosts.js';
import * as sys from '../../../src/sys/native.js';
import { poll, sleep } from '../../helpers/cr.js';
import { fixturePath } from '../../helpers/fixture.js';
import { runMigrate, startAgent, startOnHost, TOKEN, tokenFile, type HostWorkload } from '../../helpers/migrate.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (namespaces, ptrace, clone3 set_tid)';

const lastCount = (report: string): number => Number([...report.matchAll(/COUNT (\d+)/g)].at(-1)?.[1] ?? -1);

/** The source runs on as before: counting, not tracked, memory intact. */
async function sourceIntact(t: Test, src: SimHost, w: HostWorkload): Promise<void> {
  t.equal((await src.exec(`test -e /proc/${w.pid}`)).status, 0, 'the source still runs');
  const before = lastCount(w.report());
  await poll(() => lastCount(w.report()) > before, 'the counter to go on on SRC', 10_000);
  const smaps = await src.exec(`grep -c '^VmFlags:.* uw' /proc/${w.pid}/smaps || true`);
  t.equal(smaps.stdout.trim(), '0', 'no VMA is left uffd-wp registered');
  const holders = await src.exec(`pgrep -f '^[^ ]*track-holder ${w.pid} ' || true`);
  t.equal(holders.stdout.trim(), '', 'no tracker holder is left');
  await src.exec(`kill -TERM ${w.pid}`);
  await w.waitFor(/PASS|FAIL/, 20_000);
  t.match(w.report(), /PASS/, 'its memory check passes');
}

/** `p`, or a failure naming `what` after `timeoutMs` (a hang fails the test, not the run). */
async function within<T>(p: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out waiting for ${what} (${timeoutMs} ms)`)), timeoutMs);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

async function setup(t: Test, dstDir?: (dst: SimHost, dir: string) => Promise<string>) {
  const [src, dst] = await simHosts(['src', 'dst'], { t });
  if (src === undefined || dst === undefined) throw new Error('no hosts');
  const dir = t.testdir();
  const a = await startAgent(t, src, dir);
  const agentDir = dstDir === undefined ? undefined : await dstDir(dst, dir);
  const b = await startAgent(t, dst, dir, agentDir);
  const w = await startOnHost(t, src, [fixturePath('migrate_counter'), '128', '10'], path.join(dir, 'report.txt'));
  await w.waitFor(/COUNT[^\n]*\n[^\n]*COUNT/, 10_000);
  return { src, dst, dir, a, b, w, agentDir };
}

t.test('the DST agent dies during the pre-copy', { skip: needsRoot }, async (t) => {
  const { src, dir, a, b, w } = await setup(t);
  const agentRoot = path.join(dir, 'agent-dst');
  // A downtime target of 1 ms keeps the pre-copy going for several iterations: a migration that
  // converged after its second one could end between two looks of a test starved of CPU.
  const state: { result?: Awaited<ReturnType<typeof runMigrate>> } = {};
  const migrating = runMigrate([
    '--token-file',
    tokenFile(dir),
    '--downtime-target',
    '1',
    a.target,
    b.target,
    String(w.pid),
  ]).then((r) => (state.result = r));
  // Once the first iteration has arrived on DST, kill its agent.
  await poll(
    () =>
      state.result !== undefined ||
      (existsSync(agentRoot) &&
        readdirSync(agentRoot).some((m) => m.startsWith('m-') && existsSync(path.join(agentRoot, m, 'pages-2')))),
    'the second iteration to start',
    60_000,
  );
  if (state.result !== undefined)
    throw new Error(`criu-migrate ended before its second iteration: ${state.result.stderr.trim()}`);
  await b.agent.kill('SIGKILL');
  const r = await migrating;
  t.not(r.status, 0, 'criu-migrate fails');
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  t.match(r.stderr, /Migration failed .*the source runs on/);
  await sourceIntact(t, src, w);
});

/**
 * The fds of `pid`'s established TCP connections whose local port is not `exceptPort`: on DST's
 * agent, the page servers' data connections (its only other connection is the control channel,
 * on the agent's own port). /proc/PID/net/tcp shows the netns of `pid`.
 */
function dataConnectionFds(pid: number, exceptPort: number): number[] {
  const inodes = new Set<string>();
  for (const line of readFileSync(`/proc/${pid}/net/tcp`, 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    // sl local_address rem_address st ... inode (10th field)
    const localPort = parseInt(f[1]?.split(':')[1] ?? '', 16);
    if (f[3] === '01' && localPort !== exceptPort && f[9] !== undefined) inodes.add(f[9]);
  }
  const fds: number[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let link: string;
    try {
      link = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (m?.[1] !== undefined && inodes.has(m[1])) fds.push(Number(fd));
  }
  return fds;
}

/**
 * Break the TCP connection behind fd `fd` of `pid`: take a duplicate of it (pidfd_getfd) and
 * shutdown(SHUT_RDWR) the socket itself, as if the peer had gone; the owner's blocked recv wakes
 * with end of stream, and once it closes the socket the sender's writes are reset.
 */
function cutConnection(pid: number, fd: number): boolean {
  const pidfd = sys.pidfdOpen(pid, 0);
  try {
    const dup = sys.pidfdGetfd(pidfd, fd, 0);
    try {
      sys.shutdown(dup, 2 /* SHUT_RDWR */);
      return true;
    } catch {
      return false; // not connected any more
    } finally {
      sys.close(dup);
    }
  } catch {
    return false; // the fd is closed meanwhile
  } finally {
    sys.close(pidfd);
  }
}

/** The PIDs, inside their own PID namespace, of `pid`'s children (forked by any of its threads). */
function childNsPids(pid: number): number[] {
  const children = readdirSync(`/proc/${pid}/task`).flatMap((tid) => {
    try {
      return readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    } catch {
      return []; // the thread ended meanwhile
    }
  });
  return children.map((c) => {
    try {
      return Number(/^NSpid:.*\s(\d+)$/m.exec(readFileSync(`/proc/${c}/status`, 'utf8'))?.[1] ?? -1);
    } catch {
      return -1; // gone meanwhile
    }
  });
}

/** setup(), then a migration started in the background, with what the data-path tests watch. */
async function migrateInBackground(t: Test) {
  const hosts = await setup(t);
  const { dir, a, b, w } = hosts;
  const agentRoot = path.join(dir, 'agent-dst');
  const agentPid = await b.agent.outerPid();
  const agentPort = Number(b.target.split(':').at(-1));
  const migrations = (): string[] =>
    existsSync(agentRoot) ? readdirSync(agentRoot).filter((m) => m.startsWith('m-')) : [];
  const state: { result?: Awaited<ReturnType<typeof runMigrate>> } = {};
  const migrating = runMigrate(['--token-file', tokenFile(dir), a.target, b.target, String(w.pid)]).then(
    (r) => (state.result = r),
  );
  return { ...hosts, agentRoot, agentPid, agentPort, migrations, state, migrating };
}

t.test('the data connection breaks during the pre-copy', { skip: needsRoot }, async (t) => {
  const { src, dst, dir, w, agentRoot, agentPid, agentPort, migrations, state, migrating } =
    await migrateInBackground(t);
  // Cut the data connection of the second (or a later) iteration as its first pages file is
  // created on DST, so the skeleton there holds the earlier ones; the control channel (the agent's
  // own port) is left alone. Those iterations move only what was dirtied: they last tens of ms,
  // hence inotify rather than polling.
  await poll(() => migrations().length > 0 || state.result !== undefined, 'the migration to start on DST', 60_000);
  const mdir = path.join(agentRoot, migrations()[0] ?? 'none');
  let isCut = false;
  let skeletonPids: number[] = [];
  const watchers: FSWatcher[] = [];
  const tryCut = (): void => {
    if (isCut) return;
    const fds = dataConnectionFds(agentPid, agentPort);
    // Read at the cut: the skeleton is the agent's child, with the task's PID inside DST.
    skeletonPids = childNsPids(agentPid);
    for (const fd of fds) isCut = cutConnection(agentPid, fd) || isCut;
  };
  const watchIteration = (name: string): void => {
    if (!/^pages-([2-9]|\d\d+)$/.test(name)) return;
    const d = path.join(mdir, name);
    try {
      watchers.push(watch(d, (_, f) => f?.startsWith('.pages-') === true && tryCut()));
      if (readdirSync(d).some((f) => f.startsWith('.pages-'))) tryCut();
    } catch {
      // gone already: that iteration is over
    }
  };
  try {
    watchers.push(watch(mdir, (_, f) => f !== null && watchIteration(f)));
    for (const f of readdirSync(mdir)) watchIteration(f);
    await poll(
      () => isCut || state.result !== undefined || existsSync(path.join(mdir, 'final')),
      'a data connection to cut',
      60_000,
    );
  } finally {
    for (const x of watchers) x.close();
  }
  t.ok(isCut, 'a data connection was cut during the pre-copy');
  t.same(skeletonPids, [w.pid], 'the skeleton held the PID on DST then');
  const r = await within(migrating, 60_000, 'criu-migrate to end after the cut');
  t.not(r.status, 0, 'criu-migrate fails');
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  t.match(r.stderr, /Migration failed \(iteration \d+: pre-dump on SRC\): .*(connection|reset).*the source runs on/);
  t.notMatch(r.stderr, /^\s+at /m, 'no stack trace');
  await sourceIntact(t, src, w);
  // DST: the skeleton is gone (killed and reaped), the page server closed, no images left.
  let isSkeletonGone = false;
  for (let i = 0; i < 50 && !isSkeletonGone; i++) {
    isSkeletonGone = (await dst.exec(`test -e /proc/${w.pid}`)).status !== 0;
    if (!isSkeletonGone) await sleep(200);
  }
  t.ok(isSkeletonGone, 'the skeleton is gone on DST (killed and reaped)');
  t.same(dataConnectionFds(agentPid, agentPort), [], 'no data connection is left open on DST');
  t.same(migrations(), [], 'no images are left on DST');
  t.same(
    readdirSync(path.join(dir, 'agent-src')).filter((m) => m.startsWith('m-')),
    [],
    'no images are left on SRC',
  );
  t.equal((await dst.exec('true')).status, 0, 'DST stays usable');
});

t.test('the data connection goes silent during the pre-copy', { skip: needsRoot }, async (t) => {
  const { src, dst, dir, w, agentRoot, agentPid, agentPort, migrations, state, migrating } =
    await migrateInBackground(t);
  // While the first iteration's pages flow (its pages file grows on DST), DST's packets to SRC
  // start to vanish (a blackhole route on DST: no reset, no error, as when a link or a middlebox
  // dies): SRC sees no ACK and stops sending, DST sees nothing more. Only the data connection
  // runs between SRC and DST; both control channels come from here and stay up. (The first
  // iteration moves the whole 128 MiB: it is the one long enough to hit mid-way every time.)
  const growing = (): boolean =>
    migrations().some((m) => {
      const d = path.join(agentRoot, m, 'pages-1');
      if (!existsSync(d)) return false;
      return readdirSync(d).some((f) => {
        try {
          return f.startsWith('.pages-') && statSync(path.join(d, f)).size >= 4 << 20;
        } catch {
          return false; // renamed into place meanwhile
        }
      });
    });
  await poll(() => state.result !== undefined || growing(), 'the first iteration to send pages', 60_000);
  t.equal(state.result, undefined, 'the migration is still in its pre-copy');
  // `ip -n` straight from here: a few ms, not the hundred of an exec through hosts.sh.
  const route = spawnSync('ip', ['-n', `cts-${dst.hostName}`, 'route', 'add', 'blackhole', `${src.addr}/32`], {
    encoding: 'utf8',
  });
  t.equal(route.status, 0, `DST's packets to SRC vanish ${route.stderr}`);
  t.teardown(() => spawnSync('ip', ['-n', `cts-${dst.hostName}`, 'route', 'del', 'blackhole', `${src.addr}/32`]));
  t.ok(dataConnectionFds(agentPid, agentPort).length > 0, 'the data connection was open when the path went silent');
  // Bounded: without a timeout on the data connection, SRC's send would wait for TCP to give up
  // (tcp_retries2: about 15 minutes), its connect for the SYN retries, DST's receive forever.
  const tSilent = Date.now();
  const r = await within(migrating, 100_000, 'criu-migrate to end after the data path went silent');
  t.comment(`criu-migrate ended ${Date.now() - tSilent} ms after the data path went silent`);
  t.not(r.status, 0, 'criu-migrate fails');
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  t.match(r.stderr, /Migration failed \(iteration 1: pre-dump on SRC\): .*within the timeout.*the source runs on/);
  t.notMatch(r.stderr, /^\s+at /m, 'no stack trace');
  await sourceIntact(t, src, w);
  t.not((await dst.exec(`test -e /proc/${w.pid}`)).status, 0, 'no task holds the PID on DST');
  // DST's page server gives up on its own (its idle timeout), even if it had not yet when asked.
  await poll(() => dataConnectionFds(agentPid, agentPort).length === 0, 'DST to close the data connection', 60_000);
  t.same(migrations(), [], 'no images are left on DST');
  t.same(
    readdirSync(path.join(dir, 'agent-src')).filter((m) => m.startsWith('m-')),
    [],
    'no images are left on SRC',
  );
});

t.test("DST's disk is full", { skip: needsRoot }, async (t) => {
  const small = async (dst: SimHost, dir: string): Promise<string> => {
    const d = path.join(dir, 'small');
    const r = await dst.exec(`mkdir -p '${d}' && mount -t tmpfs -o size=24m tmpfs '${d}'`);
    if (r.status !== 0) throw new Error(r.stderr);
    return d;
  };
  const { src, dir, a, b, w } = await setup(t, small);
  const r = await runMigrate(['--token-file', tokenFile(dir), a.target, b.target, String(w.pid)]);
  t.not(r.status, 0, 'criu-migrate fails');
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  t.match(r.stderr, /No space left|ENOSPC/);
  await sourceIntact(t, src, w);
});

t.test('a wrong token is refused before anything is touched', { skip: needsRoot }, async (t) => {
  const { src, dir, a, b, w } = await setup(t);
  const wrong = path.join(dir, 'wrong-token');
  writeFileSync(wrong, 'not-the-token\n', { mode: 0o600 });
  const r = await runMigrate(['--token-file', wrong, a.target, b.target, String(w.pid)]);
  t.not(r.status, 0);
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  t.match(r.stderr, /token|auth/i);
  await sourceIntact(t, src, w);
});

/**
 * A controller (driven here by hand, over the protocol, as criu-migrate does it) that goes away
 * with the source frozen after the final dump: SRC's agent asks DST's how the migration ended.
 */
async function finalDumpThenLeave(
  t: Test,
  s: Awaited<ReturnType<typeof setup>>,
  isRestored: boolean,
  beforeLeaving: () => Promise<void> = () => Promise.resolve(),
): Promise<{ dst: AgentClient; restore: ParamsOf<'restore-final'> }> {
  const ctl = await AgentClient.connect(s.a.target, TOKEN);
  const dst = await AgentClient.connect(s.b.target, TOKEN);
  t.teardown(() => dst.close());
  const rp = await dst.call('receive-pages', { dir: 'm-gone/final', port: 0 });
  const fd = await ctl.call('final-dump', {
    pid: s.w.pid,
    dir: 'm-gone/final',
    psAddress: rp.address,
    psPort: rp.port,
    dstAgent: s.b.target,
  });
  const restore = { pid: s.w.pid, dir: 'm-gone/final', images: fd.images, serverId: rp.serverId };
  if (isRestored) t.equal((await dst.call('restore-final', restore)).pid, s.w.pid, 'DST runs the task');
  await beforeLeaving();
  ctl.close(); // gone without a word about the source
  return { dst, restore };
}

t.test('the controller goes away after DST restored: SRC ends the source', { skip: needsRoot }, async (t) => {
  const s = await setup(t);
  await finalDumpThenLeave(t, s, true);
  const isGone = async (): Promise<boolean> => (await s.src.exec(`test -e /proc/${s.w.pid}`)).status !== 0;
  for (let i = 0; i < 200 && !(await isGone()); i++) await sleep(100);
  t.ok(await isGone(), 'the source is gone from SRC: one copy runs');
  const before = lastCount(s.w.report());
  await poll(() => lastCount(s.w.report()) > before, 'the counter to go on on DST', 10_000);
  t.equal((await s.dst.exec(`test -e /proc/${s.w.pid}`)).status, 0, 'the task runs on DST');
  await s.dst.exec(`kill -TERM ${s.w.pid}`);
  await s.w.waitFor(/PASS|FAIL/, 20_000);
  t.match(s.w.report(), /PASS/, 'its memory check passes on DST');
});

t.test(
  'the controller goes away before the restore: SRC resumes the source, DST refuses the restore after',
  { skip: needsRoot },
  async (t) => {
    const s = await setup(t);
    const { dst, restore } = await finalDumpThenLeave(t, s, false);
    await sourceIntact(t, s.src, s.w);
    await t.rejects(dst.call('restore-final', restore), /Migration m-gone was given up/, 'DST refuses it now');
    t.not((await s.dst.exec(`test -e /proc/${s.w.pid}`)).status, 0, 'and runs no copy');
  },
);

t.test(
  'the controller goes away during the final dump: SRC resumes the source once it is done',
  { skip: needsRoot },
  async (t) => {
    const s = await setup(t);
    const ctl = await AgentClient.connect(s.a.target, TOKEN);
    const dst = await AgentClient.connect(s.b.target, TOKEN);
    t.teardown(() => dst.close());
    const rp = await dst.call('receive-pages', { dir: 'm-gone/final', port: 0 });
    const dumping = ctl.call('final-dump', {
      pid: s.w.pid,
      dir: 'm-gone/final',
      psAddress: rp.address,
      psPort: rp.port,
      dstAgent: s.b.target,
    });
    dumping.catch(() => undefined);
    ctl.close(); // right after the request: the agent sees the connection drop while it dumps
    await sourceIntact(t, s.src, s.w);
  },
);

t.test('a DST agent restarted after the restore still says the task runs there', { skip: needsRoot }, async (t) => {
  const s = await setup(t);
  const { dst } = await finalDumpThenLeave(t, s, true, async () => {
    await s.b.agent.kill('SIGKILL');
  });
  dst.close();
  // SRC asks a DST that is not there, then the agent again, on the same address and images root.
  await sleep(1500);
  t.equal((await s.src.exec(`test -e /proc/${s.w.pid}`)).status, 0, 'the source waits, frozen, for an answer');
  const again = await startAgent(t, s.dst, s.dir, undefined, ['--listen', s.b.target]);
  t.equal(again.target, s.b.target);
  const isGone = async (): Promise<boolean> => (await s.src.exec(`test -e /proc/${s.w.pid}`)).status !== 0;
  for (let i = 0; i < 200 && !(await isGone()); i++) await sleep(100);
  t.ok(await isGone(), 'the source is ended on SRC: one copy runs');
  await s.dst.exec(`kill -TERM ${s.w.pid}`);
  await s.w.waitFor(/PASS|FAIL/, 20_000);
  t.match(s.w.report(), /PASS/, 'its memory check passes on DST');
});

t.test('an SRC agent that stops before DST answered leaves the source stopped', { skip: needsRoot }, async (t) => {
  const s = await setup(t);
  await finalDumpThenLeave(t, s, false, async () => {
    await s.b.agent.kill('SIGKILL'); // DST cannot answer
  });
  await sleep(1500);
  await s.a.agent.kill('SIGTERM');
  await s.a.agent.exited;
  const state = await s.src.exec(`sed 's/.*) //' /proc/${s.w.pid}/stat | cut -d' ' -f1`);
  t.equal(state.stdout.trim(), 'T', 'stopped (SIGSTOP), not resumed: it may run on DST');
  t.match(s.a.stderr(), new RegExp(`task ${s.w.pid} is left stopped`), 'the agent says so');
  await s.src.exec(`kill -CONT ${s.w.pid}`);
  await sourceIntact(t, s.src, s.w);
});
