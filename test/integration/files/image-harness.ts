/**
 * Dump several fds of a live fixture into a real image directory (files.img, and whatever the kind
 * modules add: memfd.img, remap-fpath.img, ghost-file-N.img, pagemap-shmem-N.img, pages-N.img),
 * then restore them from that directory into another live fixture at chosen fd numbers. Unlike
 * test/helpers/files.ts, everything goes through image files, so `crit` can decode them and the
 * restore half reads exactly what a restore would.
 */
import { existsSync } from 'node:fs';
import { fdParker } from '../../../src/files/index.js';
import { join } from 'node:path';
import { readFdInput } from '../../../src/files/collect.js';
import { localImageSink } from '../../../src/files/image-sink.js';
import type { FdKindModule, FileDumpContext, FileRestoreContext } from '../../../src/files/types.js';
import { ImageWriter, imageFileName, readImage, type ImageEntry } from '../../../src/images/index.js';
import { Injector } from '../../../src/inject/injector.js';
import * as sys from '../../../src/sys/native.js';

export interface DumpedFile {
  fd: number;
  id: number;
  mod: FdKindModule;
  entry: ImageEntry;
}

/** Dump `fds` of task `pid` (each with its module) into `dir`; returns what files.img holds. */
export async function dumpToDir(
  pid: number,
  fds: readonly [number, FdKindModule][],
  dir: string,
): Promise<DumpedFile[]> {
  const pidfd = sys.pidfdOpen(pid, 0);
  const injector = Injector.attach(pid);
  const extras = new Map<string, { entry: ImageEntry; extra?: Uint8Array }[]>();
  let nextId = 1;
  let nextPagesId = 1;
  const ctx: FileDumpContext & { images: ReturnType<typeof localImageSink> } = {
    pid,
    allocId: () => nextId++,
    addEntry: async (kind, entry, extra) => {
      const list = extras.get(kind) ?? [];
      list.push(extra === undefined ? { entry } : { entry, extra });
      extras.set(kind, list);
    },
    injector,
    shared: new Map(),
    images: localImageSink(dir, () => nextPagesId++),
  };
  const out: DumpedFile[] = [];
  try {
    for (const [fd, mod] of fds) {
      const input = readFdInput(pid, pidfd, fd);
      try {
        if (!mod.matches(input)) throw new Error(`module ${mod.name} does not claim fd ${fd} (${input.link})`);
        const id = ctx.allocId();
        out.push({ fd, id, mod, entry: await mod.dump(input, id, ctx) });
      } finally {
        sys.close(input.localFd);
      }
    }
  } finally {
    injector.release();
    sys.close(pidfd);
  }
  await writeAll(
    join(dir, 'files.img'),
    'FILES',
    out.map((f) => ({ entry: f.entry })),
  );
  for (const [kind, records] of extras) await writeAll(join(dir, imageFileName(kind)), kind, records);
  return out;
}

async function writeAll(
  path: string,
  kind: string,
  records: readonly { entry: ImageEntry; extra?: Uint8Array }[],
): Promise<void> {
  const w = await ImageWriter.create(path, kind);
  for (const r of records) await w.append(r.entry, r.extra);
  await w.commit();
}

/** Restore the files of `dumped` from `dir` into task `pid`, each at its original fd number. */
export async function restoreFromDir(pid: number, dumped: readonly DumpedFile[], dir: string): Promise<void> {
  const { records } = await readImage(join(dir, 'files.img'), 'FILES');
  const placed = new Map<number, number>();
  const injector = Injector.attach(pid);
  try {
    const ctx: FileRestoreContext = {
      pid,
      hostPid: pid,
      injector,
      imagesDir: dir,
      entriesOf: async (kind) => {
        const path = join(dir, imageFileName(kind));
        if (!existsSync(path)) return [];
        return (await readImage(path, kind)).records.map((r) =>
          r.extra === undefined ? { entry: r.entry } : { entry: r.entry, extra: r.extra },
        );
      },
      fdOfFileId: (id) => placed.get(id),
      parkFd: fdParker(injector, 900),
      shared: new Map(),
    };
    for (const f of dumped) {
      const entry = records.find((r) => Number(r.entry['id']) === f.id)?.entry;
      if (entry === undefined) throw new Error(`file ${f.id} is not in files.img`);
      const tmp = await f.mod.restore(entry, ctx);
      if (tmp !== f.fd) {
        injector.syscallOrThrow('dup3', [BigInt(tmp), BigInt(f.fd), 0n]);
        injector.syscallOrThrow('close', [BigInt(tmp)]);
      }
      placed.set(f.id, f.fd);
    }
    for (const mod of new Set(dumped.map((f) => f.mod))) await mod.finishRestore?.(ctx);
  } finally {
    injector.release();
  }
}
