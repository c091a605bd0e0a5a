/**
 * Reading a task's fd table from outside: the fd numbers, and for one fd the FdDumpInput the kind
 * modules work from (link, fdinfo, fstat of a pidfd_getfd duplicate).
 */

import { fstatSync, readdirSync, readlinkSync } from 'node:fs';
import { TaskError } from '../errors.js';
import { readFdInfo } from '../proc/fdinfo.js';
import * as sys from '../sys/native.js';
import type { FdDumpInput } from './types.js';

/** The open fds of a task, ascending. */
export function listFds(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/fd`)
      .map(Number)
      .sort((a, b) => a - b);
  } catch (err) {
    throw new TaskError(pid, `Cannot list the fds of task ${pid}`, { cause: err });
  }
}

/** Where fd `fd` of task `pid` leads (readlink of /proc/PID/fd/FD), or null once it is closed. */
export function fdLink(pid: number, fd: number): string | null {
  try {
    return readlinkSync(`/proc/${pid}/fd/${fd}`);
  } catch {
    return null;
  }
}

/**
 * Everything the kind modules need to know about fd `fd` of the task `pidfd` refers to. The
 * caller owns `localFd` and must close it (sys.close).
 */
export function readFdInput(pid: number, pidfd: number, fd: number): FdDumpInput {
  const localFd = sys.pidfdGetfd(pidfd, fd, 0);
  try {
    const link = readlinkSync(`/proc/${pid}/fd/${fd}`);
    const fdinfo = readFdInfo(pid, fd);
    if (fdinfo === null) throw new TaskError(pid, `fd ${fd} of task ${pid} vanished while being dumped`);
    const stat = fstatSync(localFd, { bigint: true });
    return { pid, fd, link, fdinfo, stat, localFd };
  } catch (err) {
    sys.close(localFd);
    throw err;
  }
}
