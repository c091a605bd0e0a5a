/**
 * Running a program as a shell job on a fresh pseudo-terminal, for the --shell-job tests.
 *
 * python3's `pty.fork()` makes a session leader whose controlling terminal is a new pty; that
 * leader then does what a job-control shell does for a foreground job: the job gets a process
 * group of its own, made the terminal's foreground group (tcsetpgrp), then execs the program. The
 * leader waits for the job and exits with its status. The python parent relays: what the test
 * writes goes to the pty master (typed on the terminal), what the terminal shows comes back.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { Test } from 'tap';

const RELAY = `
import os, pty, select, signal, sys
argv = sys.argv[1:]
pid, master = pty.fork()
if pid == 0:
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    job = os.fork()
    if job == 0:
        os.setpgid(0, 0)
        os.tcsetpgrp(0, os.getpid())
        signal.signal(signal.SIGTTOU, signal.SIG_DFL)
        os.execvp(argv[0], argv)
    try:
        os.setpgid(job, job)
    except OSError:
        pass
    _, st = os.waitpid(job, 0)
    os._exit(os.waitstatus_to_exitcode(st) & 0xff)
stdin_open = True
while True:
    fds = [master] + ([0] if stdin_open else [])
    r, _, _ = select.select(fds, [], [])
    if master in r:
        try:
            data = os.read(master, 4096)
        except OSError:
            data = b''
        if not data:
            break
        os.write(1, data)
    if 0 in r:
        data = os.read(0, 4096)
        if not data:
            stdin_open = False
        else:
            os.write(master, data)
_, st = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(st) & 0xff)
`;

export interface PtyJob {
  /** Everything the terminal showed so far. */
  output(): string;
  /** Type on the terminal. */
  type(text: string): void;
  /** Resolves when the terminal showed text matching `pattern`. */
  waitFor(pattern: string | RegExp, timeoutMs?: number): Promise<string>;
  /** Resolves with the job's exit code once the terminal closed. */
  exited(timeoutMs?: number): Promise<number | null>;
  child: ChildProcess;
}

/** Start `argv` as the foreground job of a new pty. */
export function startPtyJob(argv: readonly string[], cwd?: string): PtyJob {
  const child = spawn('python3', ['-c', RELAY, ...argv], {
    stdio: ['pipe', 'pipe', 'inherit'],
    ...(cwd === undefined ? {} : { cwd }),
  });
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (x: string) => (out += x));
  const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const matches = (p: string | RegExp): string | null => {
    if (typeof p === 'string') return out.includes(p) ? p : null;
    return p.exec(out)?.[0] ?? null;
  };
  return {
    output: () => out,
    type: (text) => child.stdin?.write(text),
    waitFor: async (pattern, timeoutMs = 20_000) => {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const m = matches(pattern);
        if (m !== null) return m;
        if (child.exitCode !== null || Date.now() > until)
          throw new Error(`No ${String(pattern)} on the terminal; it showed: ${JSON.stringify(out)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    exited: async (timeoutMs = 20_000) => {
      const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), timeoutMs).unref());
      const code = await Promise.race([closed, timer]);
      if (code === 'timeout') throw new Error(`The pty job did not end; the terminal showed: ${JSON.stringify(out)}`);
      return code;
    },
    child,
  };
}

/** The tests' pty lock: a directory, with the pid of the test process holding it. */
const PTY_LOCK = '/tmp/criu-ts-tests-pty.lock';

/**
 * Hold the tests' pty lock until test `t` ends. A restore must get the pty index its dump had
 * (the lowest free one when the dumped program opened it), and a pty opened meanwhile by a test
 * running beside it (tap runs test files in parallel) takes that index. Every test that opens
 * ptys takes the lock first. A lock whose holder is gone is taken over.
 */
export async function holdPtys(t: Test, timeoutMs = 120_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      mkdirSync(PTY_LOCK);
      writeFileSync(`${PTY_LOCK}/pid`, String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let holder = 0;
    try {
      holder = Number(readFileSync(`${PTY_LOCK}/pid`, 'utf8'));
    } catch {
      // being taken or let go right now
    }
    if (holder > 0 && !isAlive(holder)) rmSync(PTY_LOCK, { recursive: true, force: true });
    if (Date.now() > until) throw new Error(`the pty lock is still held by ${holder} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
  t.teardown(() => rmSync(PTY_LOCK, { recursive: true, force: true }));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
