/**
 * /proc/PID/maps: the task's memory mappings, one line each:
 *
 *   start-end perms offset major:minor inode path
 *   7ffd1c5e0000-7ffd1c601000 rw-p 00000000 00:00 0    [stack]
 *
 * Addresses and offsets are hex, parsed to bigint. The path is everything after the inode column,
 * so names with spaces survive; a deleted file ends in " (deleted)".
 */

import { readFileSync } from 'node:fs';

export interface MapsEntry {
  start: bigint;
  end: bigint;
  isRead: boolean;
  isWrite: boolean;
  isExec: boolean;
  isShared: boolean;
  offset: bigint;
  major: number;
  minor: number;
  inode: number;
  /** The file path, a pseudo name such as "[vdso]", or "" for anonymous memory. */
  path: string;
}

const LINE = /^([0-9a-f]+)-([0-9a-f]+) ([r-])([w-])([x-])([ps]) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+) *(.*)$/;

export function parseMaps(text: string): MapsEntry[] {
  const entries: MapsEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const m = LINE.exec(line);
    if (m === null) throw new Error(`Cannot parse maps line: ${JSON.stringify(line)}`);
    const [, start, end, r, w, x, s, offset, major, minor, inode, path] = m as unknown as string[];
    entries.push({
      start: BigInt(`0x${start}`),
      end: BigInt(`0x${end}`),
      isRead: r === 'r',
      isWrite: w === 'w',
      isExec: x === 'x',
      isShared: s === 's',
      offset: BigInt(`0x${offset}`),
      major: parseInt(major as string, 16),
      minor: parseInt(minor as string, 16),
      inode: Number(inode),
      path: path ?? '',
    });
  }
  return entries;
}

/** The mappings of a task, or null when it is gone. */
export function readMaps(pid: number): MapsEntry[] | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/maps`, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ESRCH')
      return null;
    throw err;
  }
  return parseMaps(text);
}
