/**
 * Shell jobs (-j/--shell-job): a task whose stdio is its terminal (a pty, the foreground job of
 * its session) is dumped with -j and restored with -j under another pty: it gets that terminal,
 * with its termios, as the foreground job (test/fixtures/cr_tty.c checks itself). An interactive
 * bash survives the same and still runs what is typed afterwards. Without -j the dump is refused
 * and the task keeps running untouched; a -j dump restored without -j is refused before any
 * process exists. An interactive bash with a background job and a stopped one (a tree, each job
 * a group of its own) gets both back: `jobs` lists them, `kill %1` and `wait` work.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { criuAsync, poll, ROOT, waitGone } from '../../helpers/cr.js';
import { fixturePath } from '../../helpers/fixture.js';
import { holdPtys, startPtyJob, type PtyJob } from '../../helpers/job-pty.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';
const CRIU = path.join(ROOT, 'bin/criu.js');

/** The entries of an image as Debian's crit decodes them. */
function critEntries(file: string): Record<string, unknown>[] {
  const out = execFileSync('crit', ['decode', '--pretty', '-i', file], { encoding: 'utf8' });
  return (JSON.parse(out) as { entries: Record<string, unknown>[] }).entries;
}

function readReport(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** `criu restore -j -D images` as the foreground job of a new pty; resolves once the task runs. */
async function restoreUnderPty(images: string, dir: string, pid: number): Promise<PtyJob> {
  const pidfile = path.join(dir, `restored-${Date.now()}.pid`);
  const job = startPtyJob(['node', CRIU, 'restore', '-j', '-D', images, '-v4', '--pidfile', pidfile]);
  await poll(() => readReport(pidfile).trim() === String(pid) || job.child.exitCode !== null, 'the restore', 30_000);
  if (job.child.exitCode !== null) throw new Error(`criu restore ended early: ${job.output()}`);
  return job;
}

for (const mode of ['dump', 'leave-running'] as const) {
  t.test(`cr_tty: a shell job on a pty survives ${mode} -j then restore -j`, { skip: needsRoot }, async (t) => {
    await holdPtys(t);
    const dir = t.testdir();
    const report = path.join(dir, 'report.txt');
    const job = startPtyJob([fixturePath('cr_tty'), report]);
    t.teardown(() => job.child.kill('SIGKILL'));
    await poll(() => /READY (\d+)/.test(readReport(report)), 'cr_tty to be READY', 10_000);
    const pid = Number(/READY (\d+)/.exec(readReport(report))?.[1]);
    t.teardown(() => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    });
    const images = path.join(dir, 'img');

    const refused = await criuAsync(['dump', '-t', String(pid), '-D', path.join(dir, 'no-j')]);
    t.not(refused.status, 0, 'without -j the dump is refused');
    t.match(refused.stderr, /fd 0 of task \d+: terminal \/dev\/pts\/\d+ is not supported without --shell-job/);
    t.ok(readFileSync(`/proc/${pid}/status`, 'utf8').includes('TracerPid:\t0'), 'and the task runs untraced');

    const dump = await criuAsync([
      'dump',
      '-j',
      '-t',
      String(pid),
      '-D',
      images,
      '-v4',
      ...(mode === 'leave-running' ? ['-R'] : []),
    ]);
    t.equal(dump.status, 0, dump.stderr);
    if (mode === 'leave-running') process.kill(pid, 'SIGKILL');
    await waitGone(pid);
    await job.exited().catch(() => undefined);
    const info = critEntries(path.join(images, 'tty-info.img'));
    t.equal(info.length, 1, 'one terminal in tty-info.img (crit decodes it)');
    t.match(
      info[0],
      { type: 'PTY', sid: Number, pgrp: pid, pty: { index: Number } },
      'a pty whose foreground group was the task',
    );
    const ttyFiles = critEntries(path.join(images, 'files.img')).filter((f) => f['type'] === 'TTY');
    t.equal(ttyFiles.length, 1, 'fds 0-2 share one TTY file entry');

    const noJ = await criuAsync(['restore', '-D', images]);
    t.not(noJ.status, 0, 'restore without -j is refused');
    t.match(noJ.stderr, /--shell-job/);

    const restored = await restoreUnderPty(images, dir, pid);
    t.teardown(() => restored.child.kill('SIGKILL'));
    restored.type('go\n');
    await restored.waitFor('job done');
    const code = await restored.exited();
    t.match(readReport(report), /PASS/, readReport(report));
    t.notMatch(readReport(report), /FAIL/);
    t.equal(
      code,
      0,
      `criu restore exits with the job's status; the terminal showed ${JSON.stringify(restored.output())}`,
    );
  });
}

