/**
 * A real RPC client nobody here wrote: Debian's pycriu (package `criu`) drives `criu.js swrk` the
 * way its users do, through `criu().use_binary(...)`, each request over its own socketpair to a
 * fresh swrk process. VERSION, CHECK and FEATURE_CHECK answer as CRIU 4.2 would; a dump with
 * leave_running leaves the task running and its restore gives it back its memory; the iterative
 * migration of pycriu users (pre_dump, pre_dump with parent_img, dump with track_mem, restore)
 * stores in the second pre-dump only the pages rewritten since the first, and the restored
 * workload finds every page as it left it; a process tree (cr_tree) dumped and restored by
 * pycriu passes its own checks; a failed dump raises CRIUExceptionExternal with CRIU's errno
 * (ESRCH for a pid that does not exist).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { readImage } from '../../../src/images/index.js';
import { ROOT, signalTask, startWorkload, waitGone, type Workload } from '../../helpers/cr.js';

const PYCRIU = '/usr/lib/python3/dist-packages/pycriu';
const PYTHON = '/usr/bin/python3';
const CRIU = path.join(ROOT, 'bin/criu.js');
/**
 * Pages an iteration stores beyond the ones the workload reports writing: its stack, libc's data
 * and the like (5 or 6 where this was written). Far below the 2048 pages of a full copy.
 */
const SLACK = 12;

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';
const needsPycriu =
  needsRoot ||
  (existsSync(PYCRIU) && existsSync(PYTHON)
    ? false
    : `needs pycriu in ${PYCRIU} (the Debian package criu) and ${PYTHON}`);

/**
 * The client: `client.py CRIU COMMAND ARGS...` does one thing with pycriu and prints one JSON
 * line per result. dump/pre-dump take `DIR PID [leave_running] [track_mem] [parent=P]`, restore
 * takes `DIR`. A pycriu exception is printed as {"error": ...} with the errno CRIU reported.
 */
const CLIENT = String.raw`
import json, os, sys
sys.path.insert(0, '/usr/lib/python3/dist-packages')
import pycriu

binary, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]

def out(**kw):
    print(json.dumps(kw), flush=True)

def client():
    c = pycriu.criu()
    c.use_binary(binary)
    c.opts.log_level = 4
    return c

try:
    if cmd == 'version':
        c = client()
        req = pycriu.rpc.criu_req()
        req.type = pycriu.rpc.VERSION
        r = c._send_req_and_recv_resp(req)
        out(what='version', success=r.success, major=r.version.major_number,
            minor=r.version.minor_number, name=r.version.name)
        c.check()
        out(what='check', ok=True)
        req = pycriu.rpc.criu_req()
        req.type = pycriu.rpc.FEATURE_CHECK
        req.features.mem_track = True
        r = c._send_req_and_recv_resp(req)
        out(what='features', success=r.success, has_mem_track=r.features.HasField('mem_track'),
            mem_track=r.features.mem_track)
    elif cmd in ('dump', 'pre-dump'):
        c = client()
        c.opts.images_dir_fd = os.open(args[0], os.O_DIRECTORY)
        c.opts.pid = int(args[1])
        for a in args[2:]:
            if a == 'leave_running':
                c.opts.leave_running = True
            elif a == 'track_mem':
                c.opts.track_mem = True
            elif a.startswith('parent='):
                c.opts.parent_img = a[len('parent='):]
            else:
                raise SystemExit('unknown option ' + a)
        (c.dump if cmd == 'dump' else c.pre_dump)()
        out(what=cmd, ok=True)
    elif cmd == 'restore':
        c = client()
        c.opts.images_dir_fd = os.open(args[0], os.O_DIRECTORY)
        r = c.restore()
        out(what='restore', pid=r.pid)
    else:
        raise SystemExit('unknown command ' + cmd)
except pycriu.CRIUExceptionExternal as e:
    out(what=cmd, error='external', errno=e.errno, message=str(e))
except pycriu.CRIUException as e:
    out(what=cmd, error=type(e).__name__, message=str(e))
`;

type Line = Record<string, unknown>;

/** Run the client once; its JSON lines (the test fails on a non-zero exit). */
function pycriu(t: Test, dir: string, args: string[]): Line[] {
  const script = path.join(dir, 'client.py');
  if (!existsSync(script)) writeFileSync(script, CLIENT);
  const r = spawnSync(PYTHON, [script, CRIU, ...args], { encoding: 'utf8', timeout: 30_000 });
  t.equal(r.status, 0, `client.py ${args[0] ?? ''} exits 0`, { stderr: r.stderr });
  return r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Line);
}

