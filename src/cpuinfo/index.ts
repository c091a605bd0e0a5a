/**
 * CPU information images (cpuinfo.img, CPUINFO, message cpuinfo_entry): `criu cpuinfo dump` and
 * `criu cpuinfo check`, and the --cpu-cap check restore makes. Reads the CPU with the cpuid and
 * xgetbv instructions (src/sys/native); writes and reads the image with src/images.
 *
 *   await dumpCpuinfo(dir);                              // dump: DIR/cpuinfo.img
 *   const problems = await checkCpuinfoDir(dir, opts.cpuCap);   // restore: [] when compatible
 */

import { join } from 'node:path';
import { ImageError, UnsupportedError } from '../errors.js';
import { imageFileName, readEntries, writeImage, type ImageEntry } from '../images/index.js';
import * as sys from '../sys/native.js';
import { compareCpuinfo, resolveCpuCaps } from './check.js';
import { CPU_VENDOR, collectX86, vendorString, type CpuSource, type CpuinfoX86Entry } from './collect.js';

export { CPU_VENDOR, collectX86, type CpuSource, type CpuinfoX86Entry } from './collect.js';
export {
  DEFAULT_CPU_CAPS,
  compareCpuinfo,
  formatCpuCaps,
  imageX86Entry,
  resolveCpuCaps,
  type CpuCap,
  type CpuCapMode,
} from './check.js';
export { featureBit, featureName, xfeatureName, INS_FEATURES, FPU_FEATURES, X86_FEATURE } from './features.js';

/** The running CPU, through the native cpuid and xgetbv. */
export const NATIVE_CPU: CpuSource = { cpuid: sys.cpuid, xgetbv: sys.xgetbv };

/** The file name of the CPU image in an images directory. */
export const CPUINFO_FILE = imageFileName('CPUINFO');

/**
 * The running CPU as a cpuinfo_x86_entry. Throws UnsupportedError on a CPU of another vendor than
 * Intel or AMD (CRIU's images have no way to say what it is).
 */
export function readCpuinfoX86(src: CpuSource = NATIVE_CPU): CpuinfoX86Entry {
  const x86 = collectX86(src);
  if (x86.vendor_id === CPU_VENDOR.UNKNOWN) {
    throw new UnsupportedError(
      'cpu-vendor',
      `Cannot describe this CPU: vendor "${vendorString(src)}" is not supported (only Intel and AMD are)`,
    );
  }
  return x86;
}

/** The running CPU as the one entry of cpuinfo.img (a cpuinfo_entry). */
export function readCpuinfoEntry(src: CpuSource = NATIVE_CPU): ImageEntry {
  return { x86_entry: [readCpuinfoX86(src)] };
}

/** Write the running CPU's cpuinfo.img into `dir` (atomically, mode 0600). Returns the entry. */
export async function dumpCpuinfo(dir: string): Promise<ImageEntry> {
  const entry = readCpuinfoEntry();
  await writeImage(join(dir, CPUINFO_FILE), 'CPUINFO', [entry]);
  return entry;
}

/**
 * The mismatches between the CPU image entry `entry` (a cpuinfo_entry) and the running CPU under
 * the --cpu-cap `modes` (Options.cpuCap); empty when compatible. See check.ts for what each mode
 * compares.
 */
export function checkCpuinfo(entry: ImageEntry, modes: readonly string[] | string): string[] {
  return compareCpuinfo(entry, modes, readCpuinfoX86());
}

/**
 * checkCpuinfo on `dir`/cpuinfo.img. A missing, empty or malformed image throws ImageError (as in
 * CRIU, restore then stops) unless the modes check nothing, in which case the image is not read.
 */
export async function checkCpuinfoDir(dir: string, modes: readonly string[] | string): Promise<string[]> {
  const path = join(dir, CPUINFO_FILE);
  if (resolveCpuCaps(modes).size === 0) return [];
  const entries = await readEntries(path, 'CPUINFO');
  const first = entries[0];
  if (first === undefined) throw new ImageError(path, 'the image has no CPU entry');
  return compareCpuinfo(first, modes, readCpuinfoX86(), path);
}
