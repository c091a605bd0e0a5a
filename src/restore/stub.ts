/**
 * Starting the restore stub (native/stub/stub.S) with the dumped PID, and preparing it to be
 * rebuilt by injection:
 *   1. clone3(set_tid = [pid]) + execve of the stub, from the tracer thread (so criu is its parent);
 *   2. the stub stops itself (SIGSTOP); we seize it with PTRACE_O_TRACECLONE and
 *      PTRACE_O_TRACEFORK (threads and child processes made later are attached at birth);
 *   3. a scratch region is mapped in a hole of the dumped layout: its first page holds the
 *      `syscall` instruction all later calls go through, the rest carries call arguments;
 *   4. every other mapping of the stub (its code, stack, vDSO) is removed, and its fds closed.
 * After that the task is an empty shell: only the scratch region is mapped.
 */

import { readFileSync } from 'node:fs';
import { TaskError, isErrno } from '../errors.js';
import { findPackageFile } from '../package-files.js';
import { Injector } from '../inject/injector.js';
import {
  CLONE_NEWPID,
  PF_EXITING,
  PTRACE_O_SUSPEND_SECCOMP,
  PTRACE_O_TRACECLONE,
  PTRACE_O_TRACEFORK,
  SIGCHLD,
  SIGCONT,
  SIGKILL,
  TASK_SIZE,
  __WALL,
  WUNTRACED,
} from '../kernel/constants.js';
import { readMaps } from '../proc/maps.js';
import { readStat } from '../proc/stat.js';
import { SYSCALLS_X86_64 } from '../kernel/syscalls.js';
import * as sys from '../sys/native.js';
import { sleepMs } from '../sys/wait.js';

const PAGE = 4096n;
/** The scratch area: a code page, 512 KiB for the leader's call arguments, 16 KiB per thread. */
export const THREAD_SCRATCH_BYTES = 16n * 1024n;
export const LEADER_SCRATCH_BYTES = 512n * 1024n;
export function scratchBytes(nrThreads: number): bigint {
  return PAGE + LEADER_SCRATCH_BYTES + BigInt(nrThreads) * THREAD_SCRATCH_BYTES;
}
/** Where thread number `i` (0 = the first non-leader thread) keeps its call arguments. */
export function threadScratch(scratch: bigint, i: number): bigint {
  return scratch + PAGE + LEADER_SCRATCH_BYTES + BigInt(i) * THREAD_SCRATCH_BYTES;
}
/** The new task becomes a child of criu's parent (--restore-sibling). */
const CLONE_PARENT = 0x8000n;
const MMAP_MIN = 0x10000n;

function stubPath(): string {
  const stub = findPackageFile('native/stub/criu-stub');
  if (stub === null) throw new TaskError(0, 'The restore stub is not built: run "npm run build:stub"');
  return stub;
}

/** The highest gap of `size` bytes below TASK_SIZE that no range in `used` touches. */
export function findHole(used: readonly { start: bigint; end: bigint }[], size: bigint): bigint {
  const sorted = [...used].sort((a, b) => (a.start < b.start ? 1 : -1)); // descending
  let top = TASK_SIZE - PAGE * 16n;
  for (const r of sorted) {
    if (r.start >= top) {
      top = r.start < top ? r.start : top;
      continue;
    }
    if (r.end <= top - size) return top - size;
    top = r.start < top ? r.start : top;
  }
  if (top - size >= MMAP_MIN) return top - size;
  throw new TaskError(0, 'No room for the restore scratch area in the dumped address space');
}

export interface Stub {
  /** As criu sees it (ptrace, /proc, kill). */
  pid: number;
  /**
   * As the images and its own PID namespace know it: `pid`, but in a tree with a PID namespace
   * of its own (the root is 1 there).
   */
  vpid: number;
  /** In the tree's own PID namespace: criu finds the tasks it makes there by NSpid. */
  isInOwnPidNs: boolean;
  injector: Injector;
  scratch: bigint;
  scratchBytes: bigint;
}

/**
 * Start the stub as `pid` and empty it. `layout` are the dumped VMAs: the scratch region goes in
 * a hole among them. On failure the stub is killed. A PID still held by a task on its way out is
 * waited for without holding the JS thread (an agent answers its controller meanwhile).
 */
