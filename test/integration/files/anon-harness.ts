/**
 * Dumping several fds of a live fixture with their kind modules, and rebuilding them inside
 * another live fixture at the same numbers, with one shared state per side, the way the files
 * orchestrator does: dump in fd order (file ids 1, 2, ...), restore by restoreOrder, each
 * description moved to its fd number with dup3 before the next one is restored (epoll refers to
 * its targets by number; a second end of a pipe is reopened through the first one).
 */
import type { ImageEntry } from '../../../src/images/index.js';
import { fdParker } from '../../../src/files/index.js';
import { Injector } from '../../../src/inject/injector.js';
import { readFdInput } from '../../../src/files/collect.js';
import type { FdKindModule, FileDumpContext, FileRestoreContext } from '../../../src/files/types.js';
import * as sys from '../../../src/sys/native.js';

export interface Extra {
  entry: ImageEntry;
  extra?: Uint8Array;
}

export interface DumpedFile {
  fd: number;
  id: number;
  mod: FdKindModule;
  entry: ImageEntry;
  /** fdinfo flags of the fd. */
  flags: number;
}

export interface DumpedSet {
  files: DumpedFile[];
  /** Entries the modules added to other images, by kind name. */
  extras: Map<string, Extra[]>;
}

export async function dumpFds(pid: number, fds: readonly (readonly [number, FdKindModule])[]): Promise<DumpedSet> {
  const pidfd = sys.pidfdOpen(pid, 0);
  const injector = Injector.attach(pid);
  const extras = new Map<string, Extra[]>();
  const files: DumpedFile[] = [];
  let next = 1;
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
  try {
    for (const [fd, mod] of fds) {
      const input = readFdInput(pid, pidfd, fd);
      try {
        if (!mod.matches(input)) throw new Error(`module ${mod.name} does not claim fd ${fd} (${input.link})`);
        const id = ctx.allocId();
        files.push({ fd, id, mod, entry: await mod.dump(input, id, ctx), flags: input.fdinfo.flags });
      } finally {
        sys.close(input.localFd);
      }
    }
  } finally {
    injector.release();
    sys.close(pidfd);
  }
  return { files, extras };
}

export async function restoreFds(pid: number, set: DumpedSet): Promise<void> {
  const injector = Injector.attach(pid);
  const fdOf = new Map<number, number>();
  const ctx: FileRestoreContext = {
    pid,
    hostPid: pid,
    injector,
    imagesDir: '/nonexistent',
    entriesOf: async (kind) => set.extras.get(kind) ?? [],
    fdOfFileId: (id) => fdOf.get(id),
    parkFd: fdParker(injector, 900),
    shared: new Map(),
  };
  try {
    const order = [...set.files].sort((a, b) => a.mod.restoreOrder - b.mod.restoreOrder || a.fd - b.fd);
    for (const f of order) {
      const tmp = await f.mod.restore(f.entry, ctx);
      if (tmp !== f.fd) {
        injector.syscallOrThrow('dup3', [BigInt(tmp), BigInt(f.fd), 0n]);
        injector.syscallOrThrow('close', [BigInt(tmp)]);
      }
      fdOf.set(f.id, f.fd);
    }
    for (const mod of new Set(order.map((f) => f.mod))) await mod.finishRestore?.(ctx);
  } finally {
    injector.release();
  }
}
