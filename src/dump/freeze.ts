/**
 * Freezing a process for dump: every thread seized and stopped (PTRACE_SEIZE + PTRACE_INTERRUPT),
 * each with its own Injector, so per-thread state can be read from outside or by injection.
 *
 * Threads can be created while we seize: the thread list is read again until a pass finds no new
 * one (a seized, stopped thread cannot clone, so this ends). Threads that exit meanwhile are
 * dropped. Kernel interfaces: ptrace(2), /proc/PID/task.
 */

import { TaskError, UnsupportedError } from '../errors.js';
import { Injector, findSyscallSite } from '../inject/injector.js';
import { readChildren } from '../proc/children.js';
import { readStat } from '../proc/stat.js';
import { listThreads, readStatus } from '../proc/status.js';
import * as sys from '../sys/native.js';
import { retrySync, sleepMs } from '../sys/wait.js';
import { PF_EXITING, PTRACE_O_SUSPEND_SECCOMP, SIGKILL, SIGSTOP, __WALL } from '../kernel/constants.js';

export interface FrozenProcess {
  pid: number;
  /** Every thread, leader first when alive, then by tid. */
  threads: Injector[];
  /** The injector of the thread group leader (or the first live thread). */
  leader: Injector;
}

/** Seize and stop every thread of `pid`. On failure nothing stays seized. */
export function freezeProcess(pid: number, options: { timeoutMs?: number } = {}): FrozenProcess {
  const status = readStatus(pid);
  if (status === null) throw new TaskError(pid, `Cannot dump task ${pid}: no such process`);
  if (status.tgid !== pid)
    throw new TaskError(pid, `Cannot dump task ${pid}: it is a thread of process ${status.tgid}`);
  const site = syscallSiteOf(pid);
  const seized = new Map<number, Injector>();
  try {
    for (let pass = 0; pass < 100; pass++) {
      const tids = listThreads(pid);
      if (tids === null) throw new TaskError(pid, `Task ${pid} exited while being frozen`);
      const fresh = tids.filter((tid) => !seized.has(tid));
      if (fresh.length === 0) break;
      for (const tid of fresh) {
        const st = readStatus(pid, tid);
        if (st === null || st.state === 'Z' || st.state === 'X') continue;
        try {
          // Seccomp suspended: the task's filters must not judge (or kill for) our injected calls.
          const base = { tid, syscallSite: site, ptraceOptions: PTRACE_O_SUSPEND_SECCOMP };
          const opts = options.timeoutMs === undefined ? base : { ...base, timeoutMs: options.timeoutMs };
          seized.set(tid, Injector.attach(pid, opts));
        } catch (err) {
          // A thread that ended between listing and seizing is not an error.
          const again = readStatus(pid, tid);
          if (again === null || again.state === 'Z' || again.state === 'X') continue;
          throw err;
        }
      }
    }
  } catch (err) {
    for (const inj of seized.values()) safely(() => inj.release());
    throw err;
  }
  const threads = [...seized.values()].sort((a, b) => (a.tid === pid ? -1 : b.tid === pid ? 1 : a.tid - b.tid));
  const leader = threads[0];
  if (leader === undefined) throw new TaskError(pid, `Task ${pid} has no live thread to dump`);
  return { pid, threads, leader };
}

/** How long a freeze waits for a process in the middle of an execve to have its new mappings. */
const EXEC_WAIT_MS = 200;

/**
 * Where injected calls of process `pid` go (findSyscallSite). A process caught in the middle of
 * an execve has only its new stack mapped for a moment (a shell's children do that all the time):
 * it is read again until its code and vDSO are there.
 */
function syscallSiteOf(pid: number): bigint {
  return retrySync(
    () => findSyscallSite(pid),
    (err) => err instanceof UnsupportedError && err.feature === 'syscall-site',
    EXEC_WAIT_MS,
  );
}

/** A frozen process of a tree, with its parent's pid (0 for the tree's root). */
export interface FrozenTask extends FrozenProcess {
  ppid: number;
}

/** The processes of a tree: the live ones frozen, parents first; the zombies (not frozen). */
export interface FrozenTree {
  tasks: FrozenTask[];
  zombies: { pid: number; ppid: number }[];
}

/**
 * Freeze process `pid` and all its descendants, parents before their children: once a process
 * is frozen it cannot fork, so its list of children is final when read. A zombie child (exited,
 * not reaped) cannot be seized and has no children: it is only listed. On failure every process
 * frozen so far is resumed.
 */
