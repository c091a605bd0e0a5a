/**
 * bin/criu.js's V8 code cache of the bundle: made on a command's first run, taken on the next runs
 * (not made again), made again when the bundle changes or V8 rejects it, never made when turned
 * off. Runs on a copy of the launcher and the bundle in a scratch package (the package's own files
 * linked), so that the checkout's caches, used by every other test, are not touched.
 */
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import t from 'tap';

const ROOT = new URL('../../../', import.meta.url).pathname;

t.before(() => {
  if (!existsSync(join(ROOT, 'dist/bundle/criu.cjs')))
    throw new Error('dist/ is not built: run "npm run build:ts" (npm test does it)');
});

/** A package with bin/criu.js and dist/bundle/criu.cjs copied, the rest linked. Returns its root. */
function scratchPackage(dir: string): string {
  mkdirSync(join(dir, 'bin'));
  mkdirSync(join(dir, 'dist/bundle'), { recursive: true });
  copyFileSync(join(ROOT, 'bin/criu.js'), join(dir, 'bin/criu.js'));
  copyFileSync(join(ROOT, 'dist/bundle/criu.cjs'), join(dir, 'dist/bundle/criu.cjs'));
  for (const f of ['package.json', 'proto', 'build', 'node_modules', 'native'])
    symlinkSync(join(ROOT, f), join(dir, f));
  for (const f of ['proto-schema.json'])
    if (existsSync(join(ROOT, 'dist', f))) symlinkSync(join(ROOT, 'dist', f), join(dir, 'dist', f));
  return dir;
}

function version(pkg: string, env: Record<string, string> = {}): string {
  const r = spawnSync('node', [join(pkg, 'bin/criu.js'), '--version'], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 60_000,
  });
  if (r.status !== 0) throw new Error(`criu --version: exit ${r.status}: ${r.stderr}`);
  return r.stdout;
}

const stampOf = (bundle: string): string => {
  const st = statSync(bundle);
  return `${st.size} ${st.mtimeMs}`;
};
const firstLine = (file: string): string => readFileSync(file, 'latin1').split('\n', 1)[0] ?? '';

t.test('made on the first run, taken on the next', async (t) => {
  const pkg = scratchPackage(t.testdir());
  const bundle = join(pkg, 'dist/bundle/criu.cjs');
  const cache = `${bundle}.other.v8cache`;
  t.notOk(existsSync(cache));
  const out = version(pkg);
  t.match(out, /^Version: /);
  t.ok(existsSync(cache), 'cache made at exit');
  t.equal(firstLine(cache), stampOf(bundle), 'stamped with the bundle it was made from');
  t.ok(statSync(cache).size > 10_000, 'holds compiled code');
  t.equal((statSync(cache).mode & 0o777).toString(8), '644');
  const made = statSync(cache).mtimeMs;
  t.equal(version(pkg), out, 'same output with the cache');
  t.equal(statSync(cache).mtimeMs, made, 'accepted: not made again');
  t.same(
    readdirSync(join(pkg, 'dist/bundle')).filter((f) => f.includes('.tmp')),
    [],
    'no temporary file left',
  );
});

t.test('made again for another bundle, or when V8 rejects it', async (t) => {
  const pkg = scratchPackage(t.testdir());
  const bundle = join(pkg, 'dist/bundle/criu.cjs');
  const cache = `${bundle}.other.v8cache`;
  version(pkg);
  const old = readFileSync(cache);
  // The same text, another mtime: stands for a rebuild (V8 alone would take the old cache when
  // the length is the same).
  const later = new Date(statSync(bundle).mtimeMs + 5000);
  utimesSync(bundle, later, later);
  t.match(version(pkg), /^Version: /);
  t.equal(firstLine(cache), stampOf(bundle), 'made again for the new bundle');

  // The right stamp, a payload V8 does not take.
  writeFileSync(cache, Buffer.concat([Buffer.from(`${stampOf(bundle)}\n`, 'latin1'), Buffer.alloc(4096, 0x5a)]));
  t.match(version(pkg), /^Version: /, 'runs despite the bad cache');
  const redone = readFileSync(cache);
  t.ok(
    redone.length > 10_000 &&
      !redone.subarray(redone.indexOf(10) + 1, redone.indexOf(10) + 65).every((b) => b === 0x5a),
    'replaced',
  );
  t.ok(old.length > 0);
});

t.test('CRIU_TS_CODE_CACHE=0: none made, none read', async (t) => {
  const pkg = scratchPackage(t.testdir());
  const cache = join(pkg, 'dist/bundle/criu.cjs.other.v8cache');
  t.match(version(pkg, { CRIU_TS_CODE_CACHE: '0' }), /^Version: /);
  t.notOk(existsSync(cache));
  // A damaged cache (right stamp and V8 header, garbage after): neither read nor made again.
  version(pkg);
  const good = readFileSync(cache);
  const bad = Buffer.from(good);
  bad.fill(0xff, good.indexOf(10) + 64);
  writeFileSync(cache, bad);
  t.match(version(pkg, { CRIU_TS_CODE_CACHE: '0' }), /^Version: /);
  t.same(readFileSync(cache), bad, 'not read, not rewritten');
});

t.test('each command has its own cache', async (t) => {
  const pkg = scratchPackage(t.testdir());
  const r = spawnSync('node', [join(pkg, 'bin/criu.js'), 'show', '-f', join(pkg, 'no-such.img')], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.equal(r.status, 1, 'show of a missing file fails');
  t.ok(existsSync(join(pkg, 'dist/bundle/criu.cjs.show.v8cache')));
  t.notOk(existsSync(join(pkg, 'dist/bundle/criu.cjs.other.v8cache')));
});
