/**
 * Tracking state kept between criu-ts invocations (pre-dump → pre-dump → dump are separate
 * processes), and the lock that keeps two of them off one task.
 *
 * Files, in the track directory (default /run/criu-ts/track/pidns-<inode of our PID namespace>,
 * mode 0700: a PID names a task only within a PID namespace, and two hosts' agents on one machine
 * (containers, the simulated hosts) each have a task 20000 of their own; CRIU_TS_TRACK_DIR
 * overrides it, for tests):
 *
 *   <pid>.json   mode 0600, the record below, written atomically (temp file + rename)
 *   <pid>.state  mode 0600, the dumper's opaque bytes (DirtyTracker.state), when it had any
 *
 *   { "version": 1,
 *     "kind": "uffd",                      tracker kind
 *     "pid": 1234,                         the tracked task
 *     "targetStartTime": 987654,           its /proc/PID/stat field 22: a reused pid differs
 *     "holder": { "pid": 1240, "startTime": 987700, "fd": 3 } | null,
 *                                          the process holding the userfaultfd (uffd kind)
 *     "armed": ["7f00aa000-7f00ab000", …], ranges tracked at the last collect (hex, half-open)
 *     "hasState": true }                   whether <pid>.state belongs to this record
 *
 * The lock is an abstract unix socket bound to "criu-ts/track/<pid>" (Linux): binding is
 * exclusive, and the kernel frees it when its process dies, so a criu-ts killed mid-way never
 * leaves a stale lock behind. Abstract names are per network namespace: two criu-ts processes
 * in different network namespaces are not kept apart (they would also not share /run, usually).
 */

import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { TaskError, isErrno } from '../../errors.js';
import { AF_UNIX, SOCK_CLOEXEC, SOCK_STREAM } from '../../kernel/constants.js';
import * as sys from '../../sys/native.js';
import { TRACKER_KINDS, type TrackerKind } from '../../kerndat/tracker.js';
import { formatRuns, parseRuns, type PageRuns } from './ranges.js';

export const DEFAULT_TRACK_DIR = '/run/criu-ts/track';
export const STATE_VERSION = 1;

/** The directory tracking state is kept in. */
export function trackDir(): string {
  const override = process.env['CRIU_TS_TRACK_DIR'];
  return override !== undefined && override !== '' ? override : path.join(DEFAULT_TRACK_DIR, pidNamespaceName());
}

/** "pidns-<inode>" of this process's PID namespace (the one its PIDs and /proc belong to). */
function pidNamespaceName(): string {
  if (pidNamespace === null) {
    try {
      pidNamespace = `pidns-${statSync('/proc/self/ns/pid').ino}`;
    } catch {
      pidNamespace = 'pidns-unknown';
    }
  }
  return pidNamespace;
}
/** A process's own PID namespace never changes (setns moves only its later children). */
let pidNamespace: string | null = null;

/**
 * Whether tracking state is recorded for `pid` (a file test, no parsing): callers that load the
 * tracker module only when it may be needed ask this first.
 */
export function isTrackingRecorded(pid: number): boolean {
  return existsSync(recordPath(trackDir(), pid));
}

/** The process holding a userfaultfd between invocations. */
export interface HolderRecord {
  pid: number;
  /** /proc/PID/stat field 22 of the holder, to tell it from a process that reused its pid. */
  startTime: number;
  /** The fd number of the userfaultfd in the holder. */
  fd: number;
}

/** What one invocation leaves for the next. */
export interface KeptRecord {
  kind: TrackerKind;
  pid: number;
  targetStartTime: number;
  holder: HolderRecord | null;
  armed: PageRuns;
  hasState: boolean;
}

