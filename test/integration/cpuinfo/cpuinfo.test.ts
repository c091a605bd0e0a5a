// `criu cpuinfo dump` and `criu cpuinfo check` as a user runs them (bin/criu.js over dist/): dump
// then check on this machine passes; images doctored to need what this CPU lacks fail in the modes
// that look at it and pass with --cpu-cap=none; Debian's crit decodes our cpuinfo.img.
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { INS_FEATURES, featureName, readCpuinfoX86 } from '../../../src/cpuinfo/index.js';
import { hasFeature } from '../../../src/cpuinfo/features.js';
import { readEntries, writeImage, type ImageEntry } from '../../../src/images/index.js';
import { criu } from '../../helpers/criu.js';

const here = readCpuinfoX86();

/** dir/cpuinfo.img rewritten by `edit` on its x86 entry. */
async function doctor(dir: string, edit: (x86: ImageEntry) => void): Promise<void> {
  const path = join(dir, 'cpuinfo.img');
  const [entry] = await readEntries(path, 'CPUINFO');
  const x86 = (entry?.['x86_entry'] as ImageEntry[])[0] as ImageEntry;
  edit(x86);
  await writeImage(path, 'CPUINFO', [entry as ImageEntry]);
}

function setBit(x86: ImageEntry, bit: number): void {
  const words = [...(x86['capability'] as number[])];
  const w = Math.floor(bit / 32);
  words[w] = ((words[w] ?? 0) | (1 << (bit % 32))) >>> 0;
  x86['capability'] = words;
}

function dump(t: Test): string {
  const dir = t.testdir();
  const r = criu(['cpuinfo', 'dump', '-D', dir]);
  t.equal(r.status, 0, `cpuinfo dump exits 0 (${r.stderr.trim()})`);
  return dir;
}

t.test('dump then check on the same machine passes, silently', async (t) => {
  const dir = dump(t);
  const path = join(dir, 'cpuinfo.img');
  t.ok(existsSync(path), 'cpuinfo.img written');
  t.equal(statSync(path).mode & 0o777, 0o600, 'mode 0600');
  const [entry] = await readEntries(path, 'CPUINFO');
  t.same(entry, { x86_entry: [here] }, 'it holds this CPU');
  for (const cap of [[], ['--cpu-cap=fpu'], ['--cpu-cap'], ['--cpu-cap=ins'], ['--cpu-cap=cpu'], ['--cpu-cap=none']]) {
    const r = criu(['cpuinfo', 'check', '-D', dir, ...cap]);
    t.equal(r.status, 0, `check ${cap.join(' ') || '(default)'} exits 0`);
    t.equal(r.stdout, '', 'nothing on stdout');
    t.equal(r.stderr, '', 'nothing on stderr');
  }
});

const enabled = here.xfeatures_mask ?? 0n;
// PKRU, AMX TILEDATA, CET user, AMX TILECFG: the first of these this machine does not enable.
const component = [9, 18, 11, 17].find((i) => ((enabled >> BigInt(i)) & 1n) === 0n);
t.test(
  'an XSAVE component this CPU does not enable fails the default check',
  { skip: component === undefined ? 'this CPU enables every candidate XSAVE component' : false },
  async (t) => {
    if (component === undefined) return;
    const dir = dump(t);
    await doctor(dir, (x86) => (x86['xfeatures_mask'] = enabled | (1n << BigInt(component))));
    const r = criu(['cpuinfo', 'check', '-D', dir]);
    t.equal(r.status, 1, 'exit 1');
    t.equal(r.stdout, '');
    t.match(
      r.stderr,
      new RegExp(
        `^Error \\(criu\\): CPU is not compatible with the image \\(--cpu-cap=fpu\\): the image needs the .* state \\(XSAVE component ${component}\\), this CPU does not enable it\\n$`,
      ),
      'one line naming the component',
    );
    t.equal(criu(['cpuinfo', 'check', '-D', dir, '--cpu-cap=none']).status, 0, '--cpu-cap=none passes');
    t.equal(criu(['cpuinfo', 'check', '-D', dir, '--cpu-cap=ins,^fpu']).status, 0, 'ins alone does not look at it');
    t.equal(criu(['cpuinfo', 'check', '-D', dir, '--cpu-cap']).status, 1, 'bare --cpu-cap (all) fails');
  },
);

t.test('an XSAVE size of another CPU fails the default check', async (t) => {
  const dir = dump(t);
  const size = (here.xsave_size ?? 0) + 64;
  await doctor(dir, (x86) => (x86['xsave_size'] = size));
  const r = criu(['cpuinfo', 'check', '-D', dir]);
  t.equal(r.status, 1);
  t.match(r.stderr, `the image's XSAVE area is ${size} bytes, this CPU's ${here.xsave_size ?? 0}: they must be equal`);
  t.equal(criu(['cpuinfo', 'check', '-D', dir, '--cpu-cap=none']).status, 0);
});

const missing = INS_FEATURES.find((bit) => !hasFeature(here.capability, bit));
t.test(
  'an instruction set this CPU lacks fails ins and cpu, not fpu',
  { skip: missing === undefined ? 'this CPU has every instruction feature criu-ts knows' : false },
  async (t) => {
    if (missing === undefined) return;
    const dir = dump(t);
    await doctor(dir, (x86) => setBit(x86, missing));
    const name = featureName(missing);
    t.equal(criu(['cpuinfo', 'check', '-D', dir]).status, 0, 'the default (fpu) does not look at it');
    const ins = criu(['cpuinfo', 'check', '-D', dir, '--cpu-cap=ins']);
    t.equal(ins.status, 1);
    t.equal(
      ins.stderr,
      `Error (criu): CPU is not compatible with the image (--cpu-cap=fpu,ins): the image needs ${name}, this CPU lacks it\n`,
    );
    const cpu = criu(['cpuinfo', 'check', '-D', dir, '--cpu-cap=cpu']);
    t.equal(cpu.status, 1);
    t.match(cpu.stderr, `the image needs ${name}, this CPU lacks it`);
    t.equal(criu(['cpuinfo', 'check', '-D', dir, '--cpu-cap=none']).status, 0, '--cpu-cap=none passes');
  },
);

t.test('a missing image is an error', async (t) => {
  const dir = t.testdir();
  const r = criu(['cpuinfo', 'check', '-D', dir]);
  t.equal(r.status, 1);
  t.match(r.stderr, /^Error \(criu\): .*cpuinfo\.img/);
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  t.equal(criu(['cpuinfo', 'check', '-D', dir, '--cpu-cap=none']).status, 0, 'none does not read it');
});

const CRIT = '/usr/bin/crit';
t.test('crit decodes our cpuinfo.img', { skip: existsSync(CRIT) ? false : 'crit is not installed' }, async (t) => {
  const dir = dump(t);
  const json = JSON.parse(execFileSync(CRIT, ['decode', '-i', join(dir, 'cpuinfo.img')], { encoding: 'utf8' })) as {
    magic: string;
    entries: { x86_entry: Record<string, unknown>[] }[];
  };
  t.equal(json.magic, 'CPUINFO');
  const x86 = json.entries[0]?.x86_entry[0];
  t.same(x86, {
    vendor_id: here.vendor_id === 1 ? 'INTEL' : 'AMD',
    cpu_family: here.cpu_family,
    model: here.model,
    stepping: here.stepping,
    capability_ver: 2,
    capability: here.capability,
    ...(here.model_id === undefined ? {} : { model_id: here.model_id }),
    xfeatures_mask: Number(here.xfeatures_mask),
    xsave_size: here.xsave_size,
    xsave_size_max: here.xsave_size_max,
  });
});
