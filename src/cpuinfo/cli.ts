/**
 * `criu cpuinfo dump` and `criu cpuinfo check` (-D DIR, --cpu-cap). As CRIU's, both are silent
 * when they succeed (exit 0), so scripts test the exit code:
 *
 *   criu cpuinfo dump -D DIR     write DIR/cpuinfo.img describing this CPU
 *   criu cpuinfo check -D DIR    exit 0 when this CPU can run what DIR/cpuinfo.img's CPU ran;
 *                                else exit 1 with one line naming the mismatches
 */

import type { CliIo } from '../cli/commands.js';
import type { Options } from '../cli/options.js';
import { ERROR_PREFIX } from '../cli/errors-output.js';
import { log } from '../log.js';
import { formatCpuCaps, resolveCpuCaps } from './check.js';
import { CPUINFO_FILE, checkCpuinfoDir, dumpCpuinfo } from './index.js';

/** How many mismatches the one error line spells out; the log has them all. */
const SHOWN_MISMATCHES = 3;

export async function runCpuinfoDump(opts: Options, _io: CliIo): Promise<number> {
  await dumpCpuinfo(opts.imagesDir);
  log().info(`cpuinfo dump: wrote ${opts.imagesDir}/${CPUINFO_FILE}`);
  return 0;
}

/** The error line of a failed check (pure: used by tests too). */
export function formatCpuinfoMismatch(mismatches: readonly string[], caps: string): string {
  const shown = mismatches.slice(0, SHOWN_MISMATCHES).join('; ');
  const more = mismatches.length - SHOWN_MISMATCHES;
  return `${ERROR_PREFIX} CPU is not compatible with the image (--cpu-cap=${caps}): ${shown}${more > 0 ? `; and ${more} more` : ''}`;
}

export async function runCpuinfoCheck(opts: Options, io: CliIo): Promise<number> {
  const caps = formatCpuCaps(resolveCpuCaps(opts.cpuCap));
  const mismatches = await checkCpuinfoDir(opts.imagesDir, opts.cpuCap);
  for (const m of mismatches) log().info(`cpuinfo check: ${m}`);
  if (mismatches.length === 0) {
    log().info(`cpuinfo check: this CPU is compatible with the image (--cpu-cap=${caps})`);
    return 0;
  }
  io.stderr(`${formatCpuinfoMismatch(mismatches, caps)}\n`);
  return 1;
}
