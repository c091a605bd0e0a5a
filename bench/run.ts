/**
 * Benchmarks (`npm run bench [-- --quick] [NAME...]`). Each reports its results next to a baseline
 * measured in the same run on the same machine (memcpy bandwidth, a local system call), as ratios:
 * absolute numbers vary with the machine and its load, ratios much less. Never a pass/fail test.
 */

import { injectionBench } from './inject.js';
import { memcpyBaseline } from './baseline.js';
import { pagemapBench } from './pagemap.js';
import { dumpRestoreBench } from './dump-restore.js';
import { pageServerBench } from './page-server.js';
import { preDumpBench } from './pre-dump.js';
import { migrateBench } from './migrate.js';

export interface BenchOptions {
  isQuick: boolean;
}

export interface BenchResult {
  name: string;
  /** Lines to print, already formatted. */
  lines: string[];
}

const BENCHES: Record<string, (opts: BenchOptions) => Promise<BenchResult>> = {
  memcpy: memcpyBaseline,
  inject: injectionBench,
  pagemap: pagemapBench,
  'dump-restore': dumpRestoreBench,
  'page-server': pageServerBench,
  'pre-dump': preDumpBench,
  migrate: migrateBench,
};

const args = process.argv.slice(2);
const opts: BenchOptions = { isQuick: args.includes('--quick') };
const wanted = args.filter((a) => !a.startsWith('--'));
for (const name of wanted) {
  if (!(name in BENCHES)) {
    console.error(`bench: unknown benchmark "${name}" (known: ${Object.keys(BENCHES).join(', ')})`);
    process.exit(2);
  }
}
for (const [name, run] of Object.entries(BENCHES)) {
  if (wanted.length > 0 && !wanted.includes(name)) continue;
  const result = await run(opts);
  console.log(`== ${result.name}`);
  for (const line of result.lines) console.log(`   ${line}`);
}
