/**
 * Entering another task's namespace for a moment: the JS thread setns(2)s into it, runs a
 * synchronous function, and comes back. What that function does on this thread sees the
 * namespace: /proc/sys/kernel/hostname and the IPC sysctls, /proc/sysvipc/*, shmget and shmctl.
 *
 * Only the kinds a single thread of a multi-threaded process may enter: uts, ipc and net (a mount,
 * user or PID namespace cannot be entered this way, and node has threads). Node's own threads
 * (libuv's pool, the tracer) stay where they are, so the function must not hand work to them: no
 * asynchronous fs calls, no await.
 */

import { closeSync, openSync } from 'node:fs';
import { CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWUTS } from '../kernel/constants.js';
import * as sys from './native.js';

export type ThreadNsKind = 'uts' | 'ipc' | 'net';

const NS_FLAG: Record<ThreadNsKind, number> = {
  uts: Number(CLONE_NEWUTS),
  ipc: Number(CLONE_NEWIPC),
  net: Number(CLONE_NEWNET),
};

/** An fd on namespace `kind` of task `pid` (close it with closeSync); throws ENOENT once it is gone. */
export function openNamespace(pid: number, kind: ThreadNsKind): number {
  return openSync(`/proc/${pid}/ns/${kind}`, 'r');
}

/**
 * Run `fn` in the namespace `nsFd` refers to (an fd from openNamespace), on this thread, and come
 * back to the thread's own namespace, also when `fn` throws.
 */
export function inNamespace<T>(nsFd: number, kind: ThreadNsKind, fn: () => T): T {
  const back = openSync(`/proc/thread-self/ns/${kind}`, 'r');
  try {
    sys.setns(nsFd, NS_FLAG[kind]);
    let out: T;
    try {
      out = fn();
    } catch (err) {
      comeBack(back, kind);
      throw err;
    }
    comeBack(back, kind);
    if (out instanceof Promise) throw new Error('inNamespace: the function must be synchronous');
    return out;
  } finally {
    closeSync(back);
  }
}

function comeBack(back: number, kind: ThreadNsKind): void {
  try {
    sys.setns(back, NS_FLAG[kind]);
  } catch (err) {
    // Staying in the task's namespace, every later call of criu (a cleanup too) would act in the
    // wrong one: nothing may run on. One line, and out.
    process.stderr.write(`Error (criu): cannot return to criu's own ${kind} namespace: ${String(err)}\n`);
    process.exit(1);
  }
}
