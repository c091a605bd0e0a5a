/**
 * The holder process (native/stub/track-holder.c) that keeps a task's userfaultfd open between
 * criu-ts invocations: started, recognised, taken from and stopped here.
 *
 * It runs as `criu-track-holder PID STARTTIME` with the userfaultfd on fd 3 and a pidfd of the task
 * on fd 4 (the order of `stdio` below), in its own session (setsid), and exits when the task exits or on SIGTERM; its exit
 * closes the userfaultfd, which unregisters everything once no other reference is left.
 *
 * Kernel interfaces: pidfd_open(2), pidfd_getfd(2), pidfd_send_signal(2), /proc/N/stat (field 22,
 * start time), /proc/N/cmdline.
 */

import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { TaskError, isErrno } from '../../errors.js';
import { findPackageFile } from '../../package-files.js';
import { SIGKILL, SIGTERM } from '../../kernel/constants.js';
import { readProcText } from '../../proc/read.js';
import { readStat } from '../../proc/stat.js';
import * as sys from '../../sys/native.js';
import type { HolderRecord } from './state.js';

/** The holder's fd numbers (see track-holder.c). */
export const HOLDER_UFFD_FD = 3;
const HOLDER_NAME = 'track-holder';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The holder binary, found above this module (src/ under tsx, dist/src/ after tsc). */
export function holderPath(): string {
  const holder = findPackageFile(`native/stub/${HOLDER_NAME}`);
  if (holder === null) throw new TaskError(0, 'The memory tracker holder is not built: run "npm run build:stub"');
  return holder;
}

/** The start time of process `pid`, or null when it is gone (a zombie counts as gone). */
export function startTimeOf(pid: number): number | null {
  const st = readStat(pid);
  if (st === null || st.state === 'Z' || st.state === 'X') return null;
  return st.starttime;
}

/** argv of process `pid`, or null when gone. */
function cmdline(pid: number): string[] | null {
  const text = readProcText(`/proc/${pid}/cmdline`);
  return text === null ? null : text.split('\0').slice(0, -1);
}

function isHolderCmdline(argv: readonly string[] | null, target: number): boolean {
  return (
    argv !== null && argv.length === 3 && path.basename(argv[0] as string) === HOLDER_NAME && argv[1] === String(target)
  );
}

/** Whether the holder recorded for task `target` is still that process, alive. */
export function isHolderAlive(h: HolderRecord, target: number): boolean {
  return startTimeOf(h.pid) === h.startTime && isHolderCmdline(cmdline(h.pid), target);
}

/**
 * Start a holder for task `target` (start time `targetStartTime`) with `uffd` and `pidfd` (this
 * process's fds; the holder gets its own copies). Resolves once it runs the holder program.
 */
export async function spawnHolder(
  target: number,
  targetStartTime: number,
  uffd: number,
  pidfd: number,
): Promise<HolderRecord> {
  const program = holderPath();
  const child = spawn(program, [String(target), String(targetStartTime)], {
    detached: true,
    cwd: '/',
    stdio: ['ignore', 'ignore', 'ignore', uffd, pidfd],
  });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', () => resolve());
    child.once('error', (err) =>
      reject(new TaskError(target, `Cannot start the memory tracker holder: ${err.message}`)),
    );
  });
  child.unref();
  const pid = child.pid;
  if (pid === undefined) throw new TaskError(target, 'Cannot start the memory tracker holder: no pid');
  // 'spawn' fires after fork; wait until the exec is done, so /proc shows the holder itself.
  for (let i = 0; i < 500; i++) {
    const startTime = startTimeOf(pid);
    if (startTime === null)
      throw new TaskError(
        target,
        `The memory tracker holder (pid ${pid}) exited at once (exit code ${child.exitCode})`,
      );
    if (isHolderCmdline(cmdline(pid), target)) return { pid, startTime, fd: HOLDER_UFFD_FD };
    await sleep(2);
  }
  sys.kill(pid, SIGKILL);
  throw new TaskError(target, `The memory tracker holder (pid ${pid}) did not start`);
}

/**
 * pidfd_open's errors for a process that is gone or on its way out: ESRCH; EINVAL or (6.18)
 * ENOENT when its struct pid is still found but its task has exited (a holder stops when its task
 * does, so another pre-dump can meet one mid-exit).
 */
const isExiting = (err: unknown): boolean => isErrno(err, 'ESRCH', 'EINVAL', 'ENOENT');

/** A duplicate of the holder's userfaultfd in this process, or null when the holder is gone. */
export function takeHolderFd(h: HolderRecord, target: number): number | null {
  let hpidfd: number;
  try {
    hpidfd = sys.pidfdOpen(h.pid, 0);
  } catch (err) {
    if (isExiting(err)) return null;
    throw err;
  }
  try {
    // Checked after the pidfd is open: from here on the pid cannot be reused under us.
    if (!isHolderAlive(h, target)) return null;
    try {
      return sys.pidfdGetfd(hpidfd, h.fd, 0);
    } catch (err) {
      if (isErrno(err, 'ESRCH', 'EBADF')) return null;
      throw err;
    }
  } finally {
    sys.close(hpidfd);
  }
}

/** Holders of task `target` not named by any record (left by a criu-ts that died mid-way). */
export function findHolders(target: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (isHolderCmdline(cmdline(pid), target)) out.push(pid);
  }
  return out;
}

/**
 * Stop holder `pid` (after checking it is a holder of `target`) and wait until it has exited, so
 * its userfaultfd reference is gone. No-op when it is already gone.
 */
export async function stopHolder(pid: number, target: number, timeoutMs = 5000): Promise<void> {
  let hpidfd: number;
  try {
    hpidfd = sys.pidfdOpen(pid, 0);
  } catch (err) {
    if (isExiting(err)) return;
    throw err;
  }
  try {
    if (!isHolderCmdline(cmdline(pid), target) || startTimeOf(pid) === null) return;
    try {
      sys.pidfdSendSignal(hpidfd, SIGTERM, 0);
    } catch (err) {
      if (isErrno(err, 'ESRCH')) return;
      throw err;
    }
    // A process's files are closed before it becomes a zombie: gone or zombie is enough.
    const until = Date.now() + timeoutMs;
    while (startTimeOf(pid) !== null) {
      if (Date.now() > until) {
        sys.pidfdSendSignal(hpidfd, SIGKILL, 0);
        if (Date.now() > until + 1000)
          throw new TaskError(target, `The memory tracker holder (pid ${pid}) does not exit`);
      }
      await sleep(2);
    }
  } finally {
    sys.close(hpidfd);
  }
}
