/**
 * /proc/PID/smaps: the maps line of every VMA followed by its memory counters and flags:
 *
 *   556f0fd78000-556f0fe39000 r-xp 0002f000 fe:00 260104     /usr/bin/bash   <- as in maps
 *   Size:                772 kB
 *   Rss:                 608 kB                                             <- "Key: N kB" lines
 *   ...
 *   THPeligible:           0
 *   VmFlags: rd ex mr mw me
 *
 * Because each entry starts with its maps line, one read of smaps gives the maps entries and the
 * counters of the same instant, in the same (ascending address) order: no pairing with a separate
 * read of maps, which could have changed in between.
 *
 * Counters are converted from kB to bytes. Keys come and go with kernel versions (Pss_Dirty 6.0,
 * KSM 6.7, FilePmdMapped 5.4, ProtectionKey only with x86 pkeys): a known key missing reads 0,
 * unknown keys are ignored.
 *
 * VmFlags (fs/proc/task_mmu.c, show_smap_vma_flags) are two-letter mnemonics, an open set:
 *   rd wr ex sh  read, write, exec, shared      mr mw me ms  may read/write/exec/share
 *   gd  grows down (stack)     pf  PFN map      lo  mlocked             io  I/O memory
 *   sr rr  sequential/random read advice        dc  don't copy on fork  de  don't expand (mremap)
 *   ac  accountable            nr  no swap reserve                      ht  hugetlb
 *   sf  synchronous page faults                 ar  arch specific       wf  wipe on fork
 *   dd  don't dump             sd  soft dirty   mm  mixed map           hg nh  THP advised / not
 *   mg  KSM mergeable          um uw  userfaultfd missing / wp          ui  userfaultfd minor
 *   ss  shadow stack           sl  sealed       bt mt  arm64 BTI / MTE  dw  deny write (< 5.15)
 * The Sets are shared between entries with identical flags (they are read-only): thousands of
 * VMAs usually have a dozen distinct flag strings, and sharing avoids one Set per VMA.
 */

import { parseMaps, type MapsEntry } from './maps.js';
import { readProcText, taskDir } from './read.js';

/** The "N kB" counters kept, by their kernel names. */
export const SMAPS_SIZE_KEYS = [
  'Size',
  'KernelPageSize',
  'MMUPageSize',
  'Rss',
  'Pss',
  'Pss_Dirty',
  'Shared_Clean',
  'Shared_Dirty',
  'Private_Clean',
  'Private_Dirty',
  'Referenced',
  'Anonymous',
  'KSM',
  'LazyFree',
  'AnonHugePages',
  'ShmemPmdMapped',
  'FilePmdMapped',
  'Shared_Hugetlb',
  'Private_Hugetlb',
  'Swap',
  'SwapPss',
  'Locked',
] as const;

export type SmapsSizeKey = (typeof SMAPS_SIZE_KEYS)[number];

export interface SmapsEntry {
  /** The maps line of the VMA (start, end, perms, offset, device, inode, path). */
  map: MapsEntry;
  start: bigint;
  end: bigint;
  /** Two-letter VmFlags mnemonics; shared between entries, never modify. */
  vmFlags: ReadonlySet<string>;
  /** The counters, in bytes. */
  bytes: Readonly<Record<SmapsSizeKey, number>>;
  /** THPeligible: 1 when the VMA may get transparent huge pages. */
  isThpEligible: boolean;
  /** ProtectionKey (x86 memory protection keys), when the kernel shows it. */
  protectionKey?: number;
}

/** Key lines handled besides the sizes, by their index past SMAPS_SIZE_KEYS. */
const KEY_THP = SMAPS_SIZE_KEYS.length;
const KEY_PKEY = KEY_THP + 1;
const KEY_VMFLAGS = KEY_THP + 2;
const ALL_KEYS: readonly string[] = [...SMAPS_SIZE_KEYS, 'THPeligible', 'ProtectionKey', 'VmFlags'];

/**
 * Keys by (first letter, length), so a line's key is found with startsWith at its offset and
 * never sliced out of the text: 100 000+ lines for a few thousand VMAs.
 */
const KEYS_BY_SHAPE = new Map<number, { key: string; index: number }[]>();
ALL_KEYS.forEach((key, index) => {
  const shape = key.charCodeAt(0) * 64 + key.length;
  const list = KEYS_BY_SHAPE.get(shape) ?? [];
  list.push({ key, index });
  KEYS_BY_SHAPE.set(shape, list);
});

/** The decimal number after `from` on the line (leading spaces skipped, stops at the first non-digit). */
function decimalAt(text: string, from: number, eol: number): number {
  let i = from;
  while (i < eol && text.charCodeAt(i) === 0x20) i++;
  let value = 0;
  for (; i < eol; i++) {
    const d = text.charCodeAt(i) - 0x30;
    if (d < 0 || d > 9) break;
    value = value * 10 + d;
  }
  return value;
}

