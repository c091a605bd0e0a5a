/**
 * The path-less fd kinds (pipe, FIFO, eventfd, epoll, signalfd, timerfd, inotify) on real
 * processes: test/fixtures/files_anon.c sets every kind up with known state; each fd is dumped
 * with its module, then rebuilt inside a second instance of the fixture ("verify" mode) at the
 * same number, and that instance checks the state of every fd itself. The dumped fixture checks
 * the dump consumed nothing. The entries are written with the image writer and decoded with
 * Debian's crit, which must read them with the values we meant.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { writeImage, type ImageEntry } from '../../../src/images/index.js';
import { eventfdFile } from '../../../src/files/eventfd.js';
import { eventpollFile } from '../../../src/files/eventpoll.js';
import { fifoFile } from '../../../src/files/fifo.js';
import { inotifyFile } from '../../../src/files/inotify.js';
import { pipeFile } from '../../../src/files/pipe.js';
import { signalfdFile } from '../../../src/files/signalfd.js';
import { timerfdFile } from '../../../src/files/timerfd.js';
import type { FdKindModule } from '../../../src/files/types.js';
import { startFixture, type Fixture } from '../../helpers/fixture.js';
import { dumpFds, restoreFds } from './anon-harness.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH)';
const CRIT = '/usr/bin/crit';

const FDS: readonly (readonly [number, FdKindModule])[] = [
  [10, pipeFile],
  [11, pipeFile],
  [12, eventfdFile],
  [13, pipeFile],
  [14, pipeFile],
  [15, eventpollFile],
  [16, signalfdFile],
  [17, timerfdFile],
  [18, inotifyFile],
  [19, fifoFile],
  [20, fifoFile],
];

async function passes(fx: Fixture): Promise<{ code: number | null; output: string }> {
  fx.write('go\n');
  return fx.exited(20_000);
}

const sub = (e: ImageEntry, k: string): ImageEntry => e[k] as ImageEntry;

t.test('every path-less kind survives dump and restore into another process', { skip: needsRoot }, async (t) => {
  const dir = t.testdir({});
  const src = await startFixture('files_anon', ['setup', dir]);
  t.teardown(() => src.kill());
  await src.waitFor('READY');
  const dumped = await dumpFds(src.pid, FDS);

  const byFd = new Map(dumped.files.map((f) => [f.fd, f]));
  const entry = (fd: number): ImageEntry => {
    const f = byFd.get(fd);
    if (f === undefined) throw new Error(`fd ${fd} not dumped`);
    return f.entry;
  };

  // What the entries say, as CRIU writes them.
  const p10 = sub(entry(10), 'pipe');
  const p11 = sub(entry(11), 'pipe');
  t.equal(p10['pipe_id'], p11['pipe_id'], 'both ends name the same pipe');
  t.equal(p10['flags'], 0o4000, 'read end: O_RDONLY | O_NONBLOCK');
  t.equal(p11['flags'], 1, 'write end: O_WRONLY');
  const pipesData = dumped.extras.get('PIPES_DATA') ?? [];
  t.equal(pipesData.length, 3, 'data dumped once per pipe (3 pipes)');
  const d10 = pipesData.find((d) => d.entry['pipe_id'] === p10['pipe_id']);
  t.equal(d10?.entry['bytes'], 100000);
  t.equal(d10?.entry['size'], 256 * 1024);
  const d14 = pipesData.find((d) => d.entry['pipe_id'] === sub(entry(14), 'pipe')['pipe_id']);
  t.equal(Buffer.from(d14?.extra ?? []).toString(), 'orphan', 'data of a pipe whose write end alone is open');
  t.same(sub(entry(12), 'efd'), { id: 3, flags: 0o4002 | 1, fown: sub(sub(entry(12), 'efd'), 'fown'), counter: 5n });
  const tfds = sub(entry(15), 'epfd')['tfd'] as ImageEntry[];
  t.same(
    tfds.map((w) => [w['tfd'], w['events'], w['data']]).sort(),
    [
      [10, 0x80000019, 0xdeadbeefcafen],
      [12, 0x19, 0x1234n],
    ],
    'epoll watches: fd, events (with EPOLLERR | EPOLLHUP), data',
  );
  t.equal(sub(entry(16), 'sgfd')['sigmask'], 0x800n, 'signalfd mask: SIGUSR2');
  const tfd = sub(entry(17), 'tfd');
  t.equal(tfd['clockid'], 1);
  t.ok((tfd['vsec'] as bigint) >= 90n && (tfd['vsec'] as bigint) <= 99n, `timer left: ${tfd['vsec']} s`);
  t.equal(tfd['isec'], 1n);
  const wds = sub(entry(18), 'ify')['wd'] as ImageEntry[];
  t.same(
    wds.map((w) => [w['wd'], w['mask'], sub(w, 'f_handle')['path']]),
    [
      [1, 0x300, join(dir, 'a')],
      [3, 0x100, join(dir, 'c')],
    ],
    'inotify watches in wd order, paths found by their file handles',
  );
  const regs = dumped.extras.get('FILES') ?? [];
  t.equal(regs.length, 2, 'one REG entry per FIFO description');
  t.equal(sub(regs[0]?.entry ?? {}, 'reg')['name'], join(dir, 'fifo'));
  t.equal((dumped.extras.get('FIFO_DATA') ?? []).length, 1, 'FIFO data dumped once');

  // The dumped task lost nothing.
  const srcDone = await passes(src);
  t.match(srcDone.output, /PASS/, srcDone.output);

  // Rebuild everything in a second process, which checks it.
  const dst = await startFixture('files_anon', ['verify', dir]);
  t.teardown(() => dst.kill());
  await dst.waitFor('READY');
  await restoreFds(dst.pid, dumped);
  const dstDone = await passes(dst);
  t.match(dstDone.output, /PASS/, dstDone.output);
  t.equal(dstDone.code, 0, 'the restored fds have the dumped state');

  await t.test(
    'crit reads the entries',
    { skip: existsSync(CRIT) ? false : `crit is not installed at ${CRIT}` },
    async (t) => {
      const imgDir = t.testdir({});
      await writeImage(join(imgDir, 'files.img'), 'FILES', [
        ...(dumped.extras.get('FILES') ?? []).map((e) => e.entry),
        ...dumped.files.map((f) => f.entry),
      ]);
      await writeImage(join(imgDir, 'pipes-data.img'), 'PIPES_DATA', dumped.extras.get('PIPES_DATA') ?? []);
      await writeImage(join(imgDir, 'fifo-data.img'), 'FIFO_DATA', dumped.extras.get('FIFO_DATA') ?? []);
      const decode = (name: string): { magic: string; entries: Record<string, unknown>[] } =>
        JSON.parse(execFileSync(CRIT, ['decode', '--pretty', '-i', join(imgDir, name)], { encoding: 'utf8' })) as {
          magic: string;
          entries: Record<string, unknown>[];
        };
      const files = decode('files.img');
      t.equal(files.magic, 'FILES');
      const types = files.entries.map((e) => e['type']);
      t.same(types, [
        'REG',
        'REG',
        'PIPE',
        'PIPE',
        'EVENTFD',
        'PIPE',
        'PIPE',
        'EVENTPOLL',
        'SIGNALFD',
        'TIMERFD',
        'INOTIFY',
        'FIFO',
        'FIFO',
      ]);
      const of = (type: string): Record<string, Record<string, unknown>>[] =>
        files.entries.filter((e) => e['type'] === type) as Record<string, Record<string, unknown>>[];
      t.equal(of('PIPE')[0]?.['pipe']?.['flags'], '0x800');
      t.equal(of('EVENTFD')[0]?.['efd']?.['counter'], 5);
      t.equal(of('SIGNALFD')[0]?.['sgfd']?.['sigmask'], '0x800');
      t.equal(of('TIMERFD')[0]?.['tfd']?.['isec'], 1);
      t.equal((of('EVENTPOLL')[0]?.['epfd']?.['tfd'] as unknown[]).length, 2);
      const ify = of('INOTIFY')[0]?.['ify']?.['wd'] as Record<string, Record<string, unknown>>[];
      t.equal(ify[1]?.['f_handle']?.['path'], join(dir, 'c'));
      t.equal(of('FIFO')[0]?.['fifo']?.['regf_id'], of('REG')[0]?.['reg']?.['id']);
      const pd = decode('pipes-data.img');
      t.equal(pd.magic, 'PIPES_DATA');
      t.same(
        pd.entries.map((e) => e['bytes']),
        (dumped.extras.get('PIPES_DATA') ?? []).map((e) => e.entry['bytes']),
      );
      const fd = decode('fifo-data.img');
      t.equal(fd.entries[0]?.['bytes'], 5);
    },
  );
});
