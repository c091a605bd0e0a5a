/**
 * Live migration of programs no one here wrote: a python3, a node and a java program holding state in
 * memory (test/helpers/programs.ts) move from SRC to DST while they tick; on DST they keep their
 * PID, their ticks go on from where they were, and the digest of their in-memory state is the one
 * they started with. A python asyncio server (a listening socket, epoll, a unix socket pair) moves
 * too and answers on DST, its count carried on. A process tree (cr_tree: four processes, two
 * groups, a pipe and a file offset shared between them) moves whole, through a skeleton of the
 * four on DST, and passes its own checks there. A shell forking a new child every 50 ms (its tree
 * changes between iterations) moves too and counts on. nginx (a master and two workers, a shared
 * memory zone) moves and serves on DST from the same workers, its connection counter going on.
 * PostgreSQL (six processes, shared buffers, a System V segment: each host has its own IPC
 * namespace, as real machines do) moves and answers on DST from the same processes; started in
 * UTS and IPC namespaces of its own, it moves with them, into a skeleton made in new ones.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { poll, sleep } from '../../helpers/cr.js';
import { fixturePath } from '../../helpers/fixture.js';
import { hostPair, runMigrate, startOnHost, tokenFile } from '../../helpers/migrate.js';
import {
  ASYNCIO_COUNTER,
  askCounter,
  httpGet,
  JAVA,
  javaCommand,
  NGINX,
  nginxConf,
  NODE,
  PG_BIN,
  PYTHON,
  startPostgres,
  untilServing,
} from '../../helpers/programs.js';
import { freePort } from '../../helpers/real-criu.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (namespaces, ptrace, clone3 set_tid)';

const lastTick = (text: string): number => Number([...text.matchAll(/^TICK (\d+) /gm)].at(-1)?.[1] ?? 0);

for (const prog of [
  { name: 'python3', file: 'progress.py', text: PYTHON, argv: (f: string) => ['/usr/bin/env', '-i', 'python3', f] },
  { name: 'node', file: 'progress.mjs', text: NODE, argv: (f: string) => ['/usr/bin/env', '-i', process.execPath, f] },
  { name: 'java', file: 'Progress.java', text: JAVA, argv: (f: string) => ['/usr/bin/env', '-i', ...javaCommand(f)] },
]) {
  t.test(`${prog.name} migrates live and keeps its state`, { skip: needsRoot }, async (t) => {
    const { src, dst, dir, a, b } = await hostPair(t);
    const script = path.join(dir, prog.file);
    writeFileSync(script, prog.text);
    const w = await startOnHost(t, src, prog.argv(script), path.join(dir, 'report.txt'));
    const digest = /READY \d+ (\S+)/.exec(w.report())?.[1] ?? '?';
    await poll(() => lastTick(w.report()) >= 3, 'three ticks', 10_000);
    const r = await runMigrate(['--json', '--token-file', tokenFile(dir), a.target, b.target, String(w.pid)]);
    t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
    const s = JSON.parse(r.stdout) as Record<string, number>;
    t.equal(s['dst_pid'], w.pid);
    t.comment(`downtime ${s['downtime_ms']} ms, total ${s['total_ms']} ms`);
    const before = lastTick(w.report());
    await poll(() => lastTick(w.report()) >= before + 3, 'ticks from DST', 10_000);
    t.equal((await dst.exec(`test -e /proc/${w.pid}`)).status, 0, 'it runs on DST');
    t.not((await src.exec(`test -e /proc/${w.pid}`)).status, 0, 'gone from SRC');
    const ticks = [...w.report().matchAll(/^TICK (\d+) (\S+)$/gm)];
    t.ok(
      ticks.every((m, i) => Number(m[1]) === i + 1),
      'the ticks go on without a gap or a restart',
    );
    t.ok(
      ticks.every((m) => m[2] === digest),
      'the in-memory state never changed',
    );
    await dst.exec(`kill -TERM ${w.pid}`);
    await poll(() => /BYE/.test(w.report()), 'BYE', 10_000);
    t.match(w.report(), new RegExp(`BYE \\d+ ${digest}`));
  });
}

t.test('a python asyncio server migrates live and serves its count on DST', { skip: needsRoot }, async (t) => {
  const { src, dst, dir, a, b } = await hostPair(t);
  const script = path.join(dir, 'counter.py');
  writeFileSync(script, ASYNCIO_COUNTER);
  // Bound to every address: the restored socket binds again on DST, whose address differs.
  const port = 8765;
  const w = await startOnHost(
    t,
    src,
    ['/usr/bin/env', '-i', 'python3', script, '0.0.0.0', String(port)],
    path.join(dir, 'report.txt'),
  );
  t.same(await askCounter(src.addr, port, 3), ['1', '2', '3'], 'three answers from SRC');
  const r = await runMigrate(['--json', '--token-file', tokenFile(dir), a.target, b.target, String(w.pid)]);
  t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
  t.equal((JSON.parse(r.stdout) as Record<string, number>)['dst_pid'], w.pid);
  t.same(await askCounter(dst.addr, port, 2), ['4', '5'], 'DST answers, counting on from where SRC was');
  await t.rejects(askCounter(src.addr, port, 1), 'nothing listens on SRC any more');
  await dst.exec(`kill -TERM ${w.pid}`);
  await w.waitFor('BYE 5');
  t.pass('SIGTERM on DST ends it through its self-pipe, with its count');
});

t.test('a process tree (cr_tree) migrates live and passes its checks on DST', { skip: needsRoot }, async (t) => {
  const { src, dst, dir, a, b } = await hostPair(t, ['-v', '3']);
  const w = await startOnHost(t, src, [fixturePath('cr_tree')], path.join(dir, 'report.txt'));
  const tree = /^TREE R=(\d+) A=(\d+) B=(\d+) G=(\d+)$/m.exec(w.report())?.slice(1).map(Number) ?? [];
  t.equal(tree.length, 4, `four processes: ${w.report()}`);
  const r = await runMigrate(['--json', '--token-file', tokenFile(dir), a.target, b.target, String(w.pid)]);
  t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
  const s = JSON.parse(r.stdout) as Record<string, number>;
  t.equal(s['dst_pid'], w.pid);
  t.comment(`downtime ${s['downtime_ms']} ms, total ${s['total_ms']} ms`);
  for (const pid of tree) {
    t.equal((await dst.exec(`test -e /proc/${pid}`)).status, 0, `${pid} runs on DST`);
    // Killed on SRC; reaped by its parent there, or by SRC's init for the orphans (in a while).
    const gone = async (): Promise<boolean> => (await src.exec(`test -e /proc/${pid}`)).status !== 0;
    const until = Date.now() + 10_000;
    while (!(await gone()) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    t.ok(await gone(), `${pid} is gone from SRC`);
  }
  // DST read the pre-copied pages into a skeleton of the four, and the restore took it.
  for (const pid of tree)
    t.match(b.stderr(), new RegExp(`pages read into task ${pid}\\b`), `${pid}'s pages pre-copied`);
  t.notMatch(b.stderr(), /not the pre-copied one/, 'the final restore used the skeleton');
  await dst.exec(`kill -TERM ${w.pid}`);
  await w.waitFor(/PASS|FAIL/);
  t.match(w.report(), /PASS/, w.report());
  t.notMatch(w.report(), /FAIL/);
});

t.test('a shell forking a child every 50 ms migrates live and counts on', { skip: needsRoot }, async (t) => {
  const { src, dst, dir, a, b } = await hostPair(t, ['-v', '3']);
  // $0 is the report file (startOnHost's last argument).
  const loop = 'echo "READY $$" > "$0"; i=0; while :; do i=$((i+1)); echo "TICK $i" >> "$0"; sleep 0.05; done';
  const w = await startOnHost(t, src, ['/bin/sh', '-c', loop], path.join(dir, 'report.txt'));
  const ticks = (): number[] => [...w.report().matchAll(/^TICK (\d+)$/gm)].map((m) => Number(m[1]));
  await poll(() => ticks().length >= 3, 'three ticks', 10_000);
  const r = await runMigrate(['--json', '--token-file', tokenFile(dir), a.target, b.target, String(w.pid)]);
  t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
  t.equal((JSON.parse(r.stdout) as Record<string, number>)['dst_pid'], w.pid);
  const before = ticks().length;
  await poll(() => ticks().length >= before + 5, 'ticks from DST', 10_000);
  t.equal((await dst.exec(`test -e /proc/${w.pid}`)).status, 0, 'the shell runs on DST');
  t.ok(
    ticks().every((n, i) => n === i + 1),
    'the count goes on without a gap or a restart',
  );
  // The shell's child at one iteration is gone by the next, or by the final dump: the skeleton
  // was made again, or the final restore started afresh.
  t.match(b.stderr(), /made again|not the pre-copied one/, 'DST saw the tree change');
  await dst.exec(`kill -KILL ${w.pid}`);
});

t.test(
  'nginx migrates live: DST serves from the same workers, its connection counter going on',
  { skip: needsRoot || (existsSync(NGINX) ? false : `${NGINX} is not installed (.ci/run installs nginx-light)`) },
  async (t) => {
    const { src, dst, dir, a, b } = await hostPair(t);
    mkdirSync(path.join(dir, 'logs'));
    mkdirSync(path.join(dir, 'tmp'));
    const port = freePort();
    const conf = path.join(dir, 'nginx.conf');
    // Every address: DST's differs from SRC's.
    writeFileSync(conf, nginxConf(dir, `0.0.0.0:${port}`));
    // PIDs above 20000 (free on DST); nginx daemonizes, its master's PID in SRC's namespace.
    const r0 = await src.exec(`echo 19999 > /proc/sys/kernel/ns_last_pid; '${NGINX}' -c '${conf}' -p '${dir}'`);
    t.equal(r0.status, 0, `nginx starts on SRC: ${r0.stderr}`);
    const master = Number(readFileSync(path.join(dir, 'nginx.pid'), 'utf8'));
    t.teardown(async () => {
      for (const h of [src, dst]) await h.exec(`pkill -KILL -f '${conf}'; kill -KILL ${master}`).catch(() => undefined);
    });
    await untilServing(port, src.addr);
    const answer = (body: string): { pid: number; conn: number } => {
      const m = /^pid=(\d+) conn=(\d+)$/m.exec(body);
      if (m === null) throw new Error(`not nginx's answer: ${body}`);
      return { pid: Number(m[1]), conn: Number(m[2]) };
    };
    const before = [];
    for (let i = 0; i < 4; i++) before.push(answer(await httpGet(port, '/', src.addr)));
    const workers = new Set(before.map((x) => x.pid));
    const r = await runMigrate(['--json', '--token-file', tokenFile(dir), a.target, b.target, String(master)]);
    t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
    t.comment(`downtime ${(JSON.parse(r.stdout) as Record<string, number>)['downtime_ms']} ms`);
    const after = [];
    for (let i = 0; i < 4; i++) after.push(answer(await httpGet(port, '/', dst.addr)));
    const lastConn = Math.max(...before.map((x) => x.conn));
    t.ok(
      after.every((x) => x.conn > lastConn),
      `DST answers, the connection counter going on (${lastConn}, then ${after.map((x) => x.conn).join(' ')})`,
    );
    const children = (await dst.exec(`cat /proc/${master}/task/${master}/children`)).stdout.trim().split(/\s+/);
    t.equal(children.length, 2, `the master runs on DST with its two workers (${children.join(' ')})`);
    t.ok(
      after.every((x) => children.includes(String(x.pid))),
      `its workers answer (${[...new Set(after.map((x) => x.pid))].join(' ')}; on SRC: ${[...workers].join(' ')})`,
    );
    await t.rejects(httpGet(port, '/', src.addr), 'nothing serves on SRC any more');
    const q = await dst.exec(
      `kill -QUIT ${master}; for i in $(seq 100); do kill -0 ${master} 2>/dev/null || exit 0; sleep 0.1; done; exit 1`,
    );
    t.equal(q.status, 0, 'SIGQUIT ends it on DST');
  },
);

t.test(
  'postgres migrates live: DST answers from the same processes, its System V segment moved',
  {
    skip:
      needsRoot ||
      (existsSync(path.join(PG_BIN, 'postgres'))
        ? false
        : `${PG_BIN} is not installed (.ci/run installs postgresql-15)`),
  },
  async (t) => {
    const { src, dst, dir, a, b } = await hostPair(t);
    // postgres runs as its own user, which cannot reach the test directory under /work.
    const pgDir = mkdtempSync(path.join(tmpdir(), 'criu-ts-pg-'));
    // PIDs above 20000 (free on DST).
    const pg = await startPostgres(pgDir, freePort(), {
      run: (cmd) => src.exec(cmd),
      before: 'echo 19999 > /proc/sys/kernel/ns_last_pid',
    });
    t.teardown(async () => {
      for (const h of [src, dst]) await h.exec(`pkill -KILL -f '${pg.dataDir}'`).catch(() => undefined);
      rmSync(pgDir, { recursive: true, force: true });
    });
    const ipcs = async (h: typeof src): Promise<string> => (await h.exec('tail -n +2 /proc/sysvipc/shm')).stdout.trim();
    t.notSame(await ipcs(src), '', 'its System V segment on SRC');
    t.equal(await ipcs(dst), '', 'none on DST (an IPC namespace of its own)');
    await pg.psql('CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 500);');
    const childrenOn = async (h: typeof src): Promise<string> =>
      (await h.exec(`cat /proc/${pg.pid}/task/${pg.pid}/children`)).stdout.trim();
    for (let i = 0; i < 100 && (await childrenOn(src)).split(/\s+/).length !== 5; i++) await sleep(100);
    const children = await childrenOn(src);
    const r = await runMigrate(['--json', '--token-file', tokenFile(dir), a.target, b.target, String(pg.pid)]);
    t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
    t.comment(`downtime ${(JSON.parse(r.stdout) as Record<string, number>)['downtime_ms']} ms`);
    t.equal(await childrenOn(dst), children, `the same processes on DST (${children})`);
    t.equal(await ipcs(src), '', 'the segment left SRC');
    t.match(await ipcs(dst), new RegExp(`^\\s*\\d+\\s+\\d+\\s+600\\s+56\\s+`), 'and is on DST');
    t.equal(await pg.psql('SELECT count(*) FROM t', (cmd) => dst.exec(cmd)), '500', 'DST answers: the table');
    await pg.psql('INSERT INTO t VALUES (501)', (cmd) => dst.exec(cmd));
    t.equal(await pg.psql('SELECT max(n) FROM t', (cmd) => dst.exec(cmd)), '501', 'and writes');
    const q = await dst.exec(
      `kill -INT ${pg.pid}; for i in $(seq 100); do kill -0 ${pg.pid} 2>/dev/null || exit 0; sleep 0.1; done; exit 1`,
    );
    t.equal(q.status, 0, 'a fast shutdown ends it on DST');
    t.match(readFileSync(pg.logFile, 'utf8'), /database system is shut down/, 'cleanly');
    t.equal(await ipcs(dst), '', 'postgres removed its segment on DST');
  },
);

t.test(
  'postgres in UTS and IPC namespaces of its own migrates live: its segment moves inside them',
  {
    skip:
      needsRoot ||
      (existsSync(path.join(PG_BIN, 'postgres'))
        ? false
        : `${PG_BIN} is not installed (.ci/run installs postgresql-15)`),
  },
  async (t) => {
    const { src, dst, dir, a, b } = await hostPair(t, ['-v3']);
    const pgDir = mkdtempSync(path.join(tmpdir(), 'criu-ts-pg-'));
    const pg = await startPostgres(pgDir, freePort(), {
      run: (cmd) => src.exec(cmd),
      before: 'echo 19999 > /proc/sys/kernel/ns_last_pid',
      under: 'unshare --ipc --uts',
    });
    t.teardown(async () => {
      for (const h of [src, dst]) await h.exec(`pkill -KILL -f '${pg.dataDir}'`).catch(() => undefined);
      rmSync(pgDir, { recursive: true, force: true });
    });
    const hostShm = async (h: typeof src): Promise<string> =>
      (await h.exec('tail -n +2 /proc/sysvipc/shm')).stdout.trim();
    const itsShm = async (h: typeof src): Promise<string> =>
      (await h.exec(`nsenter -t ${pg.pid} -i tail -n +2 /proc/sysvipc/shm`)).stdout.trim();
    t.match(await itsShm(src), /^\s*\d+\s+\d+\s+600\s+56\s+/, 'its segment, in its own IPC namespace on SRC');
    t.equal(await hostShm(src), '', "none in SRC's");
    await pg.psql('CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 400);');
    const childrenOn = async (h: typeof src): Promise<string> =>
      (await h.exec(`cat /proc/${pg.pid}/task/${pg.pid}/children`)).stdout.trim();
    for (let i = 0; i < 100 && (await childrenOn(src)).split(/\s+/).length !== 5; i++) await sleep(100);
    const children = await childrenOn(src);
    const r = await runMigrate(['--token-file', tokenFile(dir), a.target, b.target, String(pg.pid)]);
    t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
    t.equal(await childrenOn(dst), children, `the same processes on DST (${children})`);
    t.match(await itsShm(dst), /^\s*\d+\s+\d+\s+600\s+56\s+/, 'its segment, in its own IPC namespace on DST');
    t.equal(await hostShm(dst), '', "none in DST's");
    t.match(b.stderr(), /UTS namespace made/, "DST's agent (-v3) made its UTS namespace");
    t.notMatch(b.stderr(), /restoring it from the images/, 'restored into the pre-copied skeleton');
    t.equal(await pg.psql('SELECT count(*) FROM t', (cmd) => dst.exec(cmd)), '400', 'DST answers: the table');
    await pg.psql('INSERT INTO t VALUES (401)', (cmd) => dst.exec(cmd));
    t.equal(await pg.psql('SELECT max(n) FROM t', (cmd) => dst.exec(cmd)), '401', 'and writes');
    const q = await dst.exec(
      `kill -INT ${pg.pid}; for i in $(seq 100); do kill -0 ${pg.pid} 2>/dev/null || exit 0; sleep 0.1; done; exit 1`,
    );
    t.equal(q.status, 0, 'a fast shutdown ends it on DST');
    t.match(readFileSync(pg.logFile, 'utf8'), /database system is shut down/, 'cleanly');
  },
);
