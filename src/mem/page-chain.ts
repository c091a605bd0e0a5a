/**
 * Pages across a chain of image directories: a (pre-)dump's pagemap marks pages PE_PARENT when
 * they are unchanged since its parent (the `parent` link), and the parent may in turn point
 * further back. Restore needs, for every page, the pages file and offset that hold it; dedup
 * needs the opposite: which pages of the ancestors' files no one refers to any more.
 *
 * Levels are loaded lazily (a chain of any length costs one pagemap read per level used), and
 * every level is checked as it is loaded: its pages file must hold every page its pagemap says,
 * and a PE_PARENT page must exist further back. Errors name the image and the address.
 *
 * Image kinds: PAGEMAP, PAGES; the `parent` link.
 */

import { statSync } from 'node:fs';
import path from 'node:path';
import { ImageError } from '../errors.js';
import { PAGE_SIZE, PE_PARENT, PE_PRESENT, parentDir, readPagemap, type PagemapRun } from '../images/index.js';
import * as sys from '../sys/native.js';
import { normalize, pageAddr, pageIndex, subtract, type Run } from './runs.js';

/** Where a run of pages is: `file` (absolute path of a pages-<n>.img) at byte `fileOffset`. */
export interface PageSource {
  vaddr: bigint;
  nrPages: number;
  file: string;
  fileOffset: bigint;
}

interface Level {
  dir: string;
  /** Page-index runs in address order, with their PE_* flags and, when present, their page offset in the file. */
  runs: { start: number; end: number; flags: number; filePage: number }[];
  pagesFile: string;
  /** Pages the pages file must hold. */
  pagesNeeded: number;
}

const O_RDWR = 2;
const FALLOC_FL_KEEP_SIZE = 1;
const FALLOC_FL_PUNCH_HOLE = 2;

function hex(page: number): string {
  return `0x${pageAddr(page).toString(16)}`;
}

/** The pages of one pagemap (a task's or a shmem object's) across the parent chain of `dir`. */
export class PageChain {
  private readonly levels: (Level | null)[] = [];
  private readonly dirs: (string | null)[] = [];

  private constructor(
    readonly dir: string,
    readonly pagemapName: string,
  ) {
    this.dirs.push(path.resolve(dir));
  }

  /** Open the chain of `dir/pagemapName`, checking the top level at once. */
  static async open(dir: string, pagemapName: string): Promise<PageChain> {
    const chain = new PageChain(dir, pagemapName);
    await chain.level(0);
    return chain;
  }

  /** The top level's runs as they are in its pagemap (PE_* flags and all). */
  async topRuns(): Promise<PagemapRun[]> {
    const top = (await this.level(0)) as Level;
    return top.runs.map((r) => ({ vaddr: pageAddr(r.start), nrPages: r.end - r.start, flags: r.flags }));
  }

  /** The pages the top level holds itself (PE_PRESENT), as normalized page runs. */
  async presentRuns(): Promise<Run[]> {
    const top = (await this.level(0)) as Level;
    return normalize(top.runs.filter((r) => (r.flags & PE_PRESENT) !== 0).map((r) => ({ start: r.start, end: r.end })));
  }

  /** Every page with contents (present here or further back), in address order, with where it is. */
  async sources(): Promise<PageSource[]> {
    return this.sourcesIn(null);
  }

  /**
   * sources() within the page runs `wanted` (normalized) only: the levels further back are
   * searched for those alone. A live migration's final restore wants a few pages of a long chain.
   */
  async sourcesIn(wanted: readonly Run[] | null): Promise<PageSource[]> {
    const top = (await this.level(0)) as Level;
    const out: PageSource[] = [];
    let w = 0;
    for (const r of top.runs) {
      if ((r.flags & (PE_PRESENT | PE_PARENT)) === 0) continue;
      const parts: Run[] = [];
      if (wanted === null) parts.push({ start: r.start, end: r.end });
      else {
        while (w < wanted.length && (wanted[w] as Run).end <= r.start) w++;
        for (let k = w; k < wanted.length && (wanted[k] as Run).start < r.end; k++) {
          const x = wanted[k] as Run;
          parts.push({ start: Math.max(x.start, r.start), end: Math.min(x.end, r.end) });
        }
      }
      for (const p of parts) {
        if ((r.flags & PE_PRESENT) !== 0) out.push(source(top, r, p.start, p.end));
        else await this.resolve(1, p.start, p.end, out);
      }
    }
    return out;
  }

