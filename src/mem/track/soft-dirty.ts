/**
 * The soft-dirty dirty-memory tracker, CRIU's classic one, for kernels with CONFIG_MEM_SOFT_DIRTY
 * (and without PAGEMAP_SCAN / uffd WP_ASYNC, which are preferred: see kerndat/tracker.ts).
 *
 * Kernel interfaces: /proc/PID/pagemap read(2) (bit 55 soft-dirty, 62 swapped, 63 present),
 * /proc/PID/clear_refs ("4" clears every soft-dirty bit of the mm and write-protects the pages so
 * the next write sets the bit again), /proc/PID/maps.
 *
 * Rules:
 * - A page is reported when its soft-dirty bit is set, or when it is neither present nor swapped
 *   (a page dropped by MADV_DONTNEED leaves no bit behind; reporting absent pages costs nothing,
 *   as the dumper finds nothing there to copy).
 * - New VMAs carry VM_SOFTDIRTY, so all their pages read soft-dirty until the next clear_refs;
 *   whatever was not looked at by the previous collect is returned whole anyway.
 * - clear_refs acts on the whole mm, so only the pages this collect examined stay armed.
 * - The pagemap read and clear_refs are two steps: a write between them would be lost. collect
 *   must run with the task frozen (it is not atomic the way PAGEMAP_SCAN is).
 * - Nothing to hold between invocations: the bits live in the task's page tables. Something
 *   else writing clear_refs meanwhile would hide writes from us; nothing can detect that.
 *
 * Not exercised on this project's kernel, which lacks CONFIG_MEM_SOFT_DIRTY: its choice is
 * refused there (kerndat's soft-dirty probe says why). The page classification is unit-tested.
 */

import { writeFileSync } from 'node:fs';
import { TaskError } from '../../errors.js';
import { PAGE_SIZE } from '../../kernel/constants.js';
import { readMaps } from '../../proc/maps.js';
import { openPagemap, readPagemapEntries } from '../../proc/pagemap.js';
import * as sys from '../../sys/native.js';
import {
  appendRun,
  intersectRuns,
  normalizeRuns,
  rangesFromRuns,
  runsFromRanges,
  subtractRuns,
  unionRuns,
  type AddrRange,
  type PageRuns,
} from './ranges.js';
import type { HolderRecord } from './state.js';
import { BaseTracker, type KeptInput, type TrackContext } from './types.js';

const PAGE = BigInt(PAGE_SIZE);
/** Bits of an entry's high 32-bit word: present 63, swapped 62, soft-dirty 55. */
const HI_PRESENT = 1 << 31;
const HI_SWAP = 1 << 30;
const HI_SOFT_DIRTY = 1 << 23;
/** Entries read per pread. */
const CHUNK_PAGES = 64 * 1024;

/**
 * Append to `runs` the pages among `nrEntries` pagemap entries (little-endian u32 pairs in
 * `words`, the first being page `firstPage`) that are soft-dirty or absent.
 */
export function appendSoftDirtyRuns(words: Uint32Array, nrEntries: number, firstPage: number, runs: PageRuns): void {
  let runStart = -1;
  for (let i = 0; i < nrEntries; i++) {
    const hi = words[2 * i + 1] as number;
    const isDirty = (hi & HI_SOFT_DIRTY) !== 0 || (hi & (HI_PRESENT | HI_SWAP)) === 0;
    if (isDirty) {
      if (runStart < 0) runStart = i;
    } else if (runStart >= 0) {
      appendRun(runs, firstPage + runStart, firstPage + i);
      runStart = -1;
    }
  }
  if (runStart >= 0) appendRun(runs, firstPage + runStart, firstPage + nrEntries);
}

export class SoftDirtyTracker extends BaseTracker {
  readonly kind = 'soft-dirty' as const;
  /** Reading the bits and clearing them (clear_refs) are two steps: a write between is lost. */
  readonly collectsRunning = false;
  private pagemapFd: number;
  private entries = new BigUint64Array(CHUNK_PAGES);

  private constructor(ctx: TrackContext, kept: KeptInput | null, pagemapFd: number) {
    super(ctx, kept);
    this.pagemapFd = pagemapFd;
  }

  static open(ctx: TrackContext, kept: KeptInput | null): SoftDirtyTracker {
    const fd = openPagemap(ctx.pid);
    if (fd === null) throw new TaskError(ctx.pid, `Task ${ctx.pid} exited`);
    return new SoftDirtyTracker(ctx, kept, fd);
  }

  async collect(ranges: readonly AddrRange[]): Promise<AddrRange[]> {
    this.assertOpen();
    const pid = this.ctx.pid;
    const want = runsFromRanges(ranges);
    const maps = readMaps(pid);
    if (maps === null) throw new TaskError(pid, `Cannot collect dirty memory of task ${pid}: it exited`);
    const vmas = normalizeRuns(maps.flatMap((m) => [Number(m.start / PAGE), Number(m.end / PAGE)]));
    let result: PageRuns;
    if (!this.hasBaseline) result = want;
    else {
      const tracked = intersectRuns(intersectRuns(want, this.armed), vmas);
      const dirty: PageRuns = [];
      const words = new Uint32Array(this.entries.buffer);
      for (let i = 0; i < tracked.length; i += 2) {
        const end = tracked[i + 1] as number;
        for (let page = tracked[i] as number; page < end; page += CHUNK_PAGES) {
          const n = Math.min(CHUNK_PAGES, end - page);
          readPagemapEntries(this.pagemapFd, page, n, this.entries);
          appendSoftDirtyRuns(words, n, page, dirty);
        }
      }
      result = unionRuns(subtractRuns(want, tracked), dirty);
    }
    // The last collect leaves the bits (the kernel's own bookkeeping) as they are: nothing reads
    // them after it.
    if (!this.isLastCollect) {
      try {
        writeFileSync(`/proc/${pid}/clear_refs`, '4');
      } catch (err) {
        throw new TaskError(pid, `Cannot clear the soft-dirty bits of task ${pid}`, { cause: err });
      }
    }
    this.armed = intersectRuns(want, vmas);
    this.hasBaseline = true;
    return rangesFromRuns(result);
  }

  protected keepBackend(): Promise<HolderRecord | null> {
    return Promise.resolve(null);
  }

  protected endBackend(): Promise<void> {
    // The soft-dirty bits are the kernel's own bookkeeping: nothing of ours to remove.
    return Promise.resolve();
  }

  protected closeBackend(): void {
    if (this.pagemapFd >= 0) sys.close(this.pagemapFd);
    this.pagemapFd = -1;
  }
}
