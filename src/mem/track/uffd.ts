/**
 * The uffd-wp dirty-memory tracker: userfaultfd write-protection in asynchronous mode, read and
 * re-armed by the PAGEMAP_SCAN ioctl (kernel 6.7+, CONFIG_PTE_MARKER_UFFD_WP).
 *
 * Kernel interfaces: userfaultfd(2) injected into the task, pidfd_open/pidfd_getfd, UFFDIO_API
 * (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED), UFFDIO_REGISTER (MODE_WP),
 * ioctl(/proc/PID/pagemap, PAGEMAP_SCAN) with PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
 * /proc/PID/maps.
 *
 * How (see ../../../../shared/KERNEL-NOTES.md, verified on 6.18):
 * - The userfaultfd is created inside the task (its context binds to the creating mm) by an
 *   injected userfaultfd(O_CLOEXEC | UFFD_USER_MODE_ONLY), taken out with pidfd_getfd and closed
 *   in the task again, so the task's fd table is as before.
 * - Each collect registers every VMA the ranges touch (UFFDIO_REGISTER is idempotent on a VMA we
 *   registered before; a VMA registered by the task's own userfaultfd answers EBUSY and is
 *   returned whole every time), then one PAGEMAP_SCAN per contiguous run reports the pages written
 *   since the last scan and write-protects them again, page by page under the page-table lock, so
 *   a write racing with the scan lands either in this result or in the next.
 *
 * Kernel behaviour this relies on (checked on 6.18 by test/integration/mem/track-uffd.test.ts):
 * - In a registered VMA, a page is reported PAGE_IS_WRITTEN unless it carries uffd-wp: present
 *   and written, never armed, or with an empty pte (never touched, or zapped: MADV_DONTNEED and
 *   munmap drop the markers of anonymous memory). A zapped page is therefore reported whether or
 *   not it is faulted in again, by a read or a write.
 * - mremap moving a VMA drops its registration (UFFD_FEATURE_EVENT_REMAP is not asked for) and
 *   the wp bits of its pages; it is registered afresh and returned whole. A VMA grown in place
 *   keeps its registration; the grown part has empty ptes, reported written, and is also
 *   returned whole because it was not armed.
 * - With WP_UNPOPULATED, the scan puts uffd-wp pte markers on empty ptes of the ranges it
 *   re-arms. Markers read as swap entries: pagemap bit 62 (swapped) with bit 57 (uffd-wp) and
 *   swap type 31, and PAGEMAP_SCAN's PAGE_IS_SWAPPED. A page dumper must not take a marker for a
 *   swapped-out page (see markers.ts).
 * - Closing the last reference to the userfaultfd unregisters every VMA and removes every
 *   marker and wp bit: the task is as it was.
 *
 * Between invocations the userfaultfd is held by a holder process (holder.ts).
 */

