/**
 * The dirty-memory trackers pre-dump can use, and how one is chosen from the kernel's features.
 * Kept apart from the probes (no native import) so the CLI can name them without loading the addon.
 *
 * Order of preference, when `--tracker auto`:
 *   1. uffd: userfaultfd write-protection in async mode (UFFD_FEATURE_WP_ASYNC, kernel 6.7+) read
 *      and re-armed by the PAGEMAP_SCAN ioctl. Preferred because one ioctl returns the written
 *      ranges *and* write-protects them again atomically (soft-dirty needs a pagemap read and a
 *      separate clear_refs, which clears the whole mm and races with writes in between); it works
 *      per range, so only the VMAs we register cost anything; it answers with ranges rather than
 *      one 8-byte pagemap entry per page; and it is not subject to soft-dirty's false positives
 *      after VMA merges, mprotect or THP splits. It also exists where CONFIG_MEM_SOFT_DIRTY does
 *      not (as on this project's kernel).
 *   2. soft-dirty: clear_refs "4" plus pagemap bit 55, CRIU's classic tracker, for kernels older
 *      than 6.7 that have CONFIG_MEM_SOFT_DIRTY.
 *   3. none: every pre-dump copies all memory (still correct, just not incremental).
 */

import { UnsupportedError } from '../errors.js';

export const TRACKER_KINDS = ['uffd', 'soft-dirty', 'none'] as const;
/** A dirty-memory tracker. */
export type TrackerKind = (typeof TRACKER_KINDS)[number];
/** What --tracker accepts: a kind, or auto for the best available. */
export type TrackerChoice = TrackerKind | 'auto';
export const TRACKER_CHOICES: readonly TrackerChoice[] = ['auto', ...TRACKER_KINDS];

/** The kernel facts a tracker choice depends on (a subset of Kerndat). */
export interface TrackerFeatures {
  hasUffdWpAsync: boolean;
  /** UFFD_FEATURE_WP_UNPOPULATED, which the uffd tracker asks for (src/mem/track/uffd.ts). */
  hasUffdWpUnpopulated: boolean;
  hasPagemapScan: boolean;
  hasSoftDirty: boolean;
}

/** How `criu check` names a tracker. */
export function describeTracker(kind: TrackerKind): string {
  switch (kind) {
    case 'uffd':
      return 'uffd-wp (userfaultfd WP_ASYNC + PAGEMAP_SCAN)';
    case 'soft-dirty':
      return 'soft-dirty (clear_refs + pagemap bit 55)';
    case 'none':
      return 'none (every pre-dump copies all memory)';
  }
}

/** Why a tracker cannot be used here, or null when it can. */
export function trackerUnavailableReason(kind: TrackerKind, f: TrackerFeatures): string | null {
  switch (kind) {
    case 'uffd':
      if (!f.hasUffdWpAsync) return 'userfaultfd lacks UFFD_FEATURE_WP_ASYNC (kernel 6.7+, CONFIG_PTE_MARKER_UFFD_WP)';
      if (!f.hasUffdWpUnpopulated) return 'userfaultfd lacks UFFD_FEATURE_WP_UNPOPULATED (kernel 6.7+)';
      if (!f.hasPagemapScan) return 'the PAGEMAP_SCAN ioctl is missing (kernel 6.7+)';
      return null;
    case 'soft-dirty':
      return f.hasSoftDirty ? null : 'soft-dirty bits are not tracked (CONFIG_MEM_SOFT_DIRTY is off)';
    case 'none':
      return null;
  }
}

/**
 * The tracker pre-dump will use: the forced one (UnsupportedError when this kernel cannot do it),
 * or with `auto` the first available of uffd, soft-dirty, none.
 */
export function pickTracker(f: TrackerFeatures, choice: TrackerChoice = 'auto'): TrackerKind {
  if (choice !== 'auto') {
    const reason = trackerUnavailableReason(choice, f);
    if (reason !== null)
      throw new UnsupportedError(`tracker-${choice}`, `Cannot use the ${choice} memory tracker: ${reason}`);
    return choice;
  }
  for (const kind of TRACKER_KINDS) if (trackerUnavailableReason(kind, f) === null) return kind;
  return 'none';
}
