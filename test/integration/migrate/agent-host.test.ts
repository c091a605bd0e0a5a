/**
 * The agent as it runs in a migration: `criu-migrate agent` inside a simulated DST host, driven
 * from this namespace by AgentClient over the veth network. A self-checking workload (cr_basic)
 * runs on SRC, is dumped there by our `criu dump`, its images travel by put-file, and the agent's
 * `criu restore` brings it back on DST: with the same PID, in DST's PID namespace, where it passes
 * its own checks. Then the same with the pages sent by the dump to a page server the agent
 * started.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';

import { AgentClient } from '../../../migrate/agent-client.js';
import { simHosts, type SimHost } from '../../../migrate/sim-hosts.js';
import { startAgent, TOKEN } from '../../helpers/migrate.js';
import { CriuError } from '../../../src/errors.js';
import { poll } from '../../helpers/cr.js';
import { fixturePath, ROOT } from '../../helpers/fixture.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (namespaces, ptrace, clone3 set_tid)';
const isBuilt = existsSync(path.join(ROOT, 'dist/migrate/agent.js'))
  ? false
  : 'dist/ is not built: run "npm run build:ts"';
const CRIU = path.join(ROOT, 'bin/criu.js');
const MIGRATE = path.join(ROOT, 'bin/criu-migrate.js');

/** Start cr_basic on `host` with a PID no agent or init there will hold (above 20000). */
async function startWorkload(t: Test, host: SimHost, dir: string): Promise<{ pid: number; report: () => string }> {
  const reportFile = path.join(dir, 'report.txt');
  const r = await host.exec(
    `echo 19999 > /proc/sys/kernel/ns_last_pid; ${fixturePath('cr_basic')} ${reportFile} </dev/null >/dev/null 2>&1 &`,
  );
  t.equal(r.status, 0, r.stderr);
  const report = (): string => (existsSync(reportFile) ? readFileSync(reportFile, 'utf8') : '');
  await poll(() => /READY \d+/.test(report()), 'cr_basic to be READY', 10_000);
  return { pid: Number(/READY (\d+)/.exec(report())?.[1]), report };
}

async function putDir(
  c: AgentClient,
  from: string,
  dir: string,
  filter: (name: string) => boolean = () => true,
): Promise<void> {
  for (const name of readdirSync(from).filter(filter)) await c.putFile(dir, name, readFileSync(path.join(from, name)));
}

t.test(
  'restore through the agent inside DST: same PID, DST PID namespace, state intact',
  { skip: needsRoot || isBuilt },
  async (t) => {
    const [src, dst] = await simHosts(['src', 'dst'], { t });
    if (src === undefined || dst === undefined) throw new Error('no hosts');
    const dir = t.testdir();
    const { agent, target } = await startAgent(t, dst, dir);

    const w = await startWorkload(t, src, dir);
    t.ok(w.pid > 19999, `the workload runs on src as pid ${w.pid}`);
    const images = path.join(dir, 'img');
    const dump = await src.exec(['node', CRIU, 'dump', '-t', String(w.pid), '-D', images]);
    t.equal(dump.status, 0, `criu dump on src: ${dump.stderr}`);

    const c = await AgentClient.connect(target, TOKEN);
    t.teardown(() => c.close());
    const hello = await c.hello();
    t.ok(hello.pid < 100, `the agent is a task of DST's PID namespace (pid ${hello.pid} there)`);
    t.equal(hello.imagesRoot, path.join(dir, 'agent-dst'));

    await putDir(c, images, 'm1/img');
    const r = await c.restore({ dir: 'm1/img' });
    t.same(r, { state: 'restored', pid: w.pid }, 'restored with the PID it had on src');
    t.match(await c.checkRunning(w.pid), { isRunning: true });
    const inDst = await dst.exec(`tr '\\0' ' ' < /proc/${w.pid}/cmdline`);
    t.match(inDst.stdout, /cr_basic/, `pid ${w.pid} on dst is the workload`);
    t.not((await src.exec(`test -e /proc/${w.pid}`)).status, 0, 'and it is gone from src');

    t.equal(await c.kill(w.pid, 'SIGTERM'), true);
    await poll(() => /PASS|FAIL/.test(w.report()), 'the verdict of cr_basic', 10_000);
    t.match(w.report(), /PASS/, w.report());
    t.notMatch(w.report(), /FAIL/);

    t.equal(await c.cleanup('m1'), true);
    t.notOk(existsSync(path.join(dir, 'agent-dst/m1')));
    await c.close();
    await agent.kill('SIGTERM');
    t.same(await agent.exited, { status: 0, signal: null }, 'the agent exits 0 on SIGTERM');
  },
);

