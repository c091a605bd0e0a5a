/**
 * FPU and vector registers across dump and restore (test/fixtures/cr_fpu.c): every vector register
 * the CPU has (zmm0-31 and k1-7 with AVX-512), MXCSR and the x87 control word, checked byte by
 * byte by the workload itself. Also with the real CRIU's dump (criu 3.17), whose images name each
 * XSAVE component by field: criu-ts must read them from where this CPU puts them.
 */
import path from 'node:path';
import t from 'tap';
import { criuAsync, restoreExpectPass, waitGone } from '../../helpers/cr.js';
import { criuDump, realCriuMissing, startSessionLeader } from '../../helpers/real-criu.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

for (const dumper of ['criu-ts', 'criu 3.17'] as const) {
  const skip = needsRoot || (dumper === 'criu 3.17' ? realCriuMissing() : false);
  t.test(`the vector registers survive a dump by ${dumper} and a restore by criu-ts`, { skip }, async (t) => {
    const dir = t.testdir();
    const w = await startSessionLeader('cr_fpu', dir);
    t.teardown(() => w.kill());
    t.comment(w.report().trim());
    const images = path.join(dir, 'img');
    if (dumper === 'criu-ts') {
      const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
      t.equal(dump.status, 0, dump.stderr);
    } else await criuDump(t, w.pid, images);
    await waitGone(w.pid);
    await restoreExpectPass(t, w, images, dir);
  });
}