for (const mode of ['dump', 'leave-running'] as const) {
  t.test(`an interactive bash on a pty survives ${mode} -j and restore -j`, { skip: needsRoot }, async (t) => {
    await holdPtys(t);
    const dir = t.testdir();
    const job = startPtyJob(['bash', '--norc', '--noprofile', '-i'], dir);
    t.teardown(() => job.child.kill('SIGKILL'));
    job.type('PS1="bash> "; echo "PID=$$"\n');
    const pid = Number(/PID=(\d+)/.exec(await job.waitFor(/PID=\d+/))?.[0].slice(4));
    t.teardown(() => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    });
    job.type('x=41; x=$((x+1)); echo "set-$x"\n');
    await job.waitFor('set-42');
    // Wait for bash to sit waiting for input at its prompt (read or pselect6, as readline likes).
    await poll(
      () => /^(0|270|7|23) /.test(readFileSync(`/proc/${pid}/syscall`, 'utf8')),
      'bash to wait for input',
      10_000,
    );

    const images = path.join(dir, 'img');
    const dump = await criuAsync([
      'dump',
      '-j',
      '-t',
      String(pid),
      '-D',
      images,
      '-v4',
      ...(mode === 'leave-running' ? ['-R'] : []),
    ]);
    t.equal(dump.status, 0, dump.stderr);
    if (mode === 'leave-running') process.kill(pid, 'SIGKILL');
    await waitGone(pid);

    const restored = await restoreUnderPty(images, dir, pid);
    t.teardown(() => restored.child.kill('SIGKILL'));
    restored.type('echo "answer=$x pid=$$"\n');
    await restored.waitFor(`answer=42 pid=${pid}`);
    // Job control still works: a foreground job of the restored bash is stopped by ^Z, brought
    // back with fg and interrupted by ^C (the terminal signals its foreground group).
    restored.type('sleep 30\n');
    await poll(() => restored.output().includes('sleep 30'), 'the command to echo', 5000);
    await new Promise((r) => setTimeout(r, 300));
    restored.type('\x1a');
    await restored.waitFor(/Stopped\s+sleep 30/);
    restored.type('fg\n');
    await restored.waitFor(/fg\r?\n[^]*sleep 30\r?\n/);
    await new Promise((r) => setTimeout(r, 300));
    restored.type('\x03');
    restored.type('echo "status=$?"\n');
    await restored.waitFor('status=130');
    restored.type('exit 7\n');
    t.equal(
      await restored.exited(),
      7,
      `bash exits with its status through criu; the terminal showed ${JSON.stringify(restored.output())}`,
    );
  });
}

