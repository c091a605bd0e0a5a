/**
 * --evasive-devices: "use any path to a device file if the original one is inaccessible" (CRIU's
 * manual). A device file (character or block) open by a task whose name no longer leads to it,
 * because the node was deleted ("<path> (deleted)") or replaced by another node (udev recreating
 * /dev entries, say), is dumped as a REG file by another name of the same device: its own name
 * when that is now another node of the same type and device number (CRIU's rule), else the first
 * node of the same type and number found under /dev. Without the option such an fd is refused,
 * as before.
 *
 * Kernel interfaces: stat(2) through /proc/PID/root, readdir(2) of /dev.
 */

import { readdirSync, statSync, constants as fsc, type BigIntStats } from 'node:fs';
import path from 'node:path';
import { UnsupportedError } from '../errors.js';
import { devMajor, devMinor } from './dev.js';
import { DELETED_SUFFIX } from './ghost.js';
import type { FdDumpInput, FileOptions } from './types.js';

/** How deep under /dev the search goes (/dev/disk/by-id/... is 3 levels). */
const MAX_DEPTH = 3;

const fileType = (mode: bigint | number): number => Number(mode) & fsc.S_IFMT;

function isDevice(st: BigIntStats): boolean {
  const type = fileType(st.mode);
  return type === fsc.S_IFCHR || type === fsc.S_IFBLK;
}

function statIn(root: string, p: string): BigIntStats | undefined {
  try {
    return statSync(`${root}${p}`, { bigint: true });
  } catch {
    return undefined;
  }
}

const sameDevice = (a: BigIntStats, b: BigIntStats): boolean =>
  fileType(a.mode) === fileType(b.mode) && a.rdev === b.rdev;

/** The first node under `dir` (a path in the task's root) of the device of `want`. */
function findDeviceNode(root: string, dir: string, want: BigIntStats, depth: number): string | undefined {
  let names: string[];
  try {
    names = readdirSync(`${root}${dir}`).sort();
  } catch {
    return undefined;
  }
  const subdirs: string[] = [];
  for (const name of names) {
    const p = path.posix.join(dir, name);
    let st: BigIntStats;
    try {
      st = statSync(`${root}${p}`, { bigint: true, throwIfNoEntry: true });
    } catch {
      continue;
    }
    if (isDevice(st) && sameDevice(st, want)) return p;
    if (st.isDirectory() && depth < MAX_DEPTH) subdirs.push(p);
  }
  for (const d of subdirs) {
    const found = findDeviceNode(root, d, want, depth + 1);
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * With --evasive-devices, the name to dump a device fd by when its own name no longer leads to
 * it; undefined when the option is off, the fd is no device, or its name is still good.
 * Throws when no path to the device is found.
 */
export function evasiveDeviceName(input: FdDumpInput, options: FileOptions): string | undefined {
  if (options.isEvasiveDevices !== true || !isDevice(input.stat)) return undefined;
  const root = `/proc/${input.pid}/root`;
  const isDeleted = input.link.endsWith(DELETED_SUFFIX) && input.stat.nlink === 0n;
  const name = isDeleted ? input.link.slice(0, -DELETED_SUFFIX.length) : input.link;
  const own = statIn(root, name);
  if (own !== undefined && own.dev === input.stat.dev && own.ino === input.stat.ino && !isDeleted) return undefined;
  if (own !== undefined && sameDevice(own, input.stat)) return name;
  const found = findDeviceNode(root, '/dev', input.stat, 1);
  if (found !== undefined) return found;
  const kind = fileType(input.stat.mode) === fsc.S_IFCHR ? 'c' : 'b';
  throw new UnsupportedError(
    'evasive-devices',
    `Cannot dump fd ${input.fd} of task ${input.pid}: no path leads to device ${kind} ${devMajor(input.stat.rdev)}:${devMinor(input.stat.rdev)} of "${input.link}"`,
  );
}
