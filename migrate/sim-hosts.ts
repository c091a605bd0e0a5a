/**
 * Simulated hosts for tests, the demo and benchmarks: a TypeScript face of migrate/hosts.sh (read
 * its header for how a host is made: its own network, PID, IPC and mount namespace, a veth pair to the
 * bridge cts-br0, an address in 198.18.0.0/24).
 *
 *   const [src, dst] = await simHosts(['src', 'dst'], { t });
 *   const agent = dst.spawn(['node', 'bin/criu-migrate.js', 'agent', '--listen', `${dst.addr}:0`, ...]);
 *   await src.exec(['sh', '-c', 'echo $$']);
 *
 * Each call makes hosts with names of its own ("src-k3x9q"), so test files running in parallel do
 * not meet. Every host is taken down by `down()`, by the tap teardown when `t` is given, at process
 * exit, and on SIGINT/SIGTERM (then the process exits 130/143): nothing is left behind by a failing
 * or interrupted test. Needs root (ip netns, unshare, nsenter).
 */

import { spawn as spawnChild, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The hosts.sh next to this module (migrate/ or, compiled, dist/migrate/ → ../../migrate). */
export function hostsScript(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const candidate of [join(here, 'hosts.sh'), join(here, '..', '..', 'migrate', 'hosts.sh')])
    if (existsSync(candidate)) return candidate;
  throw new Error(`Cannot find migrate/hosts.sh from ${here}`);
}

export interface ExecResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface HostProcess {
  /** The nsenter that runs the command (a process of this namespace). */
  child: ChildProcess;
  /** The command's pid as this (the root) PID namespace sees it; resolves once it runs. */
  outerPid(): Promise<number>;
  /** Signal the command itself (nsenter does not pass signals on). */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Resolves with the command's exit status (as nsenter passes it on). */
  exited: Promise<{ status: number | null; signal: NodeJS.Signals | null }>;
}

export interface SimHost {
  /** The name asked for ("dst"). */
  readonly name: string;
  /** hosts.sh's name of the host ("dst-k3x9q"); its netns is "cts-" + hostName. */
  readonly hostName: string;
  /** The host's IPv4 address. */
  readonly addr: string;
  /** The pid of the host's init (PID 1 inside), as seen from here. */
  readonly initPid: number;
  /** Run `cmd` (argv, or a string for sh -c) inside the host to completion. */
  exec(cmd: readonly string[] | string, opts?: { timeoutMs?: number; input?: string }): Promise<ExecResult>;
  /** Start `cmd` inside the host; stdout/stderr are pipes. */
  spawn(cmd: readonly string[] | string): HostProcess;
  /** Kill everything in the host and remove it. Idempotent. */
  down(): Promise<void>;
}

/** Anything with tap's teardown. */
export interface Teardownable {
  teardown(fn: () => unknown): void;
}

const live = new Set<string>();
let handlersInstalled = false;

function downSync(names: readonly string[]): void {
  if (names.length === 0) return;
  spawnSync('sh', [hostsScript(), 'down', ...names], { stdio: 'ignore', timeout: 30_000 });
  for (const n of names) live.delete(n);
}

function onSignal(signal: NodeJS.Signals): void {
  downSync([...live]);
  process.exit(signal === 'SIGINT' ? 130 : 143);
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', () => downSync([...live]));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
}

function argvOf(cmd: readonly string[] | string): string[] {
  return typeof cmd === 'string' ? ['sh', '-c', cmd] : [...cmd];
}

