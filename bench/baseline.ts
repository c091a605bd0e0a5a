/**
 * Baselines other benchmarks are compared with: memcpy bandwidth of this machine, now.
 */

import type { BenchOptions, BenchResult } from './run.js';

/** GiB/s of Buffer.copy over `sizeBytes`, best of a few rounds. */
export function measureMemcpyGiBps(sizeBytes: number, rounds: number): number {
  const src = Buffer.alloc(sizeBytes, 0x5a);
  const dst = Buffer.alloc(sizeBytes);
  let best = Infinity;
  for (let i = 0; i < rounds; i++) {
    const t0 = process.hrtime.bigint();
    src.copy(dst);
    const ns = Number(process.hrtime.bigint() - t0);
    best = Math.min(best, ns);
  }
  return sizeBytes / (1 << 30) / (best / 1e9);
}

export async function memcpyBaseline(opts: BenchOptions): Promise<BenchResult> {
  const size = opts.isQuick ? 64 << 20 : 256 << 20;
  const gibps = measureMemcpyGiBps(size, opts.isQuick ? 3 : 8);
  return { name: 'memcpy baseline', lines: [`${(size >> 20).toString()} MiB Buffer.copy: ${gibps.toFixed(2)} GiB/s`] };
}
