/**
 * FPU and vector registers across dump and restore (test/fixtures/cr_fpu.c): every vector register
 * the CPU has (zmm0-31 and k1-7 with AVX-512), MXCSR and the x87 control word, checked byte by
 * byte by the workload itself. Also with the real CRIU's dump (criu 3.17), whose images name each
 * XSAVE component by field: criu-ts must read them from where this CPU puts them.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { criuAsync, restoreExpectPass, startWorkload, waitGone } from '../../helpers/cr.js';
import { fixturePath } from '../../helpers/fixture.js';
import { realCriu, realCriuMissing } from '../../helpers/real-criu.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

for (const dumper of ['criu-ts', 'criu 3.17'] as const) {
  const skip = needsRoot || (dumper === 'criu 3.17' ? realCriuMissing() : false);
  t.test(`the vector registers survive a dump by ${dumper} and a restore by criu-ts`, { skip }, async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('/usr/bin/setsid', dir, [fixturePath('cr_fpu')]);
    t.teardown(() => w.kill());
    t.comment(w.report().trim());
    const images = path.join(dir, 'img');
    if (dumper === 'criu-ts') {
      const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
      t.equal(dump.status, 0, dump.stderr);
    } else {
      mkdirSync(images);
      t.equal(
        await realCriu(['dump', '-t', String(w.pid), '-D', images, '-o', 'dump.log'], images),
        0,
        'criu 3.17 dump',
      );
    }
    await waitGone(w.pid);
    await restoreExpectPass(t, w, images, dir);
  });
}
