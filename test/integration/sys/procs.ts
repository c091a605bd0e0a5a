/**
 * Helpers for the sys integration tests: start processes that are NOT our children (so libuv's
 * SIGCHLD handling cannot reap them or steal their wait reports), and clean them up.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import type { Test } from 'tap';
import { waitpid } from '../../../src/sys/native.js';
import { __WALL } from '../../../src/kernel/constants.js';

/**
 * Runs `script` in a shell whose background job is the process we want; the shell prints the
 * job's pid and exits, so the process is reparented to init. `setup` runs in the shell first
 * (e.g. `exec 7</etc/hostname` to give the process a known fd).
 */
export function spawnDetached(t: Test, command: string, setup = ''): number {
  const script = `${setup}${setup ? '; ' : ''}${command} </dev/null >/dev/null 2>&1 & echo $!`;
  const out = execFileSync('sh', ['-c', script], { encoding: 'utf8', timeout: 5000 });
  const pid = Number(out.trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`bad pid from sh: ${out}`);
  t.teardown(() => killAndReap(pid));
  if (command.startsWith('sleep ')) waitAsleep(pid);
  return pid;
}

/**
 * Waits until pid sits in clock_nanosleep (230) or nanosleep (35): `$!` is the forked shell, which
 * may not have exec'd sleep yet, and sleep's startup touches its memory and registers.
 */
export function waitAsleep(pid: number, timeoutMs = 5000): void {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const nr = readFileSync(`/proc/${pid}/syscall`, 'utf8').split(' ')[0];
    if (nr === '230' || nr === '35') return;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
  }
  throw new Error(`process ${pid} did not reach its sleep`);
}

/** SIGKILL, then collect the exit report if we are its tracer (or parent). */
export function killAndReap(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  try {
    waitpid(pid, __WALL, 2000);
  } catch {
    // ECHILD: not ours to wait for, init reaps it.
  }
}

/** One line of /proc/PID/status, e.g. statusField(pid, 'SigBlk'). */
export function statusField(pid: number, name: string): string {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`));
  if (line === undefined) throw new Error(`no ${name} in /proc/${pid}/status`);
  return line.slice(name.length + 1).trim();
}

export interface Vma {
  start: bigint;
  end: bigint;
  perms: string;
  name: string;
}

export function readMaps(pid: number | 'self'): Vma[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8')
    .trim()
    .split('\n')
    .map((line) => {
      const [range = '', perms = '', , , , ...rest] = line.split(/\s+/);
      const [s = '0', e = '0'] = range.split('-');
      return { start: BigInt(`0x${s}`), end: BigInt(`0x${e}`), perms, name: rest.join(' ') };
    });
}

/** arg_start and arg_end of /proc/PID/stat (fields 48 and 49): where argv lives. */
export function argvRange(pid: number): { start: bigint; end: bigint } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from 3 on
  return { start: BigInt(fields[48 - 3] ?? '0'), end: BigInt(fields[49 - 3] ?? '0') };
}

/** Waits (polling /proc) until pid is gone or a zombie; false on timeout. */
export async function waitGone(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!existsSync(`/proc/${pid}`)) return true;
    try {
      if (statusField(pid, 'State').startsWith('Z')) return true;
    } catch {
      return true;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return false;
}

/** A pid above ns_last_pid that no process or thread uses, for clone3 set_tid. */
export function freePid(): number {
  const last = Number(readFileSync('/proc/sys/kernel/ns_last_pid', 'utf8'));
  const max = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  for (let pid = last + 1000; pid < max; pid += 7) {
    if (!existsSync(`/proc/${pid}`)) return pid;
  }
  for (let pid = 300; pid < last; pid += 7) {
    if (!existsSync(`/proc/${pid}`)) return pid;
  }
  throw new Error('no free pid');
}
