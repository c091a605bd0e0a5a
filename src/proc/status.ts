/**
 * /proc/PID/status and /proc/PID/task: the few task facts the injection engine and the dumper need
 * before touching a task (state, tracer, threads).
 */

import { readFileSync, readdirSync } from 'node:fs';

export interface TaskStatus {
  name: string;
  /** One letter: R, S, D, T, t, Z, X, I. */
  state: string;
  tgid: number;
  pid: number;
  ppid: number;
  tracerPid: number;
  threads: number;
  /** Raw "Key: value" pairs for anything else. */
  fields: ReadonlyMap<string, string>;
}

export function parseStatus(text: string): TaskStatus {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  const num = (key: string): number => Number((fields.get(key) ?? '0').split(/\s/)[0]);
  return {
    name: fields.get('Name') ?? '',
    state: (fields.get('State') ?? '?').charAt(0),
    tgid: num('Tgid'),
    pid: num('Pid'),
    ppid: num('PPid'),
    tracerPid: num('TracerPid'),
    threads: num('Threads'),
    fields,
  };
}

function readOrNull(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') return null;
    throw err;
  }
}

/** The status of a process (or of thread `tid` of process `pid`), or null when it is gone. */
export function readStatus(pid: number, tid?: number): TaskStatus | null {
  const text = readOrNull(tid === undefined ? `/proc/${pid}/status` : `/proc/${pid}/task/${tid}/status`);
  return text === null ? null : parseStatus(text);
}

/** The thread ids of a process, ascending, or null when it is gone. */
export function listThreads(pid: number): number[] | null {
  try {
    return readdirSync(`/proc/${pid}/task`)
      .map(Number)
      .sort((a, b) => a - b);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') return null;
    throw err;
  }
}
