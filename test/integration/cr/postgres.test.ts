/**
 * PostgreSQL 15 (Debian's postgresql-15, which .ci/run installs), a server no one here wrote: a
 * postmaster and five processes it forked (checkpointer, background writer, WAL writer,
 * autovacuum and logical replication launchers), sharing its buffers in 140 MiB of shared
 * anonymous memory, a POSIX shared memory file in /dev/shm, and a System V segment (its
 * interlock, which its children attach too); each child waits in epoll on a signalfd and the
 * postmaster's pipes. Dumped as a tree and restored, it answers from the same processes: what a
 * table held is there, new connections (each a new backend forked by the restored postmaster)
 * write to it, and a fast shutdown ends it cleanly (a checkpoint, and its System V segment
 * removed by itself). The same in UTS and IPC namespaces of its own (unshare), its segment in its
 * namespace: back there, and nothing of it in this machine's.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readlinkSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { readShmSegments } from '../../../src/proc/sysvipc.js';
import { dumpRestoreDetached, poll, signalTask, waitEnded } from '../../helpers/cr.js';
import { PG_BIN, startPostgres, type Postgres } from '../../helpers/programs.js';
import { freePort } from '../../helpers/real-criu.js';

const skip =
  process.getuid?.() !== 0
    ? 'needs root (ptrace, clone3 set_tid)'
    : existsSync(path.join(PG_BIN, 'postgres'))
      ? false
      : `${PG_BIN}/postgres is not installed (.ci/run installs postgresql-15)`;

function childrenOf(pid: number): number[] {
  const text = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
  return text === '' ? [] : text.split(/\s+/).map(Number).sort();
}

/** The System V segments process `pid` attaches (ids, from its maps). */
function sysvIdsOf(pid: number): number[] {
  const maps = readFileSync(`/proc/${pid}/maps`, 'utf8');
  return [...maps.matchAll(/ 00:\w+ (\d+)\s+\/SYSV[0-9a-f]{8} \(deleted\)$/gm)].map((m) => Number(m[1]));
}

/** The digest of table t: its row count and the md5 of its strings in order. */
const DIGEST_SQL = "SELECT count(*), md5(string_agg(s, ',' ORDER BY n)) FROM t";

/**
 * A cluster of its own in a directory postgres can reach (not under /work), started with
 * `options`, killed and removed at the end; table t filled with `rows` rows, and once it keeps its
 * five processes: its digest, its children and the System V segment the postmaster attaches.
 */
async function startFilled(
  t: Test,
  rows: number,
  options: { under?: string } = {},
): Promise<{ dir: string; pg: Postgres; digest: string; children: number[]; segment: number | undefined }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'criu-ts-pg-'));
  const pg = await startPostgres(dir, freePort(), options);
  t.teardown(() => {
    if (existsSync(`/proc/${pg.pid}`)) for (const c of childrenOf(pg.pid)) signalTask(c, 'SIGKILL');
    signalTask(pg.pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  await pg.psql(
    `CREATE TABLE t (n int, s text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, ${rows}) g;`,
  );
  const digest = await pg.psql(DIGEST_SQL);
  // The children it keeps (a backend of the last psql may still be leaving).
  await poll(() => childrenOf(pg.pid).length === 5, 'five processes of postgres', 10_000);
  return { dir, pg, digest, children: childrenOf(pg.pid), segment: sysvIdsOf(pg.pid)[0] };
}

/** A fast shutdown (SIGINT): it ends, and its log says it shut down cleanly. */
async function shutsDownCleanly(t: Test, pg: Postgres): Promise<void> {
  signalTask(pg.pid, 'SIGINT');
  await waitEnded(pg.pid, 20_000);
  const log = readFileSync(pg.logFile, 'utf8');
  t.match(log, /database system is shut down/, 'a clean shutdown');
  t.notMatch(log, /PANIC|terminated by signal/, 'no crash in its log');
}

t.test(
  'postgres: dump then restore, it answers from the same processes and shuts down cleanly',
  { skip },
  async (t) => {
    const { dir, pg, digest, children, segment } = await startFilled(t, 1000);
    t.ok(segment !== undefined, `the postmaster attaches a System V segment (${segment})`);
    const before = readShmSegments().get(segment as number);

    const isDumped = await dumpRestoreDetached(t, dir, pg.pid, 'the postmaster', children, () => {
      t.notOk(readShmSegments().has(segment as number), 'the segment left with the dumped tree');
    });
    if (!isDumped) return;
    t.same(childrenOf(pg.pid), children, 'the same five processes');
    const after = readShmSegments().get(segment as number);
    t.same(
      after === undefined
        ? undefined
        : { key: after.key, size: after.size, mode: after.mode, uid: after.uid, nattch: after.nattch },
      before === undefined
        ? undefined
        : { key: before.key, size: before.size, mode: before.mode, uid: before.uid, nattch: before.nattch },
      'its System V segment is back: id, key, size, mode, owner, attachments',
    );
    t.equal(await pg.psql(DIGEST_SQL), digest, 'the table is as it was');
    await pg.psql("INSERT INTO t VALUES (1001, 'after the restore'); UPDATE t SET s = 'x' WHERE n = 1;");
    t.equal(await pg.psql('SELECT count(*) FROM t'), '1001', 'a new connection writes');
    t.equal(await pg.psql('SELECT s FROM t WHERE n = 1001'), 'after the restore', 'and reads back');

    await shutsDownCleanly(t, pg);
    t.notOk(readShmSegments().has(segment as number), 'postgres removed its segment itself');
  },
);

t.test('postgres in UTS and IPC namespaces of its own: dump then restore, back in new ones', { skip }, async (t) => {
  const { dir, pg, digest, children, segment } = await startFilled(t, 300, { under: 'unshare --ipc --uts' });
  const ownIpc = (): boolean => readlinkSync(`/proc/${pg.pid}/ns/ipc`) !== readlinkSync('/proc/self/ns/ipc');
  /** Its namespace's segments: "key id perms size" of each (nattch and times change). */
  const itsSegments = (): string =>
    execFileSync('nsenter', ['-t', String(pg.pid), '-i', 'cat', '/proc/sysvipc/shm'], { encoding: 'utf8' })
      .split('\n')
      .slice(1)
      .filter((l) => l.trim() !== '')
      .map((l) => l.trim().split(/\s+/).slice(0, 4).join(' '))
      .join('\n');
  t.ok(ownIpc(), 'postgres runs in an IPC namespace of its own');
  const segments = itsSegments();
  t.match(segments, new RegExp(`^\\d+ ${segment} `), `its segment ${segment} is in its namespace`);
  const key = Number(segments.split(' ')[0]) >>> 0;
  const isHere = (): boolean => [...readShmSegments().values()].some((s) => s.key === key);
  t.notOk(isHere(), "and not in this machine's");

  const isDumped = await dumpRestoreDetached(t, dir, pg.pid, 'the postmaster', children);
  if (!isDumped) return;
  t.same(childrenOf(pg.pid), children, 'the same five processes');
  t.ok(ownIpc(), 'in an IPC namespace of its own again');
  t.equal(itsSegments(), segments, 'its segment is back in it: key, id, mode, size');
  t.notOk(isHere(), "and still not in this machine's");
  t.equal(await pg.psql(DIGEST_SQL), digest, 'the table is as it was');
  await pg.psql("INSERT INTO t VALUES (301, 'after the restore')");
  t.equal(await pg.psql('SELECT s FROM t WHERE n = 301'), 'after the restore', 'a new connection writes and reads');
  await shutsDownCleanly(t, pg);
});
