// Scattered pages through the page server: thousands of small PE_PRESENT records between
// PE_PARENT records (what live migration sends once the task is frozen) round-trip exactly, pages
// and pagemap, whatever the server's receive chunks look like: a header split between two
// chunks, data split, a large record spliced after part of it came in a chunk; and from a live
// process through PageServerClient.sendPagemap.
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import {
  PE_PARENT,
  PE_PRESENT,
  pagemapEntry,
  readPagemap,
  writeImage,
  type PagemapRun,
} from '../../../src/images/index.js';
import { ImageError, ProtocolError } from '../../../src/errors.js';
import { PageServerClient } from '../../../src/pageserver/client.js';
import {
  PS_IOV_SIZE,
  addIov,
  closeIov,
  controlIov,
  decodeI32Reply,
  encodeIov,
  type Dst,
} from '../../../src/pageserver/protocol.js';
import { PageServer, type PageServerSummary } from '../../../src/pageserver/server.js';
import { Connection } from '../../../src/pageserver/socket.js';
import * as sys from '../../../src/sys/native.js';
import { memTouchRange, startFixture } from '../../helpers/fixture.js';

const PAGE = 4096;
const BASE = 0x7f0000000000n;
const at = (page: number): bigint => BASE + BigInt(page * PAGE);

/** Page `n` of the test stream: every byte depends on n and its offset (a misplaced page shows). */
function pageData(n: number, nrPages: number): Buffer {
  const b = Buffer.alloc(nrPages * PAGE);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE((n * 2654435761 + i) >>> 0, i);
  return b;
}

/** Runs merged as the server stores them: consecutive, same flags. */
function merged(records: readonly PagemapRun[]): PagemapRun[] {
  const out: PagemapRun[] = [];
  for (const r of records) {
    const last = out[out.length - 1];
    if (last !== undefined && last.flags === r.flags && last.vaddr + BigInt(last.nrPages * PAGE) === r.vaddr)
      out[out.length - 1] = { ...last, nrPages: last.nrPages + r.nrPages };
    else out.push({ ...r });
  }
  return out;
}

/** A parent images dir whose pagemap for `dst` covers [BASE, BASE + nrPages pages). */
async function parentDir(dir: string, id: number, nrPages: number): Promise<void> {
  await writeImage(join(dir, `pagemap-${id}.img`), 'PAGEMAP', [
    { pages_id: 1 },
    pagemapEntry({ vaddr: BASE, nrPages, flags: PE_PRESENT }),
  ]);
}

