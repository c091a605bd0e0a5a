/**
 * kerndat: what this kernel (and this process's privileges) can do, probed once and cached. The
 * one place the rest of criu-ts asks about kernel features:
 *
 *   if (kerndat().hasPagemapScan) ...
 *   const tracker = chooseTracker(opts.tracker);
 *
 * `criu check` prints the same probes (see src/cli/check.ts). The probes and the kernel interfaces
 * they use are in probes.ts; each runs in a few milliseconds, cleans up after itself and has a
 * timeout.
 */

import { describeError } from '../errors.js';
import { log } from '../log.js';
import { currentCacheKey, kerndatCachePath, loadKerndat, storeKerndat } from './cache.js';
import type { Capabilities } from './caps.js';
import {
  ProbeChild,
  probeCapabilities,
  probeClone3SetTid,
  probeNamespaces,
  probePagemapScan,
  probePidfd,
  probeProcessVmReadv,
  probePtrace,
  probeSoftDirty,
  probeTcpRepair,
  probeUffd,
  probeVdso,
  type ProbeId,
  type ProbeResult,
} from './probes.js';
import { pickTracker, type TrackerChoice, type TrackerKind } from './tracker.js';
import type { VdsoLayout } from './vdso.js';

export type { ProbeId, ProbeResult } from './probes.js';
export type { Capabilities } from './caps.js';
export type { VdsoArea, VdsoLayout } from './vdso.js';
export { formatVdsoLayout, parseVdsoLayout, vdsoMismatch } from './vdso.js';
export {
  describeTracker,
  pickTracker,
  trackerUnavailableReason,
  TRACKER_CHOICES,
  TRACKER_KINDS,
  type TrackerChoice,
  type TrackerKind,
} from './tracker.js';

export interface Kerndat {
  hasPtraceSeize: boolean;
  hasProcessVmReadv: boolean;
  /** pidfd_open and pidfd_getfd both work. */
  hasPidfd: boolean;
  hasClone3SetTid: boolean;
  hasPagemapScan: boolean;
  /** Features UFFDIO_API offers, or null when userfaultfd cannot be used. */
  uffdFeatures: bigint | null;
  hasUffdWpAsync: boolean;
  hasUffdWpUnpopulated: boolean;
  hasSoftDirty: boolean;
  hasTcpRepair: boolean;
  /** This kernel's vDSO layout, or null when /proc/self/maps could not be read. */
  vdso: VdsoLayout | null;
  caps: Capabilities | null;
  /** Namespace kinds present in /proc/self/ns. */
  namespaces: readonly string[];
  /** Every probe, in `criu check` order: required ones first. */
  probes: readonly ProbeResult[];
}

/** Run every probe now (uncached). Never throws: a failed probe is a `false`. */
export function probeKernel(): Kerndat {
  let child: ProbeChild | null = null;
  let childError = '';
  try {
    child = new ProbeChild();
  } catch (err) {
    childError = describeError(err);
  }
  const withChild = (
    id: ProbeId,
    title: string,
    isRequired: boolean,
    probe: (c: ProbeChild) => ProbeResult,
  ): ProbeResult =>
    child === null
      ? { id, title, isRequired, isOk: false, detail: `cannot start a probe child: ${childError}` }
      : probe(child);

  let ptrace: ProbeResult, vmReadv: ProbeResult, pagemapScan: ProbeResult, softDirty: ProbeResult;
  try {
    ptrace = withChild('ptrace', 'ptrace (PTRACE_SEIZE, PTRACE_INTERRUPT)', true, probePtrace);
    vmReadv = withChild('process-vm-readv', 'process_vm_readv', true, probeProcessVmReadv);
    pagemapScan = withChild('pagemap-scan', 'PAGEMAP_SCAN ioctl', false, probePagemapScan);
    // Last: it rewrites the child's soft-dirty state.
    softDirty = withChild('soft-dirty', 'soft-dirty tracking', false, probeSoftDirty);
  } finally {
    child?.kill();
  }
  const pidfd = probePidfd();
  const clone3 = probeClone3SetTid();
  const caps = probeCapabilities();
  const vdso = probeVdso();
  const ns = probeNamespaces();
  const uffd = probeUffd();
  const tcpRepair = probeTcpRepair();

  const probes: ProbeResult[] = [
    ptrace,
    vmReadv,
    pidfd,
    clone3,
    caps.required,
    strip(vdso),
    strip(ns),
    pagemapScan,
    strip(uffd),
    softDirty,
    caps.sysResource,
    tcpRepair,
  ];
  return {
    hasPtraceSeize: ptrace.isOk,
    hasProcessVmReadv: vmReadv.isOk,
    hasPidfd: pidfd.isOk,
    hasClone3SetTid: clone3.isOk,
    hasPagemapScan: pagemapScan.isOk,
    uffdFeatures: uffd.features,
    hasUffdWpAsync: uffd.hasWpAsync,
    hasUffdWpUnpopulated: uffd.hasWpUnpopulated,
    hasSoftDirty: softDirty.isOk,
    hasTcpRepair: tcpRepair.isOk,
    vdso: vdso.layout,
    caps: caps.caps,
    namespaces: ns.present,
    probes,
  };
}

/** Keep only the ProbeResult fields (the probe-specific extras live on Kerndat). */
function strip(p: ProbeResult): ProbeResult {
  return { id: p.id, title: p.title, isRequired: p.isRequired, isOk: p.isOk, detail: p.detail };
}

let cached: Kerndat | null = null;

/**
 * The kernel's features: probed on first use and kept for the life of the process, and in the
 * kerndat cache file for the later commands of this boot (cache.ts).
 */
export function kerndat(): Kerndat {
  if (cached !== null) return cached;
  const file = kerndatCachePath();
  const key = file === null ? null : currentCacheKey();
  const kept = file === null || key === null ? null : loadKerndat(file, key);
  if (kept === null) return reprobeKernel();
  log().debug(`kerndat: from ${file as string}`);
  return (cached = kept);
}

/**
 * Probe now, whatever is cached (`criu check`), and keep the result: in this process and in the
 * cache file.
 */
export function reprobeKernel(): Kerndat {
  cached = probeKernel();
  const file = kerndatCachePath();
  const key = file === null ? null : currentCacheKey();
  if (file !== null && key !== null) storeKerndat(file, cached, key);
  return cached;
}

/**
 * The dirty-memory tracker pre-dump will use (see tracker.ts for the order and why). Throws
 * UnsupportedError when a forced tracker is not available here.
 */
export function chooseTracker(choice: TrackerChoice = 'auto', kd: Kerndat = kerndat()): TrackerKind {
  return pickTracker(kd, choice);
}

/** The required probes that failed: empty when dump and restore have all they need. */
export function missingRequired(kd: Kerndat = kerndat()): ProbeResult[] {
  return kd.probes.filter((p) => p.isRequired && !p.isOk);
}
