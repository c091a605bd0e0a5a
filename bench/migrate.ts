/**
 * Live migration between two simulated hosts (migrate/hosts.sh), an agent on each, driven by
 * `criu-migrate --json`: downtime, total time and bytes sent for a workload of 256 MiB and 1 GiB
 * (test/fixtures/migrate_counter) rewriting 0, 10 and 100 MB/s. Bytes sent are also given as a
 * ratio to the memory size, and next to them raw TCP throughput between the two hosts measured in
 * the same run (a plain socket blast over the same veth bridge), the ceiling of any transfer.
 * Targets (issue #5): downtime under 100 ms for 1 GiB at 10 MB/s; at most 1.2 × the memory size
 * sent at 10 MB/s; at 100 MB/s it converges or says why not within the iteration limit.
 * A process tree too: a shell whose two children (migrate_counter each) hold the memory and share
 * the rate, restored into a skeleton of the three.
 * --quick: 256 MiB at 0 and 10 MB/s, and the tree of 256 MiB at 10 MB/s.
 * CRIU_TS_BENCH_MIGRATE=MIB:RATE[:tree][,...] runs those cases instead (a look at one case). Needs root.
 */

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { simHosts, startAgentIn, type HostProcess, type SimHost } from '../migrate/sim-hosts.js';
import type { BenchOptions, BenchResult } from './run.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MIGRATE = path.join(ROOT, 'bin/criu-migrate.js');
const WORKLOAD = path.join(ROOT, 'test/fixtures/bin/migrate_counter');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** MB/s of a 512 MiB blast from src to dst over the bridge (dd into nc is not everywhere: node). */
async function rawTcpMBps(src: SimHost, dst: SimHost): Promise<number> {
  const port = 29000 + Math.floor(Math.random() * 1000);
  const bytes = 512 << 20;
  const server = dst.spawn([
    process.execPath,
    '-e',
    `const s=require('net').createServer(c=>{let n=0;c.on('data',d=>{n+=d.length});c.on('end',()=>{process.stdout.write(String(n));s.close()})});s.listen(${port},'${dst.addr}',()=>process.stdout.write('L'))`,
  ]);
  await new Promise<void>((r) => server.child.stdout?.once('data', () => r()));
  const t0 = process.hrtime.bigint();
  const r = await src.exec([
    process.execPath,
    '-e',
    `const c=require('net').connect(${port},'${dst.addr}',()=>{const b=Buffer.alloc(4<<20);let left=${bytes};const go=()=>{while(left>0){left-=b.length;if(!c.write(b))return c.once('drain',go)}c.end()};go()})`,
  ]);
  await server.exited;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`raw TCP blast failed: ${r.stderr}`);
  return bytes / (1 << 20) / s;
}

interface Case {
  mib: number;
  rate: number;
  /** A shell with two children, each half the memory and half the rate. */
  isTree?: boolean;
}