t.test('many small records and PARENT records, cut anywhere by the receive chunks', async (t) => {
  const root = t.testdir({ parent: {}, images: {} });
  const id = 77;
  const dst: Dst = { type: 'task', id };
  // 3000 1-page records (12 MiB: several 4 MiB receive chunks), each followed by a PARENT
  // record of 1..5 pages, some present records back to back (merged), a few of 2..3 pages, and
  // two of 100 pages (400 KiB: above the server's splice threshold) in the middle.
  const records: PagemapRun[] = [];
  let page = 0;
  for (let i = 0; i < 3000; i++) {
    const nrPages = i === 1000 || i === 2000 ? 100 : i % 97 === 0 ? 2 + (i % 2) : 1;
    records.push({ vaddr: at(page), nrPages, flags: PE_PRESENT });
    page += nrPages;
    if (i % 7 !== 3) {
      const gap = 1 + (i % 5);
      records.push({ vaddr: at(page), nrPages: gap, flags: PE_PARENT });
      page += gap;
    }
  }
  await parentDir(join(root, 'parent'), id, page);
  const parts: Buffer[] = [];
  const data: Buffer[] = [];
  for (const r of records) {
    parts.push(encodeIov(addIov(dst, r.vaddr, r.nrPages, r.flags)));
    if (r.flags === PE_PRESENT) {
      const d = pageData(Number((r.vaddr - BASE) / BigInt(PAGE)), r.nrPages);
      parts.push(d);
      data.push(d);
    }
  }
  const body = Buffer.concat(parts);
  // Where the body is cut, each piece sent after a pause so that the server's recv ends there.
  const headerAt = (k: number): number => {
    let off = 0;
    for (let i = 0; i < k; i++)
      off += PS_IOV_SIZE + (records[i]!.flags === PE_PRESENT ? records[i]!.nrPages * PAGE : 0);
    return off;
  };
  const bigAt = records.findIndex((r) => r.nrPages === 100);
  const cuts = [
    headerAt(1) + 10, // a header split 10 | 14
    headerAt(2) + 23, // 23 | 1
    headerAt(4) + PS_IOV_SIZE + 1000, // a page split
    headerAt(6) + PS_IOV_SIZE + PAGE - 1, // the last byte of a page apart
    headerAt(8), // exactly at a header
    headerAt(bigAt) + PS_IOV_SIZE + 50 * PAGE + 7, // half of a record the server splices
    headerAt(bigAt + 5) + 3,
    body.length - 5000,
  ].sort((a, b) => a - b);

  const server = await PageServer.listen({ imagesDir: join(root, 'images'), port: 0, prevImagesDir: '../parent' });
  const outcome = server.serve().catch((err: unknown) => err as Error);
  const conn = await Connection.connect('127.0.0.1', server.port);
  t.teardown(() => conn.close());
  await conn.writeAll([encodeIov(controlIov('OPEN2', dst))]);
  t.same([...(await conn.readExact(1, "OPEN2's answer"))], [1], 'the server has the parent');
  let from = 0;
  for (const cut of cuts) {
    await conn.writeAll([body.subarray(from, cut)]);
    await sleep(40);
    from = cut;
  }
  await conn.writeAll([body.subarray(from), encodeIov(closeIov())]);
  t.equal(decodeI32Reply(await conn.readExact(4, "CLOSE's answer")), 0, 'CLOSE answered 0');
  conn.close();
  const summary = await outcome;
  if (summary instanceof Error) throw summary;
  const nrPresent = records.filter((r) => r.flags === PE_PRESENT).reduce((n, r) => n + r.nrPages, 0);
  t.equal((summary as PageServerSummary).nrPagesReceived, nrPresent);
  t.equal(summary.bytesReceived, 24 + body.length + 24, 'every byte counted once');

  const pm = await readPagemap(join(root, 'images', `pagemap-${id}.img`));
  t.same(pm.runs, merged(records), 'the pagemap: every record, consecutive ones merged');
  t.ok(pm.runs.length < records.length, 'some records were merged');
  const img = readFileSync(join(root, 'images', `pages-${pm.pagesId}.img`));
  const want = Buffer.concat(data);
  t.equal(img.length, want.length);
  // Page by page, so that a failure names the first bad page rather than dumping 12 MiB.
  let firstBad = -1;
  for (let i = 0; i < want.length / PAGE && firstBad < 0; i++)
    if (!img.subarray(i * PAGE, (i + 1) * PAGE).equals(want.subarray(i * PAGE, (i + 1) * PAGE))) firstBad = i;
  t.equal(firstBad, -1, 'the pages file holds every page in pagemap order');
});

t.test('a stream that ends inside a small record after many good ones: one error, nothing stored', async (t) => {
  const root = t.testdir({ parent: {}, images: {} });
  const dst: Dst = { type: 'task', id: 5 };
  await parentDir(join(root, 'parent'), 5, 10_000);
  const parts: Buffer[] = [];
  for (let i = 0; i < 2000; i++) {
    parts.push(encodeIov(addIov(dst, at(2 * i), 1, PE_PRESENT)), pageData(i, 1));
    parts.push(encodeIov(addIov(dst, at(2 * i + 1), 1, PE_PARENT)));
  }
  parts.push(encodeIov(addIov(dst, at(4000), 3, PE_PRESENT)), pageData(1, 2));
  const server = await PageServer.listen({
    imagesDir: join(root, 'images'),
    port: 0,
    prevImagesDir: '../parent',
    idleTimeoutMs: 5000,
  });
  const outcome = server.serve().catch((err: unknown) => err as Error);
  const conn = await Connection.connect('127.0.0.1', server.port);
  await conn.writeAll([encodeIov(controlIov('OPEN', dst)), ...parts]);
  conn.shutdown(1);
  const err = await outcome;
  conn.close();
  t.type(err, Error);
  t.match(
    (err as Error).message,
    /closed after 8192 of the 12288 bytes of the pagemap-5\.img record at 0x7f0000fa0000/,
  );
  t.same(readdirSync(join(root, 'images')), ['parent'], 'only the parent link: no image, no temporary file');
});