export async function startStub(
  pid: number,
  layout: readonly { start: bigint; end: bigint }[],
  nrThreads: number,
  options: { isSibling?: boolean; cloneFlags?: bigint } = {},
): Promise<Stub> {
  let child: number;
  const until = Date.now() + DYING_HOLDER_WAIT_MS;
  // The init of a new PID namespace is 1 there by itself; its pid here is the kernel's choice.
  const isNewPidNs = ((options.cloneFlags ?? 0n) & CLONE_NEWPID) !== 0n;
  for (;;) {
    try {
      child = cloneStub(isNewPidNs ? null : pid, options.isSibling === true, options.cloneFlags ?? 0n);
      break;
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw new TaskError(pid, `Cannot create task ${pid}`, { cause: err });
      await waitForFreePid(pid, err); // taken since the caller's check: throws unless it was on its way out
      // The kernel may keep a PID a moment after its task left /proc (one that had an IPC
      // namespace of its own: about a second here).
      if (Date.now() > until)
        throw new TaskError(pid, `Cannot restore task ${pid}: the kernel still holds PID ${pid}`, { cause: err });
      await sleep(5);
    }
  }
  return emptyStub(pid, child, layout, nrThreads, { ...options, isNewPidNs });
}

/** How long restore waits for an exiting task to let go of the PID to restore. */
const DYING_HOLDER_WAIT_MS = 5000;

/**
 * Return once no task holds `pid`. A live holder is an error at once; one on its way out (exiting,
 * or a zombie not reaped yet) is waited for up to DYING_HOLDER_WAIT_MS: a task dumped and killed
 * a moment ago, say, as `criu dump` does not wait for the kernel to free its memory.
 */
