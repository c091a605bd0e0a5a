/**
 * /proc/PID/stat and /proc/PID/task/TID/stat: one line of 52 space-separated fields (proc(5)):
 *
 *   26867 (x) y (z) S 26866 26863 24564 0 -1 4194304 127 0 0 0 0 1 0 0 20 0 1 0 195073 ...
 *   ^pid  ^comm     ^state ^ppid ...                                  num_threads ^ ^starttime
 *
 * comm is the task name, at most 15 bytes, that may itself hold spaces and parentheses: it runs
 * from the first "(" to the LAST ")" of the line. Fields keep their proc(5) names (snake_case, as
 * the kernel spells them). The mm addresses (startcode … env_end) and the obsolete decimal signal
 * masks are bigint; everything else fits a number.
 *
 * Kernel quirks (fs/proc/array.c, do_task_stat):
 * - Fields 45-51 (start_data … env_end) appeared in 3.3, exit_code (52) in 3.5. Older kernels are
 *   not supported: a line with fewer than 52 fields is rejected.
 * - Without ptrace read access to the task, startcode/endcode/startstack read 1 and fields 45-52
 *   read 0. A task without an mm (zombie, kernel thread) reads 0 for all of them.
 * - kstkesp/kstkeip are 0 unless the task is dumping core (since 4.x); wchan is 0 or 1 (since 5.16).
 * - In a thread's task/TID/stat, pid is the TID and the per-thread fields are state, flags,
 *   minflt/majflt, utime/stime, starttime, processor, wchan and exit_signal (-1 for every thread
 *   but the leader, which has SIGCHLD, 17); the rest (ppid, num_threads, the mm fields) are the
 *   process's.
 *
 * brk. The current program break (mm->brk) is not in stat, status or any other /proc file: stat
 * has only start_brk (field 47). The [heap] VMA is not an exact substitute: its end is
 * PAGE_ALIGN(brk) while mm->brk itself may be unaligned, there is no [heap] at all while
 * brk == start_brk, and the area may be merged with an adjacent anonymous mapping. The exact value
 * is what brk(0) returns inside the task: CRIU's parasite calls sys_brk(0) at dump (mm_brk in
 * mm.img) and restores it with prctl(PR_SET_MM, PR_SET_MM_MAP). criu-ts injects brk(0) (src/inject)
 * the same way.
 */

import { readProcText, taskDir } from './read.js';

export interface TaskStat {
  pid: number;
  comm: string;
  /** One letter: R, S, D, T, t, Z, X, I, P. */
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  tty_nr: number;
  tpgid: number;
  /** PF_* flags of the kernel task. */
  flags: number;
  minflt: number;
  cminflt: number;
  majflt: number;
  cmajflt: number;
  /** Clock ticks. */
  utime: number;
  stime: number;
  cutime: number;
  cstime: number;
  priority: number;
  nice: number;
  num_threads: number;
  itrealvalue: number;
  /** Clock ticks after boot. */
  starttime: number;
  /** Bytes. */
  vsize: number;
  /** Pages. */
  rss: number;
  /** Bytes; 18446744073709551615 for RLIM_INFINITY, hence bigint. */
  rsslim: bigint;
  startcode: bigint;
  endcode: bigint;
  startstack: bigint;
  kstkesp: bigint;
  kstkeip: bigint;
  /** Obsolete decimal signal masks (status has the hex ones). */
  signal: bigint;
  blocked: bigint;
  sigignore: bigint;
  sigcatch: bigint;
  wchan: bigint;
  nswap: number;
  cnswap: number;
  exit_signal: number;
  processor: number;
  rt_priority: number;
  policy: number;
  delayacct_blkio_ticks: number;
  guest_time: number;
  cguest_time: number;
  start_data: bigint;
  end_data: bigint;
  start_brk: bigint;
  arg_start: bigint;
  arg_end: bigint;
  env_start: bigint;
  env_end: bigint;
  exit_code: number;
}

/** The fields after comm, in order (fields 3-52 of proc(5)), and whether each is a bigint. */
const FIELDS = [
  ['state', 's'],
  ['ppid', 'n'],
  ['pgrp', 'n'],
  ['session', 'n'],
  ['tty_nr', 'n'],
  ['tpgid', 'n'],
  ['flags', 'n'],
  ['minflt', 'n'],
  ['cminflt', 'n'],
  ['majflt', 'n'],
  ['cmajflt', 'n'],
  ['utime', 'n'],
  ['stime', 'n'],
  ['cutime', 'n'],
  ['cstime', 'n'],
  ['priority', 'n'],
  ['nice', 'n'],
  ['num_threads', 'n'],
  ['itrealvalue', 'n'],
  ['starttime', 'n'],
  ['vsize', 'n'],
  ['rss', 'n'],
  ['rsslim', 'b'],
  ['startcode', 'b'],
  ['endcode', 'b'],
  ['startstack', 'b'],
  ['kstkesp', 'b'],
  ['kstkeip', 'b'],
  ['signal', 'b'],
  ['blocked', 'b'],
  ['sigignore', 'b'],
  ['sigcatch', 'b'],
  ['wchan', 'b'],
  ['nswap', 'n'],
  ['cnswap', 'n'],
  ['exit_signal', 'n'],
  ['processor', 'n'],
  ['rt_priority', 'n'],
  ['policy', 'n'],
  ['delayacct_blkio_ticks', 'n'],
  ['guest_time', 'n'],
  ['cguest_time', 'n'],
  ['start_data', 'b'],
  ['end_data', 'b'],
  ['start_brk', 'b'],
  ['arg_start', 'b'],
  ['arg_end', 'b'],
  ['env_start', 'b'],
  ['env_end', 'b'],
  ['exit_code', 'n'],
] as const satisfies readonly (readonly [Exclude<keyof TaskStat, 'pid' | 'comm'>, 's' | 'n' | 'b'])[];

export function parseStat(text: string): TaskStat {
  const open = text.indexOf(' (');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new Error(`Cannot parse stat: no "(comm)" in ${JSON.stringify(text)}`);
  const rest = text
    .slice(close + 2)
    .trimEnd()
    .split(' ');
  if (rest.length < FIELDS.length)
    throw new Error(`Cannot parse stat: ${rest.length + 2} fields, expected 52, in ${JSON.stringify(text)}`);
  const stat: Record<string, unknown> = { pid: Number(text.slice(0, open)), comm: text.slice(open + 2, close) };
  for (let i = 0; i < FIELDS.length; i++) {
    const [name, kind] = FIELDS[i] as (typeof FIELDS)[number];
    const raw = rest[i] as string;
    // Negative values (tty_nr -1 style, exit_signal -1, nice) only occur in number fields.
    stat[name] = kind === 's' ? raw : kind === 'b' ? BigInt(raw) : Number(raw);
  }
  return stat as unknown as TaskStat;
}

/** The stat of a process (or of its thread `tid`), or null when it is gone. */
export function readStat(pid: number, tid?: number): TaskStat | null {
  const text = readProcText(`${taskDir(pid, tid)}/stat`);
  return text === null ? null : parseStat(text);
}
