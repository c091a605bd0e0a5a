/**
 * /proc/PID/fdinfo/FD: the common fields every fd has, and the raw text for kind-specific lines:
 *
 *   pos:    1234
 *   flags:  0100002        (octal)
 *   mnt_id: 25
 *   ino:    1048577
 *   ...kind lines (eventfd-count, tfd, sigmask, clockid, inotify wd, ...)
 */

import { readFileSync } from 'node:fs';
import type { FdInfo } from '../files/types.js';

export function parseFdInfo(text: string): FdInfo {
  const field = (key: string): string | undefined => {
    const m = new RegExp(`^${key}:\\s*(\\S+)`, 'm').exec(text);
    return m?.[1];
  };
  return {
    pos: BigInt(field('pos') ?? '0'),
    flags: parseInt(field('flags') ?? '0', 8),
    mntId: Number(field('mnt_id') ?? '0'),
    ino: BigInt(field('ino') ?? '0'),
    raw: text,
  };
}

/** The fdinfo of one fd, or null when the fd (or the task) is gone. */
export function readFdInfo(pid: number, fd: number): FdInfo | null {
  try {
    return parseFdInfo(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') return null;
    throw err;
  }
}

/** Every "key: value" line with this key, in order (epoll's "tfd:", inotify's "inotify wd:"). */
export function fdInfoLines(info: FdInfo, key: string): string[] {
  const prefix = `${key}:`;
  return info.raw
    .split('\n')
    .filter((l) => l.startsWith(prefix))
    .map((l) => l.slice(prefix.length).trim());
}
