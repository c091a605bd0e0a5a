// The /proc readers on live tasks: this process, a `sleep`, a shell with children, a python3 with a
// POSIX timer, a mem_touch with 64 MiB of touched memory, and a task that is gone.
import { spawn } from 'node:child_process';
import { readFileSync, readlinkSync, realpathSync } from 'node:fs';
import t, { type Test } from 'tap';
import { startFixture, type Fixture } from '../../helpers/fixture.js';
import { readMaps } from '../../../src/proc/maps.js';
import { AT, auxvValue, readAuxv } from '../../../src/proc/auxv.js';
import { readChildren, scanChildren } from '../../../src/proc/children.js';
import {
  readCgroup,
  readComm,
  readCwd,
  readExe,
  readLoginuid,
  readNamespaces,
  readOomScoreAdj,
  readPersonality,
  readRoot,
  readThreadStat,
} from '../../../src/proc/misc.js';
import { readMountinfo } from '../../../src/proc/mountinfo.js';
import {
  countRunPages,
  openPagemap,
  readPagemapEntries,
  readPagemapRuns,
  scanPagemapRuns,
} from '../../../src/proc/pagemap.js';
import { readSmaps } from '../../../src/proc/smaps.js';
import { readStat } from '../../../src/proc/stat.js';
import { listThreads, readStatus } from '../../../src/proc/status.js';
import { readTimers } from '../../../src/proc/timers.js';
import * as sys from '../../../src/sys/native.js';

/** Wait until the sleep sits in clock_nanosleep (230) or nanosleep (35): done with ld.so's work. */
async function asleep(pid: number): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    const nr = readFileSync(`/proc/${pid}/syscall`, 'utf8').split(' ')[0];
    if (nr === '230' || nr === '35') return;
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error(`sleep ${pid} never went to sleep`);
}

async function startSleep(t: Test): Promise<Fixture> {
  const fx = await startFixture('/bin/sleep', ['30']);
  t.teardown(() => fx.kill());
  await asleep(fx.pid);
  return fx;
}

t.test('stat, status and auxv of this process', async (t) => {
  const stat = readStat(process.pid);
  const status = readStatus(process.pid);
  if (stat === null || status === null) throw new Error('cannot read our own stat');
  t.equal(stat.pid, process.pid);
  t.equal(stat.ppid, process.ppid);
  t.equal(stat.state, 'R', 'running: we are reading it');
  t.equal(stat.num_threads, listThreads(process.pid)?.length);
  t.equal(status.threads, stat.num_threads);
  t.equal(status.uid.effective, process.geteuid?.());
  t.equal(status.gid.real, process.getgid?.());
  const mask = process.umask();
  t.equal(status.umask, mask);
  t.ok(stat.arg_start < stat.arg_end && stat.arg_end <= stat.env_start, 'argv then environ');
  t.ok(stat.start_data < stat.end_data);

  const auxv = readAuxv(process.pid);
  t.equal(auxvValue(auxv ?? [], AT.AT_PAGESZ), 4096n);
  const vdso = readMaps(process.pid)?.find((m) => m.path === '[vdso]');
  t.equal(auxvValue(auxv ?? [], AT.AT_SYSINFO_EHDR), vdso?.start, 'AT_SYSINFO_EHDR is the [vdso] start');
});

t.test('smaps of a sleep pairs with its maps', async (t) => {
  const fx = await startSleep(t);
  const smaps = readSmaps(fx.pid);
  const maps = readMaps(fx.pid);
  if (smaps === null || maps === null) throw new Error('sleep is gone');
  t.same(
    smaps.map((s) => s.map),
    maps,
    'the same VMAs in the same order',
  );
  const stack = smaps.find((s) => s.map.path === '[stack]');
  t.ok(stack?.vmFlags.has('gd'));
  t.ok((stack?.bytes.Rss ?? 0) > 0 && stack?.bytes.Anonymous === stack?.bytes.Rss, 'the stack is anonymous');
  const vvar = smaps.find((s) => s.map.path === '[vvar]');
  t.ok(vvar?.vmFlags.has('pf') || vvar?.vmFlags.has('io'), '[vvar] is special');
  const stat = readStat(fx.pid);
  const heap = maps.find((m) => m.path === '[heap]');
  if (heap !== undefined) t.equal(heap.start, stat?.start_brk, 'the [heap] starts at start_brk');
  t.equal(stat?.comm, 'sleep');
  t.equal(stat?.exit_signal, 17);
});

