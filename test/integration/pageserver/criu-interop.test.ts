// Our client against the real CRIU's page server (Debian's criu 3.17, run as
// test/helpers/real-criu.ts says): the images it writes from our stream must hold our pages.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { readPagemap } from '../../../src/images/index.js';
import { PageServerClient } from '../../../src/pageserver/client.js';
import { freePort, realCriuMissing, startRealPageServer } from '../../helpers/real-criu.js';

t.test('our client -> criu page-server', { skip: realCriuMissing() }, async (t) => {
  const dir = t.testdir();
  const port = freePort();
  const criu = await startRealPageServer(dir, port);
  const data = Buffer.alloc(3 * 4096);
  for (let i = 0; i < 3; i++) data.fill(0x30 + i, i * 4096, (i + 1) * 4096);
  const c = await PageServerClient.connect({ port });
  t.same(await c.open({ type: 'task', id: 4321 }), { hasParent: false });
  await c.addPresentBytes(0x7f0000000000n, data);
  await c.addLazy(0x7f0000010000n, 2);
  await c.close();
  t.equal(await criu.exited, 0, 'criu page-server exits 0 after CLOSE');
  const pm = await readPagemap(join(dir, 'pagemap-4321.img'));
  t.same(pm.runs, [
    { vaddr: 0x7f0000000000n, nrPages: 3, flags: 4 },
    { vaddr: 0x7f0000010000n, nrPages: 2, flags: 2 },
  ]);
  t.ok(readFileSync(join(dir, `pages-${pm.pagesId}.img`)).equals(data), 'CRIU stored our bytes');
});
