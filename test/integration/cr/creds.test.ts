/** Changed credentials (uids, gids, groups, capability sets, bounding set) survive dump and restore. */
import path from 'node:path';
import t from 'tap';
import { criuAsync, startWorkload, waitGone } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

t.test('cr_creds keeps its credentials', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_creds', dir);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);
  const restored = criuAsync(['restore', '-D', images]);
  const until = Date.now() + 10_000;
  for (;;) {
    try {
      process.kill(w.pid, 0);
      break;
    } catch {
      if (Date.now() > until) break;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  await new Promise((r) => setTimeout(r, 300));
  process.kill(w.pid, 'SIGTERM');
  const r = await restored;
  t.match(w.report(), /PASS/, w.report());
  t.equal(r.status, 0, r.stderr);
});
