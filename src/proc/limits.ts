/**
 * /proc/PID/limits: the task's resource limits, read from outside. Its lines come in RLIMIT_*
 * order (CPU = 0 … RTTIME = 15); "unlimited" is RLIM_INFINITY. Reading them this way needs only
 * ptrace access, where prlimit(2) on another task needs CAP_SYS_RESOURCE when the uids differ
 * (which root lacks on this project's machines).
 */

import { readProcText } from './read.js';

export const RLIM_INFINITY = 0xffff_ffff_ffff_ffffn;
export const RLIMIT_COUNT = 16;

export interface Rlimit {
  cur: bigint;
  max: bigint;
}

/** Parse the text of /proc/PID/limits; null when it does not have the 16 limits in order. */
export function parseLimits(text: string): Rlimit[] | null {
  const out: Rlimit[] = [];
  const value = (s: string): bigint | null => (s === 'unlimited' ? RLIM_INFINITY : /^\d+$/.test(s) ? BigInt(s) : null);
  for (const line of text.split('\n').slice(1)) {
    if (line.trim() === '') continue;
    // "Max cpu time              unlimited            unlimited            seconds"
    const m = /^(.{26})(\S+)\s+(\S+)/.exec(line);
    if (m === null) return null;
    const cur = value(m[2] as string);
    const max = value(m[3] as string);
    if (cur === null || max === null) return null;
    out.push({ cur, max });
  }
  return out.length === RLIMIT_COUNT ? out : null;
}

/** The limits of task `pid`, or null when it is gone (or the file is not as expected). */
export function readLimits(pid: number): Rlimit[] | null {
  const text = readProcText(`/proc/${pid}/limits`);
  return text === null ? null : parseLimits(text);
}
