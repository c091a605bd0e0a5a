/**
 * `criu check`: run the kernel-feature probes (src/kerndat) and report. One line per feature on
 * stdout, the memory tracker pre-dump will use, then `Looks good.` (exit 0) when everything dump
 * and restore need is there; otherwise one `Error (criu): ...` line per missing feature on stderr
 * and exit 1. `--all` also lists the optional features.
 *
 * `--feature NAME`, as CRIU's: only whether that one works here, `NAME is supported` (exit 0) or an
 * error line (exit 1); `--feature list` names them. The names are CRIU's, for the features
 * criu-ts has an answer to (tools such as LXC ask `mem_dirty_track` before iterating); any other
 * name is "Unknown feature", as CRIU answers a name it does not know.
 */

import { describeError } from '../errors.js';
import {
  chooseTracker,
  describeTracker,
  missingRequired,
  reprobeKernel,
  type Kerndat,
  type ProbeResult,
} from '../kerndat/index.js';
import { log } from '../log.js';
import type { CliIo } from './commands.js';
import type { Options } from './options.js';
import { ERROR_PREFIX } from './errors-output.js';

function line(p: ProbeResult): string {
  const verdict = p.isOk ? 'yes' : p.isRequired ? 'NO' : 'no';
  return `${p.title}: ${verdict}${p.detail === '' ? '' : ` (${p.detail})`}\n`;
}

/** The report of `check` for a set of probe results (pure: used by tests too). */
export function formatCheck(
  kd: Kerndat,
  opts: Pick<Options, 'all' | 'tracker'>,
): { stdout: string; stderr: string; isOk: boolean } {
  let stdout = '';
  let stderr = '';
  for (const p of kd.probes) {
    if (p.isRequired || opts.all) stdout += line(p);
  }
  let isOk = true;
  try {
    stdout += `Memory tracker: ${describeTracker(chooseTracker(opts.tracker, kd))}\n`;
  } catch (err) {
    stderr += `${ERROR_PREFIX} ${describeError(err)}\n`;
    isOk = false;
  }
  const missing = missingRequired(kd);
  for (const p of missing) stderr += `${ERROR_PREFIX} missing kernel feature: ${p.title}: ${p.detail}\n`;
  if (missing.length > 0) isOk = false;
  if (isOk) stdout += 'Looks good.\n';
  return { stdout, stderr, isOk };
}

/** Each feature `--feature` knows: why it does not work here, or null when it does. */
const FEATURES: Record<string, (kd: Kerndat) => string | null> = {
  mem_dirty_track: (kd) =>
    chooseTracker('auto', kd) !== 'none'
      ? null
      : 'no dirty-memory tracker works here (userfaultfd WP_ASYNC + PAGEMAP_SCAN, soft-dirty): every pre-dump copies all memory',
  clone3_set_tid: (kd) =>
    kd.hasClone3SetTid ? null : (kd.probes.find((p) => p.id === 'clone3-set-tid')?.detail ?? 'clone3 set_tid fails'),
  // RPC's pidfd_store_sk: pidfd_open and pidfd_getfd (src/dump/pidfd-store.ts).
  pidfd_store: (kd) =>
    kd.hasPidfd ? null : (kd.probes.find((p) => p.id === 'pidfd')?.detail ?? 'pidfd_open or pidfd_getfd fails'),
};

/** The report of `check --feature name` (pure: used by tests too); `list` needs no kerndat. */
export function formatFeature(kd: Kerndat | null, name: string): { stdout: string; stderr: string; isOk: boolean } {
  if (name === 'list') return { stdout: `${Object.keys(FEATURES).join(' ')}\n`, stderr: '', isOk: true };
  const check = FEATURES[name];
  if (check === undefined || kd === null)
    return { stdout: '', stderr: `${ERROR_PREFIX} Unknown feature ${name}\n`, isOk: false };
  const why = check(kd);
  if (why === null) return { stdout: `${name} is supported\n`, stderr: '', isOk: true };
  return { stdout: '', stderr: `${ERROR_PREFIX} ${name} is not supported: ${why}\n`, isOk: false };
}

export function runCheck(opts: Options, io: CliIo): Promise<number> {
  const feature = opts.feature;
  const isKnown = feature !== undefined && Object.hasOwn(FEATURES, feature);
  // Probed only when the answer needs it: always afresh, and the cache file with it.
  const kd = feature === undefined || isKnown ? reprobeKernel() : null;
  let report: { stdout: string; stderr: string; isOk: boolean };
  if (feature !== undefined) report = formatFeature(kd, feature);
  else {
    for (const p of (kd as Kerndat).probes) log().info(`check: ${line(p).trimEnd()}`);
    report = formatCheck(kd as Kerndat, opts);
  }
  if (report.stdout !== '') io.stdout(report.stdout);
  if (report.stderr !== '') io.stderr(report.stderr);
  return Promise.resolve(report.isOk ? 0 : 1);
}
