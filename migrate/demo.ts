/**
 * `npm run demo`: live migration on one machine, shown end to end.
 *
 * Sets up two simulated hosts (migrate/hosts.sh: own PID, network and mount namespaces, joined
 * by a bridge), starts an agent in each, starts a workload on the first that keeps visible state
 * (test/fixtures/migrate_counter: 256 MiB, rewriting 10 MB/s, printing its counter and a checksum
 * of its memory's versions every second), migrates it live to the second with criu-migrate,
 * shows it counting on there with the same PID, lets it check its memory, prints the summary and
 * takes everything down (also on Ctrl-C or a failure).
 *
 * Options: --mib N (default 256), --rate MB/S (default 10), --json (the summary as JSON).
 */

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { simHosts, startAgentIn, type HostProcess } from './sim-hosts.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MIGRATE = path.join(ROOT, 'bin/criu-migrate.js');
const WORKLOAD = path.join(ROOT, 'test/fixtures/bin/migrate_counter');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('demo: needs root (namespaces, ptrace, clone3 set_tid)\n');
    return 1;
  }
  if (!existsSync(WORKLOAD) || !existsSync(path.join(ROOT, 'dist/src/cli/criu.js'))) {
    process.stderr.write('demo: not built: run "npm ci" (or "npm run build") first\n');
    return 1;
  }
  const mib = Number(arg('--mib', '256'));
  const rate = Number(arg('--rate', '10'));
  const dir = mkdtempSync(path.join(tmpdir(), 'criu-ts-demo-'));
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, `demo-${Math.random().toString(36).slice(2)}\n`, { mode: 0o600 });
  const agents: HostProcess[] = [];
  const hosts = await simHosts(['src', 'dst']);
  const [src, dst] = hosts;
  try {
    if (src === undefined || dst === undefined) throw new Error('no hosts');
    say(`Two simulated hosts: src ${src.addr} and dst ${dst.addr} (own PID, network and mount namespaces)`);
    const a = await startAgentIn(src, tokenFile, path.join(dir, 'agent-src'));
    const b = await startAgentIn(dst, tokenFile, path.join(dir, 'agent-dst'));
    agents.push(a.agent, b.agent);
    say(`Agents listening: src ${a.target}, dst ${b.target}`);

    const report = path.join(dir, 'workload.txt');
    // A PID above those of the hosts' own inits and agents, so that it is free on dst.
    await src.exec(
      `echo 19999 > /proc/sys/kernel/ns_last_pid; '${WORKLOAD}' ${mib} ${rate} '${report}' </dev/null >/dev/null 2>&1 &`,
    );
    const text = (): string => (existsSync(report) ? readFileSync(report, 'utf8') : '');
    while (!/READY (\d+)/.test(text())) await sleep(50);
    const pid = Number(/READY (\d+)/.exec(text())?.[1]);
    say(`Workload started on src as pid ${pid}: ${mib} MiB, rewriting ${rate} MB/s`);
    let shown = 0;
    const where = async (): Promise<string> =>
      (await dst.exec(`test -e /proc/${pid}`)).status === 0
        ? 'dst'
        : (await src.exec(`test -e /proc/${pid}`)).status === 0
          ? 'src'
          : '?';
    const show = async (): Promise<void> => {
      const lines = text()
        .split('\n')
        .filter((l) => l.startsWith('COUNT'));
      const host = await where();
      for (const l of lines.slice(shown)) say(`  [on ${host}] ${l}`);
      shown = lines.length;
    };
    for (let i = 0; i < 4; i++) {
      await sleep(1000);
      await show();
    }

    say(`\n$ criu-migrate --token-file F ${a.target} ${b.target} ${pid}`);
    const json = process.argv.includes('--json');
    const mig = spawn(
      process.execPath,
      [MIGRATE, '--token-file', tokenFile, ...(json ? ['--json'] : []), a.target, b.target, String(pid)],
      {
        stdio: ['ignore', 'inherit', 'inherit'],
      },
    );
    const ended = new Promise<number | null>((r) => mig.on('close', r));
    let code: number | null | undefined;
    void ended.then((c) => (code = c));
    // Meanwhile, its output as it comes (where it ran when it printed it).
    while (code === undefined) {
      await Promise.race([ended, sleep(500)]);
      if (code === undefined) await show();
    }
    if (code !== 0) throw new Error(`criu-migrate exited with ${code}`);

    say('');
    for (let i = 0; i < 4; i++) {
      await sleep(1000);
      await show();
    }
    await dst.exec(`kill -TERM ${pid}`);
    while (!/PASS|FAIL/.test(text())) await sleep(50);
    const verdict =
      text()
        .split('\n')
        .find((l) => /PASS|FAIL/.test(l)) ?? '';
    say(`\nThe workload checked its memory on dst: ${verdict}`);
    return /PASS/.test(verdict) ? 0 : 1;
  } finally {
    for (const agent of agents) await agent.kill('SIGTERM').catch(() => undefined);
    for (const h of hosts) await h.down();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`demo: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
