/**
 * Open-file status flags of the path-less fd kinds (pipe, FIFO, eventfd, epoll, signalfd, timerfd,
 * inotify): what their file entries record and how restore puts them back.
 *
 * fdinfo's "flags:" is f_flags plus O_CLOEXEC when the fd has FD_CLOEXEC. O_CLOEXEC belongs to
 * the fd, not the description: CRIU keeps it in fdinfo_entry.flags, so the kind entries drop it.
 * Restore applies the rest with fcntl(F_SETFL) injected into the task; the kernel changes only
 * O_APPEND, O_NONBLOCK, O_ASYNC, O_DIRECT and O_NOATIME that way, the access mode is fixed by
 * how the file was created.
 */

import type { Injector } from '../inject/injector.js';
import { F_SETFL, O_CLOEXEC, O_NONBLOCK } from '../kernel/constants.js';

/** O_ASYNC (FASYNC). uapi/asm-generic/fcntl.h. */
export const O_ASYNC = 0o20000;

/** The flags a kind entry records: fdinfo's flags without O_CLOEXEC. */
export function descriptionFlags(fdinfoFlags: number): number {
  return fdinfoFlags & ~O_CLOEXEC;
}

/**
 * Give fd `fd` of the task the status flags recorded in `flags` that a file creation call could
 * not (only O_NONBLOCK and O_ASYNC matter for these kinds); `created` are those it already has.
 */
export function setStatusFlagsInTask(injector: Injector, fd: number, flags: number, created = 0): void {
  const want = flags & (O_NONBLOCK | O_ASYNC);
  if (want === (created & (O_NONBLOCK | O_ASYNC))) return;
  injector.syscallOrThrow('fcntl', [BigInt(fd), BigInt(F_SETFL), BigInt(want)]);
}