  /** The pages with contents (present here or further back) as normalized runs; no level read but the top. */
  async coverage(): Promise<Run[]> {
    const top = (await this.level(0)) as Level;
    return normalize(
      top.runs.filter((r) => (r.flags & (PE_PRESENT | PE_PARENT)) !== 0).map((r) => ({ start: r.start, end: r.end })),
    );
  }

  /** The directories of the chain this pagemap used so far, top first. */
  usedDirs(): string[] {
    return this.levels.filter((l): l is Level => l !== null).map((l) => l.dir);
  }

  private async resolve(depth: number, start: number, end: number, out: PageSource[]): Promise<void> {
    const level = await this.level(depth);
    const child = this.dirs[depth - 1] as string;
    if (level === null)
      throw new ImageError(
        path.join(child, this.pagemapName),
        `pages at ${hex(start)} are in the parent image, but ${child} has no parent (a missing or broken "parent" link)`,
      );
    let cursor = start;
    // First run that ends after `start`.
    let lo = 0;
    let hi = level.runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((level.runs[mid] as Level['runs'][number]).end <= start) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < level.runs.length && cursor < end; i++) {
      const r = level.runs[i] as Level['runs'][number];
      if (r.start > cursor) break;
      const to = Math.min(end, r.end);
      if ((r.flags & PE_PRESENT) !== 0) out.push(source(level, r, cursor, to));
      else if ((r.flags & PE_PARENT) !== 0) await this.resolve(depth + 1, cursor, to, out);
      else break;
      cursor = to;
    }
    if (cursor < end)
      throw new ImageError(
        path.join(level.dir, this.pagemapName),
        `page ${hex(cursor)} is marked as in the parent by ${path.join(child, this.pagemapName)} but the parent does not have it`,
      );
  }

  private async level(depth: number): Promise<Level | null> {
    if (depth < this.levels.length) return this.levels[depth] as Level | null;
    for (let d = this.levels.length; d <= depth; d++) {
      const dir = d === 0 ? (this.dirs[0] as string) : await this.parentOf(d - 1);
      this.levels.push(dir === null ? null : await loadLevel(dir, this.pagemapName, d > 0));
      if (d > 0) this.dirs.push(dir);
    }
    return this.levels[depth] as Level | null;
  }

  private async parentOf(depth: number): Promise<string | null> {
    const dir = this.dirs[depth];
    if (dir === null || dir === undefined) return null;
    const parent = await parentDir(dir);
    if (parent !== null && this.dirs.includes(parent))
      throw new ImageError(path.join(dir, 'parent'), 'the parent links form a loop');
    return parent;
  }
}

function source(level: Level, r: Level['runs'][number], from: number, to: number): PageSource {
  return {
    vaddr: pageAddr(from),
    nrPages: to - from,
    file: level.pagesFile,
    fileOffset: BigInt(r.filePage + (from - r.start)) * BigInt(PAGE_SIZE),
  };
}

/**
 * Levels already read, by file, size and mtime: images are never rewritten in place (they are
 * renamed into place whole), so a long-lived process (the migration agent, which reads each
 * pre-dump when it arrives and the whole chain again at the final restore) decodes each pagemap
 * once. Bounded: the oldest are dropped.
 */
const levelCache = new Map<string, Level>();
const LEVEL_CACHE_MAX = 64;

async function loadLevel(dir: string, pagemapName: string, isParent: boolean): Promise<Level | null> {
  const file = path.join(dir, pagemapName);
  let key: string | null = null;
  try {
    const st = statSync(file);
    key = `${file}\0${st.size}\0${st.mtimeMs}\0${st.ino}`;
    const cached = levelCache.get(key);
    if (cached !== undefined) {
      checkPagesFile(cached, pagemapName);
      return cached;
    }
  } catch {
    // missing: readPagemap says how
  }
  const level = await readLevel(dir, file, isParent);
  if (level !== null) checkPagesFile(level, pagemapName);
  if (level !== null && key !== null) {
    if (levelCache.size >= LEVEL_CACHE_MAX) levelCache.delete(levelCache.keys().next().value as string);
    levelCache.set(key, level);
  }
  return level;
}

