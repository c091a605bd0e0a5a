// pagemap normalization, page reads from pages-<n>.img, show -c contents, and the parent link.
import { mkdirSync, readlinkSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { ImageError } from '../../../src/errors.js';
import {
  ImageWriter,
  PAGE_SIZE,
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT,
  listImages,
  pagemapEntry,
  pagemapRun,
  parentChain,
  parentDir,
  readPagemap,
  readPages,
  readParentLink,
  showImage,
  writeImage,
  writeParentLink,
} from '../../../src/images/index.js';

t.test('pagemap entries follow CRIU 4.x compatibility rules', async (t) => {
  t.same(pagemapRun({ vaddr: 0x1000n, compat_nr_pages: 3 }), { vaddr: 0x1000n, nrPages: 3, flags: PE_PRESENT });
  t.same(pagemapRun({ vaddr: 0x1000n, compat_nr_pages: 3, in_parent: true }), {
    vaddr: 0x1000n,
    nrPages: 3,
    flags: PE_PARENT,
  });
  t.same(pagemapRun({ vaddr: 0x1000n, compat_nr_pages: 0, nr_pages: 7n, flags: PE_LAZY | PE_PRESENT }), {
    vaddr: 0x1000n,
    nrPages: 7,
    flags: 6,
  });
  // Written with the count in both fields: CRIU 4.x reads nr_pages, criu 3.x the old one.
  t.same(pagemapEntry({ vaddr: 0x2000n, nrPages: 2, flags: 4 }), {
    vaddr: 0x2000n,
    compat_nr_pages: 2,
    flags: 4,
    nr_pages: 2n,
  });
  t.equal(pagemapEntry({ vaddr: 0n, nrPages: 2 ** 32, flags: 4 })['compat_nr_pages'], 0, 'a count over u32: 0 there');
});

async function makeDump(dir: string): Promise<void> {
  await writeImage(join(dir, 'pagemap-7.img'), 'PAGEMAP', [
    { pages_id: 1 },
    pagemapEntry({ vaddr: 0x10000n, nrPages: 2, flags: PE_PRESENT }),
    pagemapEntry({ vaddr: 0x20000n, nrPages: 1, flags: PE_PARENT }),
    pagemapEntry({ vaddr: 0x30000n, nrPages: 1, flags: PE_PRESENT | PE_LAZY }),
  ]);
  const w = await ImageWriter.create(join(dir, 'pages-1.img'), 'PAGES');
  const p0 = Buffer.alloc(PAGE_SIZE, 0);
  p0.write('hello, page', 0);
  await w.appendRaw(p0);
  await w.appendRaw(Buffer.alloc(PAGE_SIZE, 0x41));
  await w.appendRaw(Buffer.alloc(PAGE_SIZE, 0xff));
  await w.commit();
}

t.test('pages are read by page offset', async (t) => {
  const dir = t.testdir({});
  await makeDump(dir);
  const pm = await readPagemap(join(dir, 'pagemap-7.img'));
  t.equal(pm.pagesId, 1);
  t.equal(pm.runs.length, 3);
  const two = await readPages(dir, 1, 1, 2);
  t.equal(two.length, 2 * PAGE_SIZE);
  t.equal(two[0], 0x41);
  t.equal(two[PAGE_SIZE], 0xff);
  await t.rejects(readPages(dir, 1, 2, 2), ImageError);
  const kinds = (await listImages(dir)).map((f) => [f.name, f.kind?.name]);
  t.same(kinds, [
    ['pagemap-7.img', 'PAGEMAP'],
    ['pages-1.img', 'PAGES'],
  ]);
});

t.test('show -c adds hexdump contents to pages in the pages file', async (t) => {
  const dir = t.testdir({});
  await makeDump(dir);
  const doc = await showImage(join(dir, 'pagemap-7.img'), { pages: true });
  const [, a, b, c] = doc.entries;
  t.same(a?.['contents'], [
    '0000000000010000  68 65 6c 6c 6f 2c 20 70  61 67 65 00 00 00 00 00  |hello, page.....|',
    '0000000000010010  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|',
    '*',
    '0000000000011000  41 41 41 41 41 41 41 41  41 41 41 41 41 41 41 41  |AAAAAAAAAAAAAAAA|',
    '*',
  ]);
  t.notOk(b && 'contents' in b, 'pages in the parent have no contents here');
  t.equal(
    (c?.['contents'] as string[])[0],
    '0000000000030000  ff ff ff ff ff ff ff ff  ff ff ff ff ff ff ff ff  |................|',
  );
  t.equal(a?.['flags'], 'PE_PRESENT');
  const plain = await showImage(join(dir, 'pagemap-7.img'));
  t.notOk('contents' in (plain.entries[1] ?? {}), 'no contents without -c');
});

t.test('parent link', async (t) => {
  const root = t.testdir({});
  for (const d of ['1', '2', '3']) mkdirSync(join(root, d));
  t.equal(await readParentLink(join(root, '1')), null);
  t.equal(await parentDir(join(root, '1')), null);
  t.equal(await writeParentLink(join(root, '2'), join(root, '1')), '../1', 'absolute becomes relative');
  t.equal(readlinkSync(join(root, '2', 'parent')), '../1');
  await writeParentLink(join(root, '3'), '../2');
  t.equal(await parentDir(join(root, '3')), join(root, '2'));
  t.same(await parentChain(join(root, '3')), [join(root, '2'), join(root, '1')]);
  symlinkSync('../3', join(root, '1', 'parent'));
  t.same(await parentChain(join(root, '3')), [join(root, '2'), join(root, '1')], 'loops are cut');
  await writeParentLink(join(root, '3'), '../gone');
  t.equal(await parentDir(join(root, '3')), null, 'a dangling link is no parent');
});
