import t from 'tap';

import { formatCheck, formatFeature } from '../../../src/cli/check.js';
import type { Kerndat, ProbeResult } from '../../../src/kerndat/index.js';

function kd(probes: ProbeResult[], over: Partial<Kerndat> = {}): Kerndat {
  return {
    hasPtraceSeize: true,
    hasProcessVmReadv: true,
    hasPidfd: true,
    hasClone3SetTid: true,
    hasPagemapScan: true,
    uffdFeatures: 0x1ffffn,
    hasUffdWpAsync: true,
    hasUffdWpUnpopulated: true,
    hasSoftDirty: false,
    hasTcpRepair: true,
    vdso: null,
    caps: null,
    namespaces: [],
    probes,
    ...over,
  };
}

const ptrace: ProbeResult = { id: 'ptrace', title: 'ptrace', isRequired: true, isOk: true, detail: 'fine' };
const softDirty: ProbeResult = {
  id: 'soft-dirty',
  title: 'soft-dirty tracking',
  isRequired: false,
  isOk: false,
  detail: 'off',
};

t.test('all required present: the lines, the tracker, Looks good', async (t) => {
  const r = formatCheck(kd([ptrace, softDirty]), { all: false, tracker: 'auto' });
  t.equal(r.isOk, true);
  t.equal(r.stdout, 'ptrace: yes (fine)\nMemory tracker: uffd-wp (userfaultfd WP_ASYNC + PAGEMAP_SCAN)\nLooks good.\n');
  t.equal(r.stderr, '');
  const all = formatCheck(kd([ptrace, softDirty]), { all: true, tracker: 'auto' });
  t.match(all.stdout, /^soft-dirty tracking: no \(off\)$/m);
  t.equal(all.isOk, true, 'an optional feature missing does not fail check');
});

t.test('a missing required feature: one error line each, no Looks good', async (t) => {
  const bad: ProbeResult = {
    id: 'clone3-set-tid',
    title: 'clone3 with set_tid',
    isRequired: true,
    isOk: false,
    detail: 'EPERM',
  };
  const r = formatCheck(kd([ptrace, bad]), { all: false, tracker: 'auto' });
  t.equal(r.isOk, false);
  t.match(r.stdout, /^clone3 with set_tid: NO \(EPERM\)$/m);
  t.notMatch(r.stdout, /Looks good/);
  t.equal(r.stderr, 'Error (criu): missing kernel feature: clone3 with set_tid: EPERM\n');
});

t.test('without uffd-wp the tracker falls back, and a forced one can fail', async (t) => {
  const r = formatCheck(kd([ptrace], { hasUffdWpAsync: false }), { all: false, tracker: 'auto' });
  t.match(r.stdout, /^Memory tracker: none/m);
  t.equal(r.isOk, true);
  const forced = formatCheck(kd([ptrace]), { all: false, tracker: 'soft-dirty' });
  t.equal(forced.isOk, false);
  t.match(forced.stderr, /Cannot use the soft-dirty memory tracker/);
});

t.test('--feature: supported, not supported with the reason, unknown, list', async (t) => {
  const here = kd([ptrace]);
  t.same(formatFeature(here, 'mem_dirty_track'), { stdout: 'mem_dirty_track is supported\n', stderr: '', isOk: true });
  // No tracker at all: no WP_ASYNC, no soft-dirty.
  const bare = kd([ptrace], { hasUffdWpAsync: false, hasSoftDirty: false });
  t.match(formatFeature(bare, 'mem_dirty_track'), {
    stdout: '',
    stderr: /^Error \(criu\): mem_dirty_track is not supported: no dirty-memory tracker works here/,
    isOk: false,
  });
  // WP_ASYNC without WP_UNPOPULATED: the uffd tracker is not used, soft-dirty is.
  const noUnpop = kd([ptrace], { hasUffdWpUnpopulated: false });
  t.equal(formatFeature(noUnpop, 'mem_dirty_track').isOk, false);
  t.equal(formatFeature({ ...noUnpop, hasSoftDirty: true }, 'mem_dirty_track').isOk, true);
  const clone3: ProbeResult = {
    id: 'clone3-set-tid',
    title: 'clone3',
    isRequired: true,
    isOk: false,
    detail: 'ENOSYS',
  };
  t.match(formatFeature(kd([clone3], { hasClone3SetTid: false }), 'clone3_set_tid'), {
    stderr: 'Error (criu): clone3_set_tid is not supported: ENOSYS\n',
    isOk: false,
  });
  t.same(formatFeature(null, 'nosuch'), { stdout: '', stderr: 'Error (criu): Unknown feature nosuch\n', isOk: false });
  t.same(formatFeature(null, 'list'), {
    stdout: 'mem_dirty_track clone3_set_tid pidfd_store\n',
    stderr: '',
    isOk: true,
  });
});
