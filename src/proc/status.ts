/**
 * /proc/PID/status and /proc/PID/task: the task facts the injection engine and the dumper need
 * before touching a task (state, tracer, threads), its credentials, capabilities and signal masks.
 *
 *   Name: bash                         (escaped: "\n" and "\\"; /proc/PID/comm is raw)
 *   Umask: 0022                        (octal; since 4.7)
 *   State: S (sleeping)
 *   Uid: 0 0 0 0                       (real, effective, saved, fs)
 *   Groups: 4 24 27                    (supplementary; "Groups:\t" with a trailing space when none)
 *   NStgid: 26591                      (one id per pid namespace, outermost first; since 4.1)
 *   SigQ: 0/96364                      (queued / RLIMIT_SIGPENDING)
 *   SigBlk: 0000000000010000           (hex, bit n-1 = signal n)
 *   CapEff: 000001fffeffffff           (hex)
 *   Seccomp: 0                         (0 disabled, 1 strict, 2 filter; Seccomp_filters since 5.9)
 *
 * "Key:<TAB>value" lines (tabs shown as spaces above); the ones typed below are parsed, every
 * line is also kept raw in `fields`. A key the running kernel does not print reads as the neutral value (0, [], "").
 * In task/TID/status, State, SigPnd, SigBlk and the credentials are the thread's own; ShdPnd,
 * SigIgn and SigCgt are shared by the process.
 */

import { readProcDir, readProcText, taskDir } from './read.js';

export interface TaskStatus {
  name: string;
  /** One letter: R, S, D, T, t, Z, X, I. */
  state: string;
  tgid: number;
  pid: number;
  ppid: number;
  tracerPid: number;
  threads: number;
  /** Octal file-creation mask, or null before 4.7. */
  umask: number | null;
  uid: IdSet;
  gid: IdSet;
  /** Supplementary groups. */
  groups: number[];
  /** The tgid / pid / pgid / sid in each nested pid namespace, outermost first. */
  nsTgid: number[];
  nsPid: number[];
  nsPgid: number[];
  nsSid: number[];
  /** SigQ: signals queued to the real uid, and the RLIMIT_SIGPENDING limit. */
  sigQueued: number;
  sigQueueLimit: number;
  /** Signal masks: bit n-1 is signal n. */
  sigPnd: bigint;
  shdPnd: bigint;
  sigBlk: bigint;
  sigIgn: bigint;
  sigCgt: bigint;
  capInh: bigint;
  capPrm: bigint;
  capEff: bigint;
  capBnd: bigint;
  capAmb: bigint;
  isNoNewPrivs: boolean;
  seccompMode: SeccompMode;
  /** Number of seccomp filters attached (0 before 5.9, where the line is absent). */
  seccompFilters: number;
  /** Speculation_Store_Bypass: "thread vulnerable", "globally mitigated", "vulnerable"… */
  speculationStoreBypass: string;
  /** CoreDumping: 1 while the task dumps core. */
  isCoreDumping: boolean;
  /** THP_enabled: 0 after prctl(PR_SET_THP_DISABLE) (CRIU's mm thp_disabled). */
  isThpEnabled: boolean;
  /** Raw "Key: value" pairs for anything else. */
  fields: ReadonlyMap<string, string>;
}

/** Real, effective, saved and filesystem ids. */
export interface IdSet {
  real: number;
  effective: number;
  saved: number;
  fs: number;
}

/** Seccomp: 0 disabled, 1 strict (SECCOMP_MODE_STRICT), 2 filter (SECCOMP_MODE_FILTER). */
export type SeccompMode = 'disabled' | 'strict' | 'filter';
const SECCOMP_MODES = ['disabled', 'strict', 'filter'] as const;

function ids(value: string | undefined): number[] {
  if (value === undefined) return [];
  const out: number[] = [];
  for (const part of value.split(/\s+/)) if (part !== '') out.push(Number(part));
  return out;
}

function idSet(value: string | undefined): IdSet {
  const [real = 0, effective = 0, saved = 0, fs = 0] = ids(value);
  return { real, effective, saved, fs };
}

function hex(value: string | undefined): bigint {
  return value === undefined || value === '' ? 0n : BigInt(`0x${value}`);
}

export function parseStatus(text: string): TaskStatus {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  const num = (key: string): number => Number((fields.get(key) ?? '0').split(/\s/)[0]);
  const umask = fields.get('Umask');
  const [sigQueued = 0, sigQueueLimit = 0] = (fields.get('SigQ') ?? '0/0').split('/').map(Number);
  return {
    name: fields.get('Name') ?? '',
    state: (fields.get('State') ?? '?').charAt(0),
    tgid: num('Tgid'),
    pid: num('Pid'),
    ppid: num('PPid'),
    tracerPid: num('TracerPid'),
    threads: num('Threads'),
    umask: umask === undefined ? null : parseInt(umask, 8),
    uid: idSet(fields.get('Uid')),
    gid: idSet(fields.get('Gid')),
    groups: ids(fields.get('Groups')),
    nsTgid: ids(fields.get('NStgid')),
    nsPid: ids(fields.get('NSpid')),
    nsPgid: ids(fields.get('NSpgid')),
    nsSid: ids(fields.get('NSsid')),
    sigQueued,
    sigQueueLimit,
    sigPnd: hex(fields.get('SigPnd')),
    shdPnd: hex(fields.get('ShdPnd')),
    sigBlk: hex(fields.get('SigBlk')),
    sigIgn: hex(fields.get('SigIgn')),
    sigCgt: hex(fields.get('SigCgt')),
    capInh: hex(fields.get('CapInh')),
    capPrm: hex(fields.get('CapPrm')),
    capEff: hex(fields.get('CapEff')),
    capBnd: hex(fields.get('CapBnd')),
    capAmb: hex(fields.get('CapAmb')),
    isNoNewPrivs: num('NoNewPrivs') === 1,
    seccompMode: SECCOMP_MODES[num('Seccomp')] ?? 'disabled',
    seccompFilters: num('Seccomp_filters'),
    speculationStoreBypass: fields.get('Speculation_Store_Bypass') ?? '',
    isCoreDumping: num('CoreDumping') === 1,
    isThpEnabled: (fields.get('THP_enabled') ?? '1') === '1',
    fields,
  };
}

/** The status of a process (or of thread `tid` of process `pid`), or null when it is gone. */
export function readStatus(pid: number, tid?: number): TaskStatus | null {
  const text = readProcText(`${taskDir(pid, tid)}/status`);
  return text === null ? null : parseStatus(text);
}

/** The thread ids of a process, ascending, or null when it is gone. */
export function listThreads(pid: number): number[] | null {
  const names = readProcDir(`/proc/${pid}/task`);
  return names === null ? null : names.map(Number).sort((a, b) => a - b);
}
