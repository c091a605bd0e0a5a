/**
 * Which pages a (pre-)dump writes, and which it leaves to the parent image.
 *
 * With a dirty-memory tracker (src/mem/track/) and a parent image, a present page goes into this
 * image only when it may have changed since the parent: written since the tracker's last collect,
 * or not among the pages the chain already holds ("known": every page present at the previous
 * iteration, kept with the tracker's state). The rest is written as PE_PARENT. A page that
 * became present without a write (read-faulted after a munmap and mmap, say) is not known, so it
 * is copied: the tracker alone could not tell it from an unchanged one.
 *
 * The known set is only trusted for the image it was made for: the tracker's state names the
 * destination (image directory and run id, or page server) of the iteration that made it.
 */

import { readFileSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { PE_PARENT, PE_PRESENT, type PagemapRun } from '../images/index.js';
import { log } from '../log.js';
import type { DumpRange, PageRun } from '../mem/dump-pages.js';
import { findPageRuns } from '../mem/dump-pages.js';
import { countPages, intersect, normalize, pageAddr, pageIndex, pageRuns, subtract, type Run } from '../mem/runs.js';

/** The part of src/mem/track's DirtyTracker the dumper uses. */
export interface TrackerLike {
  readonly kind: string;
  readonly fresh: boolean;
  collect(ranges: readonly { start: bigint; end: bigint }[]): Promise<{ start: bigint; end: bigint }[]>;
  state: Uint8Array | null;
}

/** What the tracker keeps for the next iteration: where its image went, and the pages present then. */
export interface KnownState {
  /** "dir:<realpath>#<run id>" or "ps:<address>:<port>". */
  dest: string;
  /** Page-index runs present at that iteration (all in the chain after it). */
  known: Run[];
}

export function encodeKnown(s: KnownState): Uint8Array {
  return Buffer.from(JSON.stringify({ dest: s.dest, known: s.known.flatMap((r) => [r.start, r.end]) }));
}

export function decodeKnown(bytes: Uint8Array | null): KnownState | null {
  if (bytes === null) return null;
  try {
    const v = JSON.parse(Buffer.from(bytes).toString('utf8')) as { dest?: unknown; known?: unknown };
    if (typeof v.dest !== 'string' || !Array.isArray(v.known) || v.known.length % 2 !== 0) return null;
    const flat = v.known as unknown[];
    const known: Run[] = [];
    for (let i = 0; i < flat.length; i += 2) {
      const start = flat[i];
      const end = flat[i + 1];
      if (typeof start !== 'number' || typeof end !== 'number' || !(end > start)) return null;
      known.push({ start, end });
    }
    return { dest: v.dest, known: normalize(known) };
  } catch {
    return null;
  }
}

/** The destination name of a local image directory (its real path and the inventory's run id). */
export function localDest(dir: string): string | null {
  try {
    const real = realpathSync(dir);
    const inv = readFileSync(path.join(real, 'inventory.img'));
    return `dir:${real}#${inv.toString('base64')}`;
  } catch {
    return null;
  }
}

export function pageServerDest(address: string, port: number): string {
  return `ps:${address}:${port}`;
}

export interface MemoryPlan {
  /** Pagemap entries in address order: PE_PRESENT (copied) and PE_PARENT. */
  entries: PagemapRun[];
  /** The runs to copy (the PE_PRESENT entries). */
  copy: PageRun[];
  /** Every present page (the known set of the next iteration). */
  present: Run[];
  pagesScanned: number;
  pagesInParent: number;
}

/**
 * Plan the memory of a frozen task. `parent`: the known state valid for the image this one
 * continues (null: no parent, or not trusted: everything present is copied).
 */
export async function planMemory(
  pid: number,
  ranges: readonly DumpRange[],
  tracker: TrackerLike | null,
  parent: KnownState | null,
): Promise<MemoryPlan> {
  const tracked = ranges.filter((r) => r.pages !== 'none' && r.pages !== 'vdso');
  // Collect first: it re-arms tracking, so that whatever is written from now on is seen next time.
  const dirtyRanges =
    tracker === null ? null : await tracker.collect(tracked.map((r) => ({ start: r.start, end: r.end })));
  const { runs, pagesScanned } = findPageRuns(pid, ranges);
  const present = normalize(runs.map((r) => ({ start: pageIndex(r.vaddr), end: pageIndex(r.vaddr) + r.nrPages })));
  let inParent: Run[] = [];
  if (dirtyRanges !== null && parent !== null && !(tracker?.fresh ?? true)) {
    const dirty = pageRuns(dirtyRanges);
    inParent = subtract(intersect(present, parent.known), dirty);
  }
  const copy = subtract(present, inParent);
  // Both lists are sorted and disjoint: merged in address order (no sort on bigints).
  const entries: PagemapRun[] = [];
  for (let i = 0, j = 0; i < copy.length || j < inParent.length;) {
    const isCopy = j >= inParent.length || (i < copy.length && (copy[i] as Run).start < (inParent[j] as Run).start);
    const r = (isCopy ? copy[i++] : inParent[j++]) as Run;
    entries.push({ vaddr: pageAddr(r.start), nrPages: r.end - r.start, flags: isCopy ? PE_PRESENT : PE_PARENT });
  }
  const pagesInParent = countPages(inParent);
  log().info(
    `Memory of ${pid}: ${countPages(present)} present pages, ${countPages(copy)} to copy, ${pagesInParent} in the parent`,
  );
  return {
    entries,
    copy: copy.map((r) => ({ vaddr: pageAddr(r.start), nrPages: r.end - r.start })),
    present,
    pagesScanned,
    pagesInParent,
  };
}
