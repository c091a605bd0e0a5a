/**
 * The kerndat cache file (src/kerndat/cache.ts): what a probe found is kept for the later commands
 * of the same boot, under the same uid and capabilities, and only from a file no one else may
 * write. The CLI part shows the cache really decides: a planted file claiming a kernel without any
 * tracker makes `criu pre-dump` fall back to copying everything, and `criu check` probes afresh.
 */
import { chmodSync, chownSync, existsSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';

import {
  currentCacheKey,
  decodeKerndat,
  encodeKerndat,
  loadKerndat,
  storeKerndat,
  type CacheKey,
} from '../../../src/kerndat/cache.js';
import { probeKernel, type Kerndat } from '../../../src/kerndat/index.js';
import { endTracking } from '../../../src/mem/track/index.js';
import { criu } from '../../helpers/criu.js';
import { startWorkload } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (the probes ptrace a child)';

const key = (): CacheKey => {
  const k = currentCacheKey();
  if (k === null) throw new Error('no cache key on this machine');
  return k;
};

t.test('the key names the boot, the kernel, the euid and the capabilities', async (t) => {
  const k = key();
  t.match(k.bootId, /^[0-9a-f-]{36}$/);
  t.equal(k.euid, process.geteuid?.());
  t.match(k.capEff, /^[0-9a-f]+$/);
  t.ok(k.release.length > 0);
});

t.test('a stored kerndat comes back the same, from a 0600 file', { skip: needsRoot }, async (t) => {
  const kd = probeKernel();
  const file = path.join(t.testdir(), 'run', 'kerndat.json');
  storeKerndat(file, kd, key());
  t.equal(statSync(file).mode & 0o777, 0o600);
  t.equal(statSync(path.dirname(file)).mode & 0o777, 0o700);
  t.same(loadKerndat(file, key()), kd);
  t.equal(typeof loadKerndat(file, key())?.uffdFeatures, 'bigint');
});

t.test('another boot, kernel, user, capability set or format is probed again', async (t) => {
  const kd: Kerndat = {
    hasPtraceSeize: true,
    hasProcessVmReadv: true,
    hasPidfd: true,
    hasClone3SetTid: true,
    hasPagemapScan: true,
    uffdFeatures: 0xffffn,
    hasUffdWpAsync: true,
    hasUffdWpUnpopulated: true,
    hasSoftDirty: false,
    hasTcpRepair: true,
    vdso: { areas: [{ name: '[vdso]', start: 0x7fff0000n, end: 0x7fff2000n, sizeBytes: 8192 }] },
    caps: null,
    namespaces: ['pid', 'mnt'],
    probes: [{ id: 'ptrace', title: 'ptrace', isRequired: true, isOk: true, detail: 'ok' }],
  };
  const k = key();
  const text = encodeKerndat(kd, k);
  t.same(decodeKerndat(text, k), kd);
  for (const change of [
    { bootId: '00000000-0000-0000-0000-000000000000' },
    { release: `${k.release}-other` },
    { euid: k.euid + 1 },
    { capEff: '0' },
    { format: k.format + 1 },
  ])
    t.equal(decodeKerndat(text, { ...k, ...change }), null, `not with ${JSON.stringify(change)}`);
});

t.test('a malformed file is not used', async (t) => {
  const k = key();
  const good = JSON.parse(
    encodeKerndat(
      {
        hasPtraceSeize: true,
        hasProcessVmReadv: true,
        hasPidfd: true,
        hasClone3SetTid: true,
        hasPagemapScan: true,
        uffdFeatures: null,
        hasUffdWpAsync: false,
        hasUffdWpUnpopulated: false,
        hasSoftDirty: false,
        hasTcpRepair: false,
        vdso: null,
        caps: null,
        namespaces: [],
        probes: [],
      },
      k,
    ),
  ) as { kerndat: Record<string, unknown> };
  t.not(decodeKerndat(JSON.stringify(good), k), null, 'the unchanged one is used');
  const text = JSON.stringify(good);
  t.equal(decodeKerndat(text.slice(0, text.length - 5), k), null, 'truncated');
  t.equal(decodeKerndat('', k), null, 'empty');
  for (const [field, value] of [
    ['hasPagemapScan', 'yes'],
    ['uffdFeatures', 'xyz'],
    ['uffdFeatures', 12],
    ['vdso', { areas: [{ name: '[heap]', start: '1', end: '2', sizeBytes: 1 }] }],
    ['caps', -1],
    ['namespaces', [1]],
    ['probes', [{ id: 'ptrace' }]],
    ['probes', null],
  ] as const)
    t.equal(
      decodeKerndat(JSON.stringify({ ...good, kerndat: { ...good.kerndat, [field]: value } }), k),
      null,
      `${field}: ${JSON.stringify(value)}`,
    );
});

t.test('only a file of ours that no one else may write is read', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const file = path.join(dir, 'kerndat.json');
  storeKerndat(file, probeKernel(), key());
  t.not(loadKerndat(file, key()), null);
  chmodSync(file, 0o622);
  t.equal(loadKerndat(file, key()), null, 'writable by others');
  chmodSync(file, 0o600);
  chownSync(file, 65534, 65534);
  t.equal(loadKerndat(file, key()), null, 'owned by another user');
  chownSync(file, 0, 0);
  const link = path.join(dir, 'link.json');
  symlinkSync(file, link);
  t.equal(loadKerndat(link, key()), null, 'a symlink');
  t.equal(loadKerndat(path.join(dir, 'missing.json'), key()), null, 'missing');
  storeKerndat(path.join(file, 'below-a-file.json'), probeKernel(), key()); // cannot: only logged
});

