/**
 * Live-migration test helpers: agents inside simulated hosts (migrate/sim-hosts.ts), and
 * workloads started on a host with a PID above 20000 (DST's own init and agent hold small PIDs).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { simHosts, startAgentIn, type HostProcess, type SimHost } from '../../migrate/sim-hosts.js';
import { poll } from './cr.js';
import { fixturePath, ROOT } from './fixture.js';

export const MIGRATE = path.join(ROOT, 'bin/criu-migrate.js');
export const TOKEN = 'migrate-test-token-7f3a';

export function tokenFile(dir: string): string {
  const file = path.join(dir, 'token');
  writeFileSync(file, `${TOKEN}\n`, { mode: 0o600 });
  return file;
}

/** Start `criu-migrate agent` in `host` (killed at the test's end); resolves with its ADDR:PORT. */
export async function startAgent(
  t: Test,
  host: SimHost,
  dir: string,
  imagesRoot = path.join(dir, `agent-${host.name}`),
  extraArgs: readonly string[] = [],
): Promise<{ agent: HostProcess; target: string; stderr: () => string }> {
  const started = await startAgentIn(host, tokenFile(dir), imagesRoot, extraArgs);
  t.teardown(() => started.agent.kill('SIGKILL'));
  return started;
}

export interface HostWorkload {
  pid: number;
  report(): string;
  waitFor(text: string | RegExp, timeoutMs?: number): Promise<void>;
}

/** Start `argv` (its last argument: the report file it writes) on `host` with a PID above 20000. */
export async function startOnHost(
  t: Test,
  host: SimHost,
  argv: readonly string[],
  reportFile: string,
): Promise<HostWorkload> {
  const quoted = [...argv, reportFile].map((a) => `'${a}'`).join(' ');
  const r = await host.exec(`echo 19999 > /proc/sys/kernel/ns_last_pid; ${quoted} </dev/null >/dev/null 2>&1 &`);
  t.equal(r.status, 0, r.stderr);
  const report = (): string => (existsSync(reportFile) ? readFileSync(reportFile, 'utf8') : '');
  await poll(() => /READY \d+/.test(report()), `${argv[0] ?? '?'} to be READY`, 30_000);
  const test = (s: string | RegExp): boolean => (typeof s === 'string' ? report().includes(s) : s.test(report()));
  return {
    pid: Number(/READY (\d+)/.exec(report())?.[1]),
    report,
    waitFor: (s, ms = 20_000) => poll(() => test(s), `${String(s)} in ${reportFile}`, ms),
  };
}

/** Run `criu-migrate ARGS...` to completion. */
export function runMigrate(
  args: readonly string[],
  onSpawn?: (child: ChildProcess) => void,
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(MIGRATE, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    onSpawn?.(child);
  });
}

/**
 * Two simulated hosts, SRC and DST, each with an agent (DST's started with `dstArgs`); `dir`: the
 * test's directory.
 */
export async function hostPair(
  t: Test,
  dstArgs: readonly string[] = [],
): Promise<{
  src: SimHost;
  dst: SimHost;
  dir: string;
  a: Awaited<ReturnType<typeof startAgent>>;
  b: Awaited<ReturnType<typeof startAgent>>;
}> {
  const [src, dst] = await simHosts(['src', 'dst'], { t });
  if (src === undefined || dst === undefined) throw new Error('no hosts');
  const dir = t.testdir();
  return { src, dst, dir, a: await startAgent(t, src, dir), b: await startAgent(t, dst, dir, undefined, dstArgs) };
}

/**
 * Start self-checking fixture `program` (with `args`, then its report file) on SRC of a new host
 * pair, migrate it with criu-migrate, then SIGTERM it on DST and expect PASS in its report: the
 * migrated counterpart of dumpRestoreCheck. `dstArgs`: more options of DST's agent (-v3, say);
 * returns what that agent wrote on stderr. `migrateArgs`: more options of criu-migrate.
 */
export async function migrateCheck(
  t: Test,
  program: string,
  args: readonly string[] = [],
  dstArgs: readonly string[] = [],
  migrateArgs: readonly string[] = [],
): Promise<{ dstStderr: string }> {
  const { src, dst, dir, a, b } = await hostPair(t, dstArgs);
  const w = await startOnHost(t, src, [fixturePath(program), ...args], path.join(dir, 'report.txt'));
  const r = await runMigrate(['--token-file', tokenFile(dir), ...migrateArgs, a.target, b.target, String(w.pid)]);
  t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
  t.equal((await dst.exec(`kill -TERM ${w.pid}`)).status, 0, 'the process is on DST');
  t.not((await src.exec(`test -e /proc/${w.pid}`)).status, 0, 'and gone from SRC');
  await w.waitFor(/PASS|FAIL/, 20_000);
  t.match(w.report(), /PASS/, w.report());
  t.notMatch(w.report(), /FAIL/);
  return { dstStderr: b.stderr() };
}
