import t from 'tap';

import { describeTracker, pickTracker } from '../../../src/kerndat/tracker.js';
import { capabilitiesOf, parseCapEff } from '../../../src/kerndat/caps.js';
import { formatVdsoLayout, parseVdsoLayout, vdsoMismatch } from '../../../src/kerndat/vdso.js';
import { parseMaps } from '../../../src/proc/maps.js';

const ALL = { hasUffdWpAsync: true, hasUffdWpUnpopulated: true, hasPagemapScan: true, hasSoftDirty: true };

t.test('auto prefers uffd, then soft-dirty, then none', async (t) => {
  t.equal(pickTracker(ALL), 'uffd');
  t.equal(pickTracker({ ...ALL, hasPagemapScan: false }), 'soft-dirty');
  t.equal(pickTracker({ ...ALL, hasUffdWpAsync: false }), 'soft-dirty');
  t.equal(pickTracker({ ...ALL, hasUffdWpUnpopulated: false }), 'soft-dirty');
  t.equal(pickTracker({ ...ALL, hasUffdWpAsync: false, hasPagemapScan: false, hasSoftDirty: false }), 'none');
  t.equal(pickTracker({ ...ALL, hasSoftDirty: false }, 'auto'), 'uffd');
});

t.test('a forced tracker is used, or refused naming what is missing', async (t) => {
  t.equal(pickTracker(ALL, 'soft-dirty'), 'soft-dirty');
  t.equal(pickTracker(ALL, 'none'), 'none');
  t.throws(() => pickTracker({ ...ALL, hasSoftDirty: false }, 'soft-dirty'), {
    code: 'EUNSUPPORTED',
    message: /CONFIG_MEM_SOFT_DIRTY/,
  });
  t.throws(() => pickTracker({ ...ALL, hasPagemapScan: false }, 'uffd'), {
    code: 'EUNSUPPORTED',
    message: /PAGEMAP_SCAN/,
  });
  t.throws(() => pickTracker({ ...ALL, hasUffdWpUnpopulated: false }, 'uffd'), {
    code: 'EUNSUPPORTED',
    message: /^Cannot use the uffd memory tracker: userfaultfd lacks UFFD_FEATURE_WP_UNPOPULATED/,
  });
  t.match(describeTracker('uffd'), /^uffd-wp \(userfaultfd WP_ASYNC \+ PAGEMAP_SCAN\)$/);
});

t.test('capabilities from CapEff', async (t) => {
  const eff = parseCapEff('Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n');
  t.equal(eff, 0x1fffeffffffn);
  const caps = capabilitiesOf(eff);
  t.equal(caps.hasSysAdmin, true);
  t.equal(caps.hasSysPtrace, true);
  t.equal(caps.hasCheckpointRestore, true);
  t.equal(caps.hasSysResource, false, 'bit 24 is clear in 0x1fffeffffff');
  t.throws(() => parseCapEff('Name: x\n'));
});

const MAPS_613 = [
  '7ffd1c5e0000-7ffd1c601000 rw-p 00000000 00:00 0                          [stack]',
  '7ffd1c6f4000-7ffd1c6f8000 r--p 00000000 00:00 0                          [vvar]',
  '7ffd1c6f8000-7ffd1c6fa000 r--p 00000000 00:00 0                          [vvar_vclock]',
  '7ffd1c6fa000-7ffd1c6fc000 r-xp 00000000 00:00 0                          [vdso]',
  'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]',
].join('\n');
const MAPS_OLD = [
  '7ffc00000000-7ffc00004000 r--p 00000000 00:00 0                          [vvar]',
  '7ffc00004000-7ffc00006000 r-xp 00000000 00:00 0                          [vdso]',
].join('\n');

t.test('vDSO layout: names, sizes and order', async (t) => {
  const layout = parseVdsoLayout(parseMaps(MAPS_613));
  t.same(
    layout.areas.map((a) => [a.name, a.sizeBytes]),
    [
      ['[vvar]', 16384],
      ['[vvar_vclock]', 8192],
      ['[vdso]', 8192],
    ],
  );
  t.equal(formatVdsoLayout(layout), '[vvar] 16 KiB, [vvar_vclock] 8 KiB, [vdso] 8 KiB');
  t.equal(vdsoMismatch(layout, layout), null);
  const old = parseVdsoLayout(parseMaps(MAPS_OLD));
  t.match(
    vdsoMismatch(layout, old),
    /vDSO layout differs: image has \[vvar\] 16 KiB, \[vvar_vclock\] 8 KiB, \[vdso\] 8 KiB, this kernel has \[vvar\] 16 KiB, \[vdso\] 8 KiB/,
  );
});