t.test('the dump sends its pages to a page server the DST agent started', { skip: needsRoot || isBuilt }, async (t) => {
  const [src, dst] = await simHosts(['src', 'dst'], { t });
  if (src === undefined || dst === undefined) throw new Error('no hosts');
  const dir = t.testdir();
  const { agent, target } = await startAgent(t, dst, dir);
  const c = await AgentClient.connect(target, TOKEN);
  t.teardown(() => c.close());

  const ps = await c.pageServerStart({ dir: 'm2/img', port: 0 });
  t.equal(ps.address, dst.addr, "the page server listens on the agent's address");
  t.same(await c.pageServerWait(ps.serverId, 50), { state: 'running' });

  const w = await startWorkload(t, src, dir);
  const local = path.join(dir, 'img');
  const dump = await src.exec([
    'node',
    CRIU,
    'dump',
    '-t',
    String(w.pid),
    '-D',
    local,
    '--page-server',
    '--address',
    dst.addr,
    '--port',
    String(ps.port),
    '--token-file',
    path.join(dir, 'token'),
  ]);
  t.equal(dump.status, 0, `criu dump --page-server: ${dump.stderr}`);
  const served = await c.pageServerWait(ps.serverId, 20_000);
  const psLog = (await c.listDir('m2/img')).some((e) => e.name === 'page-server.log')
    ? (await c.getFile('m2/img', 'page-server.log')).toString()
    : '';
  t.match(served, { state: 'exited', exitCode: 0 }, `${JSON.stringify(served)}\n${psLog}`);
  const onDst = (await c.listDir('m2/img')).map((e) => e.name);
  t.ok(
    onDst.some((n) => /^pagemap-\d+\.img$/.test(n)) && onDst.some((n) => /^pages-\d+\.img$/.test(n)),
    onDst.join(' '),
  );

  // The rest of the images go over the control channel.
  await putDir(c, local, 'm2/img', (n) => !/^(pagemap-|pages-)/.test(n));
  const r = await c.restore({ dir: 'm2/img' });
  t.same(r, { state: 'restored', pid: w.pid });
  await c.kill(w.pid, 'SIGTERM');
  await poll(() => /PASS|FAIL/.test(w.report()), 'the verdict of cr_basic', 10_000);
  t.match(w.report(), /PASS/, w.report());
  await agent.kill('SIGTERM');
  t.equal((await agent.exited).status, 0);
});

t.test(
  'a DST host that goes away mid-request fails the request with a clear error',
  { skip: needsRoot || isBuilt },
  async (t) => {
    const [dst] = await simHosts(['dst'], { t });
    if (dst === undefined) throw new Error('no host');
    const dir = t.testdir();
    const { target } = await startAgent(t, dst, dir);
    const c = await AgentClient.connect(target, TOKEN, { keepaliveMs: 1000 });
    t.teardown(() => c.close());
    const ps = await c.pageServerStart({ dir: 'm3/img', port: 0 });
    // The catch is attached at once: the rejection comes while down() runs.
    const pending = c.pageServerWait(ps.serverId).catch((e: unknown) => e);
    const start = Date.now();
    await dst.down();
    const err = await pending.catch((e: unknown) => e);
    t.type(err, CriuError);
    t.equal((err as CriuError).code, 'EPROTOCOL');
    t.match(
      (err as Error).message,
      new RegExp(`Protocol error with ${target.replace(/\./g, '\\.')} during page-server-wait`),
    );
    t.ok(Date.now() - start < 10_000, `noticed within ${Date.now() - start} ms`);
    await t.rejects(c.hello(), { code: 'EPROTOCOL' }, 'the client stays failed');
  },
);

t.test('the agent command line', { skip: isBuilt }, async (t) => {
  const { spawnSync } = await import('node:child_process');
  const dir = t.testdir();
  writeFileSync(path.join(dir, 'token'), 'x\n');
  const run = (...args: string[]) =>
    spawnSync('node', [MIGRATE, 'agent', ...args], { encoding: 'utf8', timeout: 20_000 });
  const noAddr = run('--listen', '7000', '--token-file', path.join(dir, 'token'));
  t.equal(noAddr.status, 1);
  t.match(noAddr.stderr, /Invalid --listen: "7000" is not ADDR:PORT \(an address is required/);
  const noToken = run('--listen', '127.0.0.1:0');
  t.equal(noToken.status, 1);
  t.match(noToken.stderr, /--token-file/);
  writeFileSync(path.join(dir, 'empty'), '\n');
  const empty = run('--listen', '127.0.0.1:0', '--token-file', path.join(dir, 'empty'));
  t.equal(empty.status, 1);
  t.match(empty.stderr, /first line is empty/);
});
