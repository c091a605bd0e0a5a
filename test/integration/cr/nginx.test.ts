/**
 * nginx (Debian's nginx-light, which .ci/run installs), a server no one here wrote: a master
 * process and two workers it forked, sharing memory copy-on-write and a shared memory zone (the
 * connection counter lives there), talking over socket pairs, each worker in epoll with an
 * eventfd, all on one listening socket. Dumped as a tree and restored, it serves again from the
 * same workers, its connection counter going on from where it was (the shared zone came back as
 * one object), and what the master shared with its workers is shared again. After the restore,
 * the master still commands its workers: SIGHUP makes it start new ones (the old ones finish and
 * exit), SIGQUIT ends it all. (Migration of nginx between simulated hosts:
 * test/integration/migrate/real-programs.test.ts.)
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { dumpRestoreDetached, poll, restoreStat, signalTask, waitEnded } from '../../helpers/cr.js';
import { NGINX, httpGet, nginxConf, untilServing } from '../../helpers/programs.js';
import { freePort } from '../../helpers/real-criu.js';

const skip =
  process.getuid?.() !== 0
    ? 'needs root (ptrace, clone3 set_tid)'
    : existsSync(NGINX)
      ? false
      : `${NGINX} is not installed (.ci/run installs nginx-light)`;

/** What nginx answers: the worker that served, and the connection's serial number. */
function answer(body: string): { pid: number; conn: number } {
  const m = /^pid=(\d+) conn=(\d+)$/m.exec(body);
  if (m === null) throw new Error(`not nginx's answer: ${body}`);
  return { pid: Number(m[1]), conn: Number(m[2]) };
}

/** The children of `pid` (its workers, for the master). */
function childrenOf(pid: number): number[] {
  const text = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
  return text === '' ? [] : text.split(/\s+/).map(Number).sort();
}

/** Start nginx (it daemonizes) with its files in `dir`: the master's pid; the teardown kills it all. */
async function startNginx(t: Test, dir: string, port: number): Promise<{ master: number; workers: number[] }> {
  const conf = path.join(dir, 'nginx.conf');
  mkdirSync(path.join(dir, 'logs'));
  mkdirSync(path.join(dir, 'tmp'));
  writeFileSync(conf, nginxConf(dir, `127.0.0.1:${port}`));
  execFileSync(NGINX, ['-c', conf, '-p', dir], { stdio: 'ignore' });
  const master = Number(readFileSync(path.join(dir, 'nginx.pid'), 'utf8'));
  t.teardown(() => {
    for (const pid of existsSync(`/proc/${master}`) ? childrenOf(master) : []) signalTask(pid, 'SIGKILL');
    signalTask(master, 'SIGKILL');
  });
  await untilServing(port);
  await poll(() => childrenOf(master).length === 2, 'two workers', 10_000);
  return { master, workers: childrenOf(master) };
}

t.test('nginx: dump then restore, it serves on from the same workers and obeys its master', { skip }, async (t) => {
  const dir = t.testdir();
  const port = freePort();
  const { master, workers } = await startNginx(t, dir, port);
  const before = [];
  for (let i = 0; i < 4; i++) before.push(answer(await httpGet(port, '/')));
  t.ok(
    before.every((a) => workers.includes(a.pid)),
    `its workers answer (${before.map((a) => a.pid).join(' ')})`,
  );
  const lastConn = Math.max(...before.map((a) => a.conn));

  const images = path.join(dir, 'img');
  const nothingListens = (): Promise<unknown> => t.rejects(httpGet(port, '/'), 'nothing listens while it is dumped');
  if (!(await dumpRestoreDetached(t, dir, master, 'the master', workers, nothingListens))) return;
  t.same(childrenOf(master), workers, 'its two workers are back, its children');
  const after = [];
  for (let i = 0; i < 4; i++) after.push(answer(await httpGet(port, '/')));
  t.ok(
    after.every((a) => workers.includes(a.pid)),
    `the same workers answer (${after.map((a) => a.pid).join(' ')})`,
  );
  t.ok(
    after.every((a) => a.conn > lastConn),
    `the connection counter in the shared zone goes on (${lastConn}, then ${after.map((a) => a.conn).join(' ')})`,
  );
  const shared = await restoreStat(images, 'pages_skipped_cow');
  t.ok(shared > 0, `what the master shared with its workers is shared again (${shared} pages)`);

  // The master still commands its workers: SIGHUP starts new ones, and the old ones go.
  process.kill(master, 'SIGHUP');
  await poll(
    () => {
      const now = childrenOf(master);
      return now.length === 2 && now.every((pid) => !workers.includes(pid));
    },
    'two new workers',
    10_000,
  );
  const fresh = childrenOf(master);
  const next = answer(await httpGet(port, '/'));
  t.ok(fresh.includes(next.pid), `a new worker answers (${next.pid} of ${fresh.join(' ')})`);
  process.kill(master, 'SIGQUIT');
  for (const pid of [master, ...fresh]) await waitEnded(pid);
  t.pass('SIGQUIT ends the master and its workers');
  t.notMatch(
    readFileSync(path.join(dir, 'logs', 'error.log'), 'utf8'),
    /\[(alert|crit|emerg)\]/,
    'no alert in error.log',
  );
});
