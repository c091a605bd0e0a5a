/**
 * Small per-task /proc files the dumper records, each a parser and a reader that returns null when
 * the task is gone:
 *
 *   personality      "00000000\n"                 hex persona (personality(2)), 8 digits
 *   comm             "bash\n"                     raw task name, ≤ 15 bytes (task/TID/comm per thread)
 *   cwd, root, exe   symlinks: "/work/main", "/tmp/sleepdel (deleted)"
 *   loginuid         "4294967295"                 no newline; (uid_t)-1 when unset (CONFIG_AUDIT)
 *   oom_score_adj    "0\n"                        -1000 … 1000
 *   cgroup           "4:memory:/process_api/e24f…\n0::/\n"   id:controllers:path per hierarchy
 *   ns/NAME          symlinks: "net:[4026531833]" (the namespace's nsfs inode)
 *   task/TID/stat    see stat.ts: readThreadStat gives the fields that differ per thread
 *
 * exe and the mapped-file names end in " (deleted)" when the file was unlinked; the suffix is not
 * escaped, so a live file whose name really ends in " (deleted)" reads the same (CRIU has the same
 * ambiguity and checks the link count of the opened file).
 */

import { readProcDir, readProcLink, readProcText, taskDir } from './read.js';
import { readStat, type TaskStat } from './stat.js';

export function parsePersonality(text: string): number {
  const value = parseInt(text.trim(), 16);
  if (!Number.isFinite(value)) throw new Error(`Cannot parse personality: ${JSON.stringify(text)}`);
  return value;
}

export function readPersonality(pid: number): number | null {
  const text = readProcText(`${taskDir(pid)}/personality`);
  return text === null ? null : parsePersonality(text);
}

/** comm without its newline. */
export function parseComm(text: string): string {
  return text.endsWith('\n') ? text.slice(0, -1) : text;
}

/** The name of a process, or of thread `tid`. */
export function readComm(pid: number, tid?: number): string | null {
  const text = readProcText(`${taskDir(pid, tid)}/comm`);
  return text === null ? null : parseComm(text);
}

export interface LinkTarget {
  path: string;
  /** The link ended in " (deleted)" (removed from `path`). */
  isDeleted: boolean;
}

const DELETED = ' (deleted)';

export function parseLinkTarget(target: string): LinkTarget {
  return target.endsWith(DELETED)
    ? { path: target.slice(0, -DELETED.length), isDeleted: true }
    : { path: target, isDeleted: false };
}

export function readCwd(pid: number): LinkTarget | null {
  const target = readProcLink(`${taskDir(pid)}/cwd`);
  return target === null ? null : parseLinkTarget(target);
}

export function readRoot(pid: number): LinkTarget | null {
  const target = readProcLink(`${taskDir(pid)}/root`);
  return target === null ? null : parseLinkTarget(target);
}

/** The executable; null also for a kernel thread, which has none. */
export function readExe(pid: number): LinkTarget | null {
  const target = readProcLink(`${taskDir(pid)}/exe`);
  return target === null ? null : parseLinkTarget(target);
}

export function parseDecimal(what: string, text: string): number {
  const s = text.trim();
  if (!/^-?\d+$/.test(s)) throw new Error(`Cannot parse ${what}: ${JSON.stringify(text)}`);
  return Number(s);
}

/** The audit login uid, 4294967295 when unset; null when gone or without CONFIG_AUDIT. */
export function readLoginuid(pid: number): number | null {
  const text = readProcText(`${taskDir(pid)}/loginuid`);
  return text === null ? null : parseDecimal('loginuid', text);
}

export function readOomScoreAdj(pid: number): number | null {
  const text = readProcText(`${taskDir(pid)}/oom_score_adj`);
  return text === null ? null : parseDecimal('oom_score_adj', text);
}

export interface CgroupLine {
  /** Hierarchy id; 0 for the cgroup v2 unified hierarchy. */
  hierarchyId: number;
  /** Controllers ("cpu", "name=systemd"); empty for v2. */
  controllers: string[];
  path: string;
}

export function parseCgroup(text: string): CgroupLine[] {
  const lines: CgroupLine[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const a = line.indexOf(':');
    const b = line.indexOf(':', a + 1);
    if (a < 0 || b < 0) throw new Error(`Cannot parse cgroup line: ${JSON.stringify(line)}`);
    const controllers = line.slice(a + 1, b);
    lines.push({
      hierarchyId: Number(line.slice(0, a)),
      controllers: controllers === '' ? [] : controllers.split(','),
      // The path may hold ':' itself.
      path: line.slice(b + 1),
    });
  }
  return lines;
}

export function readCgroup(pid: number): CgroupLine[] | null {
  const text = readProcText(`${taskDir(pid)}/cgroup`);
  return text === null ? null : parseCgroup(text);
}

export interface NsLink {
  /** "net", "mnt", "pid", "user", "uts", "ipc", "cgroup", "time". */
  type: string;
  /** The namespace's inode on nsfs: equal inodes, same namespace. */
  inode: number;
}

export function parseNsLink(target: string): NsLink {
  const m = /^([a-z_]+):\[(\d+)\]$/.exec(target);
  if (m === null) throw new Error(`Cannot parse namespace link: ${JSON.stringify(target)}`);
  return { type: m[1] as string, inode: Number(m[2]) };
}

/**
 * The namespaces of a task (of its thread `tid` when given: a thread may setns on its own) by ns/
 * entry name ("net", "pid_for_children", …), or null when gone.
 * An entry that cannot be read (a *_for_children of a task in the middle of exit) is left out.
 */
export function readNamespaces(pid: number, tid?: number): Map<string, NsLink> | null {
  const dir = `${taskDir(pid, tid)}/ns`;
  const names = readProcDir(dir);
  if (names === null) return null;
  const out = new Map<string, NsLink>();
  for (const name of names.sort()) {
    const target = readProcLink(`${dir}/${name}`);
    if (target !== null) out.set(name, parseNsLink(target));
  }
  return out;
}

/** The task/TID/stat fields that differ between the threads of a process (see stat.ts). */
export type ThreadStat = Pick<
  TaskStat,
  | 'pid'
  | 'comm'
  | 'state'
  | 'flags'
  | 'minflt'
  | 'majflt'
  | 'utime'
  | 'stime'
  | 'starttime'
  | 'exit_signal'
  | 'processor'
>;

export function readThreadStat(pid: number, tid: number): ThreadStat | null {
  const s = readStat(pid, tid);
  if (s === null) return null;
  const { comm, state, flags, minflt, majflt, utime, stime, starttime, exit_signal, processor } = s;
  return { pid: s.pid, comm, state, flags, minflt, majflt, utime, stime, starttime, exit_signal, processor };
}
