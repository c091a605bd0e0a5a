/**
 * MEMFD against CRIU itself: the memfd that CRIU 4.2 dumped in the golden fdzoo images ("zoo",
 * 8192 bytes, one page stored as shmem pages) is restored by our memfd module into a live process,
 * which must then hold the same memfd: name, size, mode, seals, flags and contents.
 */
import { copyFileSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { F_GET_SEALS, memfdFile } from '../../../src/files/memfd.js';
import { regFile } from '../../../src/files/reg.js';
import type { ImageEntry } from '../../../src/images/index.js';
import { readEntries } from '../../../src/images/index.js';
import * as sys from '../../../src/sys/native.js';
import { startFixture } from '../../helpers/fixture.js';
import { restoreFromDir } from './image-harness.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (CAP_SYS_PTRACE, pidfd_getfd)';
const GOLDEN = '/work/shared/golden/criu-4.2-fdzoo';

t.test("CRIU 4.2's memfd and /dev/null images restore", { skip: needsRoot }, async (t) => {
  const dir = t.testdir({});
  for (const f of ['files.img', 'memfd.img', 'pagemap-shmem-5866.img', 'pages-2.img'])
    copyFileSync(join(GOLDEN, f), join(dir, f));
  const files = await readEntries(join(dir, 'files.img'), 'FILES');
  const entry = (id: number): ImageEntry => files.find((e) => e['id'] === id) as ImageEntry;
  const fx = await startFixture('exec_target', ['idle']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  // File 13: the memfd "zoo" O_RDWR (inode 2, shmid 5866); file 7: /dev/null O_WRONLY.
  await restoreFromDir(
    fx.pid,
    [
      { fd: 20, id: 13, mod: memfdFile, entry: entry(13) },
      { fd: 21, id: 7, mod: regFile, entry: entry(7) },
    ],
    dir,
  );
  t.equal(readlinkSync(`/proc/${fx.pid}/fd/20`), '/memfd:zoo (deleted)');
  const st = statSync(`/proc/${fx.pid}/fd/20`);
  t.equal(st.size, 8192);
  t.equal(st.mode, 0o100777);
  t.match(readFileSync(`/proc/${fx.pid}/fdinfo/20`, 'utf8'), /flags:\s+0100002\n/);
  const contents = readFileSync(`/proc/${fx.pid}/fd/20`);
  t.same(contents.subarray(0, 4096), readFileSync(join(dir, 'pages-2.img')), 'page 0 from pages-2.img');
  t.ok(
    contents.subarray(4096).every((b) => b === 0),
    'page 1 was not dumped: zeros',
  );
  const pidfd = sys.pidfdOpen(fx.pid, 0);
  const local = sys.pidfdGetfd(pidfd, 20, 0);
  t.equal(sys.fcntl(local, F_GET_SEALS, 0), 1, 'F_SEAL_SEAL');
  sys.close(local);
  sys.close(pidfd);
  t.equal(readlinkSync(`/proc/${fx.pid}/fd/21`), '/dev/null');
  t.match(readFileSync(`/proc/${fx.pid}/fdinfo/21`, 'utf8'), /flags:\s+0100001\n/);
  fx.write('go\n');
  const { code } = await fx.exited(10_000);
  t.equal(code, 0);
});
