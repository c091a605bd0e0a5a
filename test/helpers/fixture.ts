/**
 * Starting C fixtures (test/fixtures/bin) for integration tests.
 *
 * A fixture is started through `sh -c '... & wait'`, so that its parent is that shell and not this
 * Node process: libuv reaps its own children with waitpid(), and for a child that is also traced by
 * this process that would steal the ptrace stop notifications the injection engine waits for.
 * (A background job of a non-interactive shell gets /dev/null as stdin unless redirected: hence
 * the detour through fd 3.)
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { processVmReadv } from '../../src/sys/native.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const FIXTURES_BIN = path.join(ROOT, 'test/fixtures/bin');

export function fixturePath(name: string): string {
  const p = path.join(FIXTURES_BIN, name);
  if (!existsSync(p)) throw new Error(`Fixture ${name} is not built: run "npm run build:fixtures"`);
  return p;
}

export interface Fixture {
  /** The workload's pid (not the shell's). */
  pid: number;
  /** Everything the workload printed so far. */
  output(): string;
  /** Resolves when the output contains `text`; rejects after timeoutMs. */
  waitFor(text: string, timeoutMs?: number): Promise<void>;
  write(text: string): void;
  /** Resolves with the workload's exit code (the shell passes it on) and its whole output. */
  exited(timeoutMs?: number): Promise<{ code: number | null; output: string }>;
  kill(): void;
  child: ChildProcess;
}

/** Start a fixture (a program under test/fixtures/bin, or any program when `name` is a path). */
export async function startFixture(name: string, args: readonly string[] = [], timeoutMs = 10_000): Promise<Fixture> {
  const program = name.includes('/') ? name : fixturePath(name);
  const child = spawn(
    'sh',
    // `wait`'s own stderr to /dev/null: dash reports a job killed by a signal there ("Killed"),
    // which would land in the test log; the workload's stderr stays the test's.
    ['-c', 'exec 3<&0; "$0" "$@" <&3 3<&- & exec 3<&-; echo "PID $!"; wait $! 2>/dev/null', program, ...args],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  let out = '';
  const waiters: Array<() => void> = [];
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    out += chunk;
    for (const w of waiters.splice(0)) w();
  });
  // 'close', not 'exit': the output must be read to its end before the verdict is looked at.
  const exitPromise = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const waitFor = (text: string, ms = timeoutMs): Promise<void> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`Fixture ${name}: no "${text}" within ${ms} ms; output: ${out}`)),
        ms,
      );
      const check = (): void => {
        if (out.includes(text)) {
          clearTimeout(timer);
          resolve();
        } else if (child.exitCode !== null) {
          clearTimeout(timer);
          reject(new Error(`Fixture ${name} exited (${child.exitCode}) before "${text}"; output: ${out}`));
        } else waiters.push(check);
      };
      check();
      void exitPromise.then(() => check());
    });
  await waitFor('PID ');
  await waitFor('\n');
  const m = /PID (\d+)/.exec(out);
  if (m === null) throw new Error(`Fixture ${name}: no pid in ${out}`);
  const pid = Number(m[1]);
  return {
    pid,
    output: () => out,
    waitFor,
    write: (text) => child.stdin?.write(text),
    exited: async (ms = timeoutMs) => {
      const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), ms).unref());
      const code = await Promise.race([exitPromise, timer]);
      if (code === 'timeout') throw new Error(`Fixture ${name} did not exit within ${ms} ms; output: ${out}`);
      return { code, output: out };
    },
    kill: () => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    },
    child,
  };
}

/** The buffer mem_touch maps, from its `READY <start> <end>` line (hex): start and pages. */
export function memTouchRange(fx: Fixture): { start: bigint; nrPages: number } {
  const m = /READY ([0-9a-f]+) ([0-9a-f]+)/.exec(fx.output());
  if (m === null) throw new Error('mem_touch printed no READY line');
  const start = BigInt(`0x${m[1]}`);
  return { start, nrPages: Number((BigInt(`0x${m[2]}`) - start) / 4096n) };
}

/** The bytes of `runs` of process `pid`'s memory, one after the other (process_vm_readv). */
export function memoryOf(pid: number, runs: readonly { vaddr: bigint; nrPages: number }[]): Buffer {
  const total = runs.reduce((n, r) => n + r.nrPages * 4096, 0);
  const buf = Buffer.alloc(total);
  const remote = new BigUint64Array(runs.flatMap((r) => [r.vaddr, BigInt(r.nrPages * 4096)]));
  const got = processVmReadv(pid, buf, 0, remote);
  if (got !== total) throw new Error(`process_vm_readv of ${pid} read ${got} of ${total} bytes`);
  return buf;
}
