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
import { TASK_STATE } from '../images/task-state.js';
import { pstreeShapeProblem } from '../images/pstree-shape.js';

/** The images of one process of the dumped tree. */
export interface TaskImages {
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
  fdinfo: ImageEntry[];
  fs: ImageEntry;
  /** ids-<pid>.img: its kernel objects' and namespaces' ids. */
  ids: ImageEntry;
}

/** A zombie of the dumped tree: its place, and the status it died with (as waitpid reports it). */
export interface ZombieImages {
  pid: number;
  pstree: ImageEntry;
  exitStatus: number;
}

/** A dump as restore reads it: its root process's images, every process's, and what they share. */
export interface RestoreImages extends TaskImages {
  dir: string;
  /** Every live process, parents before their children; the root (the fields above) first. */
  tree: TaskImages[];
  /** The zombies (each a child of one of `tree`, with no children of its own). */
  zombies: ZombieImages[];
  /** The same for each pagemap-shmem-<shmid>.img, by file name. */
  shmemPages: Map<string, PageSource[]>;
  files: ImageEntry[];
  /** seccomp_entry.seccomp_filters (empty when none). */
  seccompFilters: ImageEntry[];
  /** Entries (with raw payloads) of other kinds, loaded on demand. */
  extras(kind: string): Promise<{ entry: ImageEntry; extra?: Uint8Array }[]>;
  /** The inventory's root_ids: the dumping criu's own ids (none in very old images). */
  rootIds: ImageEntry | undefined;
  /** Dumped with --tcp-close: the connections' state is not in the images. */
  isTcpClose: boolean;
  /** The dump's run id (inventory dump_criu_run_id), when it wrote one. */
  runId: string | undefined;
}

async function entries(dir: string, name: string, kind: string): Promise<ImageEntry[]> {
  const file = path.join(dir, name);
  if (!existsSync(file)) throw new ImageError(name, 'the image is missing');
  const img = await readImage(file, kind);
  return img.records.map((r) => r.entry);
}

/** The first entry of image `name` in `dir`; a missing or empty image is an ImageError. */
export async function single(dir: string, name: string, kind: string): Promise<ImageEntry> {
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
  const entriesOfTree = await entries(dir, 'pstree.img', 'PSTREE');
  checkTree(entriesOfTree);
  const tree: TaskImages[] = [];
  const zombies: ZombieImages[] = [];
  for (const pstree of entriesOfTree) {
    const pid = Number(pstree['pid']);
    const core = await single(dir, `core-${pid}.img`, 'CORE');
    const tc = core['tc'] as ImageEntry | undefined;
    if (Number(tc?.['task_state'] ?? TASK_STATE.ALIVE) === TASK_STATE.DEAD)
      zombies.push({ pid, pstree, exitStatus: Number(tc?.['exit_code'] ?? 0) });
    else tree.push(await loadTask(dir, pstree, opts));
  }
  checkZombies(entriesOfTree, zombies);
  const root = tree[0] as TaskImages;
  const shmemPages = new Map<string, PageSource[]>();
  for (const name of readdirSync(dir).filter((n) => /^pagemap-shmem-\d+\.img$/.test(n)))
    shmemPages.set(name, await pageSources(dir, name));
  log().debug('restore: page chains resolved');
  const files = await entries(dir, 'files.img', 'FILES');
  const seccompFile = path.join(dir, 'seccomp.img');
  const seccompFilters = existsSync(seccompFile)
    ? (((await single(dir, 'seccomp.img', 'SECCOMP'))['seccomp_filters'] as ImageEntry[] | undefined) ?? [])
    : [];
  const extraCache = new Map<string, { entry: ImageEntry; extra?: Uint8Array }[]>();
  return {
    ...root,
    dir,
    tree,
    zombies,
    shmemPages,
    files,
    seccompFilters,
    rootIds: inventory['root_ids'] as ImageEntry | undefined,
    isTcpClose: inventory['tcp_close'] === true,
    runId: typeof inventory['dump_criu_run_id'] === 'string' ? inventory['dump_criu_run_id'] : undefined,
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

/** A zombie is neither the root nor anyone's parent (it had exited: its children were reparented). */
function checkZombies(list: readonly ImageEntry[], zombies: readonly ZombieImages[]): void {
  const dead = new Set(zombies.map((z) => z.pid));
  if (dead.has(Number(list[0]?.['pid']))) throw new ImageError('pstree.img', 'the root process is a zombie');
  for (const e of list)
    if (dead.has(Number(e['ppid'])))
      throw new ImageError('pstree.img', `process ${String(e['pid'])} is a child of zombie ${String(e['ppid'])}`);
}

/** The images of the process of pstree entry `pstree`. */
async function loadTask(dir: string, pstree: ImageEntry, opts: LoadOptions): Promise<TaskImages> {
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
  log().debug(`restore: cores and mm of ${pid} read`);
  const pagemapName = `pagemap-${pid}.img`;
  if (!existsSync(path.join(dir, pagemapName))) throw new ImageError(pagemapName, 'the image is missing');
  const chain = await PageChain.open(dir, pagemapName);
  const pages = opts.isPageChainLazy === true ? null : await chain.sources();
  const pagesPresent = await chain.presentRuns();
  const ids = await single(dir, `ids-${pid}.img`, 'IDS');
  const fdinfoName = `fdinfo-${Number(ids['files_id'] ?? 2)}.img`;
  const fdinfo = existsSync(path.join(dir, fdinfoName)) ? await entries(dir, fdinfoName, 'FDINFO') : [];
  const fs = await single(dir, `fs-${pid}.img`, 'FS');
  return { pid, pstree, cores, threads, mm, pages, pageChain: chain, pagesPresent, fdinfo, fs, ids };
}

/**
 * pstree.img must be a tree whose processes restore can make again: the root first (ppid 0),
 * every other process after its parent, each pid once; and each process in its parent's
 * session or its own, and in its parent's process group, its own, or one another process of
 * the tree leads in the same session (what clone, setsid and setpgid can make).
 */
export function checkTree(list: readonly ImageEntry[]): void {
  const bad = (why: string): never => {
    throw new ImageError('pstree.img', why);
  };
  if (list.length === 0) bad('the image has no entry');
  const byPid = new Map<number, ImageEntry>();
  for (const [i, e] of list.entries()) {
    const pid = Number(e['pid']);
    const ppid = Number(e['ppid'] ?? 0);
    if (!Number.isInteger(pid) || pid <= 0) bad(`entry ${i} has no valid pid`);
    if (byPid.has(pid)) bad(`process ${pid} is listed twice`);
    if (i === 0 && ppid !== 0) bad(`the first process (${pid}) has a parent (${ppid})`);
    if (i > 0 && !byPid.has(ppid)) bad(`process ${pid} comes before its parent ${ppid}, or its parent is missing`);
    byPid.set(pid, e);
  }
  const root = list[0] as ImageEntry;
  const unsupported = (why: string): never => {
    throw new UnsupportedError('process-tree', `Cannot restore the tree of ${String(root['pid'])}: ${why}`);
  };
  const problem = pstreeShapeProblem(
    list.map((e) => ({
      pid: Number(e['pid']),
      ppid: Number(e['ppid'] ?? 0),
      sid: Number(e['sid']),
      pgid: Number(e['pgid']),
    })),
  );
  if (problem !== undefined) unsupported(problem);
}
