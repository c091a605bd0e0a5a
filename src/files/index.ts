/**
 * The files orchestrator: a task's fd table on dump (files.img + fdinfo-<id>.img) and its
 * rebuilding on restore. The kind modules (registry.ts) do each kind's work; this module finds
 * the module of each fd, shares one file_entry between fds that share an open file description
 * (kcmp KCMP_FILE), and on restore moves each restored description to its fd numbers (dup3) with
 * FD_CLOEXEC as dumped.
 */

import { UnsupportedError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import * as sys from '../sys/native.js';
import { F_DUPFD_CLOEXEC, F_SETFD, FD_CLOEXEC, KCMP_FILE, O_CLOEXEC } from '../kernel/constants.js';
import { listFds, readFdInput } from './collect.js';
import { FD_KINDS } from './registry.js';
import type { FdDumpInput, FdKindModule, FileDumpContext, FileOptions, FileRestoreContext } from './types.js';
import { fileLockEntries, fileLockRefusal, restoreFileLocks } from './file-locks.js';
import { sharedEntry } from './shared.js';

/** What an fd link says it is, for error messages: "socket", "anon_inode:[eventfd]", a path. */
export function describeFdLink(link: string): string {
  const m = /^(\w+):\[/.exec(link);
  if (m !== null) return m[1] === 'anon_inode' ? link : (m[1] as string);
  return link;
}

function moduleFor(input: FdDumpInput): FdKindModule | undefined {
  return FD_KINDS.find((m) => m.matches(input));
}

/**
 * Check that every fd of the task is of a kind criu-ts can dump, without changing anything.
 * Throws UnsupportedError naming the first fd that is not.
 */
export function checkFds(pid: number, options: FileOptions = {}): void {
  const pidfd = sys.pidfdOpen(pid, 0);
  try {
    for (const fd of listFds(pid)) {
      let input: FdDumpInput;
      try {
        input = readFdInput(pid, pidfd, fd);
      } catch {
        continue; // closed meanwhile
      }
      try {
        const mod = moduleFor(input);
        if (mod === undefined)
          throw new UnsupportedError(
            'fd-kind',
            `Cannot dump fd ${fd} of task ${pid}: ${describeFdLink(input.link)} is not supported`,
          );
        const refusal = mod.refusal?.(input, options);
        if (refusal !== undefined) throw new UnsupportedError(`fd-kind-${mod.name}`, refusal);
        const lockRefusal = fileLockRefusal(input, options);
        if (lockRefusal !== undefined) throw new UnsupportedError('file-lock', lockRefusal);
      } finally {
        sys.close(input.localFd);
      }
    }
  } finally {
    sys.close(pidfd);
  }
}

export interface FilesDump {
  /** file_entry list for files.img. */
  files: ImageEntry[];
  /** fdinfo_entry list for fdinfo-<files_id>.img. */
  fdinfo: ImageEntry[];
}

/** Dump the fd table of a frozen task. `ctx.allocId` numbers the file entries. */
export async function dumpFiles(
  pid: number,
  injector: Injector,
  ctx: Omit<FileDumpContext, 'injector' | 'pid' | 'shared'> & { shared?: Map<string, unknown> },
): Promise<FilesDump> {
  const pidfd = sys.pidfdOpen(pid, 0);
  const files: ImageEntry[] = [];
  const fdinfo: ImageEntry[] = [];
  /** This process's descriptions so far. */
  const seen: DumpedDescription[] = [];
  // `shared` may come from the caller: the mm dump saves deleted mapped files as ghosts too, and
  // the other processes of a tree may hold the same descriptions (one entry for all).
  const full: FileDumpContext = { ...ctx, pid, injector, shared: ctx.shared ?? new Map() };
  const dumpedBefore = sharedEntry(full.shared, DESCRIPTIONS, (): DumpedDescription[] => []);
  /** Every fd of the task with its module, read before any is dumped (closed at the end). */
  const found: { input: FdDumpInput; mod: FdKindModule }[] = [];
  try {
    for (const fd of listFds(pid)) {
      const input = readFdInput(pid, pidfd, fd);
      const mod = moduleFor(input);
      if (mod === undefined) {
        sys.close(input.localFd);
        throw new UnsupportedError(
          'fd-kind',
          `Cannot dump fd ${fd} of task ${pid}: ${describeFdLink(input.link)} is not supported`,
        );
      }
      found.push({ input, mod });
      const refusal = mod.refusal?.(input, ctx.options ?? {});
      if (refusal !== undefined) throw new UnsupportedError(`fd-kind-${mod.name}`, refusal);
      const lockRefusal = fileLockRefusal(input, ctx.options ?? {});
      if (lockRefusal !== undefined) throw new UnsupportedError('file-lock', lockRefusal);
    }
    for (const mod of new Set(found.map((f) => f.mod)))
      mod.prepareDump?.(
        found.filter((f) => f.mod === mod).map((f) => f.input),
        full,
      );
    for (const { input, mod } of found) {
      const fd = input.fd;
      const isSame = (s: DumpedDescription): boolean =>
        s.type === mod.type &&
        s.dev === input.stat.dev &&
        s.ino === input.stat.ino &&
        sys.kcmp(s.pid, pid, KCMP_FILE, BigInt(s.fd), BigInt(fd)) === 0;
      const same = seen.find(isSame) ?? dumpedBefore.find(isSame);
      let id: number;
      if (same !== undefined) {
        id = same.id;
      } else {
        id = ctx.allocId();
        files.push(await mod.dump(input, id, full));
        seen.push({ pid, fd, dev: input.stat.dev, ino: input.stat.ino, id, type: mod.type });
      }
      fdinfo.push({ id, flags: (input.fdinfo.flags & O_CLOEXEC) !== 0 ? FD_CLOEXEC : 0, type: mod.type, fd });
      for (const lock of fileLockEntries(
        input,
        id,
        sharedEntry(full.shared, FILE_LOCKS_SEEN, () => new Set<string>()),
        ctx.vpid,
      ))
        await full.addEntry('FILE_LOCKS', lock);
    }
  } finally {
    for (const { input } of found) sys.close(input.localFd);
    sys.close(pidfd);
  }
  dumpedBefore.push(...seen);
  return { files, fdinfo };
}

/** A description dumped for an earlier process of the tree: where it was, its file id. */
interface DumpedDescription {
  pid: number;
  fd: number;
  dev: bigint;
  ino: bigint;
  id: number;
  type: number;
}

/** ctx.shared key: the DumpedDescription list of the processes dumped so far. */
const DESCRIPTIONS = 'files.descriptions';
/** ctx.shared key: the file locks recorded so far (fileLockEntries). */
const FILE_LOCKS_SEEN = 'files.locks';

/** What --inherit-fd fd[N]:KEY keys a file by: "pipe:[ID]" for pipes, the path for files. */
export function inheritKeyOf(entry: ImageEntry): string[] {
  const pipe = entry['pipe'] as ImageEntry | undefined;
  if (pipe !== undefined) return [`pipe:[${String(pipe['pipe_id'])}]`];
  const reg = entry['reg'] as ImageEntry | undefined;
  if (reg !== undefined) {
    const name = String(reg['name']);
    return [name, name.replace(/^\//, '')];
  }
  return [];
}

/**
 * What the processes of a restored tree share: where each file was restored first, so that the
 * other processes holding the same description get that one (by pidfd_getfd inside them), and
 * the kind modules' state that pairs descriptions across processes (a pipe's two ends).
 */
export class TreeFiles {
  /** File id -> the process it was restored in first and one of its fds there. */
  readonly placed = new Map<number, { pid: number; hostPid: number; fd: number }>();
  readonly shared = new Map<string, unknown>();
}

/**
 * Rebuild the fd table inside a task being restored (whose own fds were closed before), from
 * files.img entries and the task's fdinfo entries. In a tree, `tree` is shared by the restores
 * of all its processes, and the modules' finishing work (closing what they kept for later files)
 * is left to the returned `finish`, to be called once every process has its files; without a
 * tree it is done before returning.
 */
export async function restoreFiles(
  injector: Injector,
  files: readonly ImageEntry[],
  fdinfo: readonly ImageEntry[],
  ctx: Omit<FileRestoreContext, 'injector' | 'fdOfFileId' | 'parkFd' | 'shared' | 'tree'> & {
    shared?: Map<string, unknown>;
  },
  inheritFds: readonly { fd: number; key: string }[] = [],
  tree?: TreeFiles,
): Promise<{ finish: () => Promise<void> }> {
  const byId = new Map(files.map((f) => [Number(f['id']), f]));
  const fdsOf = new Map<number, ImageEntry[]>();
  for (const e of fdinfo) {
    const id = Number(e['id']);
    fdsOf.set(id, [...(fdsOf.get(id) ?? []), e]);
  }
  const placed = new Map<number, number>();
  const full: FileRestoreContext = {
    ...ctx,
    injector,
    fdOfFileId: (id) => placed.get(id),
    parkFd: fdParker(injector, Math.max(-1, ...fdinfo.map((e) => Number(e['fd']))) + 1),
    shared: ctx.shared ?? new Map(),
    ...(tree === undefined
      ? {}
      : {
          tree: {
            shared: tree.shared,
            fdOfFileId: (id: number) => tree.placed.get(id),
            takeFrom: (pid: number, fd: number) => takeFdFrom(injector, pid, fd),
          },
        }),
  };
  const ids = [...fdsOf.keys()].sort((a, b) => order(byId.get(a)) - order(byId.get(b)) || a - b);
  for (const id of ids) {
    const entry = byId.get(id);
    if (entry === undefined)
      throw new UnsupportedError('fd-kind', `File ${id} of the fd table is missing from files.img`);
    const mod = FD_KINDS.find((m) => m.type === Number(entry['type']));
    if (mod === undefined)
      throw new UnsupportedError(
        'fd-kind',
        `Cannot restore file ${id}: fd type ${String(entry['type'])} is not supported`,
      );
    const inherited = inheritFds.find((i) => inheritKeyOf(entry).includes(i.key));
    const elsewhere = tree?.placed.get(id);
    const tmp =
      elsewhere !== undefined
        ? takeFdFrom(injector, elsewhere.pid, elsewhere.fd)
        : inherited === undefined
          ? await mod.restore(entry, full)
          : Number(
              injector.syscallOrThrow('openat', [
                -100n,
                injector.pushData(Buffer.from(`/proc/${process.pid}/fd/${inherited.fd}\0`)),
                BigInt(inheritOpenFlags(entry)),
                0n,
              ]),
            );
    const targets = (fdsOf.get(id) ?? []).map((e) => ({
      fd: Number(e['fd']),
      isCloexec: (Number(e['flags']) & FD_CLOEXEC) !== 0,
    }));
    for (const t of targets) {
      if (t.fd !== tmp)
        injector.syscallOrThrow('dup3', [BigInt(tmp), BigInt(t.fd), t.isCloexec ? BigInt(O_CLOEXEC) : 0n]);
      else if (t.isCloexec) injector.syscallOrThrow('fcntl', [BigInt(t.fd), BigInt(F_SETFD), BigInt(FD_CLOEXEC)]);
    }
    if (!targets.some((t) => t.fd === tmp)) injector.syscallOrThrow('close', [BigInt(tmp)]);
    placed.set(id, targets[0]?.fd ?? tmp);
    if (elsewhere === undefined && targets[0] !== undefined)
      tree?.placed.set(id, { pid: ctx.pid, hostPid: ctx.hostPid, fd: targets[0].fd });
    injector.resetScratch();
  }
  // The fds are in place: the locks this process held are taken again.
  restoreFileLocks(
    injector,
    ctx.pid,
    (await full.entriesOf('FILE_LOCKS')).map((r) => r.entry),
  );
  const finish = async (): Promise<void> => {
    for (const mod of FD_KINDS) await mod.finishRestore?.(full);
  };
  if (tree === undefined) await finish();
  return { finish: tree === undefined ? () => Promise.resolve() : finish };
}

/**
 * Give the task being restored (`injector`) the open file description of fd `fd` of process
 * `pid` (another process of the tree, stopped and traced by criu): pidfd_open and pidfd_getfd
 * inside the task. Returns its fd number there, without close-on-exec.
 */
function takeFdFrom(injector: Injector, pid: number, fd: number): number {
  const pidfd = injector.syscallOrThrow('pidfd_open', [BigInt(pid), 0n]);
  try {
    const got = injector.syscallOrThrow('pidfd_getfd', [pidfd, BigInt(fd), 0n]);
    injector.syscallOrThrow('fcntl', [got, BigInt(F_SETFD), 0n]);
    return Number(got);
  } finally {
    injector.syscallOrThrow('close', [pidfd]);
  }
}

/**
 * FileRestoreContext.parkFd for a table whose fds are all below `firstFree`: each parked fd moves
 * to the lowest free number from there (close-on-exec, in case it outlives the restore by
 * mistake). Free, not the next one counted: the fd to park may itself sit there already (the
 * kernel gave it the first number above a table with no other hole), and another fd the restore
 * holds above the table must not be replaced.
 */
export function fdParker(injector: Injector, firstFree: number): (fd: number) => number {
  return (fd) => {
    const to = Number(injector.syscallOrThrow('fcntl', [BigInt(fd), BigInt(F_DUPFD_CLOEXEC), BigInt(firstFree)]));
    injector.syscallOrThrow('close', [BigInt(fd)]);
    return to;
  };
}

/** Open flags for an inherited fd: the dumped access mode and status flags, without O_CLOEXEC. */
function inheritOpenFlags(entry: ImageEntry): number {
  const sub = (entry['pipe'] ?? entry['reg']) as ImageEntry | undefined;
  return Number(sub?.['flags'] ?? 0) & ~O_CLOEXEC;
}

function order(entry: ImageEntry | undefined): number {
  const mod = FD_KINDS.find((m) => m.type === Number(entry?.['type']));
  return mod?.restoreOrder ?? 0;
}
