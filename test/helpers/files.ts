/**
 * Testing one fd kind module without the whole dump and restore: dump fd N of a live fixture with
 * the module's dump half, then rebuild it inside another live fixture with the restore half (by
 * injection, exactly as restore does it) at a chosen fd number; that fixture then checks the fd
 * itself and prints PASS or FAIL.
 */
import type { ImageEntry } from '../../src/images/index.js';
import { fdParker } from '../../src/files/index.js';
import { Injector } from '../../src/inject/injector.js';
import { readFdInput } from '../../src/files/collect.js';
import type { FdKindModule, FileDumpContext, FileRestoreContext } from '../../src/files/types.js';
import * as sys from '../../src/sys/native.js';

export interface Extra {
  entry: ImageEntry;
  extra?: Uint8Array;
}

export interface DumpedFd {
  entry: ImageEntry;
  /** Entries the module added to other images, by kind name. */
  extras: Map<string, Extra[]>;
  /** fdinfo flags of the fd (O_* flags, octal in /proc). */
  flags: number;
}

/** Dump fd `fd` of task `pid` with `mod` (asserting that the module claims it). */
export async function dumpOneFd(pid: number, fd: number, mod: FdKindModule, id = 1): Promise<DumpedFd> {
  const pidfd = sys.pidfdOpen(pid, 0);
  const injector = Injector.attach(pid);
  const extras = new Map<string, Extra[]>();
  try {
    const input = readFdInput(pid, pidfd, fd);
    try {
      if (!mod.matches(input)) throw new Error(`module ${mod.name} does not claim fd ${fd} (${input.link})`);
      let next = id + 1;
      const ctx: FileDumpContext = {
        pid,
        allocId: () => next++,
        addEntry: async (kind, entry, extra) => {
          const list = extras.get(kind) ?? [];
          list.push(extra === undefined ? { entry } : { entry, extra });
          extras.set(kind, list);
        },
        injector,
        shared: new Map(),
      };
      const entry = await mod.dump(input, id, ctx);
      return { entry, extras, flags: input.fdinfo.flags };
    } finally {
      sys.close(input.localFd);
    }
  } finally {
    injector.release();
    sys.close(pidfd);
  }
}

/**
 * Restore a dumped description into task `pid` at fd `targetFd` (replacing whatever is there).
 * `others` maps file ids restored earlier to their fd in the target (for epoll and friends).
 */
export async function restoreOneFd(
  pid: number,
  dumped: DumpedFd,
  mod: FdKindModule,
  targetFd: number,
  others: Map<number, number> = new Map(),
): Promise<void> {
  const injector = Injector.attach(pid);
  try {
    const ctx: FileRestoreContext = {
      pid,
      hostPid: pid,
      injector,
      imagesDir: '/nonexistent',
      entriesOf: async (kind) => dumped.extras.get(kind) ?? [],
      fdOfFileId: (id) => others.get(id),
      parkFd: fdParker(injector, 900),
      shared: new Map(),
    };
    const tmp = await mod.restore(dumped.entry, ctx);
    if (tmp !== targetFd) {
      injector.syscallOrThrow('dup3', [BigInt(tmp), BigInt(targetFd), 0n]);
      injector.syscallOrThrow('close', [BigInt(tmp)]);
    }
    await mod.finishRestore?.(ctx); // what the module kept aside (a pipe's other end), as restoreFiles does
  } finally {
    injector.release();
  }
}
