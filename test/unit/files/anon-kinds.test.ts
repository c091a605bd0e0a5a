/**
 * The path-less fd kinds' dump halves on fdinfo text and fds of this process (no privileges): the
 * fdinfo parsers, and entries equal to what CRIU 4.2 wrote for the same state in the golden fdzoo
 * dump (/work/shared/golden/criu-4.2-fdzoo/files.img.json), compared in crit's JSON shape. Pipe
 * and FIFO data are read from real pipes of this process and must still be there afterwards.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, fstatSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { entryToCritJson, messageType, type ImageEntry } from '../../../src/images/index.js';
import { O_NONBLOCK, O_RDWR } from '../../../src/kernel/constants.js';
import { parseFdInfo } from '../../../src/proc/fdinfo.js';
import { eventfdFile, parseEventfdInfo } from '../../../src/files/eventfd.js';
import { epollEntry, eventpollFile, parseEpollInfo } from '../../../src/files/eventpoll.js';
import { fifoFile } from '../../../src/files/fifo.js';
import { handleWords, parseInotifyInfo } from '../../../src/files/inotify.js';
import { pipeFile, readPipeData } from '../../../src/files/pipe.js';
import { signalfdFile, parseSignalfdInfo } from '../../../src/files/signalfd.js';
import { parseTimerfdInfo, timerfdFile } from '../../../src/files/timerfd.js';
import type { FdDumpInput, FdKindModule, FileDumpContext } from '../../../src/files/types.js';
import * as sys from '../../../src/sys/native.js';

const GOLDEN = '/work/shared/golden/criu-4.2-fdzoo/files.img.json';

const head = (flags: string, ino = 1038): string => `pos:\t0\nflags:\t${flags}\nmnt_id:\t17\nino:\t${ino}\n`;
const FDINFO = {
  eventfd: head('04002') + 'eventfd-count:                5\neventfd-id: 1\n',
  eventfdSem: head('02004002') + 'eventfd-count: fffffffffffffffe\neventfd-id: 2\neventfd-semaphore: 1\n',
  epoll: head('02000002') + 'tfd:        3 events:       19 data:             1234  pos:0 ino:40e sdev:10\n',
  signalfd: head('02000002') + 'sigmask:\t0000000000000800\n',
  timerfd: head('02') + 'clockid: 1\nticks: 0\nsettime flags: 00\nit_value: (97, 364752540)\nit_interval: (1, 0)\n',
  inotify:
    head('04000') +
    'inotify wd:3 ino:214852 sdev:fe00000 mask:100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:52482100135a564c\n' +
    'inotify wd:1 ino:3f7e8 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:e8f7030000000000\n',
};

/** A dump input for fd `fd` of this process with the given fdinfo text. */
function inputOf(fd: number, link: string, fdinfo: string): FdDumpInput {
  return {
    pid: process.pid,
    fd,
    link,
    fdinfo: parseFdInfo(fdinfo),
    stat: fstatSync(fd, { bigint: true }),
    localFd: fd,
  };
}

function dumpCtx(extras: { kind: string; entry: ImageEntry; extra?: Uint8Array }[] = []): FileDumpContext {
  let next = 100;
  return {
    pid: process.pid,
    allocId: () => next++,
    addEntry: async (kind, entry, extra) => {
      extras.push(extra === undefined ? { kind, entry } : { kind, entry, extra });
    },
    // Never reached: these fds have no owner, the only state read by injection.
    injector: undefined as never,
    shared: new Map(),
  };
}

const critJson = (entry: ImageEntry): unknown =>
  JSON.parse(
    JSON.stringify(entryToCritJson(messageType('file_entry'), entry), (_k, v: unknown) =>
      typeof v === 'bigint' ? Number(v) : v,
    ),
  );

const golden = existsSync(GOLDEN)
  ? (JSON.parse(readFileSync(GOLDEN, 'utf8')) as { entries: { id: number }[] }).entries
  : undefined;

