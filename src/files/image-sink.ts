/**
 * Images a file kind writes beside files.img that `FileDumpContext.addEntry` cannot express,
 * because they are one file per object: `ghost-file-<id>.img` (contents of a deleted file) and
 * the shmem memory images of a memfd (`pagemap-shmem-<shmid>.img` + a `pages-<n>.img`).
 *
 * The files orchestrator provides a `FileImageSink` as `images` on its FileDumpContext (a
 * proposed addition to src/files/types.ts); `localImageSink` is the plain implementation that
 * writes into an image directory. With a page server, the orchestrator's sink would send the
 * shmem pages there instead (dst_id type 2, id = shmid), as CRIU does.
 *
 * Image kinds: GHOST_FILE (any per-id kind), PAGEMAP (pagemap-shmem-%d.img), PAGES.
 */

import { join } from 'node:path';
import {
  ImageWriter,
  PAGE_SIZE,
  PE_PRESENT,
  imageFileName,
  pagemapEntry,
  shmemPagemapFileName,
  type ImageEntry,
} from '../images/index.js';
import type { FileDumpContext } from './types.js';

export interface ImageRecordOut {
  entry: ImageEntry;
  extra?: Uint8Array;
}

/** A run of shmem pages: `data` is a whole number of pages starting at page `pageIndex`. */
export interface ShmemRun {
  pageIndex: number;
  data: Buffer;
}

export interface FileImageSink {
  /** Write a whole image of a per-id kind: ('GHOST_FILE', 5, records) → ghost-file-5.img. */
  writeImage(kindName: string, fileId: number, records: readonly ImageRecordOut[]): Promise<void>;
  /**
   * Store the contents of a shmem object (a memfd): pagemap-shmem-<shmid>.img with one
   * PE_PRESENT entry per run (vaddr = byte offset in the object) and the pages, in run order,
   * in a new pages-<n>.img that the pagemap's head names.
   */
  writeShmemPages(shmid: bigint, runs: readonly ShmemRun[]): Promise<void>;
}

/** The sink of a dump context; throws when the orchestrator gave none. */
export function imageSinkOf(ctx: FileDumpContext): FileImageSink {
  const sink = ctx.images;
  if (sink === undefined) throw new Error('The files dump context has no image sink (ctx.images) for per-id images');
  return sink;
}

/**
 * A sink writing into image directory `dir`. `allocPagesId` must hand out pages-<n>.img numbers
 * unique in the whole dump (shared with the memory dumper).
 */
export function localImageSink(dir: string, allocPagesId: () => number): FileImageSink {
  return {
    async writeImage(kindName, fileId, records) {
      const w = await ImageWriter.create(join(dir, imageFileName(kindName, fileId)), kindName);
      for (const r of records) await w.append(r.entry, r.extra);
      await w.commit();
    },
    async writeShmemPages(shmid, runs) {
      const pagesId = allocPagesId();
      const pages = await ImageWriter.create(join(dir, imageFileName('PAGES', pagesId)), 'PAGES');
      const pagemap = await ImageWriter.create(join(dir, shmemPagemapFileName(shmid)), 'PAGEMAP');
      try {
        await pagemap.append({ pages_id: pagesId });
        for (const run of runs) {
          if (run.data.length % PAGE_SIZE !== 0) throw new Error('A shmem run must be whole pages');
          const nrPages = run.data.length / PAGE_SIZE;
          await pagemap.append(pagemapEntry({ vaddr: BigInt(run.pageIndex * PAGE_SIZE), nrPages, flags: PE_PRESENT }));
          await pages.appendRaw(run.data);
        }
        await pages.commit();
        await pagemap.commit();
      } finally {
        await pages.abort();
        await pagemap.abort();
      }
    },
  };
}
