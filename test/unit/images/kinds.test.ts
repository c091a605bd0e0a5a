// The kinds table: every kind resolves its schema; magics and names are unique; file names parse.
import t from 'tap';
import { IMAGE_KINDS, imageFileName, kindOfFileName, kindsByMagic, messageType } from '../../../src/images/index.js';

t.test('every kind names a message type of proto/', async (t) => {
  for (const k of IMAGE_KINDS) {
    if (k.header === 'raw') continue;
    t.ok(messageType(k.type), `${k.name}: ${k.type}`);
    if (k.headType !== undefined) t.ok(messageType(k.headType), `${k.name}: ${k.headType}`);
  }
});

t.test('magics and names are unique', async (t) => {
  const named = IMAGE_KINDS.filter((k) => k.header !== 'raw');
  t.equal(new Set(named.map((k) => k.magic)).size, named.length);
  t.equal(new Set(IMAGE_KINDS.map((k) => k.name)).size, IMAGE_KINDS.length);
  t.equal(kindsByMagic.get(0x56084025)?.name, 'PAGEMAP');
});

t.test('file names', async (t) => {
  t.equal(imageFileName('CORE', 42), 'core-42.img');
  t.equal(imageFileName('TCP_STREAM', 0x1f), 'tcp-stream-1f.img');
  t.equal(imageFileName('INVENTORY'), 'inventory.img');
  t.throws(() => imageFileName('MM'));
  const cases: [string, string | undefined][] = [
    ['pagemap-12.img', 'PAGEMAP'],
    ['pagemap-shmem-5866.img', 'PAGEMAP'],
    ['pages-3.img', 'PAGES'],
    ['stats-dump', 'STATS'],
    ['fdinfo-2.img', 'FDINFO'],
    ['memfd.img', 'MEMFD_INODE'],
    ['parent', undefined],
    ['core-x.img', undefined],
  ];
  for (const [name, kind] of cases) t.equal(kindOfFileName(name)?.name, kind, name);
});