t.test('sendPagemap from a live process: every 3rd page present, the rest in the parent', async (t) => {
  const root = t.testdir({ d1: {}, d2: {} });
  const fx = await startFixture('mem_touch', ['16', '1']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const { start, nrPages } = memTouchRange(fx);
  const task: Dst = { type: 'task', id: fx.pid };
  const send = async (dir: string, runs: PagemapRun[], prev?: string): Promise<PageServerSummary> => {
    const server = await PageServer.listen({
      imagesDir: dir,
      port: 0,
      ...(prev === undefined ? {} : { prevImagesDir: prev }),
    });
    const outcome = server.serve();
    const c = await PageServerClient.connect({ port: server.port });
    await c.open(task);
    await c.sendPagemap(fx.pid, runs);
    await c.close();
    return outcome;
  };
  await send(join(root, 'd1'), [{ vaddr: start, nrPages, flags: PE_PRESENT }]);
  const runs: PagemapRun[] = [];
  for (let i = 0; i < nrPages; i += 3) {
    runs.push({ vaddr: start + BigInt(i * PAGE), nrPages: 1, flags: PE_PRESENT });
    const gap = Math.min(2, nrPages - i - 1);
    if (gap > 0) runs.push({ vaddr: start + BigInt((i + 1) * PAGE), nrPages: gap, flags: PE_PARENT });
  }
  const summary = await send(join(root, 'd2'), runs, '../d1');
  t.equal(summary.nrPagesReceived, Math.ceil(nrPages / 3));
  const pm = await readPagemap(join(root, 'd2', `pagemap-${fx.pid}.img`));
  t.same(pm.runs, runs, 'one pagemap entry per record (none continues the last with the same flags)');
  const remote = new BigUint64Array(runs.filter((r) => r.flags === PE_PRESENT).flatMap((r) => [r.vaddr, BigInt(PAGE)]));
  const want = Buffer.alloc((remote.length / 2) * PAGE);
  // process_vm_readv takes at most 1024 remote iovecs per call.
  for (let i = 0; i < remote.length / 2; i += 1024)
    sys.processVmReadv(fx.pid, want, i * PAGE, remote.subarray(2 * i, 2 * Math.min(i + 1024, remote.length / 2)));
  t.ok(readFileSync(join(root, 'd2', `pages-${pm.pagesId}.img`)).equals(want), 'the pages are the process memory');
  fx.write('\n');
  t.equal((await fx.exited()).code, 0);
});

t.test('a full disk under small records (written from the receive buffer): ImageError, nothing left', async (t) => {
  // Not under t.testdir(): the mount must be gone before tap removes the test's directory.
  const small = mkdtempSync(join(tmpdir(), 'criu-ts-scattered-full-'));
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
  const server = await PageServer.listen({ imagesDir: small, port: 0 });
  const outcome = server.serve().catch((err: unknown) => err as Error);
  const c = await PageServerClient.connect({ port: server.port });
  await c.open({ type: 'task', id: 3 });
  // 1 MiB in 1-page records, none large enough to be spliced.
  const sent = (async () => {
    for (let i = 0; i < 256; i++) await c.addPresentBytes(at(2 * i), pageData(i, 1));
    await c.close();
  })();
  await t.rejects(sent, ProtocolError, 'the client fails');
  const err = await outcome;
  t.type(err, ImageError);
  t.match((err as Error).message, /pages-1\.img.*the file system refused it/);
  t.match(String(((err as Error).cause as Error).message), /ENOSPC/);
  t.same(readdirSync(small), [], 'no temporary file');
});