async function pagesWritten(dir: string): Promise<number> {
  const e = (await readImage(path.join(dir, 'stats-dump'), 'STATS')).records[0]?.entry['dump'] as
    Record<string, unknown> | undefined;
  return Number(e?.['pages_written'] ?? -1);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM the restored workload: it checks every page and reports PASS (or FAIL lines). */
async function verdict(t: Test, w: Workload, pass: string): Promise<void> {
  signalTask(w.pid, 'SIGTERM');
  await w.waitFor(pass);
  t.notMatch(w.report(), /FAIL/, 'no page differs');
}

t.test('VERSION, CHECK and FEATURE_CHECK', { skip: needsPycriu }, async (t) => {
  const lines = pycriu(t, t.testdir(), ['version']);
  t.match(lines, [
    { what: 'version', success: true, major: 4, minor: 2, name: /^criu-ts/ },
    { what: 'check', ok: true },
    { what: 'features', success: true, has_mem_track: true, mem_track: true },
  ]);
  t.equal(lines.length, 3);
});

t.test('dump with leave_running, then restore', { skip: needsPycriu }, async (t) => {
  const dir = t.testdir();
  const images = path.join(dir, 'images');
  mkdirSync(images);
  const w = await startWorkload('cr_incr', dir, ['2048', '8']);
  t.teardown(() => w.kill());

  t.same(pycriu(t, dir, ['dump', images, String(w.pid), 'leave_running']), [{ what: 'dump', ok: true }]);
  t.ok(alive(w.pid), 'the task still runs');
  t.ok(existsSync(path.join(images, 'inventory.img')), 'inventory.img');
  t.ok(existsSync(path.join(images, `pagemap-${w.pid}.img`)), `pagemap-${w.pid}.img`);

  w.kill();
  await waitGone(w.pid);
  t.same(pycriu(t, dir, ['restore', images]), [{ what: 'restore', pid: w.pid }], 'restored with its pid');
  await verdict(t, w, 'PASS 0 steps');
});

t.test(
  'a process tree (cr_tree): dump, then restore, and its four processes pass',
  { skip: needsPycriu },
  async (t) => {
    const dir = t.testdir();
    const images = path.join(dir, 'images');
    mkdirSync(images);
    const w = await startWorkload('cr_tree', dir);
    const pids = (/^TREE R=(\d+) A=(\d+) B=(\d+) G=(\d+)$/m.exec(w.report()) ?? []).slice(1).map(Number);
    t.teardown(() => pids.forEach((pid) => signalTask(pid, 'SIGKILL')));
    t.equal(pids.length, 4, 'four processes');
    t.same(pycriu(t, dir, ['dump', images, String(w.pid)]), [{ what: 'dump', ok: true }]);
    for (const pid of pids) await waitGone(pid);
    t.same(pycriu(t, dir, ['restore', images]), [{ what: 'restore', pid: w.pid }], 'restored with its pid');
    t.ok(
      pids.every((pid) => alive(pid)),
      'all four are back',
    );
    await verdict(t, w, 'PASS');
  },
);

t.test('pre_dump, pre_dump, dump with track_mem, restore', { skip: needsPycriu }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_incr', dir, ['2048', '8']);
  t.teardown(() => w.kill());
  const images = (n: number): string => {
    const d = path.join(dir, String(n));
    mkdirSync(d);
    return d;
  };
  const step = async (k: number): Promise<number> => {
    signalTask(w.pid, 'SIGUSR1');
    await w.waitFor(`STEP ${k} `);
    const m = new RegExp(`STEP ${k} DIRTIED (\\d+) NEW (\\d+)`).exec(w.report());
    return Number(m?.[1]) + Number(m?.[2]);
  };

  t.same(pycriu(t, dir, ['pre-dump', images(1), String(w.pid)]), [{ what: 'pre-dump', ok: true }]);
  t.ok(alive(w.pid), 'the task runs after a pre-dump');
  const first = await pagesWritten(path.join(dir, '1'));
  t.ok(first >= 2048, `the first pre-dump wrote all the memory (${first} pages)`);

  const written1 = await step(1);
  t.same(pycriu(t, dir, ['pre-dump', images(2), String(w.pid), 'parent=../1']), [{ what: 'pre-dump', ok: true }]);
  const second = await pagesWritten(path.join(dir, '2'));
  t.ok(
    second >= written1 && second <= written1 + SLACK,
    `the second pre-dump wrote ${second} pages: the ${written1} the workload wrote, and a few of its stack and libc`,
  );

  const written2 = await step(2);
  t.same(pycriu(t, dir, ['dump', images(3), String(w.pid), 'parent=../2', 'track_mem']), [{ what: 'dump', ok: true }]);
  const final = await pagesWritten(path.join(dir, '3'));
  t.ok(
    final >= written2 && final <= written2 + SLACK,
    `the dump wrote ${final} pages: the ${written2} the workload wrote, and a few of its stack and libc`,
  );
  await waitGone(w.pid);

  t.same(pycriu(t, dir, ['restore', path.join(dir, '3')]), [{ what: 'restore', pid: w.pid }]);
  await verdict(t, w, 'PASS 2 steps');
});

t.test('a failed dump raises CRIUExceptionExternal with errno ESRCH', { skip: needsPycriu }, async (t) => {
  const dir = t.testdir();
  const lines = pycriu(t, dir, ['dump', dir, '4194303']);
  t.match(lines, [{ what: 'dump', error: 'external', errno: 3, message: /^DUMP failed: Error\(3\): No process/ }]);
  t.equal(lines.length, 1);
});
