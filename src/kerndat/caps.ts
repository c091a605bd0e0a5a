/**
 * Capabilities of this process, from the CapEff line of /proc/self/status (a hex mask, bit n for
 * capability n of uapi linux/capability.h).
 */

import { readFileSync } from 'node:fs';

/** uapi linux/capability.h */
export const CAP_SYS_PTRACE = 19;
export const CAP_SYS_ADMIN = 21;
export const CAP_SYS_RESOURCE = 24;
export const CAP_CHECKPOINT_RESTORE = 40;

export interface Capabilities {
  effective: bigint;
  hasSysPtrace: boolean;
  hasSysAdmin: boolean;
  hasSysResource: boolean;
  hasCheckpointRestore: boolean;
}

export function parseCapEff(statusText: string): bigint {
  const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(statusText);
  if (m === null) throw new Error('Cannot read capabilities: no CapEff line in /proc/self/status');
  return BigInt(`0x${m[1] as string}`);
}

export function capabilitiesOf(effective: bigint): Capabilities {
  const has = (cap: number): boolean => ((effective >> BigInt(cap)) & 1n) === 1n;
  return {
    effective,
    hasSysPtrace: has(CAP_SYS_PTRACE),
    hasSysAdmin: has(CAP_SYS_ADMIN),
    hasSysResource: has(CAP_SYS_RESOURCE),
    hasCheckpointRestore: has(CAP_CHECKPOINT_RESTORE),
  };
}

export function readCapabilities(): Capabilities {
  return capabilitiesOf(parseCapEff(readFileSync('/proc/self/status', 'utf8')));
}
