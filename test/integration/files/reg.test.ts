/**
 * The path-based fd kinds on real processes: REG (files, a directory, devices, a deleted file) and
 * MEMFD. test/fixtures/files_path.c opens the fds; they are dumped into an image directory, the
 * images are decoded with Debian's `crit`, and restored by injection into a second instance of the
 * fixture, which checks every fd itself (flags, offsets, contents, owner, seals).
 */
import { execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, linkSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { memfdFile } from '../../../src/files/memfd.js';
import { regFile } from '../../../src/files/reg.js';
import type { FdKindModule } from '../../../src/files/types.js';
import { dumpOneFd, restoreOneFd } from '../../helpers/files.js';
import { startFixture, type Fixture } from '../../helpers/fixture.js';
import { dumpToDir, restoreFromDir } from './image-harness.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (CAP_SYS_PTRACE, pidfd_getfd)';
const CRIT = '/usr/bin/crit';

async function expectPass(t: Test, fx: Fixture, what: string): Promise<void> {
  // 'exit' may come before the last of stdout: wait for the stream to close as well.
  const closed = new Promise((resolve) => fx.child.once('close', resolve));
  fx.write('go\n');
  const { code } = await fx.exited(20_000);
  await closed;
  const output = fx.output();
  t.match(output, /PASS/, `${what}: ${output}`);
  t.equal(code, 0, `${what} checked its fds and passed`);
}

const FDS: [number, FdKindModule][] = [
  [10, regFile],
  [11, regFile],
  [12, regFile],
  [13, regFile],
  [14, regFile],
  [15, regFile],
  [16, regFile],
  [17, regFile],
  [18, memfdFile],
  [19, memfdFile],
  [20, regFile],
  [21, regFile],
  [22, regFile],
  [23, regFile],
  [24, regFile],
];

function critDecode(path: string): Record<string, unknown> {
  return JSON.parse(execFileSync(CRIT, ['decode', '--pretty', '-i', path], { encoding: 'utf8' })) as Record<
    string,
    unknown
  >;
}

t.test('files by path and memfds survive dump and restore into another process', { skip: needsRoot }, async (t) => {
  const base = t.testdir({ work: {}, images: {} });
  const dir = join(base, 'work');
  const images = join(base, 'images');
  const hold = await startFixture('files_path', ['hold', dir]);
  t.teardown(() => hold.kill());
  await hold.waitFor('READY');
  const verify = await startFixture('files_path', ['verify', dir, String(hold.pid)]);
  t.teardown(() => verify.kill());
  await verify.waitFor('READY');

  const dumped = await dumpToDir(hold.pid, FDS, images);
  const byFd = new Map(dumped.map((d) => [d.fd, d.entry]));
  const reg = (fd: number): Record<string, unknown> => byFd.get(fd)?.['reg'] as Record<string, unknown>;
  t.equal(reg(10)['name'], join(dir, 'ro.txt'));
  t.equal(reg(10)['pos'], 1234n);
  t.equal(reg(10)['size'], 10000n);
  t.equal(reg(17)['name'], join(dir, 'deleted.txt'), 'a ghost keeps its name without " (deleted)"');
  t.notOk('size' in reg(14), 'devices have no size, as in CRIU');
  t.same(reg(20)['fown'], { uid: 0, euid: 0, signum: 12, pid_type: 1, pid: hold.pid });
  const files = readdirSync(images).sort();
  t.ok(files.includes('ghost-file-1.img') && files.includes('remap-fpath.img'), files.join(' '));
  t.ok(files.includes('ghost-file-2.img'), 'the removed directory is a ghost too');
  t.ok(files.includes('memfd.img') && files.some((f) => f.startsWith('pagemap-shmem-')), files.join(' '));

  t.test('crit decodes every image', { skip: existsSync(CRIT) ? false : `no ${CRIT}` }, async (t) => {
    for (const f of files) {
      if (f.startsWith('pages-')) continue;
      const json = critDecode(join(images, f));
      t.ok(Array.isArray(json['entries']), `${f}: ${String(json['magic'])}`);
    }
    const fentries = critDecode(join(images, 'files.img'))['entries'] as Record<string, Record<string, unknown>>[];
    const devnull = fentries.find((e) => (e['reg'] as Record<string, unknown> | undefined)?.['name'] === '/dev/null');
    // CRIU 4.2's own entry for a write-only /dev/null (golden fdzoo files.img, id 7) but for the id.
    const golden = JSON.parse(readFileSync('/work/shared/golden/criu-4.2-fdzoo/files.img.json', 'utf8')) as {
      entries: Record<string, unknown>[];
    };
    const want = golden.entries.find((e) => e['id'] === 7)?.['reg'];
    t.same({ ...(devnull?.['reg'] as object), id: 7 }, want, 'the /dev/null entry is what CRIU 4.2 writes');
    const memfd = critDecode(join(images, 'memfd.img'))['entries'] as Record<string, unknown>[];
    t.match(memfd[0], { name: 'fixture-mem', size: 12345, seals: 'F_SEAL_SHRINK | F_SEAL_GROW', inode_id: 1 });
    const ghost = critDecode(join(images, 'ghost-file-1.img'))['entries'] as Record<string, unknown>[];
    t.match(ghost[0], { mode: 0o100604, size: 20000, chunks: true });
    t.equal(ghost.length, 3, 'head and two chunks: the hole is not stored');
    const remap = critDecode(join(images, 'remap-fpath.img'))['entries'] as Record<string, unknown>[];
    t.match(remap[0], { orig_id: 8, remap_id: 1, remap_type: 'GHOST' });
  });

  await restoreFromDir(verify.pid, dumped, images);
  t.notOk(existsSync(join(dir, 'deleted.txt')), 'the recreated ghost is unlinked again');
  t.notOk(existsSync(join(dir, 'gone')), 'the recreated ghost directory is removed again');
  await expectPass(t, verify, 'the restored fixture');
  await expectPass(t, hold, 'the dumped fixture');
});

t.test('restore refuses a regular file whose size changed', { skip: needsRoot }, async (t) => {
  const dir = t.testdir({});
  const hold = await startFixture('files_path', ['hold', dir]);
  t.teardown(() => hold.kill());
  await hold.waitFor('READY');
  const target = await startFixture('exec_target', ['idle']);
  t.teardown(() => target.kill());
  await target.waitFor('READY');
  const dumped = await dumpOneFd(hold.pid, 10, regFile);
  appendFileSync(join(dir, 'ro.txt'), 'more');
  await t.rejects(restoreOneFd(target.pid, dumped, regFile, 10), {
    code: 'EIMAGE',
    message: /size 10004, the dump recorded 10000/,
  });
  t.notOk(existsSync(`/proc/${target.pid}/fd/10`), 'nothing left open in the target');
  await expectPass(t, target, 'the target');
  await expectPass(t, hold, 'the dumped fixture');
});

t.test('dump refuses a path that leads to another file now', { skip: needsRoot }, async (t) => {
  const dir = t.testdir({});
  const hold = await startFixture('files_path', ['hold', dir]);
  t.teardown(() => hold.kill());
  await hold.waitFor('READY');
  // Mounted over: the name now leads to another inode, while the fd's link still shows it.
  writeFileSync(join(dir, 'other.txt'), 'other');
  execFileSync('mount', ['--bind', join(dir, 'other.txt'), join(dir, 'rw.bin')]);
  try {
    await t.rejects(dumpOneFd(hold.pid, 12, regFile), { code: 'EUNSUPPORTED', message: /fd 12 .*rw\.bin/ });
  } finally {
    execFileSync('umount', [join(dir, 'rw.bin')]);
  }
  // An unlinked name whose inode is still linked elsewhere needs --link-remap.
  linkSync(join(dir, 'ro.txt'), join(dir, 'ro-link.txt'));
  execFileSync('rm', [join(dir, 'ro.txt')]);
  await t.rejects(dumpOneFd(hold.pid, 10, regFile), { code: 'EUNSUPPORTED', message: /link-remap/ });
  await expectPass(t, hold, 'the dumped fixture');
});
