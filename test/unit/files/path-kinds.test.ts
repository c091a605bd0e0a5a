/**
 * The pure parts of the path-based fd kinds (reg.ts, ghost.ts, memfd.ts, task-io.ts,
 * image-sink.ts): flag and device arithmetic, data runs, and the images the sink writes.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { devMajor, devMinor, kdev } from '../../../src/files/dev.js';
import { dataChunks } from '../../../src/files/ghost.js';
import { localImageSink } from '../../../src/files/image-sink.js';
import { shmemPagemapFileName } from '../../../src/images/index.js';
import { memfdName, readNonZeroPages } from '../../../src/files/memfd.js';
import { isMemfdLink, isTtyRdev } from '../../../src/files/reg.js';
import { reopenFlags } from '../../../src/files/task-io.js';
import { readImage, readPagemap, readPages } from '../../../src/images/index.js';

t.test('reopenFlags drops O_CLOEXEC, creation flags and O_TMPFILE', async (t) => {
  t.equal(reopenFlags(0o2100002), 0o100002, 'O_RDWR | O_LARGEFILE without O_CLOEXEC');
  t.equal(reopenFlags(0o102101), 0o102001, 'O_CREAT | O_WRONLY | O_APPEND: O_CREAT dropped');
  t.equal(reopenFlags(0o20200002 | 0o100000), 0o100002, 'O_TMPFILE (with its O_DIRECTORY) dropped');
  t.equal(reopenFlags(0o200000), 0o200000, 'a plain O_DIRECTORY stays');
});

t.test('device numbers', async (t) => {
  // /dev/null is 1:3; a large minor uses the high bits (glibc makedev).
  t.equal(devMajor(0x103n), 1);
  t.equal(devMinor(0x103n), 3);
  // glibc makedev: major bits 0-11 at 8, the rest at 44; minor bits 0-7 at 0, the rest at 20.
  const makedev = (ma: bigint, mi: bigint): bigint =>
    ((ma & 0xfffn) << 8n) | ((ma & ~0xfffn) << 32n) | (mi & 0xffn) | ((mi & ~0xffn) << 12n);
  t.equal(devMajor(makedev(0x1234n, 0x10003n)), 0x1234);
  t.equal(devMinor(makedev(0x1234n, 0x10003n)), 0x10003);
  t.equal(kdev(0x103n), (1 << 20) | 3, "CRIU's MKKDEV");
  t.equal(kdev(0xfe00n), 254 << 20, '254:0');
  t.ok(isTtyRdev(0x8800n), '/dev/pts/0 (136:0)');
  t.ok(isTtyRdev(0x500n), '/dev/tty (5:0)');
  t.ok(isTtyRdev(0x401n), '/dev/tty1 (4:1)');
  t.notOk(isTtyRdev(0x103n), '/dev/null');
  t.notOk(isTtyRdev(0x109n), '/dev/urandom');
});

t.test('memfd links and names', async (t) => {
  t.ok(isMemfdLink('/memfd:zoo (deleted)'));
  t.notOk(isMemfdLink('/memfd:zoo'), 'a real file named so');
  t.notOk(isMemfdLink('/tmp/memfd:zoo (deleted)'));
  t.equal(memfdName('/memfd:zoo (deleted)'), 'zoo');
  t.equal(memfdName('/memfd: (deleted)'), '');
  t.equal(memfdName('/memfd:a (deleted) (deleted)'), 'a (deleted)');
});

t.test('dataChunks finds runs of non-zero 4 KiB blocks', async (t) => {
  const b = Buffer.alloc(5 * 4096 + 100);
  t.same(dataChunks(b), [], 'all zero: nothing stored');
  b[1] = 1;
  b[4096 + 5] = 1;
  b[3 * 4096] = 1;
  b[5 * 4096 + 99] = 1;
  t.same(dataChunks(b), [
    { off: 0, len: 8192 },
    { off: 3 * 4096, len: 4096 },
    { off: 5 * 4096, len: 100 },
  ]);
});

t.test('readNonZeroPages and the shmem images round-trip', async (t) => {
  const dir = t.testdir({ 'data.bin': '' });
  const fd = openSync(join(dir, 'data.bin'), 'w+');
  const data = Buffer.alloc(300 * 4096 + 10);
  for (const page of [0, 1, 2, 256, 257, 300]) data.fill(page % 251 || 7, page * 4096, page * 4096 + 10);
  writeSync(fd, data, 0, data.length, 0);
  const runs = readNonZeroPages(fd, data.length);
  closeSync(fd);
  t.same(
    runs.map((r) => [r.pageIndex, r.data.length / 4096]),
    [
      [0, 3],
      [256, 2],
      [300, 1],
    ],
    'runs across the 256-page read chunks',
  );
  let pagesId = 41;
  const sink = localImageSink(dir, () => ++pagesId);
  await sink.writeShmemPages(77n, runs);
  const pagemap = await readPagemap(join(dir, shmemPagemapFileName(77n)));
  t.equal(pagemap.pagesId, 42);
  t.same(
    pagemap.runs.map((r) => [r.vaddr, r.nrPages, r.flags]),
    [
      [0n, 3, 4],
      [256n * 4096n, 2, 4],
      [300n * 4096n, 1, 4],
    ],
  );
  const pages = await readPages(dir, 42, 3, 2);
  t.same(pages, data.subarray(256 * 4096, 258 * 4096), 'pages in pagemap order');
  if (existsSync('/usr/bin/crit')) {
    const json = JSON.parse(
      execFileSync('/usr/bin/crit', ['decode', '-i', join(dir, 'pagemap-shmem-77.img')], { encoding: 'utf8' }),
    );
    t.equal(json.magic, 'PAGEMAP', 'crit reads the shmem pagemap');
  }
});

t.test('the sink writes per-id images', async (t) => {
  const dir = t.testdir({});
  const sink = localImageSink(dir, () => 1);
  await sink.writeImage('GHOST_FILE', 26, [
    { entry: { uid: 0, gid: 0, mode: 0o100644, chunks: true, size: 5n } },
    { entry: { len: 5n, off: 0n }, extra: Buffer.from('hello') },
  ]);
  const { records } = await readImage(join(dir, 'ghost-file-1a.img'), 'GHOST_FILE');
  t.equal(records.length, 2);
  t.same(records[1]?.extra, Buffer.from('hello'));
});