import { SyscallError, TaskError, UnsupportedError, describeError, isErrno } from '../../errors.js';
import {
  PAGE_IS_WRITTEN,
  PAGE_REGION_WORDS,
  PAGE_SIZE,
  PM_SCAN_CHECK_WPASYNC,
  PM_SCAN_WP_MATCHING,
  UFFDIO_REGISTER_MODE_WP,
  UFFD_FEATURE_WP_ASYNC,
  UFFD_FEATURE_WP_UNPOPULATED,
} from '../../kernel/constants.js';
import type { Injector } from '../../inject/injector.js';
import { log } from '../../log.js';
import { readMaps } from '../../proc/maps.js';
import { openPagemap } from '../../proc/pagemap.js';
import * as sys from '../../sys/native.js';
import { userfaultfdOfTask } from '../uffd-fill.js';
import { findHolders, spawnHolder, startTimeOf, stopHolder, takeHolderFd } from './holder.js';
import {
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
/** Regions per PAGEMAP_SCAN call; a call that fills them is continued from walk_end. */
const SCAN_REGIONS = 4096;

export class UffdTracker extends BaseTracker {
  readonly kind = 'uffd' as const;
  /**
   * PAGEMAP_SCAN reads and re-arms each PTE under its lock, and flushes the TLB before returning:
   * a write lands either before (reported now, and copied after this collect returns) or after
   * (reported next time). VMAs changed meanwhile are taken whole (register or scan fails).
   */
  readonly collectsRunning = true;
  /** This process's reference to the userfaultfd. */
  private uffd: number;
  /** A pidfd of the task (handed to the holder). */
  private pidfd: number;
  private pagemapFd: number;
  private holder: HolderRecord | null;
  private scanVec = new BigUint64Array(SCAN_REGIONS * PAGE_REGION_WORDS);

  private constructor(ctx: TrackContext, kept: KeptInput | null, uffd: number, pidfd: number, pagemapFd: number) {
    super(ctx, kept);
    this.uffd = uffd;
    this.pidfd = pidfd;
    this.pagemapFd = pagemapFd;
    this.holder = kept?.holder ?? null;
  }

  /**
   * Continue the tracking `kept` describes, or start afresh with a userfaultfd created in the
   * frozen task through `injector` (kept null, or its holder gone).
   */
  static async open(
    ctx: TrackContext,
    injector: Injector | (() => Injector),
    kept: KeptInput | null,
  ): Promise<UffdTracker> {
    let uffd: number | null = null;
    if (kept?.holder != null) {
      uffd = takeHolderFd(kept.holder, ctx.pid);
      if (uffd === null) log().info(`Dirty memory tracker of task ${ctx.pid}: its holder is gone, starting afresh`);
    }
    if (uffd === null) {
      kept = null;
      // A holder whose record was lost (criu-ts died between starting it and writing the record)
      // still owns the registrations: our UFFDIO_REGISTER would fail with EBUSY.
      for (const orphan of findHolders(ctx.pid)) await stopHolder(orphan, ctx.pid);
    }
    let pidfd = -1;
    let pagemapFd: number | null = null;
    try {
      pidfd = sys.pidfdOpen(ctx.pid, 0);
      if (startTimeOf(ctx.pid) !== ctx.targetStartTime) throw new TaskError(ctx.pid, `Task ${ctx.pid} exited`);
      uffd ??= createInTask(ctx.pid, pidfd, typeof injector === 'function' ? injector() : injector);
      pagemapFd = openPagemap(ctx.pid);
      if (pagemapFd === null) throw new TaskError(ctx.pid, `Task ${ctx.pid} exited`);
      return new UffdTracker(ctx, kept, uffd, pidfd, pagemapFd);
    } catch (err) {
      for (const fd of [uffd, pidfd, pagemapFd]) if (fd !== null && fd >= 0) sys.close(fd);
      throw err;
    }
  }

  async collect(ranges: readonly AddrRange[]): Promise<AddrRange[]> {
    this.assertOpen();
    const pid = this.ctx.pid;
    const want = runsFromRanges(ranges);
    const maps = readMaps(pid);
    if (maps === null) throw new TaskError(pid, `Cannot collect dirty memory of task ${pid}: it exited`);
    const vmaPairs: number[] = [];
    let whole: PageRuns = [];
    let registered: PageRuns = [];
    for (const vma of maps) {
      const first = Number(vma.start / PAGE);
      const end = Number(vma.end / PAGE);
      vmaPairs.push(first, end);
      const parts = intersectRuns(want, [first, end]);
      if (parts.length === 0) continue;
      try {
        // Registering again what is registered costs ~1 ms a VMA here. Armed by us last time and
        // still registered WP_ASYNC (the kernel says): ours, left as it is. Anything else is
        // registered (EBUSY when the task registered it with a userfaultfd of its own).
        const isOurs =
          this.hasBaseline && subtractRuns([first, end], this.armed).length === 0 && this.isRegistered(vma.start);
        if (!isOurs) sys.uffdioRegister(this.uffd, vma.start, vma.end - vma.start, UFFDIO_REGISTER_MODE_WP);
        registered = unionRuns(registered, parts);
      } catch (err) {
        // EBUSY: the task registered this VMA with its own userfaultfd. EINVAL: a VMA kind that
        // cannot be registered. ENOMEM: unmapped meanwhile (task running). All: copy it whole.
        if (!(err instanceof SyscallError)) throw err;
        const why = err.errnoCode === 'EBUSY' ? 'registered by the task itself' : err.errnoCode;
        log().debug(`Dirty memory tracker: VMA ${vma.start.toString(16)}-${vma.end.toString(16)} untracked (${why})`);
        whole = unionRuns(whole, parts);
      }
    }
    log().debug(`Dirty memory tracker: ${maps.length} VMAs registered`);
    const vmas = normalizeRuns(vmaPairs);
    // Outside any VMA: nothing there to copy, but "whole" is the honest answer.
    whole = unionRuns(whole, subtractRuns(want, vmas));
    whole = unionRuns(whole, this.hasBaseline ? subtractRuns(registered, this.armed) : registered);
    const { written, failed } = this.scanWritten(registered);
    log().debug(`Dirty memory tracker: scanned, ${written.length / 2} written runs`);
    whole = unionRuns(whole, failed);
    // Armed now: what was armed and is still mapped, minus what this pass looked at, plus what it
    // armed.
    this.armed = unionRuns(subtractRuns(intersectRuns(this.armed, vmas), want), subtractRuns(registered, failed));
    this.hasBaseline = true;
    return rangesFromRuns(unionRuns(whole, intersectRuns(written, want)));
  }

  /**
   * Whether the VMA at `addr` is registered with a WP_ASYNC userfaultfd: PAGEMAP_SCAN with
   * PM_SCAN_CHECK_WPASYNC refuses (EPERM) a VMA that is not. One page, no output.
   */
  private isRegistered(addr: bigint): boolean {
    try {
      sys.pagemapScan(
        this.pagemapFd,
        {
          start: addr,
          end: addr + PAGE,
          flags: PM_SCAN_CHECK_WPASYNC,
          categoryInverted: 0n,
          categoryMask: 0n,
          categoryAnyofMask: 0n,
          returnMask: PAGE_IS_WRITTEN,
          maxPages: 0n,
        },
        this.scanVec,
      );
      return true;
    } catch (err) {
      if (isErrno(err, 'EPERM', 'EINVAL', 'ENOMEM', 'EFAULT')) return false;
      throw err;
    }
  }

  /**
   * PAGEMAP_SCAN over each run: the written pages (re-armed), and the runs that could not be
   * scanned (to be taken whole).
   */
  private scanWritten(runs: PageRuns): { written: PageRuns; failed: PageRuns } {
    const vec = this.scanVec;
    // Regions read as u32 halves: addr = hi * 2^32 + lo is exact in a double (< 2^53), no BigInt
    // made per region (thousands of regions per iteration; BigInts are heap objects).
    const halves = new Uint32Array(vec.buffer, vec.byteOffset, vec.length * 2);
    const W = PAGE_REGION_WORDS * 2;
    const pairs: number[] = [];
    const failedPairs: number[] = [];
    for (let i = 0; i < runs.length; i += 2) {
      const end = BigInt(runs[i + 1] as number) * PAGE;
      let from = BigInt(runs[i] as number) * PAGE;
      while (from < end) {
        let res: sys.PagemapScanResult;
        try {
          res = sys.pagemapScan(
            this.pagemapFd,
            {
              start: from,
              end,
              // The last collect only reads: no page is write-protected again (markLastCollect).
              flags: this.isLastCollect ? PM_SCAN_CHECK_WPASYNC : PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
              categoryInverted: 0n,
              categoryMask: PAGE_IS_WRITTEN,
              categoryAnyofMask: 0n,
              returnMask: PAGE_IS_WRITTEN,
              maxPages: 0n,
            },
            vec,
          );
        } catch (err) {
          // EPERM: a VMA in the run is not (or no longer) registered with WP_ASYNC, e.g. it was
          // replaced while the task ran. Whatever the scan did before failing, taking the rest of
          // the run whole is safe.
          if (!isErrno(err, 'EPERM', 'EINVAL', 'ENOMEM', 'EFAULT')) throw err;
          log().debug(`Dirty memory tracker: scan of ${from.toString(16)}-${end.toString(16)}: ${describeError(err)}`);
          failedPairs.push(Number(from / PAGE), Number(end / PAGE));
          break;
        }
        for (let r = 0; r < res.nrRegions; r++) {
          const w = r * W;
          pairs.push(
            ((halves[w + 1] as number) * 0x100000000 + (halves[w] as number)) / PAGE_SIZE,
            ((halves[w + 3] as number) * 0x100000000 + (halves[w + 2] as number)) / PAGE_SIZE,
          );
        }
        if (res.walkEnd <= from) {
          failedPairs.push(Number(from / PAGE), Number(end / PAGE));
          break;
        }
        from = res.walkEnd;
      }
    }
    // Regions can overlap across calls (walk_end may be rounded down): normalise.
    return { written: normalizeRuns(pairs), failed: normalizeRuns(failedPairs) };
  }

  protected async keepBackend(): Promise<HolderRecord | null> {
    if (this.holder !== null) return this.holder;
    this.holder = await spawnHolder(this.ctx.pid, this.ctx.targetStartTime, this.uffd, this.pidfd);
    return this.holder;
  }

  protected async endBackend(): Promise<void> {
    if (this.holder !== null) await stopHolder(this.holder.pid, this.ctx.pid);
    for (const orphan of findHolders(this.ctx.pid)) await stopHolder(orphan, this.ctx.pid);
    this.holder = null;
  }

  protected closeBackend(): void {
    // Our reference last: with the holder gone, this close unregisters everything.
    for (const fd of [this.pagemapFd, this.pidfd, this.uffd]) if (fd >= 0) sys.close(fd);
    this.pagemapFd = this.pidfd = this.uffd = -1;
  }
}

/** userfaultfd created in the frozen task, duplicated here, closed there; UFFDIO_API done. */
function createInTask(pid: number, pidfd: number, injector: Injector): number {
  const uffd = userfaultfdOfTask(injector, pidfd);
  try {
    const wanted = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    const got = sys.uffdioApi(uffd, wanted).features;
    if ((got & wanted) !== wanted)
      throw new UnsupportedError(
        'uffd-wp-async',
        `Cannot track memory of task ${pid}: userfaultfd grants features 0x${got.toString(16)}, without WP_ASYNC and WP_UNPOPULATED`,
      );
    return uffd;
  } catch (err) {
    sys.close(uffd);
    throw err;
  }
}
