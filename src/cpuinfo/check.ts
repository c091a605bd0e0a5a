/**
 * Checking a CPU image (cpuinfo.img, CRIU's cpuinfo_entry) against the running CPU, by the
 * --cpu-cap modes of criu(8). Pure: the running CPU comes in as a cpuinfo_x86_entry.
 *
 * What each capability checks (as CRIU 4.2's cpu_validate_features, whose messages name no
 * feature; ours name each one):
 *   fpu  the FPU features the saved register state depends on (FPU, FXSR, OSXSAVE, XSAVES) are
 *        here; every XSAVE state component of the image is enabled here; the XSAVE area sizes
 *        (for the enabled components, and the maximum) are equal, because programs (glibc)
 *        cache the size they read at start-up.
 *   ins  every instruction-set feature of the image (INS_FEATURES) is here; this CPU may have more.
 *   cpu  every capability word is equal.
 *
 * Modes (criu(8) --cpu-cap, parsed as CRIU does): the default is fpu; each mode named adds its
 * checks to the default (`cpu` gives fpu + cpu), `^mode` removes them, `all` adds all three,
 * `none` clears them (`^none` sets them all). So `ins,^fpu` checks instructions only.
 */

import { ImageError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import type { CpuinfoX86Entry } from './collect.js';
import {
  FPU_FEATURES,
  INS_FEATURES,
  NCAPINTS,
  NCAPINTS_BY_VERSION,
  featureName,
  hasFeature,
  xfeatureName,
  type FeatureBit,
} from './features.js';

/** One kind of check --cpu-cap can ask for. */
export type CpuCap = 'fpu' | 'cpu' | 'ins';
/** The words --cpu-cap accepts (each may be preceded by '^'). */
export type CpuCapMode = 'all' | CpuCap | 'none';

const ALL_CAPS: readonly CpuCap[] = ['fpu', 'cpu', 'ins'];
/** The checks when --cpu-cap is not given (criu(8): fpu). */
export const DEFAULT_CPU_CAPS: readonly CpuCap[] = ['fpu'];

/**
 * The checks a --cpu-cap value asks for: `modes` is Options.cpuCap (["fpu"] by default, ["all"]
 * for a bare --cpu-cap) or one comma-separated string. Throws RangeError for an unknown word
 * (options.ts has rejected those already).
 */
export function resolveCpuCaps(modes: readonly string[] | string): ReadonlySet<CpuCap> {
  const words = (typeof modes === 'string' ? [modes] : modes).flatMap((m) => m.split(',')).filter((m) => m !== '');
  const caps = new Set<CpuCap>(DEFAULT_CPU_CAPS);
  for (const word of words) {
    const isInverse = word.startsWith('^');
    const mode = isInverse ? word.slice(1) : word;
    if (mode === 'none') {
      caps.clear();
      if (isInverse) ALL_CAPS.forEach((c) => caps.add(c));
      continue;
    }
    const named: readonly CpuCap[] =
      mode === 'all' ? ALL_CAPS : mode === 'fpu' || mode === 'cpu' || mode === 'ins' ? [mode] : [];
    if (named.length === 0) throw new RangeError(`Unknown --cpu-cap mode "${word}"`);
    for (const c of named) {
      if (isInverse) caps.delete(c);
      else caps.add(c);
    }
  }
  return caps;
}

/** A short text of a check set for messages: "fpu,ins", or "none". */
export function formatCpuCaps(caps: ReadonlySet<CpuCap>): string {
  const list = ALL_CAPS.filter((c) => caps.has(c));
  return list.length === 0 ? 'none' : list.join(',');
}

function num(e: ImageEntry, field: string): number | undefined {
  const v = e[field];
  return typeof v === 'number' ? v : undefined;
}

/**
 * The x86 entry of a cpuinfo_entry, validated as CRIU does (one x86 entry, a known vendor, as many
 * capability words as its capability_ver says). Throws ImageError naming `file`.
 */
export function imageX86Entry(image: ImageEntry, file = 'cpuinfo.img'): CpuinfoX86Entry {
  const list = image['x86_entry'];
  const x86 = Array.isArray(list) ? (list as readonly ImageEntry[]) : [];
  if (x86.length !== 1) {
    const other = Array.isArray(image['ppc64_entry']) ? 'ppc64' : Array.isArray(image['s390_entry']) ? 's390' : '';
    const why = other !== '' ? `it describes a ${other} CPU` : `it has ${x86.length} x86 CPU entries`;
    throw new ImageError(file, `expected one x86 CPU entry: ${why}`);
  }
  const e = x86[0] as ImageEntry;
  const vendor = num(e, 'vendor_id');
  if (vendor !== 1 && vendor !== 2) throw new ImageError(file, `unknown CPU vendor ${String(vendor)}`);
  const ver = num(e, 'capability_ver') ?? 0;
  const want = NCAPINTS_BY_VERSION.get(ver);
  if (want === undefined) throw new ImageError(file, `unknown capability version ${ver}`);
  const capability = Array.isArray(e['capability']) ? (e['capability'] as readonly number[]).map((w) => w >>> 0) : [];
  if (capability.length !== want) {
    throw new ImageError(file, `capability version ${ver} has ${want} words, the image ${capability.length}`);
  }
  const out: CpuinfoX86Entry = {
    vendor_id: vendor,
    cpu_family: num(e, 'cpu_family') ?? 0,
    model: num(e, 'model') ?? 0,
    stepping: num(e, 'stepping') ?? 0,
    capability_ver: ver,
    capability,
  };
  if (typeof e['model_id'] === 'string') out.model_id = e['model_id'];
  if (typeof e['xfeatures_mask'] === 'bigint') out.xfeatures_mask = e['xfeatures_mask'];
  const size = num(e, 'xsave_size');
  if (size !== undefined) out.xsave_size = size;
  const sizeMax = num(e, 'xsave_size_max');
  if (sizeMax !== undefined) out.xsave_size_max = sizeMax;
  return out;
}

const needs = (bit: FeatureBit): string => `the image needs ${featureName(bit)}, this CPU lacks it`;

function checkFpu(img: CpuinfoX86Entry, cur: CpuinfoX86Entry, out: string[]): void {
  for (const bit of FPU_FEATURES) {
    if (hasFeature(img.capability, bit) && !hasFeature(cur.capability, bit)) out.push(needs(bit));
  }
  // Older images lack these fields: CRIU then takes the running CPU's, and so do we.
  const extra = (img.xfeatures_mask ?? cur.xfeatures_mask ?? 0n) & ~(cur.xfeatures_mask ?? 0n);
  for (let i = 0; i < 64; i++) {
    if ((extra >> BigInt(i)) & 1n) {
      out.push(`the image needs the ${xfeatureName(i)} state (XSAVE component ${i}), this CPU does not enable it`);
    }
  }
  const size = img.xsave_size ?? cur.xsave_size ?? 0;
  if (size !== (cur.xsave_size ?? 0)) {
    out.push(`the image's XSAVE area is ${size} bytes, this CPU's ${cur.xsave_size ?? 0}: they must be equal`);
  }
  const sizeMax = img.xsave_size_max ?? cur.xsave_size_max ?? 0;
  if (sizeMax !== (cur.xsave_size_max ?? 0)) {
    out.push(
      `the image's largest XSAVE area is ${sizeMax} bytes, this CPU's ${cur.xsave_size_max ?? 0}: they must be equal`,
    );
  }
}

function checkIns(img: CpuinfoX86Entry, cur: CpuinfoX86Entry, out: string[]): void {
  for (const bit of INS_FEATURES) {
    if (hasFeature(img.capability, bit) && !hasFeature(cur.capability, bit)) out.push(needs(bit));
  }
}

function checkCpu(img: CpuinfoX86Entry, cur: CpuinfoX86Entry, out: string[]): void {
  for (let bit = 0; bit < NCAPINTS * 32; bit++) {
    const inImage = hasFeature(img.capability, bit);
    const here = hasFeature(cur.capability, bit);
    if (inImage && !here) out.push(needs(bit));
    else if (here && !inImage) out.push(`this CPU has ${featureName(bit)}, the image's CPU did not`);
  }
}

/**
 * Compare the CPU image entry `image` (a cpuinfo_entry, as read from cpuinfo.img) with `current`
 * (default: the running CPU) under the --cpu-cap `modes`. Returns the mismatches, one readable
 * sentence each ("the image needs AVX512F, this CPU lacks it"); empty when compatible. A
 * malformed image throws ImageError (naming `file`), unless the modes check nothing.
 */
export function compareCpuinfo(
  image: ImageEntry,
  modes: readonly string[] | string,
  current: CpuinfoX86Entry,
  file = 'cpuinfo.img',
): string[] {
  const caps = resolveCpuCaps(modes);
  if (caps.size === 0) return [];
  const img = imageX86Entry(image, file);
  if (img.capability_ver === 1) {
    // Version 1 lacks the later words: take them from this CPU (CRIU's img_to_cpuinfo).
    const v1 = img.capability.length;
    img.capability = [...img.capability, ...current.capability.slice(v1, NCAPINTS)];
  }
  const out: string[] = [];
  if (caps.has('fpu')) checkFpu(img, current, out);
  if (caps.has('ins')) checkIns(img, current, out);
  if (caps.has('cpu')) checkCpu(img, current, out);
  return [...new Set(out)];
}
