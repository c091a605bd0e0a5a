/**
 * Decoding of wait(2) status words (waitpid's `status`), as Linux encodes them, including the
 * ptrace additions: the PTRACE_EVENT_* number in bits 16-23 of a stop, and the 0x80 bit that
 * PTRACE_O_TRACESYSGOOD sets in the signal of a syscall-stop.
 *
 *   bits  0-6   0: exited; 0x7f: stopped; otherwise the terminating signal
 *   bit   7     core dumped (when terminated by a signal)
 *   bits  8-15  exit code, or the stop signal (| 0x80 for a syscall-stop)
 *   bits 16-23  PTRACE_EVENT_* of a ptrace event stop (PTRACE_EVENT_STOP for group/interrupt)
 *   0xffff      continued (WCONTINUED)
 */
import {
  PTRACE_EVENT_STOP,
  SIGSTOP,
  SIGTRAP,
  SIGTSTP,
  SIGTTIN,
  SIGTTOU,
  SYSCALL_STOP_BIT,
} from '../kernel/constants.js';

export type WaitStatus =
  | { readonly kind: 'exited'; readonly exitCode: number }
  | { readonly kind: 'signaled'; readonly signal: number; readonly coreDumped: boolean }
  | {
      readonly kind: 'stopped';
      /** The stop signal without the syscall-stop bit (SIGTRAP for a syscall-stop). */
      readonly signal: number;
      /** PTRACE_EVENT_* (0 for a plain signal-delivery stop). */
      readonly event: number;
      /** A syscall-entry or -exit stop (needs PTRACE_O_TRACESYSGOOD). */
      readonly isSyscallStop: boolean;
    }
  | { readonly kind: 'continued' };

/** Decodes a raw wait status. */
export function decodeWaitStatus(status: number): WaitStatus {
  const low = status & 0x7f;
  if (status === 0xffff) return { kind: 'continued' };
  if (low === 0) return { kind: 'exited', exitCode: (status >> 8) & 0xff };
  if (low === 0x7f) {
    const sig = (status >> 8) & 0xff;
    return {
      kind: 'stopped',
      signal: sig & ~SYSCALL_STOP_BIT,
      event: (status >> 16) & 0xff,
      isSyscallStop: (sig & SYSCALL_STOP_BIT) !== 0,
    };
  }
  return { kind: 'signaled', signal: low, coreDumped: (status & 0x80) !== 0 };
}

/** The status word for a decoded status: the inverse of decodeWaitStatus. */
export function encodeWaitStatus(s: WaitStatus): number {
  switch (s.kind) {
    case 'exited':
      return (s.exitCode & 0xff) << 8;
    case 'signaled':
      return (s.signal & 0x7f) | (s.coreDumped ? 0x80 : 0);
    case 'stopped':
      return ((s.event & 0xff) << 16) | (((s.signal & 0x7f) | (s.isSyscallStop ? SYSCALL_STOP_BIT : 0)) << 8) | 0x7f;
    case 'continued':
      return 0xffff;
  }
}

const STOP_SIGNALS: ReadonlySet<number> = new Set([SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU]);

/**
 * A group-stop of a seized tracee: PTRACE_EVENT_STOP with a stopping signal. (A PTRACE_INTERRUPT
 * stop is PTRACE_EVENT_STOP with SIGTRAP.)
 */
export function isGroupStop(s: WaitStatus): boolean {
  return s.kind === 'stopped' && s.event === PTRACE_EVENT_STOP && STOP_SIGNALS.has(s.signal);
}

/** The stop a PTRACE_INTERRUPT (or a seize of a running task) produces. */
export function isInterruptStop(s: WaitStatus): boolean {
  return s.kind === 'stopped' && s.event === PTRACE_EVENT_STOP && s.signal === SIGTRAP;
}

/** A short description for logs and errors: "exited 0", "killed by signal 9", "stopped by 5 (event 128)". */
export function describeWaitStatus(s: WaitStatus): string {
  switch (s.kind) {
    case 'exited':
      return `exited ${s.exitCode}`;
    case 'signaled':
      return `killed by signal ${s.signal}${s.coreDumped ? ' (core dumped)' : ''}`;
    case 'stopped': {
      const what = s.isSyscallStop ? 'syscall-stop' : `stopped by signal ${s.signal}`;
      return s.event === 0 ? what : `${what} (event ${s.event})`;
    }
    case 'continued':
      return 'continued';
  }
}

/**
 * Block the JS thread for `ms` milliseconds: for the short polls of /proc that no kernel wait
 * covers (a task's state, a PID being let go).
 */
export function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * `step()`, called again every `pauseMs` while what it throws is `isTransient`, for up to `forMs`
 * milliseconds; any other error, or a transient one past that, is thrown. For a state the task
 * passes through on its own (an execve half done, a vfork child not yet gone).
 */
export function retrySync<T>(step: () => T, isTransient: (err: unknown) => boolean, forMs: number, pauseMs = 1): T {
  const until = Date.now() + forMs;
  for (;;) {
    try {
      return step();
    } catch (err) {
      if (!isTransient(err) || Date.now() > until) throw err;
      sleepMs(pauseMs);
    }
  }
}

/** Whether `isDone()` holds within `forMs` milliseconds, asked every `pauseMs`. */
export function pollSync(isDone: () => boolean, forMs: number, pauseMs = 1): boolean {
  const until = Date.now() + forMs;
  for (;;) {
    if (isDone()) return true;
    if (Date.now() > until) return false;
    sleepMs(pauseMs);
  }
}
