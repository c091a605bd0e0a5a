/**
 * The contract between the files orchestrator (src/files/index.ts: walks a task's fd table on
 * dump, rebuilds it on restore) and the fd kind modules (one per kind: src/files/<kind>.ts, each
 * with its dump and restore halves, registered in src/files/registry.ts).
 *
 * Images: `files.img` holds one `file_entry` per open file description (fd_types `type`, a unique
 * `id`, and the kind's sub-message: `reg`, `pipe`, `efd`, ...); `fdinfo-<files_id>.img` holds one
 * `fdinfo_entry {id, flags (FD_CLOEXEC), type, fd}` per fd. Several fds may share one description
 * (dup, fork): the orchestrator finds those with kcmp(KCMP_FILE) and dumps the description once.
 * Extra images (pipes-data, fifo-data, ...) are written through the context.
 */

import type { BigIntStats } from 'node:fs';
import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import type { FileImageSink } from './image-sink.js';

/** fd_types of proto/fdinfo.proto (CRIU's numbering). */
export const FD_TYPES = {
  UND: 0,
  REG: 1,
  PIPE: 2,
  FIFO: 3,
  INETSK: 4,
  UNIXSK: 5,
  EVENTFD: 6,
  EVENTPOLL: 7,
  INOTIFY: 8,
  SIGNALFD: 9,
  PACKETSK: 10,
  TTY: 11,
  FANOTIFY: 12,
  NETLINKSK: 13,
  NS: 14,
  TUNF: 15,
  EXT: 16,
  TIMERFD: 17,
  MEMFD: 18,
  BPFMAP: 19,
} as const;

export type FdTypeName = keyof typeof FD_TYPES;

/** /proc/PID/fdinfo/FD: the common fields, and every "key: value" line for the kind modules. */
export interface FdInfo {
  pos: bigint;
  /** Open flags (octal in the file): O_ACCMODE, O_APPEND, O_NONBLOCK, O_DIRECT, O_CLOEXEC... */
  flags: number;
  mntId: number;
  ino: bigint;
  /** The whole text, for kinds with several lines of the same key (epoll "tfd:", inotify "inotify wd:"). */
  raw: string;
}

/** One fd of the dumped task, as the orchestrator found it. */
export interface FdDumpInput {
  pid: number;
  fd: number;
  /** readlink(/proc/PID/fd/FD): a path, "pipe:[123]", "anon_inode:[eventfd]", "socket:[4]"... */
  link: string;
  fdinfo: FdInfo;
  /** fstat of `localFd`. */
  stat: BigIntStats;
  /**
   * A duplicate of the fd in criu's own process (pidfd_getfd): the same open file description,
   * so reading its state from here (tee of a pipe, timerfd_gettime, ...) needs no injection. The
   * orchestrator closes it. Never read from it in a way that consumes data.
   */
  localFd: number;
}

/** The CLI options the fd kind modules act on (dump and restore). */
export interface FileOptions {
  /** -j/--shell-job: terminals are the shell's, recorded on dump and taken from criu's stdin on restore. */
  isShellJob?: boolean;
  /** --link-remap: an unlinked file is linked back under a hidden name instead of copied. */
  isLinkRemap?: boolean;
  /** --evasive-devices: a device file whose path no longer leads to it is dumped by any path to the device. */
  isEvasiveDevices?: boolean;
  /** --tcp-established: established TCP connections are dumped (repair mode, network lock). */
  isTcpEstablished?: boolean;
  /**
   * --tcp-close: dump, connected TCP sockets are taken without their connection (nothing done to
   * it); restore, they are made closed.
   */
  isTcpClose?: boolean;
  /**
   * --skip-in-flight: a listener's connections waiting in its accept queue are left out (they are
   * reset when the task is killed) instead of refused.
   */
  isSkipInFlight?: boolean;
  /** --ext-unix-sk: a datagram unix socket connected outside the task is dumped, to connect again by name. */
  isExtUnixSk?: boolean;
  /** -l/--file-locks: file locks held are dumped (refused otherwise). */
  isFileLocks?: boolean;
  /**
   * The processes dumped together (a tree): a socket's peer held by any of them is inside the dump.
   * Absent: the task alone.
   */
  treePids?: readonly number[];
}