t.test('misc files of a sleep', async (t) => {
  const fx = await startSleep(t);
  t.equal(readComm(fx.pid), 'sleep');
  t.equal(readComm(fx.pid, fx.pid), 'sleep');
  t.same(readExe(fx.pid), { path: realpathSync('/bin/sleep'), isDeleted: false });
  t.same(readCwd(fx.pid), { path: process.cwd(), isDeleted: false });
  t.same(readRoot(fx.pid), { path: '/', isDeleted: false });
  t.equal(readPersonality(fx.pid), 0);
  t.equal(readOomScoreAdj(fx.pid), readOomScoreAdj(process.pid), 'inherited from us');
  const loginuid = readLoginuid(fx.pid);
  t.ok(loginuid === null || Number.isInteger(loginuid));
  t.ok((readCgroup(fx.pid) ?? []).length > 0);
  const ns = readNamespaces(fx.pid);
  t.equal(ns?.get('net')?.inode, Number(/\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/net'))?.[1]), 'our netns');
  t.equal(ns?.get('mnt')?.type, 'mnt');
  const th = readThreadStat(fx.pid, fx.pid);
  t.equal(th?.pid, fx.pid);
  t.equal(th?.state, 'S');
  t.same(readTimers(fx.pid), [], 'no POSIX timers');
  const mounts = readMountinfo(fx.pid);
  t.ok(mounts?.some((m) => m.mountPoint === '/'));
  t.equal(mounts?.find((m) => m.mountPoint === '/proc')?.fsType, 'proc');
});

t.test('children of a shell, two ways', async (t) => {
  const fx = await startFixture('/bin/sh', ['-c', 'sleep 30 & sleep 30 & echo READY; wait']);
  t.teardown(() => {
    for (const c of scanChildren(fx.pid)) process.kill(c, 'SIGKILL');
    fx.kill();
  });
  await fx.waitFor('READY');
  const kids = readChildren(fx.pid);
  t.equal(kids?.length, 2);
  t.same(scanChildren(fx.pid), kids, '/proc/*/stat scan agrees');
  for (const k of kids ?? []) t.equal(readStat(k)?.ppid, fx.pid);
  t.same(readChildren(kids?.[0] ?? 0), [], 'a sleep has none');
});

t.test('timers of a python3 with a POSIX timer', async (t) => {
  const script = [
    'import ctypes, sys',
    'libc = ctypes.CDLL(None)',
    't = ctypes.c_void_p()',
    'assert libc.timer_create(1, None, ctypes.byref(t)) == 0',
    'print("READY", flush=True)',
    'sys.stdin.readline()',
  ].join('\n');
  const py = spawn('python3', ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => py.kill('SIGKILL'));
  await new Promise<void>((resolve) => py.stdout.once('data', () => resolve()));
  const timers = readTimers(py.pid as number);
  t.equal(timers?.length, 1);
  t.same(timers?.[0], {
    id: 0,
    signo: 14,
    sigevValue: 0n,
    notify: 'signal',
    isThreadId: false,
    notifyPid: py.pid,
    clockId: 1,
  });
});

t.test('pagemap of 64 MiB of touched memory, read and scanned', async (t) => {
  const fx = await startFixture('mem_touch', ['64']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const m = /READY ([0-9a-f]+) ([0-9a-f]+)/.exec(fx.output());
  const start = BigInt(`0x${m?.[1]}`);
  const end = BigInt(`0x${m?.[2]}`);
  const first = Number(start / 4096n);
  const nrPages = Number((end - start) / 4096n);
  t.equal(nrPages, 16384);
  const fd = openPagemap(fx.pid);
  if (fd === null) throw new Error('mem_touch is gone');
  t.teardown(() => sys.close(fd));
  t.same(readPagemapRuns(fd, start, end), [first, nrPages], 'every page present, one run');
  t.same(scanPagemapRuns(fd, start, end), [first, nrPages], 'PAGEMAP_SCAN agrees');
  // One page either side is outside the mapping (or another VMA): the scan of a wider range still
  // covers the mapping exactly when the neighbours are not present.
  const raw = readPagemapEntries(fd, first, nrPages);
  t.ok(
    raw.every((e) => (e & (1n << 63n)) !== 0n && (e & (1n << 61n)) === 0n),
    'present, anonymous',
  );
  t.ok(
    raw.every((e) => (e & ((1n << 55n) - 1n)) !== 0n),
    'PFNs visible with CAP_SYS_ADMIN',
  );
  // The text segment of mem_touch: a private file mapping whose pages are the file's.
  const text = readMaps(fx.pid)?.find((e) => e.isExec && e.path.endsWith('/mem_touch'));
  if (text !== undefined) {
    const all = readPagemapRuns(fd, text.start, text.end);
    t.same(readPagemapRuns(fd, text.start, text.end, { skipFilePages: true }), [], 'file pages skipped');
    t.same(scanPagemapRuns(fd, text.start, text.end, { skipFilePages: true }), [], 'by the scan too');
    t.same(scanPagemapRuns(fd, text.start, text.end), all, 'unfiltered, read and scan agree');
    t.ok(countRunPages(all) > 0, 'some of the text is resident');
  }
  fx.write('\n');
  t.equal((await fx.exited()).code, 0, 'mem_touch memory intact');
});

t.test('pages that map the shared zero page are skipped when asked', async (t) => {
  // 1 MiB of anonymous memory only read: every page maps the zero page.
  const script = [
    'import ctypes, mmap, sys',
    'm = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)',
    'assert sum(m[i] for i in range(0, 1 << 20, 4096)) == 0',
    'print("READY %x" % ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)',
    'sys.stdin.readline()',
  ].join('\n');
  const py = spawn('python3', ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => py.kill('SIGKILL'));
  const line = await new Promise<string>((resolve) => py.stdout.once('data', (d: Buffer) => resolve(String(d))));
  const start = BigInt(`0x${/READY ([0-9a-f]+)/.exec(line)?.[1]}`);
  const end = start + (1n << 20n);
  const fd = openPagemap(py.pid as number);
  if (fd === null) throw new Error('python3 is gone');
  t.teardown(() => sys.close(fd));
  const first = Number(start / 4096n);
  t.same(readPagemapRuns(fd, start, end), [first, 256], 'all present');
  const pfns = new Set(readPagemapEntries(fd, first, 256).map((e) => e & ((1n << 55n) - 1n)));
  if (pfns.size !== 1) {
    // Seen on this machine's 6.18 VM: read faults allocate a page each, no shared zero page.
    t.pass('zero page filter', {
      skip: `read faults do not map the shared zero page here (${pfns.size} distinct PFNs)`,
    });
    return;
  }
  const zeroPfn = Number([...pfns][0]);
  t.same(readPagemapRuns(fd, start, end, { zeroPfn }), [], 'skipped by PFN');
  t.same(scanPagemapRuns(fd, start, end, { zeroPfn }), [], 'skipped by PAGE_IS_PFNZERO');
  t.same(scanPagemapRuns(fd, start, end), [first, 256], 'unfiltered scan sees them');
});

t.test('readers return null for a task that is gone', async (t) => {
  const child = spawn('true');
  const pid = child.pid as number;
  await new Promise((r) => child.once('exit', r));
  t.equal(readStat(pid), null);
  t.equal(readStatus(pid), null);
  t.equal(readSmaps(pid), null);
  t.equal(readAuxv(pid), null);
  t.equal(readTimers(pid), null);
  t.equal(readChildren(pid), null);
  t.equal(readComm(pid), null);
  t.equal(readExe(pid), null);
  t.equal(readNamespaces(pid), null);
  t.equal(readMountinfo(pid), null);
  t.equal(readThreadStat(pid, pid), null);
  t.equal(openPagemap(pid), null);
});
