/**
 * Reading a dump for restore: every image the restore of one process needs, loaded and checked
 * before any process is created, so that a missing, corrupt or truncated image is a clear error
 * that leaves nothing behind.
 */

import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { ImageError, UnsupportedError } from '../errors.js';
import { imageFileName, readImage, type ImageEntry } from '../images/index.js';
import type { Run } from '../mem/runs.js';
import { PageChain, type PageSource } from '../mem/page-chain.js';
import { log } from '../log.js';

export interface RestoreImages {
  dir: string;
  pid: number;
  pstree: ImageEntry;
  /** core entry by tid; the leader's has `tc`. */
  cores: Map<number, ImageEntry>;
  threads: number[];
  mm: ImageEntry;
  /**
   * Where each dumped page of the task is (this image or a parent), in address order; null when
   * loaded with `isPageChainLazy` (then ask pageChain for the pages wanted).
   */
  pages: PageSource[] | null;
  pageChain: PageChain;
  /** The pages this image holds itself (PE_PRESENT), not its parents. */
  pagesPresent: Run[];
  /** The same for each pagemap-shmem-<shmid>.img, by file name. */
  shmemPages: Map<string, PageSource[]>;
  files: ImageEntry[];
  fdinfo: ImageEntry[];
  fs: ImageEntry;
  /** seccomp_entry.seccomp_filters (empty when none). */
  seccompFilters: ImageEntry[];
  /** Entries (with raw payloads) of other kinds, loaded on demand. */
  extras(kind: string): Promise<{ entry: ImageEntry; extra?: Uint8Array }[]>;
}

async function entries(dir: string, name: string, kind: string): Promise<ImageEntry[]> {
  const file = path.join(dir, name);
  if (!existsSync(file)) throw new ImageError(name, 'the image is missing');
  const img = await readImage(file, kind);
  return img.records.map((r) => r.entry);
}

async function single(dir: string, name: string, kind: string): Promise<ImageEntry> {
  const list = await entries(dir, name, kind);
  const first = list[0];
  if (first === undefined) throw new ImageError(name, 'the image has no entry');
  return first;
}

/**
 * Where the pages of a pagemap are, across the parent chain: every pages file must exist and
 * hold every page its pagemap says, and every PE_PARENT page must be found further back (else
 * the restore would stop half-way, with the process already created).
 */
async function pageSources(dir: string, pagemapName: string): Promise<PageSource[]> {
  return (await PageChain.open(dir, pagemapName)).sources();
}

export interface LoadOptions {
  /**
   * Do not resolve every page across the parent chain now (a live migration's final restore into
   * its pre-copied skeleton wants only the pages the skeleton lacks, and the levels were checked
   * when each pre-dump was read in).
   */
  isPageChainLazy?: boolean;
}

export async function loadImages(dir: string, opts: LoadOptions = {}): Promise<RestoreImages> {
  if (!existsSync(path.join(dir, 'inventory.img')))
    throw new ImageError('inventory.img', `no complete dump in "${dir}" (inventory.img is missing)`);
  const inventory = await single(dir, 'inventory.img', 'INVENTORY');
  if (Number(inventory['img_version']) !== 2)
    throw new ImageError('inventory.img', `unsupported image version ${String(inventory['img_version'])}`);
  const tree = await entries(dir, 'pstree.img', 'PSTREE');
  if (tree.length !== 1)
    throw new UnsupportedError(
      'process-tree',
      `Cannot restore ${tree.length} processes: process trees are not supported yet`,
    );
  const pstree = tree[0] as ImageEntry;
  const pid = Number(pstree['pid']);
  const threads = ((pstree['threads'] as number[] | undefined) ?? [pid]).map(Number);
  const cores = new Map<number, ImageEntry>();
  for (const tid of threads) {
    const core = await single(dir, `core-${tid}.img`, 'CORE');
    if (Number(core['mtype']) !== 1) throw new UnsupportedError('arch', `core-${tid}.img is not an x86_64 task`);
    cores.set(tid, core);
  }
  if (cores.get(pid)?.['tc'] === undefined) throw new ImageError(`core-${pid}.img`, 'the task core (tc) is missing');
  const mm = await single(dir, `mm-${pid}.img`, 'MM');
  log().debug('restore: cores and mm read');
  const pagemapName = `pagemap-${pid}.img`;
  if (!existsSync(path.join(dir, pagemapName))) throw new ImageError(pagemapName, 'the image is missing');
  const chain = await PageChain.open(dir, pagemapName);
  const pages = opts.isPageChainLazy === true ? null : await chain.sources();
  const pagesPresent = await chain.presentRuns();
  const shmemPages = new Map<string, PageSource[]>();
  for (const name of readdirSync(dir).filter((n) => /^pagemap-shmem-\d+\.img$/.test(n)))
    shmemPages.set(name, await pageSources(dir, name));
  log().debug('restore: page chain resolved');
  const ids = await single(dir, `ids-${pid}.img`, 'IDS');
  const files = await entries(dir, 'files.img', 'FILES');
  const fdinfoName = `fdinfo-${Number(ids['files_id'] ?? 2)}.img`;
  const fdinfo = existsSync(path.join(dir, fdinfoName)) ? await entries(dir, fdinfoName, 'FDINFO') : [];
  const fs = await single(dir, `fs-${pid}.img`, 'FS');
  const seccompFile = path.join(dir, 'seccomp.img');
  const seccompFilters = existsSync(seccompFile)
    ? (((await single(dir, 'seccomp.img', 'SECCOMP'))['seccomp_filters'] as ImageEntry[] | undefined) ?? [])
    : [];
  const extraCache = new Map<string, { entry: ImageEntry; extra?: Uint8Array }[]>();
  return {
    dir,
    pid,
    pstree,
    cores,
    threads,
    mm,
    pages,
    pageChain: chain,
    pagesPresent,
    shmemPages,
    files,
    fdinfo,
    fs,
    seccompFilters,
    extras: async (kind) => {
      const known = extraCache.get(kind);
      if (known !== undefined) return known;
      const name = imageFileName(kind);
      const file = path.join(dir, name);
      const list = existsSync(file)
        ? (await readImage(file, kind)).records.map((r) =>
            r.extra === undefined ? { entry: r.entry } : { entry: r.entry, extra: r.extra },
          )
        : [];
      extraCache.set(kind, list);
      return list;
    },
  };
}