export interface FileDumpContext {
  pid: number;
  /** The options of this dump (absent: all off). */
  options?: FileOptions;
  /** A new file id, unique within files.img. */
  allocId(): number;
  /** Append an entry (and its raw payload) to the image of another kind, e.g. "PIPES_DATA". */
  addEntry(kindName: string, entry: ImageEntry, extra?: Uint8Array): Promise<void>;
  /** Attached to the (stopped) task, for what only the task can tell. */
  injector: Injector;
  /** State shared between the fds of one dump, for kind modules (e.g. pipe data dumped once). */
  shared: Map<string, unknown>;
  /** Where per-object images go (ghost files, memfd contents). */
  images?: FileImageSink;
  /** A pid of criu's as the tree's PID namespace sees it (absent: the same). */
  vpid?: (hostPid: number) => number;
  /** What names a process's network lock table (net-lock.ts; absent: its pid). */
  lockId?: (hostPid: number) => string;
}

export interface FileRestoreContext {
  /** The process as the images (and its own PID namespace) know it: for calls made inside it. */
  pid: number;
  /**
   * The process as criu sees it (its /proc, pidfd_open by criu; the task's own paths under /proc
   * too, as /proc is criu's): `pid` but in a tree with a PID namespace of its own.
   */
  hostPid: number;
  /** The options of this restore (absent: all off). */
  options?: FileOptions;
  /** Attached to the task being rebuilt: every fd is created by calls run inside it. */
  injector: Injector;
  imagesDir: string;
  /** The entries of another image kind of this dump, e.g. "PIPES_DATA" (empty if none). */
  entriesOf(kindName: string): Promise<readonly { entry: ImageEntry; extra?: Uint8Array }[]>;
  /** Where a file id's description is open in the target (any one of its fds), once restored. */
  fdOfFileId(id: number): number | undefined;
  /**
   * Move fd `fd` of the target above every fd number of the restored table, where no later file
   * is put over it, and return its new number: for an fd a module keeps open across files (the
   * other end of a socket pair). The module closes it in finishRestore at the latest.
   */
  parkFd(fd: number): number;
  /** State shared between the files of one restore, for kind modules. */
  shared: Map<string, unknown>;
  /** In the restore of a process tree: the other processes' files (absent for one process). */
  tree?: {
    /** State shared by the restores of all the tree's processes, for kind modules. */
    shared: Map<string, unknown>;
    /** Where a file id was restored in the tree: the process (both pids) and one of its fds there. */
    fdOfFileId(id: number): { pid: number; hostPid: number; fd: number } | undefined;
    /** Open in the target the description of fd `fd` of process `pid` of the tree; its fd number here. */
    takeFrom(pid: number, fd: number): number;
  };
}

export interface FdKindModule {
  /** file_entry.type. */
  readonly type: number;
  /** Short name for logs and errors: "reg", "pipe", "eventfd"... */
  readonly name: string;
  /** Restore order, lowest first: files an epoll or a signal owner refers to come before it. */
  readonly restoreOrder: number;
  /** True when this module handles the fd. The orchestrator asks the modules in table order. */
  matches(input: FdDumpInput): boolean;
  /**
   * Why this fd cannot be dumped with these options (one line naming the fd and its kind), or
   * undefined when it can. Asked before the task is frozen, so a refusal changes nothing. Optional.
   */
  refusal?(input: FdDumpInput, options: FileOptions): string | undefined;
  /**
   * Dump one open file description: return the `file_entry` (type, id = ctx.allocId() already
   * given in `id`, and the kind's sub-message). Throws UnsupportedError for a variant it cannot
   * handle (the dump then fails before anything changed).
   */
  dump(input: FdDumpInput, id: number, ctx: FileDumpContext): Promise<ImageEntry>;
  /**
   * Called once per task, after the freeze and before the first dump() of its fds, with every fd
   * of the task this module matched (fds sharing a description each): for what is done once for
   * all of them (the network lock of the task's TCP connections: one nft run). Optional.
   */
  prepareDump?(inputs: readonly FdDumpInput[], ctx: FileDumpContext): void;
  /**
   * Create the description inside the target and return the fd number it got there (any free
   * number: the orchestrator moves it to each fd of the description with dup3 and sets
   * FD_CLOEXEC). Called once per file id.
   */
  restore(entry: ImageEntry, ctx: FileRestoreContext): Promise<number>;
  /**
   * Called once after every file was restored: close what the module kept open in the target
   * for later files (the unused end of a pipe, say). Optional.
   */
  finishRestore?(ctx: FileRestoreContext): Promise<void>;
}