export async function waitForFreePid(pid: number, cause?: unknown): Promise<void> {
  const until = Date.now() + DYING_HOLDER_WAIT_MS;
  for (;;) {
    const holder = pidHolder(pid);
    if (holder === 'none') return;
    if (holder === 'live' || Date.now() > until) {
      const why = holder === 'live' ? '' : ` by a task that has not been reaped for ${DYING_HOLDER_WAIT_MS} ms`;
      throw new TaskError(
        pid,
        `Cannot restore task ${pid}: PID ${pid} is in use${why}`,
        cause === undefined ? {} : { cause },
      );
    }
    await sleep(2);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Who holds `pid`: nobody (any more), a task on its way out (exiting, or a zombie), or a live one. */
function pidHolder(pid: number): 'none' | 'exiting' | 'live' {
  const st = readStat(pid);
  if (st === null) return 'none';
  return st.state === 'Z' || st.state === 'X' || (st.flags & PF_EXITING) !== 0 ? 'exiting' : 'live';
}

/** `nsFlags`: CLONE_NEW* of the namespaces the tree gets of its own (restore/namespaces.ts). */
function cloneStub(pid: number | null, isSibling: boolean, nsFlags: bigint): number {
  return sys.clone3Exec({
    flags: (isSibling ? CLONE_PARENT : 0n) | nsFlags,
    // clone3 refuses an exit signal with CLONE_PARENT: the child then signals our parent with
    // our own exit signal, as a sibling of ours would.
    exitSignal: isSibling ? 0 : SIGCHLD,
    setTid: pid === null ? [] : [pid],
    path: stubPath(),
    argv: ['criu-stub'],
    envp: [],
    // Every signal stays blocked (and pending) until the restored task's own mask is set.
    signalMask: 0xffff_ffff_ffff_ffffn,
  });
}

function emptyStub(
  pid: number,
  child: number,
  layout: readonly { start: bigint; end: bigint }[],
  nrThreads: number,
  options: { isSibling?: boolean; isNewPidNs?: boolean },
): Stub {
  const SCRATCH_BYTES = scratchBytes(nrThreads);
  try {
    if (options.isNewPidNs === true) {
      // A PID namespace's init ignores the SIGSTOP it sends itself: the stub goes on into its
      // pause loop, where it is seized (below) once it runs its own code.
      if (!waitInPause(child, 5000)) throw new TaskError(pid, `The restore stub ${child} did not start`);
    } else if (options.isSibling === true) {
      // Not our child: its stop is seen in /proc, not by waitpid.
      if (!waitStopped(child, 5000)) throw new TaskError(pid, `The restore stub ${child} did not start`);
    } else {
      const st = sys.waitpid(child, WUNTRACED | __WALL, 5000);
      if (st === null || (st.status & 0xff) !== 0x7f)
        throw new TaskError(pid, `The restore stub ${child} did not start (status ${st?.status ?? 'none'})`);
    }
    // Out of its stop first (SIGCONT with the default action is not queued), so that the task
    // is not left in a group stop when it is let go.
    if (options.isNewPidNs !== true) sys.kill(child, SIGCONT);
    // Threads and child processes it is made to create are attached at birth (tree.ts).
    const injector = Injector.attach(child, {
      ptraceOptions: PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK | PTRACE_O_SUSPEND_SECCOMP,
    });
    try {
      const stubMaps = readMaps(child) ?? [];
      const scratch = findHole([...layout, ...stubMaps], SCRATCH_BYTES);
      const MAP_FIXED_NOREPLACE = 0x100000n;
      const addr = injector.syscallOrThrow('mmap', [
        scratch,
        SCRATCH_BYTES,
        3n /* RW */,
        0x22n | MAP_FIXED_NOREPLACE,
        -1n,
        0n,
      ]);
      if (addr !== scratch)
        throw new TaskError(pid, `The scratch area landed at 0x${addr.toString(16)}, not 0x${scratch.toString(16)}`);
      // Page 0: `syscall; int3` (int3 is never reached: calls stop at syscall exit).
      injector.writeMemory(scratch, Buffer.from([0x0f, 0x05, 0xcc, 0xcc]));
      injector.syscallOrThrow('mprotect', [scratch, PAGE, 5n /* R-X */]);
      injector.syscallSite = scratch;
      injector.useScratch(scratch + PAGE, LEADER_SCRATCH_BYTES);
      // Our SIGCONT is pending (the stub blocks everything): take it back, so the restored task
      // does not get a SIGCONT nobody sent it. Signals others sent meanwhile stay pending.
      const set = Buffer.alloc(8);
      set.writeBigUInt64LE(1n << BigInt(SIGCONT - 1), 0);
      const zero = Buffer.alloc(16);
      injector.syscall(SYSCALLS_X86_64.rt_sigtimedwait, [injector.pushData(set), 0n, injector.pushData(zero), 8n]);
      injector.resetScratch();
      for (const m of stubMaps.filter((v) => v.start < TASK_SIZE))
        injector.syscallOrThrow('munmap', [m.start, m.end - m.start]);
      injector.syscallOrThrow('close_range', [0n, 0xffff_ffffn, 0n]);
      return {
        pid: child,
        vpid: options.isNewPidNs === true ? 1 : pid,
        isInOwnPidNs: options.isNewPidNs === true,
        injector,
        scratch,
        scratchBytes: SCRATCH_BYTES,
      };
    } catch (err) {
      injector.release();
      throw err;
    }
  } catch (err) {
    killStub(child);
    throw err;
  }
}

/**
 * Wait (polling /proc) until the stub `pid` runs its own code, in pause(2) (its name is the
 * stub's and /proc/PID/syscall says pause); false after `timeoutMs` or if it is gone.
 */
function waitInPause(pid: number, timeoutMs: number): boolean {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      const isStub = readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'criu-stub';
      if (isStub && readFileSync(`/proc/${pid}/syscall`, 'utf8').split(' ')[0] === String(SYSCALLS_X86_64.pause))
        return true;
    } catch {
      return false;
    }
    if (Date.now() > until) return false;
    sleepMs(1);
  }
}

/** Wait (polling /proc) until `pid` is in a stop ("T"); false after `timeoutMs` or if it is gone. */
function waitStopped(pid: number, timeoutMs: number): boolean {
  const until = Date.now() + timeoutMs;
  for (;;) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      return false;
    }
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('T')) return true;
    if (Date.now() > until) return false;
    sleepMs(1);
  }
}

/** Kill a stub (or a half-restored task) and reap it. */
export function killStub(pid: number): void {
  try {
    sys.kill(pid, SIGKILL);
  } catch {
    return;
  }
  for (let i = 0; i < 20; i++) {
    try {
      const r = sys.waitpid(pid, __WALL, 250);
      if (r !== null && (r.status & 0x7f) !== 0x7f) return;
    } catch {
      return;
    }
  }
}
