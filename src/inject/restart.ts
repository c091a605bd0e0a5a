/**
 * Blocking calls that Linux ends with EINTR when a tracer merely stops the task.
 *
 * Most interrupted system calls leave a restart code in rax (-ERESTARTSYS and friends) and the
 * kernel restarts them by itself when the task resumes. A few do not: epoll_wait(2) and
 * sigtimedwait(2) return -EINTR to user space after any stop, even with no signal handler
 * involved (signal(7), "Interruption of system calls and library functions by stop signals").
 * A process seized by CRIU then wakes up with a spurious EINTR that many programs treat as an
 * error. For those calls, when they wait without a time limit, we turn the task's registers back
 * into "about to make the call again": as if the stop never happened. With a time limit we leave
 * the EINTR, since restarting would wait longer than asked.
 */

import { SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';
import type { UserRegs } from '../sys/regs.js';

const EINTR = 4n;

/** Does the call wait without a time limit, judging by its arguments? */
const WAITS_FOREVER: ReadonlyMap<number, (regs: UserRegs) => boolean> = new Map([
  // epoll_wait(epfd, events, maxevents, int timeout): negative timeout = forever.
  [NR.epoll_wait, (r: UserRegs) => BigInt.asIntN(32, r.r10) < 0n],
  // epoll_pwait(epfd, events, maxevents, int timeout, sigmask, sigsetsize).
  [NR.epoll_pwait, (r: UserRegs) => BigInt.asIntN(32, r.r10) < 0n],
  // epoll_pwait2(epfd, events, maxevents, const struct timespec *timeout, ...): NULL = forever.
  [NR.epoll_pwait2, (r: UserRegs) => r.r10 === 0n],
  // rt_sigtimedwait(set, info, const struct timespec *timeout, sigsetsize): NULL = forever.
  [NR.rt_sigtimedwait, (r: UserRegs) => r.rdx === 0n],
]);

/**
 * The registers to resume the task with instead of `regs`, or null when they are right as they
 * are. `insnBefore` holds the two bytes before rip (a `syscall` instruction is 0f 05).
 */
export function restartInterruptedWait(regs: UserRegs, insnBefore: Buffer): UserRegs | null {
  if (BigInt.asIntN(64, regs.rax) !== -EINTR) return null;
  const nr = Number(BigInt.asIntN(64, regs.orig_rax));
  const waitsForever = WAITS_FOREVER.get(nr);
  if (waitsForever === undefined || !waitsForever(regs)) return null;
  if (insnBefore.length !== 2 || insnBefore[0] !== 0x0f || insnBefore[1] !== 0x05) return null;
  return { ...regs, rax: regs.orig_rax, rip: regs.rip - 2n, orig_rax: -1n };
}