t.test('fdinfo parsers', async (t) => {
  t.same(parseEventfdInfo(parseFdInfo(FDINFO.eventfd)), { counter: 5n, isSemaphore: false });
  t.same(parseEventfdInfo(parseFdInfo(FDINFO.eventfdSem)), { counter: 0xfffffffffffffffen, isSemaphore: true });
  t.same(parseEpollInfo(parseFdInfo(FDINFO.epoll)), [
    { tfd: 3, events: 0x19, data: 0x1234n, pos: 0n, inode: 0x40en, dev: 16 },
  ]);
  t.same(
    parseEpollInfo(
      parseFdInfo(head('02') + 'tfd:       10 events: 80000019 data:     deadbeefcafe  pos:-1 ino:1886a sdev:f\n'),
    ),
    [{ tfd: 10, events: 0x80000019, data: 0xdeadbeefcafen, pos: -1n, inode: 0x1886an, dev: 15 }],
  );
  t.equal(parseSignalfdInfo(parseFdInfo(FDINFO.signalfd)), 0x800n);
  t.same(parseTimerfdInfo(parseFdInfo(FDINFO.timerfd)), {
    clockid: 1,
    ticks: 0n,
    settimeFlags: 0,
    valueSec: 97n,
    valueNsec: 364752540n,
    intervalSec: 1n,
    intervalNsec: 0n,
  });
  const wds = parseInotifyInfo(parseFdInfo(FDINFO.inotify));
  t.same(
    wds.map((w) => [w.wd, w.ino, w.sdev, w.mask, w.handleType, w.handle.toString('hex')]),
    [
      [1, 260072n, 0xfe00000, 0x300, 1, 'e8f7030000000000'],
      [3, 0x214852n, 0xfe00000, 0x100, 1, '52482100135a564c'],
    ],
    'sorted by wd, all hex',
  );
  t.same(
    handleWords(wds[0]?.handle ?? Buffer.alloc(0)),
    [260072n, ...Array<bigint>(15).fill(0n)],
    'CRIU pads to 16 words',
  );
  t.equal(handleWords(Buffer.alloc(130)).length, 17);
  t.throws(() => parseSignalfdInfo(parseFdInfo(head('02'))), /sigmask/);
  t.throws(() => parseTimerfdInfo(parseFdInfo(head('02') + 'clockid: 1\n')), /it_value/);
});

t.test('entries equal CRIU 4.2 for the same state', { skip: golden ? false : `no ${GOLDEN}` }, async (t) => {
  const fd = sys.open('/dev/null', O_RDWR, 0);
  t.teardown(() => sys.close(fd));
  const gold = (id: number): unknown => golden?.find((e) => e.id === id);
  // An epoll's dump first checks with kcmp that each watched fd number of the task holds its file:
  // this fdinfo text is not of a real epoll here, so its entry is made without that check.
  const epollDump: Pick<FdKindModule, 'dump'> = { dump: async (input, id, ctx) => epollEntry(input, id, ctx) };
  const cases = [
    [eventfdFile, eventfdFile, 'anon_inode:[eventfd]', FDINFO.eventfd, 8],
    [eventpollFile, epollDump, 'anon_inode:[eventpoll]', FDINFO.epoll, 9],
    [signalfdFile, signalfdFile, 'anon_inode:[signalfd]', FDINFO.signalfd, 10],
    [timerfdFile, timerfdFile, 'anon_inode:[timerfd]', FDINFO.timerfd, 11],
  ] as const;
  for (const [mod, dumper, link, text, id] of cases) {
    const input = inputOf(fd, link, text);
    t.ok(mod.matches(input), `${mod.name} claims ${link}`);
    t.same(critJson(await dumper.dump(input, id, dumpCtx())), gold(id), `${mod.name}: same entry as CRIU`);
  }
  const sem = await eventfdFile.dump(inputOf(fd, 'anon_inode:[eventfd]', FDINFO.eventfdSem), 1, dumpCtx());
  t.equal((sem['efd'] as ImageEntry)['flags'], O_RDWR | O_NONBLOCK | 1, 'EFD_SEMAPHORE in bit 0, O_CLOEXEC dropped');
  t.equal((sem['efd'] as ImageEntry)['counter'], 0xfffffffffffffffen);
  t.notOk(pipeFile.matches(inputOf(fd, '/dev/null', head('02'))));
  t.notOk(fifoFile.matches(inputOf(fd, '/dev/null', head('02'))));
});

