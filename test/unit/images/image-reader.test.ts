// Reading images: headers, entries, payloads, streaming, and every error naming file and offset.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { ImageError } from '../../../src/errors.js';
import {
  decodeEntry,
  encodeEntry,
  ImageReader,
  messageType,
  openImage,
  readEntries,
  readImage,
  writeImage,
} from '../../../src/images/index.js';

const u32 = (...ns: number[]): Buffer => {
  const b = Buffer.alloc(ns.length * 4);
  ns.forEach((n, i) => b.writeUInt32LE(n >>> 0, i * 4));
  return b;
};
const COMMON = 0x54564319;
const FS = 0x51403912;
const fsBody = encodeEntry(messageType('fs_entry'), { cwd_id: 1, root_id: 2, umask: 0o22 });

async function imageError(t: Test, bytes: Buffer, expect?: string): Promise<ImageError> {
  const dir = t.testdir({});
  const path = join(dir, 'x.img');
  writeFileSync(path, bytes);
  try {
    await readImage(path, expect);
  } catch (err) {
    t.type(err, ImageError);
    t.equal((err as ImageError).file, path, 'names the file');
    t.equal((err as ImageError).code, 'EIMAGE');
    return err as ImageError;
  }
  throw new Error('no error');
}

t.test('the fs_entry fixture is the byte layout CRIU writes', async (t) => {
  // u32 magics, u32 length, then fields 1..3 as varints: 08 01 10 02 18 12.
  t.equal(
    Buffer.concat([u32(COMMON, FS, fsBody.length), fsBody]).toString('hex'),
    '19435654123940510600000008011002' + '1812',
  );
});

t.test('reads entries and names the kind', async (t) => {
  const dir = t.testdir({});
  const path = join(dir, 'fs-1.img');
  writeFileSync(path, Buffer.concat([u32(COMMON, FS, fsBody.length), fsBody]));
  const { kind, records } = await readImage(path);
  t.equal(kind.name, 'FS');
  t.same(records[0]?.entry, { cwd_id: 1, root_id: 2, umask: 0o22 });
  t.equal(records[0]?.offset, 8);
  t.same(await readEntries(path, 'FS'), [{ cwd_id: 1, root_id: 2, umask: 0o22 }]);
});

t.test('errors', async (t) => {
  let e = await imageError(t, Buffer.alloc(0));
  t.match(e.message, /empty/);
  e = await imageError(t, Buffer.from([0x19, 0x43]));
  t.match(e.message, /too short/);
  e = await imageError(t, u32(0x12345678, 0));
  t.match(e.message, /unknown image magic 0x12345678/);
  t.equal(e.offset, 0);
  e = await imageError(t, u32(COMMON, 0x11111111));
  t.match(e.message, /unknown image magic 0x11111111/);
  t.equal(e.offset, 4);
  e = await imageError(t, u32(COMMON, FS), 'CORE');
  t.match(e.message, /wrong magic: expected a CORE image, found FS/);
  e = await imageError(t, u32(0x55105940, FS));
  t.match(e.message, /common magic/, 'service magic on a common kind');
  // Entry length word cut short.
  e = await imageError(t, Buffer.concat([u32(COMMON, FS), Buffer.from([5, 0])]));
  t.match(e.message, /entry 0 length is truncated/);
  t.equal(e.offset, 8);
  // Entry longer than the file.
  e = await imageError(t, Buffer.concat([u32(COMMON, FS, fsBody.length), fsBody, u32(1000), Buffer.alloc(10)]));
  t.match(e.message, /entry 1 is longer than the file: 1000 bytes, 10 left/);
  t.equal(e.offset, 8 + 4 + fsBody.length);
  // Protobuf garbage.
  e = await imageError(t, Buffer.concat([u32(COMMON, FS, 3), Buffer.from([0xff, 0xff, 0xff])]));
  t.match(e.message, /entry 0 does not decode as fs_entry/);
  t.equal(e.offset, 8);
  // Missing required field (root_id).
  const partial = Buffer.from([0x08, 0x01, 0x18, 0x12]);
  e = await imageError(t, Buffer.concat([u32(COMMON, FS, partial.length), partial]));
  t.match(e.message, /missing required 'root_id'/);
  // Payload shorter than its entry says (pipes-data).
  const pd = encodeEntry(messageType('pipe_data_entry'), { pipe_id: 7, bytes: 100, size: 4096 });
  e = await imageError(t, Buffer.concat([u32(COMMON, 0x56453709, pd.length), pd, Buffer.alloc(40)]));
  t.match(e.message, /pipe data is truncated: 100 bytes needed, 40 left/);
  t.equal(e.offset, 8 + 4 + pd.length);
  // A payload that holds messages of its own, one of them garbage (ipcns-msg: a truncated varint).
  const desc = Object.fromEntries(
    messageType('ipc_desc_entry')
      .fieldsByNumber.filter((f) => f.required)
      .map((f) => [f.name, f.long ? 0n : 0]),
  );
  const msgHead = encodeEntry(messageType('ipc_msg_entry'), { desc, qbytes: 0, qnum: 1 });
  e = await imageError(t, Buffer.concat([u32(COMMON, 0x55453737, msgHead.length), msgHead, u32(1), Buffer.from([8])]));
  t.match(e.message, /the payload of entry 0 does not decode: index out of range/);
  t.equal(e.offset, 8);
  // Missing file.
  await t.rejects(openImage(join(t.testdir({}), 'nope.img')), ImageError);
  // Raw kinds have no entries.
  await t.rejects(readImage('/dev/null', 'PAGES'), /raw image/);
});

t.test('streams a large image entry by entry', async (t) => {
  const dir = t.testdir({});
  const path = join(dir, 'pagemap-1.img');
  const N = 50_000;
  async function* gen() {
    yield { pages_id: 3 };
    for (let i = 0; i < N; i++)
      yield { vaddr: 0x7f0000000000n + BigInt(i) * 0x2000n, compat_nr_pages: 0, flags: 4, nr_pages: 1n };
  }
  await writeImage(path, 'PAGEMAP', gen());
  const reader = await ImageReader.open(path);
  let n = 0;
  let last: unknown;
  const before = process.memoryUsage().arrayBuffers;
  for await (const r of reader.entries()) {
    n++;
    last = r.entry['vaddr'];
  }
  t.equal(n, N + 1);
  t.equal(last, 0x7f0000000000n + BigInt(N - 1) * 0x2000n);
  t.ok(process.memoryUsage().arrayBuffers - before < 8 * 1024 * 1024, 'bounded buffers');
});

t.test('pipe data payloads are read and written', async (t) => {
  const dir = t.testdir({});
  const path = join(dir, 'pipes-data.img');
  const data = Buffer.from('hello pipe');
  await writeImage(path, 'PIPES_DATA', [
    { entry: { pipe_id: 9, bytes: data.length, size: 65536 }, extra: data },
    { entry: { pipe_id: 10, bytes: 0, size: 4096 } },
  ]);
  const { records } = await readImage(path);
  t.same(
    records.map((r) => r.extra?.toString()),
    ['hello pipe', ''],
  );
});

t.test('fields unknown to the schema survive decode → encode', async (t) => {
  // fs_entry {cwd_id 1, root_id 2, umask 0o22} plus field 99 (varint 5) from a newer CRIU.
  const body = Buffer.concat([fsBody, Buffer.from([0x98, 0x06, 0x05])]);
  const entry = decodeEntry(messageType('fs_entry'), body);
  t.same(entry, { cwd_id: 1, root_id: 2, umask: 0o22 });
  t.ok(encodeEntry(messageType('fs_entry'), entry).equals(body));
});
