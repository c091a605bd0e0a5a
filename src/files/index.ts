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
import { listFds, readFdInput } from './collect.js';
import { FD_KINDS } from './registry.js';
import type { FdDumpInput, FdKindModule, FileDumpContext, FileOptions, FileRestoreContext } from './types.js';

const O_CLOEXEC = 0o2000000;
const KCMP_FILE = 0;
const FD_CLOEXEC = 1;

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
  const seen: { input: FdDumpInput; id: number; type: number }[] = [];
  // `shared` may come from the caller: the mm dump saves deleted mapped files as ghosts too.
  const full: FileDumpContext = { ...ctx, pid, injector, shared: ctx.shared ?? new Map() };
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
      const refusal = mod.refusal?.(input, ctx.options ?? {});
      if (refusal !== undefined) {
        sys.close(input.localFd);
        throw new UnsupportedError(`fd-kind-${mod.name}`, refusal);
      }
      const same = seen.find(
        (s) =>
          s.type === mod.type &&
          s.input.stat.dev === input.stat.dev &&
          s.input.stat.ino === input.stat.ino &&
          sys.kcmp(pid, pid, KCMP_FILE, BigInt(s.input.fd), BigInt(fd)) === 0,
      );
      let id: number;
      if (same !== undefined) {
        id = same.id;
        sys.close(input.localFd);
      } else {
        id = ctx.allocId();
        files.push(await mod.dump(input, id, full));
        seen.push({ input, id, type: mod.type });
      }
      fdinfo.push({ id, flags: (input.fdinfo.flags & O_CLOEXEC) !== 0 ? FD_CLOEXEC : 0, type: mod.type, fd });
    }
  } finally {
    for (const s of seen) sys.close(s.input.localFd);
    sys.close(pidfd);
  }
  return { files, fdinfo };
}

/**
 * Rebuild the fd table inside a task being restored (whose own fds were closed before), from
 * files.img entries and the task's fdinfo entries.
 */
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

export async function restoreFiles(
  injector: Injector,
  files: readonly ImageEntry[],
  fdinfo: readonly ImageEntry[],
  ctx: Omit<FileRestoreContext, 'injector' | 'fdOfFileId' | 'parkFd' | 'shared'> & { shared?: Map<string, unknown> },
  inheritFds: readonly { fd: number; key: string }[] = [],
): Promise<void> {
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
    const tmp =
      inherited === undefined
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
      else if (t.isCloexec) injector.syscallOrThrow('fcntl', [BigInt(t.fd), 2n /* F_SETFD */, BigInt(FD_CLOEXEC)]);
    }
    if (!targets.some((t) => t.fd === tmp)) injector.syscallOrThrow('close', [BigInt(tmp)]);
    placed.set(id, targets[0]?.fd ?? tmp);
    injector.resetScratch();
  }
  for (const mod of FD_KINDS) await mod.finishRestore?.(full);
}

/**
 * FileRestoreContext.parkFd for a table whose fds are all below `firstFree`: each parked fd moves
 * to the next number from there (close-on-exec, in case it outlives the restore by mistake).
 */
export function fdParker(injector: Injector, firstFree: number): (fd: number) => number {
  let next = firstFree;
  return (fd) => {
    const to = next++;
    injector.syscallOrThrow('dup3', [BigInt(fd), BigInt(to), BigInt(O_CLOEXEC)]);
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
