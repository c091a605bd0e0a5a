/**
 * `criu check`: run the kernel-feature probes (src/kerndat) and report. One line per feature on
 * stdout, the memory tracker pre-dump will use, then `Looks good.` (exit 0) when everything dump
 * and restore need is there; otherwise one `Error (criu): ...` line per missing feature on stderr
 * and exit 1. `--all` also lists the optional features.
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

export function runCheck(opts: Options, io: CliIo): Promise<number> {
  const kd = reprobeKernel(); // always afresh, and the cache file with it
  for (const p of kd.probes) log().info(`check: ${line(p).trimEnd()}`);
  const report = formatCheck(kd, opts);
  io.stdout(report.stdout);
  if (report.stderr !== '') io.stderr(report.stderr);
  return Promise.resolve(report.isOk ? 0 : 1);
}