function run(args: readonly string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<ExecResult> {
  return new Promise((resolve) => {
    const hasInput = opts.input !== undefined;
    const child = spawnChild('sh', [hostsScript(), ...args], { stdio: [hasInput ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    if (hasInput) {
      // A command that does not read its input must not fail the run with EPIPE.
      child.stdin?.on('error', () => undefined);
      child.stdin?.end(opts.input);
    }
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            stderr += `\n(timed out after ${opts.timeoutMs} ms)`;
            child.kill('SIGKILL');
          }, opts.timeoutMs);
    child.on('close', (status, signal) => {
      if (timer !== undefined) clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The first child of `pid` (nsenter forks once to enter the PID namespace). */
async function firstChild(pid: number, timeoutMs = 10_000): Promise<number> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      const first = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)[0];
      if (first !== undefined && first !== '') return Number(first);
    } catch {
      throw new Error(`nsenter ${pid} ended before its command started`);
    }
    if (Date.now() > until) throw new Error(`nsenter ${pid} did not start its command`);
    await sleep(5);
  }
}

class Host implements SimHost {
  constructor(
    readonly name: string,
    readonly hostName: string,
    readonly addr: string,
    readonly initPid: number,
  ) {}

  exec(cmd: readonly string[] | string, opts: { timeoutMs?: number; input?: string } = {}): Promise<ExecResult> {
    return run(['exec', this.hostName, '--', ...argvOf(cmd)], { ...opts, timeoutMs: opts.timeoutMs ?? 60_000 });
  }

  spawn(cmd: readonly string[] | string): HostProcess {
    const child = spawnChild('sh', [hostsScript(), 'exec', this.hostName, '--', ...argvOf(cmd)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<{ status: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on('close', (status, signal) => resolve({ status, signal })),
    );
    let inner: Promise<number> | undefined;
    const outerPid = (): Promise<number> => (inner ??= firstChild(child.pid ?? -1));
    return {
      child,
      exited,
      outerPid,
      kill: async (signal = 'SIGTERM') => {
        try {
          process.kill(await outerPid(), signal);
        } catch {
          // already gone
        }
      },
    };
  }

  async down(): Promise<void> {
    if (!live.has(this.hostName)) return;
    const r = await run(['down', this.hostName], { timeoutMs: 30_000 });
    live.delete(this.hostName);
    if (r.status !== 0) throw new Error(`hosts.sh down ${this.hostName} failed: ${r.stderr}`);
  }
}

/**
 * Set up one simulated host per name (at most 5 characters each: a random suffix makes them
 * unique), in order, so the first gets the lowest free address.
 */
export async function simHosts(names: readonly string[], opts: { t?: Teardownable } = {}): Promise<SimHost[]> {
  const suffix = randomBytes(4).readUInt32LE(0).toString(36).padStart(5, '0').slice(-5);
  const hostNames = names.map((n) => {
    if (!/^[a-z0-9]{1,5}$/.test(n)) throw new Error(`Invalid simulated host name "${n}": 1-5 of a-z, 0-9`);
    return `${n}-${suffix}`;
  });
  installHandlers();
  for (const h of hostNames) live.add(h);
  const hosts: Host[] = [];
  opts.t?.teardown(async () => {
    for (const h of hosts) await h.down();
    downSync(hostNames.filter((h) => live.has(h)));
  });
  const up = await run(['up', ...hostNames], { timeoutMs: 60_000 });
  if (up.status !== 0) {
    downSync(hostNames);
    throw new Error(`hosts.sh up failed: ${up.stderr.trim()}`);
  }
  for (const [i, hostName] of hostNames.entries()) {
    const addr = (await run(['addr', hostName])).stdout.trim();
    const pid = Number((await run(['pid', hostName])).stdout.trim());
    hosts.push(new Host(names[i] ?? hostName, hostName, addr, pid));
  }
  return hosts;
}

/** bin/criu-migrate.js of this checkout (from migrate/ or, compiled, dist/migrate/). */
function migrateBin(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const candidate of [
    join(here, '..', 'bin', 'criu-migrate.js'),
    join(here, '..', '..', 'bin', 'criu-migrate.js'),
  ])
    if (existsSync(candidate)) return candidate;
  throw new Error(`Cannot find bin/criu-migrate.js from ${here}`);
}

/**
 * Start `criu-migrate agent` inside `host` on a port the kernel picks; resolves with the agent
 * and its ADDR:PORT once it prints that it listens (rejects, with its stderr, if it exits first).
 */
export async function startAgentIn(
  host: SimHost,
  tokenFile: string,
  imagesRoot: string,
  extraArgs: readonly string[] = [],
  nodeArgs: readonly string[] = [],
): Promise<{ agent: HostProcess; target: string; stderr: () => string }> {
  const agent = host.spawn([
    process.execPath,
    ...nodeArgs,
    migrateBin(),
    'agent',
    '--listen',
    `${host.addr}:0`,
    '--token-file',
    tokenFile,
    '-D',
    imagesRoot,
    ...extraArgs,
  ]);
  let out = '';
  let err = '';
  agent.child.stderr?.setEncoding('utf8').on('data', (s: string) => (err += s));
  const port = await new Promise<number>((resolve, reject) => {
    agent.child.stdout?.setEncoding('utf8').on('data', (s: string) => {
      out += s;
      const m = /Agent listening on [\d.]+:(\d+)/.exec(out);
      if (m !== null) resolve(Number(m[1]));
    });
    void agent.exited.then((e) => reject(new Error(`the agent on ${host.name} exited (${e.status}): ${err}`)));
  });
  return { agent, target: `${host.addr}:${port}`, stderr: () => err };
}
