/**
 * The real CRIU on this machine: Debian's criu 3.17 (/usr/sbin/criu, installed by .ci/run for
 * crit). It runs with test/fixtures/compat/criu317.c preloaded, which shows it the kernel's vDSO
 * data areas as the single [vvar] it knows; without it, criu 3.17 stops at start-up on this kernel.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { Listener } from '../../src/pageserver/socket.js';
import { isErrno } from '../../src/errors.js';
import { SIGCHLD, __WALL } from '../../src/kernel/constants.js';
import { clone3Exec, waitpid } from '../../src/sys/native.js';
import { poll, sleep, startWorkload, waitPid, type Workload } from './cr.js';
import { FIXTURES_BIN, fixturePath } from './fixture.js';

const REAL_CRIU = '/usr/sbin/criu';
const SHIM = path.join(FIXTURES_BIN, 'criu317-compat.so');

/** Why the real CRIU cannot be run here, or false when it can. */
export function realCriuMissing(): string | false {
  if (!existsSync(REAL_CRIU)) return `${REAL_CRIU} (Debian package criu 3.17) is not installed`;
  if (!existsSync(SHIM)) throw new Error(`${SHIM} is not built: run "npm run build:fixtures"`);
  return false;
}

/** Start the real `criu ARGS...` in `cwd` (`fd3`: its fd 3); `exited` resolves with its status. */
function startRealCriu(args: readonly string[], cwd: string, fd3?: number): { exited: Promise<number | null> } {
  const child = spawn(REAL_CRIU, args, {
    cwd,
    stdio: fd3 === undefined ? 'ignore' : ['ignore', 'ignore', 'ignore', fd3],
    env: { ...process.env, LD_PRELOAD: SHIM },
  });
  const exited = new Promise<number | null>((resolve) => {
    child.on('exit', (code) => resolve(code));
    child.on('error', () => resolve(null));
  });
  return { exited };
}

/** Run the real `criu ARGS...` to its end. */
async function realCriu(args: readonly string[], cwd: string): Promise<number | null> {
  return startRealCriu(args, cwd).exited;
}

/**
 * Start the real `criu page-server ARGS...` into `dir` (which must exist) on 127.0.0.1:`port`;
 * resolves once it listens. `exited` resolves with its status (it ends after one session).
 */
export async function startRealPageServer(
  dir: string,
  port: number,
  args: readonly string[] = [],
): Promise<{ exited: Promise<number | null>; log: string }> {
  const log = path.join(dir, 'ps.log');
  const server = startRealCriu(
    ['page-server', '-D', dir, '--address', '127.0.0.1', '--port', String(port), '-v4', '-o', 'ps.log', ...args],
    dir,
  );
  let ended = false;
  void server.exited.then(() => (ended = true));
  const isListening = (): boolean => existsSync(log) && readFileSync(log, 'utf8').includes('Starting page server');
  await poll(() => ended || isListening(), 'criu page-server to listen', 10_000);
  if (!isListening()) throw new Error(`criu page-server ended before listening: ${logErrors(log)}`);
  return { exited: server.exited, log };
}

/** The last error and warning lines of a CRIU log, for a failed step's message. */
export function logErrors(log: string): string {
  if (!existsSync(log)) return `(no log at ${log})`;
  return readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => /Error|Warn/.test(l))
    .slice(-4)
    .join(' / ');
}

/** `--page-server --address 127.0.0.1 --port PORT`, as both CRIUs take it. */
export const toPageServer = (port: number): string[] => [
  '--page-server',
  '--address',
  '127.0.0.1',
  '--port',
  String(port),
];

/** A port free right now: bound, released, handed to a page server (other tests pick theirs too). */
export function freePort(): number {
  const probe = Listener.open('127.0.0.1', 0);
  const port = probe.port;
  probe.close();
  return port;
}

/**
 * Start fixture `name` (or a program, by path) as the leader of its own session, as CRIU wants
 * the root of a dump without --shell-job.
 */
export function startSessionLeader(name: string, dir: string, args: readonly string[] = []): Promise<Workload> {
  return startWorkload('/usr/bin/setsid', dir, [name.includes('/') ? name : fixturePath(name), ...args]);
}

/** The real `criu dump -t PID -D IMAGES ARGS...` (IMAGES made here, its log dump.log there). */
export async function criuDump(t: Test, pid: number, images: string, args: readonly string[] = []): Promise<void> {
  mkdirSync(images, { recursive: true }); // CRIU does not make it
  const log = path.join(images, 'dump.log');
  const status = await realCriu(['dump', '-t', String(pid), '-D', images, '-v4', '-o', 'dump.log', ...args], images);
  t.equal(status, 0, status === 0 ? 'criu 3.17 dump' : `criu 3.17 dump: ${logErrors(log)}`);
}

/**
 * The real `criu dump -t PID -D IMAGES --page-server --ps-socket 3 ARGS...` with `fd` as its fd 3
 * (IMAGES made here, its log dump.log there); resolves once it has started, with its exit.
 */
export function startCriuDumpOnSocket(pid: number, images: string, fd: number): { exited: Promise<number | null> } {
  mkdirSync(images, { recursive: true });
  const args = ['dump', '-t', String(pid), '-D', images, '-v4', '-o', 'dump.log', '--page-server', '--ps-socket', '3'];
  return startRealCriu(args, images, fd);
}

/**
 * Resolve once the kernel lets go of `pid`: a clone3 with set_tid = [pid] gets it (and the child,
 * /bin/true, is reaped). A task that had an IPC namespace of its own keeps its PID about a second
 * after it left /proc here; criu 3.17 does not wait for that (criu-ts's restore does).
 */
async function pidReleased(pid: number, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      const got = clone3Exec({
        flags: 0n,
        exitSignal: SIGCHLD,
        setTid: [pid],
        path: '/bin/true',
        argv: ['true'],
        envp: [],
      });
      waitpid(got, __WALL, 5000);
      return;
    } catch (err) {
      if (!isErrno(err, 'EEXIST') || Date.now() > until) throw err;
      await sleep(20);
    }
  }
}

/** The real `criu restore -D IMAGES -d ARGS...` once `pid` is free; resolves once the task is back. */
export async function criuRestore(t: Test, pid: number, images: string, args: readonly string[] = []): Promise<void> {
  await pidReleased(pid);
  if (await criuRestoreDetached(t, images, args)) await waitPid(pid);
}

/** The real `criu restore -D IMAGES -d ARGS...`; whether it succeeded (a pass or fail of `t`). */
export async function criuRestoreDetached(t: Test, images: string, args: readonly string[] = []): Promise<boolean> {
  const log = path.join(images, 'restore.log');
  const status = await realCriu(['restore', '-D', images, '-d', '-v4', '-o', 'restore.log', ...args], images);
  t.equal(status, 0, status === 0 ? 'criu 3.17 restore' : `criu 3.17 restore: ${logErrors(log)}`);
  return status === 0;
}