async function readLevel(dir: string, file: string, isParent: boolean): Promise<Level | null> {
  let pm: { pagesId: number; runs: PagemapRun[] };
  try {
    pm = await readPagemap(file);
  } catch (err) {
    // A parent without this pagemap simply has none of its pages (resolve says which is missing).
    if (isParent && (err as { cause?: NodeJS.ErrnoException }).cause?.code === 'ENOENT') return null;
    throw err;
  }
  const pagesFile = path.join(dir, `pages-${pm.pagesId}.img`);
  const runs: Level['runs'] = [];
  let filePage = 0;
  let lastEnd = -1;
  for (const r of pm.runs) {
    const start = pageIndex(r.vaddr);
    if (r.vaddr % BigInt(PAGE_SIZE) !== 0n || start < lastEnd)
      throw new ImageError(file, `pagemap entries out of order or overlapping at 0x${r.vaddr.toString(16)}`);
    const end = start + r.nrPages;
    runs.push({ start, end, flags: r.flags, filePage });
    if ((r.flags & PE_PRESENT) !== 0) filePage += r.nrPages;
    lastEnd = end;
  }
  return { dir, runs, pagesFile, pagesNeeded: filePage };
}

/** The pages file must hold every page the pagemap says (checked on every use: it is cheap). */
function checkPagesFile(level: Level, pagemapName: string): void {
  if (level.pagesNeeded === 0) return;
  let size: number;
  try {
    size = statSync(level.pagesFile).size;
  } catch (err) {
    throw new ImageError(path.basename(level.pagesFile), `missing, but ${pagemapName} needs it`, undefined, {
      cause: err,
    });
  }
  if (size < level.pagesNeeded * PAGE_SIZE)
    throw new ImageError(
      level.pagesFile,
      `the file has ${size} bytes, ${pagemapName} needs ${level.pagesNeeded * PAGE_SIZE}: it is truncated`,
    );
}

/** Sources grouped by pages file, each as normalized runs of page indexes within the file. */
export function filePagesOf(sources: readonly PageSource[]): Map<string, Run[]> {
  const byFile = new Map<string, Run[]>();
  for (const s of sources) {
    const start = Number(s.fileOffset / BigInt(PAGE_SIZE));
    const list = byFile.get(s.file) ?? [];
    list.push({ start, end: start + s.nrPages });
    byFile.set(s.file, list);
  }
  for (const [file, list] of byFile) byFile.set(file, normalize(list));
  return byFile;
}

/**
 * Punch holes (FALLOC_FL_PUNCH_HOLE, size kept) for the page runs `runs` of `file`. Returns the
 * bytes punched. A file system without hole punching (EOPNOTSUPP) is reported, not ignored.
 */
export function punchPages(file: string, runs: readonly Run[]): number {
  if (runs.length === 0) return 0;
  const fd = sys.open(file, O_RDWR, 0);
  let bytes = 0;
  try {
    for (const r of runs) {
      const len = BigInt(r.end - r.start) * BigInt(PAGE_SIZE);
      sys.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BigInt(r.start) * BigInt(PAGE_SIZE), len);
      bytes += Number(len);
    }
  } finally {
    sys.close(fd);
  }
  return bytes;
}

/** The page runs of a file not in `keep` (normalized), given its size in pages. */
export function unreferenced(nrPages: number, keep: readonly Run[]): Run[] {
  return subtract([{ start: 0, end: nrPages }], keep);
}

/**
 * The parts of `sources` inside `allowed` (sorted, disjoint page runs; a source is cut where two
 * adjacent runs meet), in order.
 */
export function clipSources(sources: readonly PageSource[], allowed: readonly Run[]): PageSource[] {
  const out: PageSource[] = [];
  let j = 0;
  for (const s of sources) {
    const start = pageIndex(s.vaddr);
    const end = start + s.nrPages;
    while (j < allowed.length && (allowed[j] as Run).end <= start) j++;
    for (let k = j; k < allowed.length && (allowed[k] as Run).start < end; k++) {
      const a = allowed[k] as Run;
      const from = Math.max(start, a.start);
      const to = Math.min(end, a.end);
      if (to > from)
        out.push({
          vaddr: pageAddr(from),
          nrPages: to - from,
          file: s.file,
          fileOffset: s.fileOffset + BigInt(from - start) * BigInt(PAGE_SIZE),
        });
    }
  }
  return out;
}

/** The pages `sources` cover, as normalized page runs. */
export function coverageOf(sources: readonly PageSource[]): Run[] {
  return normalize(sources.map((s) => ({ start: pageIndex(s.vaddr), end: pageIndex(s.vaddr) + s.nrPages })));
}

/** The sources' pages outside `excluded`, cut as needed. */
export function clipOutSources(sources: readonly PageSource[], excluded: readonly Run[]): readonly PageSource[] {
  return excluded.length === 0 ? sources : clipSources(sources, subtract(coverageOf(sources), excluded));
}