export function freezeTree(pid: number, options: { timeoutMs?: number } = {}): FrozenTree {
  const tasks: FrozenTask[] = [];
  const zombies: { pid: number; ppid: number }[] = [];
  const visit = (p: number, ppid: number): void => {
    let frozen: FrozenProcess;
    try {
      frozen = freezeProcess(p, options);
    } catch (err) {
      // A child that exited since its parent was frozen is a zombie now, or on its way there
      // (its memory already gone), or gone (its parent ignores SIGCHLD): not an error.
      if (ppid === 0) throw err;
      if (!hasExited(p)) throw err;
      if (isZombie(p)) zombies.push({ pid: p, ppid });
      return;
    }
    tasks.push({ ...frozen, ppid });
    for (const child of readChildren(p) ?? []) {
      if (isZombie(child)) zombies.push({ pid: child, ppid: p });
      else visit(child, p);
    }
  };
  try {
    visit(pid, 0);
  } catch (err) {
    for (const t of tasks.reverse()) safely(() => resumeProcess(t));
    throw err;
  }
  return { tasks, zombies };
}

/** Process `pid` has exited and waits to be reaped. */
export function isZombie(pid: number): boolean {
  const state = readStat(pid)?.state;
  return state === 'Z' || state === 'X';
}

/** How long a freeze waits for an exiting child to become a zombie. */
const EXITING_WAIT_MS = 1000;

/**
 * Process `pid` has exited: a zombie, or gone (reaped). One in the middle of its exit (its
 * memory and files already released) is waited for, a little.
 */
export function hasExited(pid: number): boolean {
  const until = Date.now() + EXITING_WAIT_MS;
  for (;;) {
    const st = readStat(pid);
    if (st === null || st.state === 'Z' || st.state === 'X') return true;
    if ((st.flags & PF_EXITING) === 0 || Date.now() > until) return false;
    sleepMs(1);
  }
}

/** Put every thread back as it was and let the process run on. */
export function resumeProcess(frozen: FrozenProcess): void {
  const errors: unknown[] = [];
  for (const inj of frozen.threads) {
    try {
      inj.release();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length > 0) throw errors[0];
}

/** Leave the process stopped (SIGSTOP queued before the threads are let go). */
export function stopProcess(frozen: FrozenProcess): void {
  sys.kill(frozen.pid, SIGSTOP);
  resumeProcess(frozen);
}

/**
 * Kill the dumped process (the default end of `criu dump`) and, unless `isReaping` is false,
 * wait until it is gone (see DumpOptions.canLeaveKilledUnreaped for when not to).
 */
export function killProcess(frozen: FrozenProcess, options: { isReaping?: boolean } = {}): void {
  sys.kill(frozen.pid, SIGKILL);
  if (options.isReaping === false) return;
  // Collect each traced thread's end, so its parent can reap the process. The leader last: its
  // exit is not reported while other threads of its group are still unreaped zombies, so
  // waiting for it first would only time out.
  const leaderLast = [...frozen.threads].sort((a, b) => (a.tid === frozen.pid ? 1 : b.tid === frozen.pid ? -1 : 0));
  for (const inj of leaderLast) {
    for (let i = 0; i < 50; i++) {
      try {
        const res = sys.waitpid(inj.tid, __WALL, 100);
        if (res === null) continue;
        if ((res.status & 0x7f) !== 0x7f) break; // exited or killed
      } catch {
        break; // ECHILD: gone
      }
    }
  }
}

/** Resume every process of a tree; the first failure is thrown once all were tried. */
export function resumeTree(tasks: readonly FrozenProcess[]): void {
  const errors: unknown[] = [];
  for (const t of tasks) {
    try {
      resumeProcess(t);
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length > 0) throw errors[0];
}

/** Leave every process of a tree stopped. */
export function stopTree(tasks: readonly FrozenProcess[]): void {
  for (const t of tasks) stopProcess(t);
}

/**
 * Kill every process of a tree (parents first): children first, so that each is gone before its
 * parent, which its SIGCHLD then does not wake.
 */
export function killTree(tasks: readonly FrozenProcess[], options: { isReaping?: boolean } = {}): void {
  for (const t of [...tasks].reverse()) killProcess(t, options);
}

function safely(f: () => void): void {
  try {
    f();
  } catch {
    // best effort on a failure path
  }
}
