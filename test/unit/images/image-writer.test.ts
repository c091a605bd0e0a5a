// Atomic image writes: temp file, mode 0600, rename on commit; abort and failures leave nothing.
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { EntryShapeError, ImageWriter, readEntries, writeImage } from '../../../src/images/index.js';

const fs1 = { cwd_id: 1, root_id: 2, umask: 0o22 };

t.test('commit publishes a 0600 file and leaves no temp file', async (t) => {
  const dir = t.testdir({});
  const path = join(dir, 'fs-1.img');
  const w = await ImageWriter.create(path, 'FS');
  await w.append(fs1);
  t.notOk(existsSync(path), 'nothing under the final name before commit');
  t.equal(readdirSync(dir).length, 1, 'one temp file');
  t.match(readdirSync(dir)[0], /^\.fs-1\.img\.tmp-\d+\.\d+$/);
  await w.commit();
  t.same(readdirSync(dir), ['fs-1.img']);
  t.equal(statSync(path).mode & 0o777, 0o600);
  t.same(await readEntries(path), [fs1]);
  t.equal(readFileSync(path).toString('hex'), '1943565412394051' + '06000000' + '080110021812');
  await t.rejects(w.append(fs1), /committed/);
});

t.test('abort removes the temp file and keeps an older final file', async (t) => {
  const dir = t.testdir({ 'fs-1.img': 'old' });
  const path = join(dir, 'fs-1.img');
  const w = await ImageWriter.create(path, 'FS');
  await w.append(fs1);
  await w.abort();
  await w.abort();
  t.same(readdirSync(dir), ['fs-1.img']);
  t.equal(readFileSync(path, 'utf8'), 'old');
});

t.test('a failing entry aborts: no final file, no temp file', async (t) => {
  const dir = t.testdir({});
  const path = join(dir, 'fs-1.img');
  const err = await writeImage(path, 'FS', [fs1, { cwd_id: 1 }]).catch((e: unknown) => e);
  t.ok(err instanceof EntryShapeError, 'EntryShapeError');
  t.match(String(err), /fs_entry.root_id: required field is missing/);
  t.same(readdirSync(dir), []);
  await t.rejects(writeImage(path, 'FS', [{ cwd_id: 1, root_id: 'x' }]), /expected an integer/);
  await t.rejects(writeImage(path, 'MM', [{ mm_start_code: 'nope' }]), /64-bit/);
  t.same(readdirSync(dir), []);
});

t.test('a throwing entry source aborts midway', async (t) => {
  const dir = t.testdir({});
  const path = join(dir, 'pstree.img');
  async function* gen() {
    yield { pid: 1, ppid: 0, pgid: 1, sid: 1 };
    throw new Error('producer died');
  }
  await t.rejects(writeImage(path, 'PSTREE', gen()), /producer died/);
  t.same(readdirSync(dir), []);
});

t.test('a large write is flushed in pieces and committed whole', async (t) => {
  const dir = t.testdir({});
  const path = join(dir, 'pages-1.img');
  const w = await ImageWriter.create(path, 'PAGES');
  const page = Buffer.alloc(4096, 0xab);
  for (let i = 0; i < 300; i++) await w.appendRaw(page);
  t.equal(w.sizeBytes, 300 * 4096);
  await w.commit();
  t.equal(statSync(path).size, 300 * 4096, 'raw kinds have no magic');
});

t.test('inventory has only its own magic; stats the service magic', async (t) => {
  const dir = t.testdir({});
  await writeImage(join(dir, 'inventory.img'), 'INVENTORY', [{ img_version: 2 }]);
  t.equal(readFileSync(join(dir, 'inventory.img')).subarray(0, 4).toString('hex'), '16313158');
  await writeImage(join(dir, 'stats-dump'), 'STATS', [
    {
      dump: {
        freezing_time: 1,
        frozen_time: 2,
        memdump_time: 3,
        memwrite_time: 4,
        pages_scanned: 5n,
        pages_skipped_parent: 0n,
        pages_written: 5n,
        irmap_resolve: 0,
        pages_lazy: 0n,
        page_pipes: 1n,
        page_pipe_bufs: 1n,
      },
    },
  ]);
  t.equal(readFileSync(join(dir, 'stats-dump')).subarray(0, 8).toString('hex'), '4059105506330957');
  writeFileSync(join(dir, 'x'), '');
});
