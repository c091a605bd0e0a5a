// Page server and client over 127.0.0.1: pages read from a live process land in pagemap/pages
// images that our reader and Debian's crit decode; the parent chain; the token step; and every
// way a session can go wrong (dropped, garbage, wrong page count, no CLOSE, full disk) ends in one
// clear error with nothing left in the images directory.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { ImageError, ProtocolError } from '../../../src/errors.js';
import { PE_PARENT, PE_PRESENT, readPagemap } from '../../../src/images/index.js';
import { PageServerClient } from '../../../src/pageserver/client.js';
import { addIov, closeIov, controlIov, encodeIov, type Dst } from '../../../src/pageserver/protocol.js';
import { PageServer } from '../../../src/pageserver/server.js';
import { Connection } from '../../../src/pageserver/socket.js';
import { files, pages, startServer } from '../../helpers/page-server.js';
import { memTouchRange, memoryOf, startFixture } from '../../helpers/fixture.js';

const PAGE = 4096;

const task = (id: number): Dst => ({ type: 'task', id });

t.test('pages of a live process: round trip, our reader and crit agree', async (t) => {
  const dir = t.testdir();
  const fx = await startFixture('mem_touch', ['8', '1']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const { start, nrPages } = memTouchRange(fx);

  const { server, outcome } = await startServer({ imagesDir: dir });
  t.equal(server.address, '127.0.0.1', 'loopback unless told otherwise');
  const client = await PageServerClient.connect({ port: server.port });
  t.same(await client.open(task(fx.pid)), { hasParent: false });
  // Two runs with a gap, then the rest: three records, two of them contiguous (merged).
  const half = nrPages / 2;
  await client.sendPagemap(fx.pid, [
    { vaddr: start, nrPages: 10, flags: PE_PRESENT },
    { vaddr: start + BigInt(20 * PAGE), nrPages: half - 20, flags: PE_PRESENT },
  ]);
  await client.addPresentRuns(fx.pid, [{ vaddr: start + BigInt(half * PAGE), nrPages: nrPages - half }]);
  await client.close();
  const summary = await outcome;
  if (summary instanceof Error) throw summary;
  t.equal(summary.nrPagesReceived, nrPages - 10);
  t.same(files(dir), [`pagemap-${fx.pid}.img`, 'pages-1.img'], 'the two images, no temporary file');

  const pm = await readPagemap(join(dir, `pagemap-${fx.pid}.img`));
  t.equal(pm.pagesId, 1);
  t.same(pm.runs, [
    { vaddr: start, nrPages: 10, flags: PE_PRESENT },
    { vaddr: start + BigInt(20 * PAGE), nrPages: nrPages - 20, flags: PE_PRESENT },
  ]);
  t.ok(
    readFileSync(join(dir, 'pages-1.img')).equals(memoryOf(fx.pid, pm.runs)),
    'pages-1.img holds the process memory',
  );

  if (!existsSync('/usr/bin/crit')) {
    t.skip('crit (Debian criu 3.17) is not installed', () => undefined);
  } else {
    const json = JSON.parse(
      execFileSync('/usr/bin/crit', ['decode', '-i', join(dir, `pagemap-${fx.pid}.img`)], { encoding: 'utf8' }),
    ) as { magic: string; entries: Record<string, unknown>[] };
    t.equal(json.magic, 'PAGEMAP');
    t.same(json.entries[0], { pages_id: 1 });
    // crit 3.17 knows vaddr and flags; nr_pages is CRIU 4.x's field 5 (compat_nr_pages is 0).
    t.match(json.entries.slice(1), [
      { vaddr: Number(start), flags: PE_PRESENT },
      { vaddr: Number(start + BigInt(20 * PAGE)), flags: PE_PRESENT },
    ]);
  }
  fx.write('\n');
  t.equal((await fx.exited()).code, 0, 'the process is untouched');
});

t.test('images are 0600, a shmem pagemap, bytes from a Buffer', async (t) => {
  const dir = t.testdir();
  const { server, outcome } = await startServer({ imagesDir: dir });
  const client = await PageServerClient.connect({ port: server.port });
  await client.open({ type: 'shmem', id: 5 });
  await client.addPresentBytes(0n, pages(2, 1));
  await client.addPresentBytes(0x2000n, pages(1, 3));
  await client.addLazy(0x3000n, 4);
  await client.open(task(7));
  await client.addPresentBytes(0x10000n, pages(1, 9));
  await client.close();
  const summary = await outcome;
  if (summary instanceof Error) throw summary;
  t.same(files(dir), ['pagemap-7.img', 'pagemap-shmem-5.img', 'pages-1.img', 'pages-2.img']);
  const shm = await readPagemap(join(dir, 'pagemap-shmem-5.img'));
  t.same(shm.runs, [
    { vaddr: 0n, nrPages: 3, flags: PE_PRESENT },
    { vaddr: 0x3000n, nrPages: 4, flags: 2 },
  ]);
  t.ok(readFileSync(join(dir, `pages-${shm.pagesId}.img`)).equals(Buffer.concat([pages(2, 1), pages(1, 3)])));
  const other = await readPagemap(join(dir, 'pagemap-7.img'));
  t.not(other.pagesId, shm.pagesId, 'each pagemap has its own pages file');
  for (const f of files(dir))
    t.equal(execFileSync('stat', ['-c', '%a', join(dir, f)], { encoding: 'utf8' }).trim(), '600', `${f} is 0600`);
});

t.test('parent: link, OPEN2/PARENT answers, PE_PARENT checked against the parent', async (t) => {
  const root = t.testdir({ d1: {}, d2: {}, d3: {} });
  {
    const { server, outcome } = await startServer({ imagesDir: join(root, 'd1') });
    const c = await PageServerClient.connect({ port: server.port });
    t.same(await c.open(task(42)), { hasParent: false });
    await c.addPresentBytes(0x10000n, pages(8, 0));
    await c.close();
    t.notOk((await outcome) instanceof Error);
  }
  {
    const { server, outcome } = await startServer({ imagesDir: join(root, 'd2'), prevImagesDir: '../d1' });
    const c = await PageServerClient.connect({ port: server.port });
    t.equal(await c.hasParent(task(42)), true, 'PARENT: the parent has pagemap-42');
    t.equal(await c.hasParent(task(43)), false, 'PARENT: not pagemap-43');
    t.same(await c.open(task(42)), { hasParent: true });
    await c.addParent(0x10000n, 2);
    await c.addPresentBytes(0x12000n, pages(1, 7));
    await c.addParent(0x13000n, 5);
    await c.close();
    const s = await outcome;
    if (s instanceof Error) throw s;
    t.equal(readlinkSync(join(root, 'd2', 'parent')), '../d1', 'parent link as given, relative to the images dir');
    t.same((await readPagemap(join(root, 'd2', 'pagemap-42.img'))).runs, [
      { vaddr: 0x10000n, nrPages: 2, flags: PE_PARENT },
      { vaddr: 0x12000n, nrPages: 1, flags: PE_PRESENT },
      { vaddr: 0x13000n, nrPages: 5, flags: PE_PARENT },
    ]);
  }
  {
    // Pages said to be in the parent that the parent does not hold: refused, nothing stored.
    const { server, outcome } = await startServer({ imagesDir: join(root, 'd3'), prevImagesDir: '../d2' });
    const c = await PageServerClient.connect({ port: server.port });
    t.same(await c.open(task(42)), { hasParent: true });
    await c.addParent(0x17000n, 2); // d2 covers up to 0x18000
    await c.close().catch(() => undefined);
    const err = await outcome;
    t.type(err, ProtocolError);
    t.match((err as Error).message, /the parent image does not hold these pages/);
    t.same(files(join(root, 'd3')), ['parent'], 'only the link');
  }
});

t.test('token: accepted with it, refused without it or with another', async (t) => {
  const dir = t.testdir();
  {
    const { server, outcome } = await startServer({ imagesDir: dir, token: 's3cret' });
    const c = await PageServerClient.connect({ port: server.port, token: 's3cret' });
    await c.open(task(1));
    await c.addPresentBytes(0x1000n, pages(1, 1));
    await c.close();
    t.notOk((await outcome) instanceof Error, 'the right token');
  }
  for (const [name, token] of [
    ['no token (a plain CRIU client)', undefined],
    ['another token', 'guess'],
  ] as const) {
    const d = t.testdir();
    const { server, outcome } = await startServer({ imagesDir: d, token: 's3cret' });
    const attempt = (async () => {
      const c = await PageServerClient.connect({ port: server.port, ...(token === undefined ? {} : { token }) });
      await c.open(task(1));
      await c.addPresentBytes(0x1000n, pages(1, 1));
      await c.close();
    })();
    await t.rejects(attempt, ProtocolError, `${name}: the client fails`);
    const err = await outcome;
    t.type(err, ProtocolError, `${name}: the server refuses`);
    t.match((err as Error).message, /refused/);
    t.same(files(d), [], `${name}: nothing stored`);
  }
  {
    // A client with a token against a server without one: a clear error, not a hang.
    const d = t.testdir();
    const { server, outcome } = await startServer({ imagesDir: d });
    await t.rejects(PageServerClient.connect({ port: server.port, token: 's3cret' }), /hung up on the token/);
    t.type(await outcome, ProtocolError);
  }
});

/** Send raw bytes to a fresh server, close, and return the server's error. */
async function rawSession(t: Test, bytes: Buffer[], opts: { isHalfClose?: boolean } = {}): Promise<Error> {
  const dir = t.testdir();
  const { server, outcome } = await startServer({ imagesDir: dir, idleTimeoutMs: 5000 });
  const conn = await Connection.connect('127.0.0.1', server.port);
  await conn.writeAll(bytes).catch(() => undefined);
  if (opts.isHalfClose === true) conn.shutdown(1);
  else conn.close();
  const result = await outcome;
  conn.close();
  t.same(files(dir), [], 'nothing stored, no temporary file left');
  if (!(result instanceof Error)) throw new Error('the session succeeded');
  return result;
}

t.test('bad sessions end in one clear error and leave nothing', async (t) => {
  const open = encodeIov(controlIov('OPEN', task(9)));
  const hdr = (n: number): Buffer => encodeIov(addIov(task(9), 0x1000n, n, PE_PRESENT));

  let err = await rawSession(t, [open, hdr(4), pages(1, 0)]);
  t.type(err, ProtocolError, 'dropped mid-stream');
  t.match(err.message, /closed after 4096 of the 16384 bytes/);

  err = await rawSession(t, [open, hdr(4), pages(2, 0), encodeIov(closeIov())]);
  t.type(err, ProtocolError, 'fewer pages than announced, then CLOSE');
  t.match(err.message, /closed after 8216 of the 16384 bytes/);

  err = await rawSession(t, [open, hdr(1), pages(2, 0), encodeIov(closeIov())]);
  t.type(err, ProtocolError, 'more pages than announced: the surplus is read as a header');
  t.match(err.message, /unknown command word|closed in the middle/);

  err = await rawSession(t, [open, hdr(2), pages(2, 0)]);
  t.type(err, ProtocolError, 'no CLOSE');
  t.match(err.message, /closed before CLOSE: nothing was stored/);

  err = await rawSession(t, [Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n')]);
  t.type(err, ProtocolError, 'garbage');
  t.match(err.message, /unknown command word/);

  err = await rawSession(t, [open, hdr(2), pages(2, 0), encodeIov(addIov(task(9), 0x1000n, 1, PE_PRESENT))]);
  t.type(err, ProtocolError, 'records out of address order');
  t.match(err.message, /overlaps or precedes/);

  err = await rawSession(t, [open, Buffer.alloc(10)]);
  t.type(err, ProtocolError, 'half a header');
  t.match(err.message, /in the middle of a header \(10 bytes\)/);

  err = await rawSession(t, [open, hdr(1)], { isHalfClose: false });
  t.type(err, ProtocolError);
});

t.test('a full disk: ImageError, temporary files removed, the client told', async (t) => {
  // Not under t.testdir(): the mount must be gone before tap removes the test's directory.
  const small = mkdtempSync(join(tmpdir(), 'criu-ts-full-disk-'));
  const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', small]);
  if (mount.status !== 0) {
    rmSync(small, { recursive: true });
    t.skip(
      `cannot mount a small tmpfs (mount(2), needs CAP_SYS_ADMIN): ${mount.stderr.toString().trim()}`,
      () => undefined,
    );
    return;
  }
  t.teardown(() => {
    spawnSync('umount', [small]);
    rmSync(small, { recursive: true });
  });
  const { server, outcome } = await startServer({ imagesDir: small });
  const c = await PageServerClient.connect({ port: server.port });
  await c.open(task(3));
  const sent = (async () => {
    await c.addPresentBytes(0x100000n, pages(256, 0)); // 1 MiB into 256 KiB
    await c.close();
  })();
  await t.rejects(sent, ProtocolError, 'the client fails');
  const err = await outcome;
  t.type(err, ImageError);
  t.match((err as Error).message, /pages-1\.img.*the file system refused it/);
  t.match(String(((err as Error).cause as Error).message), /ENOSPC/);
  t.same(files(small), [], 'no temporary file');
});

t.test('a server nobody connects to can be closed', async (t) => {
  const server = await PageServer.listen({ imagesDir: t.testdir(), port: 0 });
  const served = server.serve();
  server.close();
  await t.rejects(served);
});

t.test('sendPagemap: records in order across batches; vanished pages', async (t) => {
  const dir = t.testdir();
  const fx = await startFixture('mem_touch', ['16', '1']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const { start } = memTouchRange(fx);
  const at = (page: number): bigint => start + BigInt(page * PAGE);
  const { server, outcome } = await startServer({ imagesDir: dir });
  const c = await PageServerClient.connect({ port: server.port });
  await c.open(task(fx.pid));
  // A run longer than a 4 MiB batch between two records without data.
  const res = await c.sendPagemap(fx.pid, [
    { vaddr: at(0), nrPages: 3, flags: PE_PRESENT },
    { vaddr: at(3), nrPages: 5, flags: 2 },
    { vaddr: at(8), nrPages: 3000, flags: PE_PRESENT },
    { vaddr: at(3008), nrPages: 2, flags: 2 },
  ]);
  t.same(res, { nrPagesSent: 3003, nrPagesGone: 0 });
  // Pages unmapped meanwhile (here: above the user address space, never mapped): with
  // isRunning they are sent as zeros, otherwise the task is said to be unreadable.
  const gone = await c.sendPagemap(
    fx.pid,
    [
      { vaddr: at(3100), nrPages: 2, flags: PE_PRESENT },
      { vaddr: 0x800000000000n, nrPages: 2, flags: PE_PRESENT },
    ],
    { isRunning: true },
  );
  t.same(gone, { nrPagesSent: 4, nrPagesGone: 2 });
  await c.close();
  const s = await outcome;
  if (s instanceof Error) throw s;
  const pm = await readPagemap(join(dir, `pagemap-${fx.pid}.img`));
  t.same(pm.runs, [
    { vaddr: at(0), nrPages: 3, flags: PE_PRESENT },
    { vaddr: at(3), nrPages: 5, flags: 2 },
    { vaddr: at(8), nrPages: 3000, flags: PE_PRESENT },
    { vaddr: at(3008), nrPages: 2, flags: 2 },
    { vaddr: at(3100), nrPages: 2, flags: PE_PRESENT },
    { vaddr: 0x800000000000n, nrPages: 2, flags: PE_PRESENT },
  ]);
  const img = readFileSync(join(dir, 'pages-1.img'));
  t.equal(img.length, 3007 * PAGE);
  t.ok(img.subarray(3005 * PAGE).equals(Buffer.alloc(2 * PAGE)), 'vanished pages are zeros');
  // mem_touch writes (page index & 0xff) into the first byte of every page.
  t.equal(img[3 * PAGE], 8, 'page 8 follows page 2 in the pages file');

  const d2 = t.testdir();
  const second = await startServer({ imagesDir: d2 });
  const c2 = await PageServerClient.connect({ port: second.server.port });
  await c2.open(task(fx.pid));
  await t.rejects(c2.sendPagemap(fx.pid, [{ vaddr: 0x800000000000n, nrPages: 1, flags: PE_PRESENT }]), {
    code: 'ETASK',
  });
  c2.abort();
  t.type(await second.outcome, ProtocolError, 'the server sees a session without CLOSE');
  t.same(files(d2), []);
});
