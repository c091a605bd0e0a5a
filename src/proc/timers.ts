/**
 * /proc/PID/timers: the POSIX timers (timer_create(2)) of a process, four lines each, newest first
 * (fs/proc/base.c, show_timer; since 3.10, needs CONFIG_CHECKPOINT_RESTORE):
 *
 *   ID: 2
 *   signal: 12/0000000000001234        signo / sigev_value (hex pointer-sized)
 *   notify: signal/tid.26779           how / "pid" or "tid" (SIGEV_THREAD_ID) . the target
 *   ClockID: 0                         CLOCK_REALTIME 0, MONOTONIC 1, …, or a negative CPU clock
 *
 * how is "signal" (SIGEV_SIGNAL), "none" (SIGEV_NONE) or "thread" (SIGEV_THREAD; glibc turns
 * SIGEV_THREAD into SIGEV_THREAD_ID on a helper thread, so it is rare here). The timer's current
 * value and overrun are not shown: the dumper reads them with timer_gettime injected in the task,
 * as CRIU's parasite does. The target pid is in the reader's pid namespace.
 */

import { readProcText, taskDir } from './read.js';

export type TimerNotify = 'signal' | 'none' | 'thread';

export interface PosixTimer {
  /** The timer id timer_create returned (CRIU's it_id). */
  id: number;
  signo: number;
  /** sigev_value (CRIU's sival_ptr). */
  sigevValue: bigint;
  notify: TimerNotify;
  /** SIGEV_THREAD_ID: the signal goes to thread `notifyPid`, not to the process. */
  isThreadId: boolean;
  /** The pid or tid signalled. */
  notifyPid: number;
  clockId: number;
}

const BLOCK = /^ID: (-?\d+)\nsignal: (\d+)\/([0-9a-f]+)\nnotify: (\w+)\/(pid|tid)\.(\d+)\nClockID: (-?\d+)$/;

export function parseTimers(text: string): PosixTimer[] {
  const timers: PosixTimer[] = [];
  const lines = text.split('\n');
  for (let i = 0; i + 3 < lines.length; i += 4) {
    const block = lines.slice(i, i + 4).join('\n');
    const m = BLOCK.exec(block);
    if (m === null) throw new Error(`Cannot parse timers entry: ${JSON.stringify(block)}`);
    const notify = m[4];
    if (notify !== 'signal' && notify !== 'none' && notify !== 'thread')
      throw new Error(`Cannot parse timers entry: unknown notify "${notify}"`);
    timers.push({
      id: Number(m[1]),
      signo: Number(m[2]),
      sigevValue: BigInt(`0x${m[3]}`),
      notify,
      isThreadId: m[5] === 'tid',
      notifyPid: Number(m[6]),
      clockId: Number(m[7]),
    });
  }
  if (lines.length % 4 !== 1 || lines[lines.length - 1] !== '')
    throw new Error(`Cannot parse timers: ${lines.length - 1} lines is not whole entries`);
  return timers;
}

/** The POSIX timers of a process, or null when it is gone. */
export function readTimers(pid: number): PosixTimer[] | null {
  const text = readProcText(`${taskDir(pid)}/timers`);
  return text === null ? null : parseTimers(text);
}
