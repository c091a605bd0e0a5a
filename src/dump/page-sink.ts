/**
 * Where a (pre-)dump's task pages go: files in the images directory (pagemap-<pid>.img and
 * pages-1.img), or a page server (src/pageserver/client.ts) that writes them into its own
 * directory. The dumper plans the pagemap (src/dump/memory.ts) and hands it to a sink; nothing
 * is complete before commit(), and abort() leaves no trace.
 */

import { existsSync } from 'node:fs';
import { readdir, unlink } from 'node:fs/promises';
import path from 'node:path';
import { pagemapEntry, writeImage } from '../images/index.js';
import { log } from '../log.js';
import { discardPagesFile, preparePagesFile, writePages, type PreparedPagesFile } from '../mem/dump-pages.js';
import type { ShmemRun } from '../files/image-sink.js';
import { localDest, type KnownState, type MemoryPlan } from './memory.js';

export interface WritePagesOptions {
  /** The task runs during the copy (pre-dump). */
  running: boolean;
  /** The pagemap's id (pagemap-<id>.img): the pid as the tree's PID namespace sees it (default: the pid). */
  imageId?: number;
  signal?: AbortSignal | undefined;
  onProgress?: (bytesDone: number) => void;
}

export interface PageSink {
  readonly isLocal: boolean;
  /**
   * About `bytes` of pages will be written: make room ahead, while the dumper does other things
   * (local files: preparePagesFile). Optional; only a hint.
   */
  reserve?(bytes: number): void;
  /**
   * Begin the task's pagemap (`id`: its pid in the images); true when the destination has the
   * parent image pages may refer to.
   */
  open(id: number, prevImagesDir: string | undefined): Promise<boolean>;
  /** Copy the planned pages from the task and record the whole pagemap. */
  writePages(pid: number, plan: MemoryPlan, opts: WritePagesOptions): Promise<{ pagesWritten: number }>;
  /** Make the pages part of the image (rename into place; page server: CLOSE and its reply). */
  commit(): Promise<void>;
  /** Forget everything written since open. */
  abort(): Promise<void>;
  /** The destination's name for the tracker's known state. */
  destination(dir: string): string;
  /**
   * Store the contents of a shmem object (shared anonymous memory, a memfd) with the task pages,
   * as CRIU does with a page server (pagemap-shmem-<shmid>.img there). Absent: local files.
   */
  writeShmem?(shmid: bigint, runs: readonly ShmemRun[]): Promise<void>;
}

/**
 * Pages as files in `dir`: pages-<n>.img (copied data) and pagemap-<pid>.img (written on commit)
 * for each task opened, pages-1.img for the first; `allocPagesId` numbers the others.
 */
export function localPageSink(dir: string, allocPagesId?: () => number): PageSink {
  let nextOwnId = 2;
  const nextId = allocPagesId ?? ((): number => nextOwnId++);
  const pending: { pid: number; plan: MemoryPlan; pagesId: number }[] = [];
  const written: string[] = [];
  let prepared: Promise<PreparedPagesFile> | null = null;
  /** The reserved file, now the caller's (undefined: none, or its open failed). */
  const takePrepared = async (): Promise<PreparedPagesFile | undefined> => {
    const p = prepared;
    prepared = null;
    return p === null ? undefined : p.catch(() => undefined);
  };
  return {
    isLocal: true,
    reserve(bytes) {
      prepared = preparePagesFile(dir, 1, bytes);
      prepared.catch(() => undefined); // an open that failed: writePages opens (and reports) itself
    },
    open(_pid, prev) {
      if (prev === undefined) return Promise.resolve(false);
      const parent = path.resolve(dir, prev);
      const ok = existsSync(path.join(parent, 'inventory.img'));
      if (!ok) log().warn(`The previous images directory ${parent} holds no dump: every page is copied`);
      return Promise.resolve(ok);
    },
    async writePages(pid, plan, opts) {
      // The reserved file is the first task's (its estimate is the tree's: a hint only).
      const pagesId = pending.length === 0 ? 1 : nextId();
      const file = pagesId === 1 ? await takePrepared() : undefined;
      const res = await writePages(pid, plan.copy, dir, pagesId, opts.onProgress, opts.signal, opts.running, file);
      written.push(`pages-${pagesId}.img`);
      if (res.pagesGone > 0) log().info(`${res.pagesGone} pages were unmapped during the copy (zeros written)`);
      pending.push({ pid: opts.imageId ?? pid, plan, pagesId });
      return { pagesWritten: res.pagesWritten };
    },
    async commit() {
      for (const p of pending) {
        const name = `pagemap-${p.pid}.img`;
        await writeImage(path.join(dir, name), 'PAGEMAP', [
          { entry: { pages_id: p.pagesId } },
          ...p.plan.entries.map((r) => ({ entry: pagemapEntry(r) })),
        ]);
        written.push(name);
      }
      pending.length = 0;
    },
    async abort() {
      const file = await takePrepared();
      if (file !== undefined) await discardPagesFile(file);
      for (const name of written) await unlink(path.join(dir, name)).catch(() => undefined);
    },
    destination: (d) => localDest(d) ?? `dir:${path.resolve(d)}`,
  };
}

/**
 * The known state, if it is valid for the parent this dump continues: for local images, made by
 * the iteration that wrote exactly that directory; for a page server, made by an iteration that
 * sent to a page server (which said it has the parent).
 */
export function parentKnown(
  state: KnownState | null,
  sink: PageSink,
  prevImagesDir: string | undefined,
  dir: string,
): KnownState | null {
  if (state === null) return null;
  if (sink.isLocal) {
    if (prevImagesDir === undefined) return null;
    const want = localDest(path.resolve(dir, prevImagesDir));
    if (want !== state.dest) {
      log().warn('The memory tracker was last used for another image: every present page is copied');
      return null;
    }
    return state;
  }
  return state.dest.startsWith('ps:') ? state : null;
}

/** Remove what a failed dump wrote: every file that was not in the directory before it began. */
export async function removeNew(dir: string, before: ReadonlySet<string>): Promise<void> {
  const left = await readdir(dir).catch(() => [] as string[]);
  for (const name of left) {
    if (before.has(name) || name.endsWith('.log')) continue;
    await unlink(path.join(dir, name)).catch(() => undefined);
  }
}
