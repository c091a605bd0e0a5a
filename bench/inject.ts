/**
 * Cost of one injected system call (what restore pays per step), next to the same call made
 * locally: both measured now, reported as a ratio.
 */

import { spawn } from 'node:child_process';
import { Injector } from '../src/inject/injector.js';
import { SYSCALLS_X86_64 as NR } from '../src/kernel/syscalls.js';
import type { BenchOptions, BenchResult } from './run.js';

export async function injectionBench(opts: BenchOptions): Promise<BenchResult> {
  const calls = opts.isQuick ? 2_000 : 20_000;
  // `sleep` started through a shell, so that it is not a child libuv would reap.
  const sh = spawn('sh', ['-c', 'sleep 60 & echo $!; wait'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const pid = await new Promise<number>((resolve) =>
    sh.stdout.once('data', (d: Buffer) => resolve(Number(String(d).trim()))),
  );
  try {
    const inj = Injector.attach(pid);
    let injectedNs: number;
    try {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < calls; i++) inj.syscall(NR.getppid, []);
      injectedNs = Number(process.hrtime.bigint() - t0) / calls;
    } finally {
      inj.release();
    }
    let sink = 0;
    const t1 = process.hrtime.bigint();
    for (let i = 0; i < calls; i++) sink += process.ppid; // getppid(2) through libuv
    const localNs = Number(process.hrtime.bigint() - t1) / calls;
    if (sink === 0) throw new Error('getppid returned 0');
    return {
      name: 'syscall injection',
      lines: [
        `${calls} injected getppid: ${(injectedNs / 1000).toFixed(1)} µs each`,
        `local getppid: ${(localNs / 1000).toFixed(2)} µs each; ratio injected/local ${(injectedNs / localNs).toFixed(0)}x`,
      ],
    };
  } finally {
    process.kill(pid, 'SIGKILL');
  }
}