t.test('criu uses the cache file, and criu check probes afresh', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const cache = path.join(dir, 'kerndat.json');
  const env = { ...process.env, CRIU_TS_KERNDAT_CACHE: cache };
  const check = criu(['check'], { env });
  t.equal(check.status, 0, check.stderr);
  t.ok(existsSync(cache), 'criu check wrote the cache');
  t.equal(statSync(cache).mode & 0o777, 0o600);

  // A kernel without any way to track memory, as far as the cache says.
  const kept = JSON.parse(readFileSync(cache, 'utf8')) as { kerndat: Record<string, unknown> };
  Object.assign(kept.kerndat, { hasPagemapScan: false, hasUffdWpAsync: false, hasSoftDirty: false });
  writeFileSync(cache, JSON.stringify(kept), { mode: 0o600 });

  const fx = await startWorkload('cr_incr', dir, ['64', '100']);
  t.teardown(() => fx.kill());
  t.teardown(() => endTracking(fx.pid));
  const preDump = (name: string): string => {
    const r = criu(['pre-dump', '-t', String(fx.pid), '-D', path.join(dir, name), '-v4', '-o', 'pre-dump.log'], {
      env,
    });
    t.equal(r.status, 0, r.stderr);
    return readFileSync(path.join(dir, name, 'pre-dump.log'), 'utf8');
  };
  const planted = preDump('1');
  t.match(planted, `kerndat: from ${cache}`);
  t.match(planted, /Dirty memory tracker: none/, 'the planted cache decided the tracker');

  t.equal(criu(['check'], { env }).status, 0);
  t.match(JSON.parse(readFileSync(cache, 'utf8')), { kerndat: { hasUffdWpAsync: true } }, 'check rewrote it');
  const fresh = preDump('2');
  t.match(fresh, `kerndat: from ${cache}`);
  t.match(fresh, /Dirty memory tracker: uffd-wp/);

  const off = criu(['pre-dump', '-t', String(fx.pid), '-D', path.join(dir, '3'), '-v4', '-o', 'pre-dump.log'], {
    env: { ...process.env, CRIU_TS_KERNDAT_CACHE: '0' },
  });
  t.equal(off.status, 0, off.stderr);
  t.notMatch(readFileSync(path.join(dir, '3', 'pre-dump.log'), 'utf8'), 'kerndat: from', 'CRIU_TS_KERNDAT_CACHE=0');
});