/** The sizes object, built as one literal so every entry shares one hidden class. */
function sizesFrom(v: Float64Array): Record<SmapsSizeKey, number> {
  return {
    Size: v[0] as number,
    KernelPageSize: v[1] as number,
    MMUPageSize: v[2] as number,
    Rss: v[3] as number,
    Pss: v[4] as number,
    Pss_Dirty: v[5] as number,
    Shared_Clean: v[6] as number,
    Shared_Dirty: v[7] as number,
    Private_Clean: v[8] as number,
    Private_Dirty: v[9] as number,
    Referenced: v[10] as number,
    Anonymous: v[11] as number,
    KSM: v[12] as number,
    LazyFree: v[13] as number,
    AnonHugePages: v[14] as number,
    ShmemPmdMapped: v[15] as number,
    FilePmdMapped: v[16] as number,
    Shared_Hugetlb: v[17] as number,
    Private_Hugetlb: v[18] as number,
    Swap: v[19] as number,
    SwapPss: v[20] as number,
    Locked: v[21] as number,
  };
}

const EMPTY: ReadonlySet<string> = new Set();
const ZERO_SIZES = sizesFrom(new Float64Array(SMAPS_SIZE_KEYS.length));
// sizesFrom must list the keys in SMAPS_SIZE_KEYS order: a bug otherwise, caught at load.
if (Object.keys(ZERO_SIZES).join() !== SMAPS_SIZE_KEYS.join()) throw new Error('smaps: sizesFrom out of order');

export function parseSmaps(text: string): SmapsEntry[] {
  const entries: SmapsEntry[] = [];
  const flagSets = new Map<string, ReadonlySet<string>>();
  const sizes = new Float64Array(SMAPS_SIZE_KEYS.length);
  let cur: SmapsEntry | null = null;
  const finish = (e: SmapsEntry): void => {
    e.bytes = sizesFrom(sizes);
    sizes.fill(0);
  };
  let pos = 0;
  while (pos < text.length) {
    let eol = text.indexOf('\n', pos);
    if (eol < 0) eol = text.length;
    const first = text.charCodeAt(pos);
    if (eol === pos) {
      // empty line
    } else if (first >= 0x41 /* A */ && first <= 0x5a /* Z */) {
      if (cur === null) throw new Error(`Cannot parse smaps: a counter before any VMA at offset ${pos}`);
      const colon = text.indexOf(':', pos);
      if (colon < 0 || colon > eol) throw new Error(`Cannot parse smaps line: ${JSON.stringify(text.slice(pos, eol))}`);
      let index = -1;
      for (const cand of KEYS_BY_SHAPE.get(first * 64 + (colon - pos)) ?? []) {
        if (text.startsWith(cand.key, pos)) {
          index = cand.index;
          break;
        }
      }
      if (index >= 0 && index < KEY_THP) sizes[index] = decimalAt(text, colon + 1, eol) * 1024;
      else if (index === KEY_THP) cur.isThpEligible = decimalAt(text, colon + 1, eol) === 1;
      else if (index === KEY_PKEY) cur.protectionKey = decimalAt(text, colon + 1, eol);
      else if (index === KEY_VMFLAGS) {
        const raw = text.slice(colon + 1, eol).trim();
        let set = flagSets.get(raw);
        if (set === undefined) {
          set = new Set(raw === '' ? [] : raw.split(' '));
          flagSets.set(raw, set);
        }
        cur.vmFlags = set;
      }
    } else {
      if (cur !== null) finish(cur);
      const map = parseMaps(text.slice(pos, eol))[0];
      if (map === undefined) throw new Error(`Cannot parse smaps line: ${JSON.stringify(text.slice(pos, eol))}`);
      cur = { map, start: map.start, end: map.end, vmFlags: EMPTY, bytes: ZERO_SIZES, isThpEligible: false };
      entries.push(cur);
    }
    pos = eol + 1;
  }
  if (cur !== null) finish(cur);
  return entries;
}

/** The smaps of a task, or null when it is gone. */
export function readSmaps(pid: number): SmapsEntry[] | null {
  const text = readSmapsText(pid);
  return text === null ? null : parseSmaps(text);
}

/** The text of a task's smaps (parse it with parseSmaps), or null when the task is gone. */
export function readSmapsText(pid: number): string | null {
  return readProcText(`${taskDir(pid)}/smaps`);
}

/**
 * The maps lines of an smaps text: its entries' first lines, which the kernel prints with the
 * same function as /proc/PID/maps (show_map_vma), so for the same VMAs this equals the text of
 * maps byte for byte. Counter and VmFlags lines start with an upper-case key, maps lines with a
 * hex digit in lower case.
 */
export function mapsTextOf(smapsText: string): string {
  const lines: string[] = [];
  let pos = 0;
  while (pos < smapsText.length) {
    let eol = smapsText.indexOf('\n', pos);
    if (eol < 0) eol = smapsText.length;
    const first = smapsText.charCodeAt(pos);
    if (eol > pos && !(first >= 0x41 && first <= 0x5a)) lines.push(smapsText.slice(pos, eol + 1));
    pos = eol + 1;
  }
  return lines.join('');
}
