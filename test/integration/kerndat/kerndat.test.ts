import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import t from 'tap';

import { chooseTracker, kerndat, missingRequired, probeKernel } from '../../../src/kerndat/index.js';

const isRoot = process.getuid?.() === 0;

/** The pids whose parent is this process. */
function children(): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid) out.push(Number(name));
    } catch {
      // Exited while we looked.
    }
  }
  return out;
}

/** CONFIG_X of the running kernel from /proc/config.gz, or undefined when it is not there. */
function kernelConfig(): Map<string, string> | undefined {
  if (!existsSync('/proc/config.gz')) return undefined;
  const map = new Map<string, string>();
  for (const line of gunzipSync(readFileSync('/proc/config.gz')).toString('utf8').split('\n')) {
    const m = /^(CONFIG_\w+)=(.*)$/.exec(line);
    if (m !== null) map.set(m[1] as string, m[2] as string);
  }
  return map;
}

t.test(
  'every required feature is present here, and the tracker is uffd',
  { skip: isRoot ? false : 'needs root (CAP_SYS_PTRACE, CAP_CHECKPOINT_RESTORE)' },
  async (t) => {
    const kd = probeKernel();
    t.same(missingRequired(kd), [], 'nothing required is missing');
    t.equal(kd.hasPtraceSeize, true);
    t.equal(kd.hasProcessVmReadv, true);
    t.equal(kd.hasPidfd, true);
    t.equal(kd.hasClone3SetTid, true);
    t.equal(kd.hasPagemapScan, true);
    t.equal(kd.hasUffdWpAsync, true);
    t.equal(chooseTracker('auto', kd), 'uffd');
    t.ok(
      kd.vdso?.areas.some((a) => a.name === '[vdso]'),
      'the vDSO is recorded',
    );
    t.ok(kd.namespaces.includes('pid') && kd.namespaces.includes('mnt'));
    t.equal(kd.caps?.hasSysResource, false, 'CAP_SYS_RESOURCE is absent on this machine (KERNEL-NOTES)');
    t.equal(kd.probes.find((p) => p.id === 'cap-sys-resource')?.isRequired, false, 'and it is optional');
  },
);

t.test(
  'probes agree with the kernel configuration',
  { skip: kernelConfig() === undefined ? 'no /proc/config.gz' : false },
  async (t) => {
    const config = kernelConfig() as Map<string, string>;
    const kd = kerndat();
    t.equal(kd.hasSoftDirty, config.get('CONFIG_MEM_SOFT_DIRTY') === 'y', 'soft-dirty matches CONFIG_MEM_SOFT_DIRTY');
    if (config.get('CONFIG_USERFAULTFD') !== 'y')
      t.equal(kd.uffdFeatures, null, 'no userfaultfd without CONFIG_USERFAULTFD');
    else t.not(kd.uffdFeatures, null);
  },
);

t.test('kerndat() probes once and caches', async (t) => {
  t.equal(kerndat(), kerndat());
});

t.test('probes leave no child and no fd behind, and are quick', async (t) => {
  const fdsBefore = readdirSync('/proc/self/fd').length;
  const started = Date.now();
  for (let i = 0; i < 3; i++) probeKernel();
  t.ok(Date.now() - started < 6000, `three rounds in ${Date.now() - started} ms`);
  t.same(children(), [], 'no child left (running or zombie)');
  t.equal(readdirSync('/proc/self/fd').length, fdsBefore, 'fd count unchanged');
});
