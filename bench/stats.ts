/** Small helpers the benches share. */

import { readFileSync } from 'node:fs';

/** The median of `xs` (the mean of the middle two of an even count); 0 for none. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  if (s.length === 0) return 0;
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/** Run `fn`, with its wall time in milliseconds. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; r: T }> {
  const t0 = process.hrtime.bigint();
  const r = await fn();
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, r };
}

/**
 * CPU time the whole machine has spent busy so far, in seconds (/proc/stat: user, nice, system,
 * irq and softirq of all CPUs; idle, iowait and a hypervisor's steal left out). Resolution
 * 1/USER_HZ (10 ms) per CPU: a difference over a few hundred ms is good to a few percent.
 */
export function machineBusySeconds(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0] = f;
  return (user + nice + system + irq + softirq) / 100;
}

/** Where this VM's kernel counts the guest memory it handed back to the host (free page reporting). */
const REPORTED_KIB = '/sys/module/page_reporting/parameters/reported_kib';

/**
 * KiB of free memory this guest has reported to its host so far (virtio-balloon free page
 * reporting: the host takes the memory back, and the guest's next use of it costs a host fault per
 * page), where the kernel counts it; null where it does not (upstream kernels have no counter).
 */
export function vmReportedKiB(): number | null {
  try {
    return Number(readFileSync(REPORTED_KIB, 'utf8').trim());
  } catch {
    return null;
  }
}
