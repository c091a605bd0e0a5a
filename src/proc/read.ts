/**
 * Reading /proc files of a task that may vanish at any moment. A task that exited between two
 * reads is an expected outcome, so these return null for ENOENT and ESRCH (the errors the kernel
 * gives for a gone pid directory or a task reaped mid-read) and throw anything else.
 *
 * Text is decoded as UTF-8, like Node's fs paths, so a path read here can be handed back to fs.
 * (A file name that is not valid UTF-8 does not survive; neither would it through fs.)
 */

import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { readFile } from 'node:fs/promises';

function isGone(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ESRCH';
}

/** The whole text of a /proc file, or null when the task is gone. */
export function readProcText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if (isGone(err)) return null;
    throw err;
  }
}

/**
 * readProcText on the thread pool: for a file whose read is long kernel work (smaps walks every
 * page table), so that it runs beside what the caller does meanwhile.
 */
export async function readProcTextAsync(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (isGone(err)) return null;
    throw err;
  }
}

/** The whole bytes of a /proc file (auxv), or null when the task is gone. */
export function readProcBytes(path: string): Buffer | null {
  try {
    return readFileSync(path);
  } catch (err) {
    if (isGone(err)) return null;
    throw err;
  }
}

/** readlink of a /proc link (cwd, exe, ns/net), or null when the task is gone. */
export function readProcLink(path: string): string | null {
  try {
    return readlinkSync(path, 'utf8');
  } catch (err) {
    if (isGone(err)) return null;
    throw err;
  }
}

/** The entries of a /proc directory (task/, ns/), or null when the task is gone. */
export function readProcDir(path: string): string[] | null {
  try {
    return readdirSync(path);
  } catch (err) {
    if (isGone(err)) return null;
    throw err;
  }
}

/** Where a task's files are: /proc/PID, or /proc/PID/task/TID for one thread. */
export function taskDir(pid: number, tid?: number): string {
  return tid === undefined ? `/proc/${pid}` : `/proc/${pid}/task/${tid}`;
}