t.test('pipe: entry and data, nothing consumed, once per pipe', async (t) => {
  const [r, w] = sys.pipe2(O_NONBLOCK);
  t.teardown(() => {
    sys.close(r);
    sys.close(w);
  });
  const data = Buffer.from('0123456789'.repeat(1000));
  t.equal(sys.write(w, data, 0, data.length), data.length);
  const extras: { kind: string; entry: ImageEntry; extra?: Uint8Array }[] = [];
  const ctx = dumpCtx(extras);
  const link = `pipe:[${fstatSync(r).ino}]`;
  const wEntry = await pipeFile.dump(inputOf(w, link, head('01')), 7, ctx);
  const rEntry = await pipeFile.dump(inputOf(r, link, head('04000')), 8, ctx);
  const pipeId = Number(fstatSync(r, { bigint: true }).ino & 0xffffffffn);
  t.same(critJson(wEntry), {
    type: 'PIPE',
    id: 7,
    pipe: { id: 7, pipe_id: pipeId, flags: '0x1', fown: { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 } },
  });
  t.equal(((rEntry['pipe'] as ImageEntry)['flags'] as number) & 0xfff, 0o4000);
  t.equal(extras.length, 1, 'one PIPES_DATA entry for the two ends');
  t.equal(extras[0]?.kind, 'PIPES_DATA');
  t.same(extras[0]?.entry, { pipe_id: pipeId, bytes: data.length, size: 65536 });
  t.ok(Buffer.from(extras[0]?.extra ?? []).equals(data), 'the data, read from the write end');
  const back = Buffer.alloc(data.length + 1);
  t.equal(sys.read(r, back, 0, back.length), data.length, 'the pipe still holds all of it');
  await t.rejects(pipeFile.dump(inputOf(r, link, head('040000')), 9, dumpCtx()), { code: 'EUNSUPPORTED' }, 'O_DIRECT');
  t.equal(readPipeData(inputOf(r, link, head('0')), new Map([[`PIPES_DATA:${pipeId}`, true]]), 'PIPES_DATA'), null);
});

t.test('FIFO: REG entry for the path, FIFO entry, data', async (t) => {
  const dir = t.testdir({});
  const path = join(dir, 'fifo');
  execFileSync('mkfifo', ['-m', '0600', path]);
  const fd = sys.open(path, O_RDWR, 0);
  t.teardown(() => sys.close(fd));
  t.equal(sys.write(fd, Buffer.from('fifo!'), 0, 5), 5);
  const extras: { kind: string; entry: ImageEntry; extra?: Uint8Array }[] = [];
  const input = inputOf(fd, path, head('0100002'));
  t.ok(fifoFile.matches(input));
  t.notOk(pipeFile.matches(input));
  const entry = await fifoFile.dump(input, 16, dumpCtx(extras));
  const pipeId = Number(fstatSync(fd, { bigint: true }).ino & 0xffffffffn);
  t.same(critJson(entry), { type: 'FIFO', id: 16, fifo: { id: 16, pipe_id: pipeId, regf_id: 100 } });
  t.same(
    extras.map((e) => [e.kind, e.kind === 'FILES' ? critJson(e.entry) : e.entry]),
    [
      [
        'FILES',
        {
          type: 'REG',
          id: 100,
          reg: {
            id: 100,
            flags: 'O_RDWR | O_LARGEFILE',
            pos: 0,
            fown: { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 },
            name: path,
            mode: 4480,
          },
        },
      ],
      ['FIFO_DATA', { pipe_id: pipeId, bytes: 5, size: 65536 }],
    ],
    'as in the golden fdzoo dump',
  );
  t.equal(Buffer.from(extras[1]?.extra ?? []).toString(), 'fifo!');
  const back = Buffer.alloc(8);
  t.equal(sys.read(fd, back, 0, 8), 5, 'the FIFO still holds its data');
});
