// Our client against the real CRIU's page server (Debian's criu 3.17): the images it writes from
// our stream must hold our pages. Skips, with CRIU's own reason, where `criu page-server` cannot
// start (on this kernel 6.18 its kerndat fails on the vDSO layout before it listens).
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { readPagemap } from '../../../src/images/index.js';
import { PageServerClient } from '../../../src/pageserver/client.js';
import { Listener } from '../../../src/pageserver/socket.js';

const CRIU = '/usr/sbin/criu';

/** Start `criu page-server`; null and CRIU's last error line when it exits instead of listening. */
async function startCriu(dir: string, port: number): Promise<{ stop: () => Promise<number | null> } | string> {
  const child = spawn(
    CRIU,
    ['page-server', '-D', dir, '--address', '127.0.0.1', '--port', String(port), '-v4', '-o', 'ps.log'],
    {
      stdio: 'ignore',
    },
  );
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  for (let i = 0; i < 100; i++) {
    const log = existsSync(join(dir, 'ps.log')) ? readFileSync(join(dir, 'ps.log'), 'utf8') : '';
    if (/Page server started|Waiting for connection|Binding to/.test(log)) return { stop: () => exited };
    const state = await Promise.race([exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 50))]);
    if (state !== 'running') {
      const all = existsSync(join(dir, 'ps.log')) ? readFileSync(join(dir, 'ps.log'), 'utf8') : '';
      const errors = all.split('\n').filter((l) => l.includes('Error'));
      return `criu page-server exited (${state}) before listening: ${errors.slice(-2).join(' / ') || 'no log'}`;
    }
  }
  child.kill('SIGKILL');
  return 'criu page-server did not report listening within 5 s';
}

if (!existsSync(CRIU)) {
  t.plan(0, `${CRIU} (Debian package criu 3.17) is not installed`);
} else {
  t.test('our client -> criu page-server', async (t) => {
    const dir = t.testdir();
    // A free port: bind one, release it, hand it to CRIU.
    const probe = Listener.open('127.0.0.1', 0);
    const port = probe.port;
    probe.close();
    const criu = await startCriu(dir, port);
    if (typeof criu === 'string') {
      t.skip(criu, () => undefined);
      return;
    }
    const data = Buffer.alloc(3 * 4096);
    for (let i = 0; i < 3; i++) data.fill(0x30 + i, i * 4096, (i + 1) * 4096);
    const c = await PageServerClient.connect({ port });
    t.same(await c.open({ type: 'task', id: 4321 }), { hasParent: false });
    await c.addPresentBytes(0x7f0000000000n, data);
    await c.addLazy(0x7f0000010000n, 2);
    await c.close();
    t.equal(await criu.stop(), 0, 'criu page-server exits 0 after CLOSE');
    const pm = await readPagemap(join(dir, 'pagemap-4321.img'));
    t.same(pm.runs, [
      { vaddr: 0x7f0000000000n, nrPages: 3, flags: 4 },
      { vaddr: 0x7f0000010000n, nrPages: 2, flags: 2 },
    ]);
    t.ok(readFileSync(join(dir, `pages-${pm.pagesId}.img`)).equals(data), 'CRIU stored our bytes');
  });
}
