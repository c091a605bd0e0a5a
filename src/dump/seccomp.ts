/**
 * Seccomp filters of a task's threads: read from outside with PTRACE_SECCOMP_GET_FILTER (classic
 * BPF programs, newest first), stored in `seccomp.img` (seccomp_entry) as CRIU does: one
 * `seccomp_filter {filter, prev}` per distinct filter, `prev` naming the older filter of the same
 * chain by its index in the list; each thread's core says its mode and the index of its newest
 * filter. Threads sharing a chain share its entries.
 */

import { isErrno } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import { readStatus } from '../proc/status.js';
import * as sys from '../sys/native.js';

export const SECCOMP_MODE_STRICT = 1;
export const SECCOMP_MODE_FILTER = 2;
const SECCOMP_MODES = { disabled: 0, strict: SECCOMP_MODE_STRICT, filter: SECCOMP_MODE_FILTER } as const;

export interface SeccompDump {
  /** seccomp_entry.seccomp_filters */
  filters: ImageEntry[];
  /** Per thread: mode (0 none, 1 strict, 2 filter) and the index of its newest filter. */
  threads: Map<number, { mode: number; newest?: number }>;
}

function readChain(tid: number): Buffer[] {
  const chain: Buffer[] = [];
  for (let i = 0; ; i++) {
    try {
      chain.push(sys.ptraceSeccompGetFilter(tid, i));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) break;
      throw err;
    }
  }
  return chain.reverse(); // oldest first
}

/** The seccomp state of threads (`pid`: each one's process), with one filter list for all. */
export function dumpSeccomp(threadsOf: readonly { pid: number; tids: readonly number[] }[]): SeccompDump {
  const filters: ImageEntry[] = [];
  const known = new Map<string, number>(); // chain prefix key -> index of its last filter
  const threads = new Map<number, { mode: number; newest?: number }>();
  for (const { pid, tid } of threadsOf.flatMap((p) => p.tids.map((tid) => ({ pid: p.pid, tid })))) {
    const mode = SECCOMP_MODES[readStatus(pid, tid)?.seccompMode ?? 'disabled'];
    if (mode !== SECCOMP_MODE_FILTER) {
      threads.set(tid, { mode });
      continue;
    }
    let key = '';
    let prev: number | undefined;
    for (const prog of readChain(tid)) {
      key += `/${prog.toString('hex')}`;
      let index = known.get(key);
      if (index === undefined) {
        index = filters.length;
        filters.push(prev === undefined ? { filter: prog } : { filter: prog, prev });
        known.set(key, index);
      }
      prev = index;
    }
    threads.set(tid, prev === undefined ? { mode } : { mode, newest: prev });
  }
  return { filters, threads };
}