export async function migrateBench(opts: BenchOptions): Promise<BenchResult> {
  if (process.getuid?.() !== 0) return { name: 'migrate', lines: ['skipped: needs root (namespaces, ptrace)'] };
  const only = process.env['CRIU_TS_BENCH_MIGRATE'];
  const cases: Case[] = only
    ? only.split(',').map((c) => {
        const [mib, rate, tree] = c.split(':');
        return { mib: Number(mib), rate: Number(rate ?? 0), isTree: tree === 'tree' };
      })
    : opts.isQuick
      ? [
          { mib: 256, rate: 0 },
          { mib: 256, rate: 10 },
          { mib: 256, rate: 10, isTree: true },
        ]
      : [
          ...[256, 1024].flatMap((mib) => [0, 10, 100].map((rate) => ({ mib, rate }))),
          { mib: 1024, rate: 10, isTree: true },
        ];
  const dir = mkdtempSync(path.join(tmpdir(), 'criu-ts-bench-migrate-'));
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, 'bench-token\n', { mode: 0o600 });
  const hosts = await simHosts(['bsrc', 'bdst']);
  const agents: HostProcess[] = [];
  const lines: string[] = [];
  try {
    const [src, dst] = hosts as [SimHost, SimHost];
    const verbose = only ? ['-v', process.env['CRIU_TS_BENCH_AGENT_V'] ?? '4'] : [];
    // CRIU_TS_BENCH_AGENT_PROF=DIR: CPU profiles of both agents (node --cpu-prof), for a look.
    const prof = process.env['CRIU_TS_BENCH_AGENT_PROF'];
    const nodeArgs = (who: string): string[] =>
      prof ? ['--cpu-prof', '--cpu-prof-dir', prof, '--cpu-prof-name', `${who}-agent.cpuprofile`] : [];
    const a = await startAgentIn(src, tokenFile, path.join(dir, src.name), verbose, nodeArgs('src'));
    const b = await startAgentIn(dst, tokenFile, path.join(dir, dst.name), verbose, nodeArgs('dst'));
    agents.push(a.agent, b.agent);
    const raw = await rawTcpMBps(src, dst);
    lines.push(`raw TCP between the hosts: ${raw.toFixed(0)} MB/s (the ceiling of any transfer)`);
    for (const [i, c] of cases.entries()) {
      // One report per case: a case given twice must not read the READY of the one before.
      const report = path.join(dir, `w-${i}-${c.mib}-${c.rate}.txt`);
      const run = (mib: number, rate: number, to: string): string => `'${WORKLOAD}' ${mib} ${rate} '${to}'`;
      const reports = c.isTree === true ? [`${report}.a`, `${report}.b`] : [report];
      const half = (x: number): number => Math.max(1, Math.floor(x / 2));
      const cmd =
        c.isTree === true
          ? `sh -c "${run(half(c.mib), c.rate / 2, `${report}.a`)} & ${run(half(c.mib), c.rate / 2, `${report}.b`)} & wait"`
          : run(c.mib, c.rate, report);
      await src.exec(`echo 19999 > /proc/sys/kernel/ns_last_pid; ${cmd} </dev/null >/dev/null 2>&1 &`);
      const text = (f: string): string => (existsSync(f) ? readFileSync(f, 'utf8') : '');
      while (!reports.every((f) => /COUNT/.test(text(f)))) await sleep(100);
      const workers = reports.map((f) => Number(/READY (\d+)/.exec(text(f))?.[1]));
      // A tree is migrated by its root: the workers' parent, the shell.
      const pids =
        c.isTree === true
          ? [Number((await src.exec(`ps -o ppid= -p ${workers[0]}`)).stdout.trim()), ...workers]
          : workers;
      const pid = pids[0] as number;
      const mig = spawn(
        process.execPath,
        [MIGRATE, '--json', ...(only ? ['-v', '3'] : []), '--token-file', tokenFile, a.target, b.target, String(pid)],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '';
      let err = '';
      mig.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
      mig.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
      const code = await new Promise<number | null>((r) => mig.on('close', r));
      const label = `${String(c.mib).padStart(4)} MiB at ${String(c.rate).padStart(3)} MB/s${c.isTree === true ? ' (a tree of 3)' : ''}:`;
      if (code !== 0) {
        lines.push(`${label} FAILED: ${err.trim()}`);
        await src.exec(`kill -KILL ${pids.join(' ')}`);
        continue;
      }
      const s = JSON.parse(out) as Record<string, number | string>;
      const sent = Number(s['bytes_sent']);
      lines.push(
        `${label} downtime ${Number(s['downtime_ms']).toFixed(0).padStart(5)} ms (frozen ${Number(s['frozen_ms']).toFixed(0)}, restore ${Number(s['restore_ms']).toFixed(0)}), ` +
          `total ${Number(s['total_ms']).toFixed(0).padStart(6)} ms, ${s['iterations']} iterations, sent ${(sent / (1 << 20)).toFixed(0)} MiB = ` +
          `${(sent / (c.mib << 20)).toFixed(2)} × memory; ${String(s['stop_reason'])}`,
      );
      if (only) {
        lines.push(...err.split('\n').filter((l) => l.trim() !== ''));
        // The agents' own log of the final phase (-v 4): from the final dump on.
        for (const [who, ag] of [
          ['SRC', a],
          ['DST', b],
        ] as const) {
          const log = ag.stderr().split('\n');
          const from = log.findLastIndex((l) => l.includes('final') || l.includes('dump: mm'));
          lines.push(`-- ${who} agent log`, ...log.slice(Math.max(0, from - 30)).filter((l) => l.trim() !== ''));
        }
      }
      await dst.exec(`kill -KILL ${pids.join(' ')}`);
    }
    return { name: 'migrate', lines };
  } finally {
    for (const ag of agents) await ag.kill('SIGTERM').catch(() => undefined);
    for (const h of hosts) await h.down();
    rmSync(dir, { recursive: true, force: true });
  }
}
