/**
 * Finding the pages to dump in 1 GiB of anonymous memory (mem_touch fixtures): pread of
 * /proc/PID/pagemap decoded into runs, the raw pread alone, and ioctl(PAGEMAP_SCAN), each the best
 * of a few rounds. Two layouts: every page touched (one run) and every other page touched (131072
 * runs of one page, the worst case for run building and for the scan's region vector).
 */

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  countRunPages,
  openPagemap,
  readPagemapEntries,
  readPagemapRuns,
  scanPagemapRuns,
} from '../src/proc/pagemap.js';
import * as sys from '../src/sys/native.js';
import type { BenchOptions, BenchResult } from './run.js';

const MEM_TOUCH = fileURLToPath(new URL('../test/fixtures/bin/mem_touch', import.meta.url));

function bestMs(rounds: number, fn: () => void): number {
  let best = Infinity;
  for (let i = 0; i < rounds; i++) {
    const t0 = process.hrtime.bigint();
    fn();
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return best;
}

/** Start mem_touch, measure the three ways on its mapping, return the report lines. */
async function measure(mib: number, stride: number, rounds: number): Promise<string[]> {
  const child = spawn(MEM_TOUCH, [String(mib), String(stride)], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    const ready = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (d: string) => {
        out += d;
        if (out.includes('\n')) resolve(out);
      });
      child.once('exit', (code) => reject(new Error(`mem_touch exited (${code}) before READY: ${out}`)));
    });
    const m = /READY ([0-9a-f]+) ([0-9a-f]+)/.exec(ready);
    if (m === null) throw new Error(`mem_touch: unexpected output ${ready}`);
    const start = BigInt(`0x${m[1]}`);
    const end = BigInt(`0x${m[2]}`);
    const nrPages = Number((end - start) / 4096n);
    const fd = openPagemap(child.pid as number);
    if (fd === null) throw new Error('mem_touch is gone');
    try {
      let runs: number[] = [];
      const readMs = bestMs(rounds, () => (runs = readPagemapRuns(fd, start, end)));
      const readPages = countRunPages(runs);
      const nrRuns = runs.length / 2;
      const out = new BigUint64Array(nrPages);
      const rawMs = bestMs(rounds, () => readPagemapEntries(fd, Number(start / 4096n), nrPages, out));
      const scanMs = bestMs(rounds, () => (runs = scanPagemapRuns(fd, start, end)));
      const scanPages = countRunPages(runs);
      const expected = Math.ceil(nrPages / stride);
      if (readPages !== expected || scanPages !== expected || runs.length / 2 !== nrRuns)
        throw new Error(`pagemap bench: expected ${expected} pages, read found ${readPages}, scan ${scanPages}`);
      const gibps = (ms: number): string => (mib / 1024 / (ms / 1000)).toFixed(0);
      return [
        `${mib} MiB, every ${stride === 1 ? '' : `${stride}nd `}page touched: ${expected} pages in ${nrRuns} runs`,
        `  pread + runs:  ${readMs.toFixed(2)} ms (${gibps(readMs)} GiB of address space/s)`,
        `  pread only:    ${rawMs.toFixed(2)} ms (${gibps(rawMs)} GiB/s)`,
        `  PAGEMAP_SCAN:  ${scanMs.toFixed(2)} ms (${gibps(scanMs)} GiB/s); pread+runs / scan = ${(readMs / scanMs).toFixed(1)}x`,
      ];
    } finally {
      sys.close(fd);
    }
  } finally {
    child.kill('SIGKILL');
  }
}

export async function pagemapBench(opts: BenchOptions): Promise<BenchResult> {
  const mib = opts.isQuick ? 256 : 1024;
  const rounds = opts.isQuick ? 3 : 10;
  return {
    name: `pagemap (best of ${rounds})`,
    lines: [...(await measure(mib, 1, rounds)), ...(await measure(mib, 2, rounds))],
  };
}
