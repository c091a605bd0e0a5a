/**
 * The children of a process: the union over its threads of /proc/PID/task/TID/children (a line of
 * space-separated pids, "26593 27001 ", since 3.5 with CONFIG_PROC_CHILDREN). A child belongs to
 * the thread that forked it, hence every thread is read. The kernel documents the list as reliable
 * only while the task is stopped (which it is, for the dumper): a child forked or reaped during the
 * read may be missed otherwise.
 *
 * Without CONFIG_PROC_CHILDREN the file does not exist: fall back to scanning /proc/[0-9]*\/stat for
 * ppid == pid (ppid is the parent's tgid, so it covers every thread's children). Pids are in the
 * reader's pid namespace.
 */

import { existsSync } from 'node:fs';
import { parseStat } from './stat.js';
import { readProcDir, readProcText } from './read.js';
import { listThreads } from './status.js';

/** The pids in one children file. */
export function parseChildren(text: string): number[] {
  const pids: number[] = [];
  for (const part of text.split(' ')) {
    const s = part.trim();
    if (s !== '') pids.push(Number(s));
  }
  return pids;
}

/** The children of process `pid` (every thread's), ascending, or null when it is gone. */
export function readChildren(pid: number): number[] | null {
  const tids = listThreads(pid);
  if (tids === null) return null;
  if (!existsSync(`/proc/${pid}/task/${pid}/children`)) return scanChildren(pid);
  const pids = new Set<number>();
  for (const tid of tids) {
    // A thread that exited since listThreads has no children left to report.
    const text = readProcText(`/proc/${pid}/task/${tid}/children`);
    if (text !== null) for (const child of parseChildren(text)) pids.add(child);
  }
  return [...pids].sort((a, b) => a - b);
}

/** The fallback: every process of /proc whose stat names `pid` as ppid, ascending. */
export function scanChildren(pid: number): number[] {
  const pids: number[] = [];
  for (const name of readProcDir('/proc') ?? []) {
    const code = name.charCodeAt(0);
    if (code < 0x30 || code > 0x39) continue;
    const text = readProcText(`/proc/${name}/stat`);
    if (text !== null && parseStat(text).ppid === pid) pids.push(Number(name));
  }
  return pids.sort((a, b) => a - b);
}

/**
 * Process `pid` and its descendants, parents before their children, each with its parent's pid
 * (0 for `pid`). Read while the processes run: a dumper reads it again as it freezes them.
 */
export function readTree(pid: number): { pid: number; ppid: number }[] {
  const tree: { pid: number; ppid: number }[] = [];
  const visit = (p: number, ppid: number): void => {
    tree.push({ pid: p, ppid });
    for (const child of readChildren(p) ?? []) visit(child, p);
  };
  visit(pid, 0);
  return tree;
}