export function encodeKeptRecord(rec: KeptRecord): string {
  return `${JSON.stringify({
    version: STATE_VERSION,
    kind: rec.kind,
    pid: rec.pid,
    targetStartTime: rec.targetStartTime,
    holder: rec.holder,
    armed: formatRuns(rec.armed),
    hasState: rec.hasState,
  })}\n`;
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** The record in `text`, or a reason why it is not a valid one. */
export function decodeKeptRecord(text: string): KeptRecord | string {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return 'not JSON';
  }
  if (typeof raw !== 'object' || raw === null) return 'not an object';
  const o = raw as Record<string, unknown>;
  if (o['version'] !== STATE_VERSION) return `version ${String(o['version'])}, expected ${STATE_VERSION}`;
  const kind = o['kind'];
  if (typeof kind !== 'string' || !(TRACKER_KINDS as readonly string[]).includes(kind))
    return `unknown kind ${String(kind)}`;
  if (!isCount(o['pid']) || o['pid'] === 0) return 'bad pid';
  if (!isCount(o['targetStartTime'])) return 'bad targetStartTime';
  let holder: HolderRecord | null = null;
  const h = o['holder'];
  if (h !== null) {
    if (typeof h !== 'object' || h === undefined) return 'bad holder';
    const ho = h as Record<string, unknown>;
    if (!isCount(ho['pid']) || ho['pid'] === 0 || !isCount(ho['startTime']) || !isCount(ho['fd'])) return 'bad holder';
    holder = { pid: ho['pid'], startTime: ho['startTime'], fd: ho['fd'] };
  }
  if (kind === 'uffd' && holder === null) return 'uffd tracking without a holder';
  const armedRaw = o['armed'];
  const armed = Array.isArray(armedRaw) ? parseRuns(armedRaw) : null;
  if (armed === null) return 'bad armed ranges';
  if (typeof o['hasState'] !== 'boolean') return 'bad hasState';
  return {
    kind: kind as TrackerKind,
    pid: o['pid'],
    targetStartTime: o['targetStartTime'],
    holder,
    armed,
    hasState: o['hasState'],
  };
}

function recordPath(dir: string, pid: number): string {
  return path.join(dir, `${pid}.json`);
}

function statePath(dir: string, pid: number): string {
  return path.join(dir, `${pid}.state`);
}

/** The kept record of `pid` and its state bytes; null when none, a string when unreadable. */
export function readKept(dir: string, pid: number): { rec: KeptRecord; state: Uint8Array | null } | string | null {
  let text: string;
  try {
    text = readFileSync(recordPath(dir, pid), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  const rec = decodeKeptRecord(text);
  if (typeof rec === 'string') return `${recordPath(dir, pid)}: ${rec}`;
  if (rec.pid !== pid) return `${recordPath(dir, pid)}: records pid ${rec.pid}`;
  let state: Uint8Array | null = null;
  if (rec.hasState) {
    try {
      state = new Uint8Array(readFileSync(statePath(dir, pid)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return `${statePath(dir, pid)} is missing`;
      throw err;
    }
  }
  return { rec, state };
}

function ensureDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
}

function writeAtomic(file: string, data: string | Uint8Array): void {
  const tmp = `${file}.tmp${process.pid}`;
  writeFileSync(tmp, data, { mode: 0o600 });
  renameSync(tmp, file);
}

/** Store a record and its state bytes (the state first, so a record never names a missing one). */
export function writeKept(dir: string, rec: KeptRecord, state: Uint8Array | null): void {
  ensureDir(dir);
  if (state !== null) writeAtomic(statePath(dir, rec.pid), state);
  else rmSync(statePath(dir, rec.pid), { force: true });
  writeAtomic(recordPath(dir, rec.pid), encodeKeptRecord({ ...rec, hasState: state !== null }));
}

/** Remove what is kept for `pid` (no error when nothing is). */
export function removeKept(dir: string, pid: number): void {
  rmSync(recordPath(dir, pid), { force: true });
  rmSync(statePath(dir, pid), { force: true });
}

/** The lock on one task's tracking; release it once done (idempotent). */
export interface TrackLock {
  release(): void;
}

/**
 * Take the lock on tracking task `pid`, or throw TaskError when another criu-ts process holds it.
 */
export function lockTracking(pid: number): Promise<TrackLock> {
  // Bound, not listening: the name is taken all the same, and nothing keeps this process up.
  const fd = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  try {
    sys.bindUnix(fd, `\0criu-ts/track/${pid}`);
  } catch (err) {
    sys.close(fd);
    if (isErrno(err, 'EADDRINUSE'))
      return Promise.reject(
        new TaskError(pid, `Cannot track memory of task ${pid}: another criu process is working on it`),
      );
    return Promise.reject(err);
  }
  let isReleased = false;
  return Promise.resolve({
    release: () => {
      if (isReleased) return;
      isReleased = true;
      sys.close(fd);
    },
  });
}
