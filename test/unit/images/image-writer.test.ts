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

// ---- the fast paths (flat-message encoder, writeImagesSync) ---------------------------------------

import { encodeFlatEntry, writeImagesSync } from '../../../src/images/image-writer.js';
import { encodeEntry } from '../../../src/images/entry-codec.js';
import { messageType } from '../../../src/images/schema.js';

t.test('encodeFlatEntry: byte-identical to encodeEntry for flat messages', async (t) => {
  const pm = messageType('pagemap_entry');
  let seed = 12345;
  const rnd = (): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed;
  };
  for (let i = 0; i < 2000; i++) {
    const e: Record<string, unknown> = {
      vaddr: BigInt(rnd()) * BigInt(rnd() % 65536), // below 2^47, as user addresses are
      compat_nr_pages: rnd() % 3 === 0 ? 0 : rnd() >>> (rnd() % 31),
    };
    if (rnd() % 2 === 0) e['flags'] = rnd() % 16;
    if (rnd() % 3 === 0) e['in_parent'] = rnd() % 2 === 0;
    if (rnd() % 2 === 0) e['nr_pages'] = BigInt(rnd() % 100000);
    const fast = encodeFlatEntry(pm, e as never);
    t.not(fast, null, 'pagemap_entry is flat');
    if (!Buffer.from(fast ?? []).equals(encodeEntry(pm, e as never))) {
      t.fail(`entry ${JSON.stringify(e, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v))} differs`);
      return;
    }
  }
  // Edges: the largest uint32 and the largest safe uint64; 0 values are still written (proto2).
  for (const e of [
    { vaddr: 0n, compat_nr_pages: 0xffff_ffff },
    { vaddr: BigInt(Number.MAX_SAFE_INTEGER), compat_nr_pages: 0, flags: 0, nr_pages: 0n },
  ])
    t.same(Buffer.from(encodeFlatEntry(pm, e) ?? []), encodeEntry(pm, e));
});

t.test('encodeFlatEntry: leaves to encodeEntry what it does not handle', async (t) => {
  const pm = messageType('pagemap_entry');
  t.equal(encodeFlatEntry(pm, { compat_nr_pages: 1 }), null, 'required field missing');
  t.equal(encodeFlatEntry(pm, { vaddr: 1n, compat_nr_pages: 1, bogus: 3 }), null, 'unknown field');
  t.equal(encodeFlatEntry(pm, { vaddr: -1n, compat_nr_pages: 1 }), null, 'negative');
  t.equal(encodeFlatEntry(pm, { vaddr: 1n << 60n, compat_nr_pages: 1 }), null, 'beyond 2^53 (encodeEntry does it)');
  t.equal(encodeFlatEntry(pm, { vaddr: 1n, compat_nr_pages: 2 ** 32 }), null, 'uint32 overflow');
  t.equal(encodeFlatEntry(pm, { vaddr: 1n, compat_nr_pages: '1' as never }), null, 'wrong kind of value');
  t.equal(encodeFlatEntry(messageType('mm_entry'), { mm_start_code: 1n }), null, 'not a flat message');
});

t.test('writeImagesSync: every image readable, no temporary file left', async (t) => {
  const dir = t.testdir();
  const runs = Array.from({ length: 3000 }, (_, i) => ({
    entry: { vaddr: BigInt(i) * 8192n, compat_nr_pages: 0, flags: 2, nr_pages: 1n },
  }));
  writeImagesSync([
    { path: join(dir, 'pagemap-1.img'), kind: 'PAGEMAP', entries: [{ entry: { pages_id: 1 } }, ...runs] },
    { path: join(dir, 'ids-1.img'), kind: 'IDS', entries: [{ vm_id: 2, files_id: 2, fs_id: 2, sighand_id: 2 }] },
  ]);
  t.same(readdirSync(dir).sort(), ['ids-1.img', 'pagemap-1.img']);
  const got = await readEntries(join(dir, 'pagemap-1.img'), 'PAGEMAP');
  t.equal(got.length, 3001);
  t.same(got[2999], runs[2998]?.entry);
  t.equal(statSync(join(dir, 'ids-1.img')).mode & 0o777, 0o600);
  // A bad entry: nothing of the batch is written.
  t.throws(() =>
    writeImagesSync([
      { path: join(dir, 'a.img'), kind: 'IDS', entries: [{ vm_id: 1 }] },
      { path: join(dir, 'b.img'), kind: 'IDS', entries: [{ vm_id: 'x' as never }] },
    ]),
  );
  t.same(readdirSync(dir).sort(), ['ids-1.img', 'pagemap-1.img']);
});
