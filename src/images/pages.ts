/**
 * Memory images: pagemap-<id>.img entries read with CRIU 4.x's rules, and page reads from the raw
 * pages-<n>.img files (the plain concatenation of the PE_PRESENT pages, in pagemap order). Pages
 * files are read by range, never loaded whole.
 *
 * Image kinds: PAGEMAP (pagemap_head, then pagemap_entry), PAGES (raw).
 */
import { existsSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ImageError } from '../errors.js';
import type { ImageEntry } from './entry-codec.js';
import { readImage } from './image-reader.js';
import { imageFileName, imageKind } from './kinds.js';

export const PAGE_SIZE = 4096;

/** pagemap_entry.flags bits (criu/include/pagemap.h). */
export const PE_PARENT = 1;
export const PE_LAZY = 2;
export const PE_PRESENT = 4;

/** One pagemap entry, normalized. Ranges are [vaddr, vaddr + nrPages × PAGE_SIZE). */
export interface PagemapRun {
  readonly vaddr: bigint;
  readonly nrPages: number;
  /** PE_* bits, after CRIU's compatibility rules. */
  readonly flags: number;
}

/**
 * Normalize a pagemap_entry: no nr_pages → compat_nr_pages; in_parent → PE_PARENT; no flags →
 * PE_PRESENT (images older than the flags field).
 */
export function pagemapRun(entry: ImageEntry): PagemapRun {
  const nr = entry['nr_pages'] ?? entry['compat_nr_pages'] ?? 0;
  let flags =
    entry['flags'] === undefined ? (entry['in_parent'] === true ? PE_PARENT : PE_PRESENT) : Number(entry['flags']);
  if (entry['in_parent'] === true) flags |= PE_PARENT;
  return { vaddr: BigInt(entry['vaddr'] as bigint), nrPages: Number(nr), flags };
}

/**
 * A pagemap_entry for a run: nr_pages as CRIU 4.x writes it, and the count in compat_nr_pages too
 * when it fits (CRIU 4.x writes 0 there). CRIU 4.x and crit read nr_pages when it is there; CRIU 3.x
 * knows only the old field, so it can read these images as well.
 */
export function pagemapEntry(run: { vaddr: bigint; nrPages: number; flags: number }): ImageEntry {
  return {
    vaddr: run.vaddr,
    compat_nr_pages: run.nrPages <= 0xffffffff ? run.nrPages : 0,
    flags: run.flags,
    nr_pages: BigInt(run.nrPages),
  };
}

/** Read pagemap-<id>.img (or any pagemap file by path): its pages id and its runs. */
export async function readPagemap(path: string): Promise<{ pagesId: number; runs: PagemapRun[] }> {
  const { records } = await readImage(path, 'PAGEMAP');
  const [head, ...rest] = records;
  if (head === undefined) throw new ImageError(path, 'the pagemap has no head entry', 8);
  return { pagesId: Number(head.entry['pages_id']), runs: rest.map((r) => pagemapRun(r.entry)) };
}

/** Random access to one pages-<n>.img file. */
export class PagesReader {
  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    /** Number of whole pages in the file. */
    readonly nrPages: number,
  ) {}

  static async open(path: string): Promise<PagesReader> {
    const fh = await open(path, 'r').catch((err: unknown) => {
      throw new ImageError(path, 'cannot open the pages file', undefined, { cause: err });
    });
    const { size } = await fh.stat();
    if (size % PAGE_SIZE !== 0) {
      await fh.close();
      throw new ImageError(
        path,
        `the pages file is not a whole number of pages (${size} bytes)`,
        size - (size % PAGE_SIZE),
      );
    }
    return new PagesReader(path, fh, size / PAGE_SIZE);
  }

  /** `nrPages` pages starting at page index `pageOffset` of the file, into `into` if given. */
  async read(pageOffset: number, nrPages: number, into?: Buffer): Promise<Buffer> {
    if (pageOffset < 0 || nrPages < 0 || pageOffset + nrPages > this.nrPages) {
      throw new ImageError(
        this.path,
        `pages [${pageOffset}, ${pageOffset + nrPages}) are beyond the file's ${this.nrPages} pages`,
        pageOffset * PAGE_SIZE,
      );
    }
    const len = nrPages * PAGE_SIZE;
    const out = into ?? Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      const { bytesRead } = await this.fh.read(out, done, len - done, pageOffset * PAGE_SIZE + done);
      if (bytesRead === 0)
        throw new ImageError(this.path, 'the pages file shrank while reading', pageOffset * PAGE_SIZE + done);
      done += bytesRead;
    }
    return out;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** Read `nrPages` pages at page index `pageOffset` of pages-<pagesId>.img in `dir`. */
export async function readPages(dir: string, pagesId: number, pageOffset: number, nrPages: number): Promise<Buffer> {
  const reader = await PagesReader.open(join(dir, imageFileName('PAGES', pagesId)));
  try {
    return await reader.read(pageOffset, nrPages);
  } finally {
    await reader.close();
  }
}

/** pagemap-shmem-<shmid>.img (the PAGEMAP kind's second name). */
export function shmemPagemapFileName(shmid: bigint | number): string {
  const template = imageKind('PAGEMAP').files[1] as string;
  return template.replace('%d', String(shmid));
}

/**
 * The contents of shmem object `shmid` (a memfd's inode, a System V segment's id) of the dump in
 * `dir`, as CRIU stores shmem: pagemap-shmem-<shmid>.img, each present run's vaddr the byte offset
 * in the object, its pages in pages-<n>.img. `onRun` gets each present run, in order; a dump with
 * no such pagemap has none (the object is all zeros).
 */
export async function readShmemRuns(
  dir: string,
  shmid: bigint | number,
  onRun: (offset: bigint, data: Buffer) => void,
): Promise<void> {
  const pagemapPath = join(dir, shmemPagemapFileName(shmid));
  if (!existsSync(pagemapPath)) return;
  const pagemap = await readPagemap(pagemapPath);
  const pages = await PagesReader.open(join(dir, imageFileName('PAGES', pagemap.pagesId)));
  try {
    let pageInFile = 0;
    for (const run of pagemap.runs) {
      if ((run.flags & PE_PRESENT) === 0) continue;
      const data = await pages.read(pageInFile, run.nrPages);
      pageInFile += run.nrPages;
      onRun(run.vaddr, data);
    }
  } finally {
    await pages.close();
  }
}
