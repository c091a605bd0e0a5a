/**
 * --action-script: the programs run at each action point of a dump and a restore, with CRIU's
 * environment, in CRIU's order, and their failures act as CRIU's do: a failed post-dump script
 * leaves the task running with the images in place and becomes criu's exit code; a failed
 * pre-restore script creates nothing; a failed post-restore script kills the rebuilt task. The
 * restored task checks its own memory.
 */
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';

import { criuAsync, startWorkload, waitGone, type Workload } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

/** A script that appends "TAG ACTION PID DIR" to `log`, then exits with $FAIL_<ACTION> or 0. */
function script(dir: string, tag: string, log: string): string {
  const file = path.join(dir, `${tag}.sh`);
  writeFileSync(
    file,
    [
      '#!/bin/sh',
      `echo "${tag} $CRTOOLS_SCRIPT_ACTION \${CRTOOLS_INIT_PID:--} $CRTOOLS_IMAGE_DIR" >> ${log}`,
      `[ "$CRTOOLS_SCRIPT_ACTION" = "$FAIL_AT" ] && exit "\${FAIL_STATUS:-1}"`,
      'exit 0',
      '',
    ].join('\n'),
  );
  chmodSync(file, 0o755);
  return file;
}

/** A test directory with a recording script `a` and a cr_incr of `pages` pages. */
async function setUp(
  t: Test,
  pages: string,
): Promise<{ dir: string; log: string; a: string; w: Workload; img: string }> {
  const dir = t.testdir();
  const log = path.join(dir, 'actions.log');
  const a = script(dir, 'a', log);
  const w = await startWorkload('cr_incr', dir, [pages, '8']);
  t.teardown(() => w.kill());
  return { dir, log, a, w, img: path.join(dir, 'img') };
}

function lines(log: string): string[] {
  return existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : [];
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

t.test('dump and restore run the scripts at each action point', { skip: needsRoot }, async (t) => {
  const { dir, log, a, w, img } = await setUp(t, '256');
  const b = script(dir, 'b', log);
  const scripts = ['--action-script', a, '--action-script', b];
  const d = await criuAsync(['dump', '-t', String(w.pid), '-D', img, ...scripts]);
  t.equal(d.status, 0, d.stderr);
  t.same(lines(log), [
    `b pre-dump ${w.pid} ${img}`,
    `a pre-dump ${w.pid} ${img}`,
    `b post-dump ${w.pid} ${img}`,
    `a post-dump ${w.pid} ${img}`,
  ]);
  await waitGone(w.pid);

  writeFileSync(log, '');
  const r = await criuAsync(['restore', '-d', '-D', img, '--action-script', a]);
  t.equal(r.status, 0, r.stderr);
  t.same(lines(log), [
    `a pre-restore - ${img}`,
    `a post-restore ${w.pid} ${img}`,
    `a pre-resume ${w.pid} ${img}`,
    `a post-resume ${w.pid} ${img}`,
  ]);
  process.kill(w.pid, 'SIGTERM');
  await w.waitFor('PASS');
  t.notMatch(w.report(), 'FAIL');
});

t.test(
  'a failed post-dump script: the task runs on, the images stay, its status is the exit code',
  {
    skip: needsRoot,
  },
  async (t) => {
    const { a, w, img } = await setUp(t, '64');
    process.env['FAIL_AT'] = 'post-dump';
    process.env['FAIL_STATUS'] = '7';
    t.teardown(() => {
      delete process.env['FAIL_AT'];
      delete process.env['FAIL_STATUS'];
    });
    const d = await criuAsync(['dump', '-t', String(w.pid), '-D', img, '--action-script', a]);
    t.equal(d.status, 7, "the script's exit status");
    t.match(d.stderr, /^Error \(criu\): The post-dump action script \S+a\.sh failed \(exit status 7\)\n$/);
    t.ok(alive(w.pid), 'the task was not killed');
    t.ok(existsSync(path.join(img, 'inventory.img')), 'the images are complete and kept');
    process.kill(w.pid, 'SIGTERM');
    await w.waitFor('PASS');
  },
);

t.test('a failed pre-dump script: nothing happens to the task, exit 1', { skip: needsRoot }, async (t) => {
  const { a, w, img } = await setUp(t, '64');
  process.env['FAIL_AT'] = 'pre-dump';
  t.teardown(() => delete process.env['FAIL_AT']);
  const d = await criuAsync(['dump', '-t', String(w.pid), '-D', img, '--action-script', a]);
  t.equal(d.status, 1);
  t.match(d.stderr, /pre-dump action script \S+ failed/);
  t.ok(alive(w.pid));
  t.notOk(existsSync(path.join(img, 'inventory.img')));
});

t.test('failed pre-restore and post-restore scripts: no task is left', { skip: needsRoot }, async (t) => {
  const { log, a, w, img } = await setUp(t, '64');
  t.equal((await criuAsync(['dump', '-t', String(w.pid), '-D', img])).status, 0);
  await waitGone(w.pid);
  t.teardown(() => delete process.env['FAIL_AT']);
  for (const at of ['pre-restore', 'post-restore']) {
    process.env['FAIL_AT'] = at;
    writeFileSync(log, '');
    const r = await criuAsync(['restore', '-d', '-D', img, '--action-script', a]);
    t.equal(r.status, 1, at);
    t.match(r.stderr, new RegExp(`${at} action script \\S+ failed`));
    t.equal(lines(log).at(-1)?.split(' ')[1], at, `the scripts stopped at ${at}`);
    await waitGone(w.pid);
    t.notOk(alive(w.pid), `no task after a failed ${at}`);
  }
  delete process.env['FAIL_AT'];
  const r = await criuAsync(['restore', '-d', '-D', img]);
  t.equal(r.status, 0, r.stderr);
  process.kill(w.pid, 'SIGTERM');
  await w.waitFor('PASS');
});
