/**
 * readNonZeroPages (src/files/memfd.ts), what shared memory and memfd dumps store: the non-zero
 * pages of a file, found where the file has data (SEEK_DATA / SEEK_HOLE) so that holes are never
 * read, merged into runs; and the fd it is given (a task's own description, for a memfd) keeps
 * its offset.
 */
import { closeSync, openSync, rmSync, writeSync, ftruncateSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { readNonZeroPages } from '../../../src/files/memfd.js';
import { PAGE_SIZE } from '../../../src/images/index.js';
import * as sys from '../../../src/sys/native.js';

const SEEK_CUR = 1;

t.test('a sparse tmpfs file: its non-zero pages, holes and zero pages left out, offset kept', async (t) => {
  const dir = mkdtempSync('/dev/shm/criu-ts-nonzero-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'f');
  const fd = openSync(file, 'w+');
  t.teardown(() => closeSync(fd));
  const size = 300 * PAGE_SIZE + 100; // a partial last page
  ftruncateSync(fd, size);
  const page = (byte: number): Buffer => Buffer.alloc(PAGE_SIZE, byte);
  for (const [index, byte] of [
    [0, 1],
    [1, 2],
    [7, 0], // written, but zero: data the run must leave out
    [8, 3],
    [290, 4],
  ] as const)
    writeSync(fd, page(byte), 0, PAGE_SIZE, index * PAGE_SIZE);
  writeSync(fd, Buffer.alloc(100, 5), 0, 100, 300 * PAGE_SIZE);
  sys.lseek(fd, 12345n, 0); // SEEK_SET: the offset a task would have left
  const runs = readNonZeroPages(fd, size);
  t.same(
    runs.map((r) => ({ at: r.pageIndex, pages: r.data.length / PAGE_SIZE, first: r.data[0] })),
    [
      { at: 0, pages: 2, first: 1 },
      { at: 8, pages: 1, first: 3 },
      { at: 290, pages: 1, first: 4 },
      { at: 300, pages: 1, first: 5 },
    ],
  );
  const last = runs.at(-1)?.data;
  t.same([last?.[99], last?.[100]], [5, 0], 'the partial last page, zeros after the end');
  t.equal(sys.lseek(fd, 0n, SEEK_CUR), 12345n, "the fd's offset is as it was");
});

t.test('an empty file has no pages', async (t) => {
  const dir = mkdtempSync('/dev/shm/criu-ts-nonzero-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const fd = openSync(path.join(dir, 'e'), 'w+');
  t.teardown(() => closeSync(fd));
  ftruncateSync(fd, 64 * PAGE_SIZE);
  t.same(readNonZeroPages(fd, 64 * PAGE_SIZE), []);
});
