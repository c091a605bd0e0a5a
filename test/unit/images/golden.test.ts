// CRIU 4.2 golden images (/work/shared/golden): our show output must equal crit 4.2's
// `crit decode --pretty` text, and decode → encode must give back the very same bytes.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import {
  encodeJson,
  formatShow,
  ImageReader,
  ImageWriter,
  parseCritJson,
  showDir,
  showImage,
} from '../../../src/images/index.js';

const GOLDEN = '/work/shared/golden';
const dirs = existsSync(GOLDEN)
  ? readdirSync(GOLDEN)
      .filter((d) => d.startsWith('criu-'))
      .map((d) => join(GOLDEN, d))
  : [];
if (dirs.length === 0) t.plan(0, 'golden images missing: /work/shared/golden/criu-* not found');

for (const dir of dirs) {
  const images = readdirSync(dir).filter((f) => existsSync(join(dir, f + '.json')));
  t.test(dir, async (t) => {
    t.ok(images.length >= 14, 'has images');
    for (const f of images) {
      const path = join(dir, f);
      const gold = readFileSync(path + '.json', 'utf8');
      const doc = await showImage(path);
      t.same(
        JSON.parse(JSON.stringify(doc, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v))),
        JSON.parse(gold),
        `${f}: same JSON as crit 4.2`,
      );
      t.equal(formatShow(doc), gold, `${f}: same text as crit 4.2 --pretty`);
      const orig = readFileSync(path);
      t.ok(encodeJson(gold).equals(orig), `${f}: crit-encoding the golden JSON gives the original bytes`);
      t.same(parseCritJson(gold), doc, `${f}: parsed golden JSON equals our document`);

      // Reader → writer: byte-exact.
      const reader = await ImageReader.open(path);
      const out = t.testdir({});
      const w = await ImageWriter.create(join(out, f), reader.kind);
      for await (const r of reader.entries()) await w.append(r.entry, r.extra);
      await w.commit();
      t.ok(readFileSync(join(out, f)).equals(orig), `${f}: read then written again byte for byte`);
    }
  });
}

const firstDir = dirs[0];
if (firstDir !== undefined)
  t.test('showDir shows every image of a dump, raw pages left out', async (t) => {
    const all = await showDir(firstDir);
    const names = Object.keys(all);
    t.ok(names.includes('inventory.img') && names.includes('stats-dump'));
    t.notOk(names.some((n) => n.startsWith('pages-')));
    t.equal(all['pstree.img']?.magic, 'PSTREE');
  });