t.test(
  'an interactive bash with a background job and a stopped one: -j dump and restore keep both',
  { skip: needsRoot },
  async (t) => {
    await holdPtys(t);
    // bash puts each job in a process group of its own, in its session; the restored tree must keep
    // them its children, in their groups, one stopped, for `jobs`, `kill %N` and `wait` to work.
    const dir = t.testdir();
    const job = startPtyJob(['bash', '--norc', '--noprofile', '-i'], dir);
    t.teardown(() => job.child.kill('SIGKILL'));
    job.type('PS1="bash> "; echo "PID=$$"\n');
    const pid = Number(/PID=(\d+)/.exec(await job.waitFor(/PID=\d+/))?.[0].slice(4));
    job.type('sleep 1001 & echo "BG=$!"\n');
    const bg = Number(/BG=(\d+)/.exec(await job.waitFor(/BG=\d+/))?.[0].slice(3));
    job.type('sleep 1002\n');
    await poll(() => job.output().includes('sleep 1002'), 'the command to echo', 5000);
    await new Promise((r) => setTimeout(r, 300));
    job.type('\x1a');
    await job.waitFor(/Stopped\s+sleep 1002/);
    const stopped = Number(execFileSync('pgrep', ['-P', String(pid), '-f', 'sleep 1002'], { encoding: 'utf8' }).trim());
    const kill = (p: number): void => {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone
      }
    };
    t.teardown(() => [pid, bg, stopped].forEach(kill));
    await poll(() => /^(0|270|7|23) /.test(readFileSync(`/proc/${pid}/syscall`, 'utf8')), 'bash at its prompt', 10_000);
    const images = path.join(dir, 'img');
    const dump = await criuAsync(['dump', '-j', '-t', String(pid), '-D', images]);
    t.equal(dump.status, 0, dump.stderr);
    for (const p of [pid, bg, stopped]) await waitGone(p);
    await job.exited().catch(() => undefined);

    const restored = await restoreUnderPty(images, dir, pid);
    t.teardown(() => restored.child.kill('SIGKILL'));
    const stat = (p: number): string[] => {
      const text = readFileSync(`/proc/${p}/stat`, 'utf8');
      return text.slice(text.lastIndexOf(')') + 2).split(' ');
    };
    t.same(
      [bg, stopped].map((p) => [stat(p)[1], stat(p)[2], stat(p)[0]]),
      [
        [String(pid), String(bg), 'S'],
        [String(pid), String(stopped), 'T'],
      ],
      "both jobs are bash's children again, each leading its group; the second stopped",
    );
    restored.type('jobs\n');
    await restored.waitFor(/Running\s+sleep 1001[^]*Stopped\s+sleep 1002|Stopped\s+sleep 1002[^]*Running\s+sleep 1001/);
    restored.type('kill %1; wait %1; echo "bg=$?"\n');
    await restored.waitFor('bg=143');
    restored.type('kill -9 %2; echo done\n');
    await restored.waitFor('done');
    restored.type('exit 3\n');
    t.equal(
      await restored.exited(),
      3,
      `bash exits 3 through criu; the terminal showed ${JSON.stringify(restored.output())}`,
    );
  },
);

t.test('dump -j refuses a second terminal besides the shell job', { skip: needsRoot }, async (t) => {
  await holdPtys(t);
  const dir = t.testdir();
  const other = startPtyJob(['sh', '-c', 'tty; exec sleep 60']);
  t.teardown(() => other.child.kill('SIGKILL'));
  const otherTty = await other.waitFor(/\/dev\/pts\/\d+/);
  const report = path.join(dir, 'report.txt');
  const job = startPtyJob([fixturePath('cr_tty'), report, otherTty]);
  t.teardown(() => job.child.kill('SIGKILL'));
  await poll(() => /READY (\d+)/.test(readReport(report)), 'cr_tty to be READY', 10_000);
  const pid = Number(/READY (\d+)/.exec(readReport(report))?.[1]);
  t.teardown(() => process.kill(pid, 'SIGKILL'));
  const dump = await criuAsync(['dump', '-j', '-t', String(pid), '-D', path.join(dir, 'img')]);
  t.equal(dump.status, 1, 'the dump fails');
  t.match(
    dump.stderr,
    new RegExp(`fd 10 of task ${pid}: terminal ${otherTty} is a second terminal .*--shell-job takes one`),
  );
  t.ok(readFileSync(`/proc/${pid}/status`, 'utf8').includes('TracerPid:\t0'), 'the task runs on, untraced');
});
