/**
 * Reading a dump for restore: every image the restore of one process needs, loaded and checked
 * before any process is created, so that a missing, corrupt or truncated image is a clear error
 * that leaves nothing behind.
 */

import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { ImageError, UnsupportedError } from '../errors.js';
import {
  imageFileName,
  pagemapRun,
  PAGE_SIZE,
  PE_PARENT,
  PE_PRESENT,
  readImage,
  type ImageEntry,
} from '../images/index.js';

export interface RestoreImages {
  dir: string;
  pid: number;
  pstree: ImageEntry;
  /** core entry by tid; the leader's has `tc`. */
  cores: Map<number, ImageEntry>;
  threads: number[];
  mm: ImageEntry;
  pagemap: ImageEntry[];
  pagesId: number;
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
 * The pages image a pagemap reads from must exist and hold every page the pagemap says it does
 * (else the restore would stop half-way, with the process already created). Pages in a parent
 * image are refused here too, for the same reason.
 */
function checkPagesImage(dir: string, pagemapName: string, runs: readonly ImageEntry[], pagesId: number): void {
  const pagesName = `pages-${pagesId}.img`;
  let bytes = 0;
  for (const e of runs) {
    const run = pagemapRun(e);
    if ((run.flags & PE_PARENT) !== 0)
      throw new UnsupportedError('parent-images', `Cannot restore pages from a parent image yet (${pagemapName})`);
    if ((run.flags & PE_PRESENT) !== 0) bytes += run.nrPages * PAGE_SIZE;
  }
  const file = path.join(dir, pagesName);
  if (!existsSync(file)) {
    if (bytes === 0) return;
    throw new ImageError(pagesName, 'the pages image is missing');
  }
  const size = statSync(file).size;
  if (size < bytes)
    throw new ImageError(pagesName, `the file has ${size} bytes, ${pagemapName} needs ${bytes}: it is truncated`);
}

export async function loadImages(dir: string): Promise<RestoreImages> {
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
  const pagemapAll = await entries(dir, `pagemap-${pid}.img`, 'PAGEMAP');
  const head = pagemapAll[0];
  if (head === undefined) throw new ImageError(`pagemap-${pid}.img`, 'the pagemap head is missing');
  const pagesId = Number(head['pages_id']);
  checkPagesImage(dir, `pagemap-${pid}.img`, pagemapAll.slice(1), pagesId);
  for (const name of readdirSync(dir).filter((n) => /^pagemap-shmem-\d+\.img$/.test(n))) {
    const shmem = await entries(dir, name, 'PAGEMAP');
    checkPagesImage(dir, name, shmem.slice(1), Number(shmem[0]?.['pages_id']));
  }
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
    pagemap: pagemapAll.slice(1),
    pagesId,
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
