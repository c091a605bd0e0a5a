/**
 * tmux, a terminal multiplexer no one here wrote: its server holds a pty master for each pane, a
 * unix socket its clients connect to, and a shell in the pane (a session leader whose controlling
 * terminal is the pane's pty slave, which it also holds open as /dev/tty). Dumped as a tree and
 * restored, the clients reach the server again and the shell goes on with its state: a variable
 * set before the dump is still there, typed keys reach it, and it still has its terminal.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { dumpRestoreDetached, poll, signalTask, waitEnded } from '../../helpers/cr.js';
import { holdPtys } from '../../helpers/job-pty.js';

const TMUX = '/usr/bin/tmux';
const skip =
  process.getuid?.() !== 0
    ? 'needs root (ptrace, clone3 set_tid)'
    : existsSync(TMUX)
      ? false
      : `${TMUX} is not installed (.ci/run installs tmux)`;

/** The terminal and foreground group of `pid`, from /proc/PID/stat. */
function ttyOf(pid: number): { ttyNr: number; tpgid: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { ttyNr: Number(f[4]), tpgid: Number(f[5]) };
}

t.test(
  'tmux: its server and the shell in its pane come back, with the pane, its state and its terminal',
  { skip },
  async (t) => {
    await holdPtys(t);
    const dir = t.testdir();
    // A short path: a unix socket's name has room for 107 bytes.
    const sockDir = mkdtempSync(path.join(tmpdir(), 'cts-tmux-'));
    const sock = path.join(sockDir, 'sock');
    const tmux = (...args: string[]): string => execFileSync(TMUX, ['-S', sock, ...args], { encoding: 'utf8' });
    tmux('-f', '/dev/null', 'new-session', '-d', '-s', 't', '-x', '80', '-y', '24', 'sh');
    const server = Number(tmux('display', '-p', '-t', 't', '#{pid}').trim());
    const shell = Number(tmux('display', '-p', '-t', 't', '#{pane_pid}').trim());
    t.teardown(() => {
      for (const pid of [shell, server]) signalTask(pid, 'SIGKILL');
      rmSync(sockDir, { recursive: true, force: true });
    });
    const pane = (): string => tmux('capture-pane', '-p', '-t', 't');
    tmux('send-keys', '-t', 't', 'X=42; echo before $X', 'Enter');
    await poll(() => pane().includes('before 42'), 'the shell to answer', 10_000);
    const before = ttyOf(shell);
    t.ok(
      before.ttyNr !== 0 && before.tpgid === shell,
      `the shell leads its pane's terminal (${JSON.stringify(before)})`,
    );

    if (!(await dumpRestoreDetached(t, dir, server, 'the server', [shell]))) return;

    t.same(ttyOf(shell), before, 'the shell has its terminal and foreground group back');
    tmux('send-keys', '-t', 't', 'echo after $X', 'Enter');
    await poll(() => pane().includes('after 42'), 'the shell to answer after the restore', 10_000).catch(
      () => undefined,
    );
    t.match(pane(), /after 42/, 'a client reaches the server, and keys typed reach the shell, which kept X');
    t.match(pane(), /before 42/, 'the pane kept what it showed');
    tmux('kill-server');
    for (const pid of [server, shell]) await waitEnded(pid);
    t.pass('kill-server ends it');
  },
);
