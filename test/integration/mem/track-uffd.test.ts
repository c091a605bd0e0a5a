/**
 * The kernel behaviour the uffd tracker relies on (src/mem/track/uffd.ts header), checked on this
 * kernel one fact at a time, through the tracker: zapped pages, mremap moved and grown, writes
 * from the kernel, pte markers as the pagemap shows them, and what end() leaves. Also: the
 * soft-dirty tracker is refused where CONFIG_MEM_SOFT_DIRTY is off.
 */
import t from 'tap';
import { freezeProcess, resumeProcess } from '../../../src/dump/freeze.js';
import { chooseTracker, kerndat } from '../../../src/kerndat/index.js';
import { PAGE_IS_PRESENT, PAGE_IS_SWAPPED } from '../../../src/kernel/constants.js';
import {
  findUffdWpMarkers,
  isUffdWpMarker,
  openTracker,
  type AddrRange,
  type DirtyTracker,
} from '../../../src/mem/track/index.js';
import { runsContain, runsFromRanges } from '../../../src/mem/track/ranges.js';
import { scanPagemapRuns } from '../../../src/proc/pagemap.js';
import * as sys from '../../../src/sys/native.js';
import { hex, privateRanges, TrackMem, uffdWpVmas } from './track-harness.js';

const PAGE = 4096n;
const isRoot = process.getuid?.() === 0;

function uffdSkip(): string | false {
  if (!isRoot) return 'needs root (ptrace, pidfd_getfd)';
  try {
    chooseTracker('uffd');
    return false;
  } catch (err) {
    return `the uffd tracker is unavailable: ${(err as Error).message}`;
  }
}

/** Frozen collect. */
async function collect(pid: number, tracker: DirtyTracker): Promise<AddrRange[]> {
  const frozen = freezeProcess(pid);
  try {
    return await tracker.collect(privateRanges(pid));
  } finally {
    resumeProcess(frozen);
  }
}

async function open(pid: number): Promise<DirtyTracker> {
  const frozen = freezeProcess(pid);
  try {
    const tracker = await openTracker({ pid, injector: frozen.leader, choice: 'uffd' });
    await tracker.collect(privateRanges(pid));
    return tracker;
  } finally {
    resumeProcess(frozen);
  }
}

/** Pages of answer within [addr, +nrPages), relative to addr. */
function pagesIn(answer: readonly AddrRange[], addr: bigint, nrPages: number): number[] {
  const runs = runsFromRanges(answer);
  const first = Number(addr / PAGE);
  const out: number[] = [];
  for (let i = 0; i < nrPages; i++) if (runsContain(runs, first + i)) out.push(i);
  return out;
}

function isRegistered(pid: number, addr: bigint): boolean {
  return uffdWpVmas(pid).some((r) => r.start <= addr && addr < r.end);
}

function pagemapEntry(pid: number, addr: bigint): bigint {
  const fd = sys.open(`/proc/${pid}/pagemap`, 0, 0);
  try {
    const b = Buffer.alloc(8);
    sys.pread(fd, b, 0, 8, (addr / PAGE) * 8n);
    return b.readBigUInt64LE(0);
  } finally {
    sys.close(fd);
  }
}

t.test('uffd-wp facts on this kernel', { skip: uffdSkip() }, async (t) => {
  process.env['CRIU_TS_TRACK_DIR'] = t.testdir();
  const m = await TrackMem.start();
  t.teardown(() => m.fixture.kill());
  const pid = m.pid;

  t.test('pages zapped by MADV_DONTNEED are reported, faulted in again by a read or not', async (t) => {
    const a = await m.map(8);
    await m.cmd(`w ${hex(a)} 8`);
    const tracker = await open(pid);
    await m.cmd(`d ${hex(a + 2n * PAGE)} 1`);
    await m.cmd(`d ${hex(a + 5n * PAGE)} 1`);
    await m.cmd(`r ${hex(a + 5n * PAGE)} 1`);
    t.same(pagesIn(await collect(pid, tracker), a, 8), [2, 5]);
    t.same(pagesIn(await collect(pid, tracker), a, 8), [], 'and re-armed');
    await tracker.end();
    await m.cmd(`u ${hex(a)} 8`);
  });

  t.test('a VMA moved by mremap loses its registration and comes back whole', async (t) => {
    const a = await m.map(8);
    await m.cmd(`w ${hex(a)} 8`);
    const tracker = await open(pid);
    t.ok(isRegistered(pid, a), 'registered (VmFlags uw)');
    const b = BigInt(`0x${await m.cmd(`v ${hex(a)} 8 8`)}`);
    t.notOk(isRegistered(pid, b), 'moved: no uw');
    t.same(pagesIn(await collect(pid, tracker), b, 8), [0, 1, 2, 3, 4, 5, 6, 7], 'whole');
    t.ok(isRegistered(pid, b), 'registered again');
    t.same(pagesIn(await collect(pid, tracker), b, 8), [], 'then tracked');
    await tracker.end();
    await m.cmd(`u ${hex(b)} 8`);
  });

  t.test('a VMA grown in place keeps its registration; the grown part comes back whole', async (t) => {
    const a = await m.map(24);
    await m.cmd(`u ${hex(a + 8n * PAGE)} 16`);
    await m.cmd(`w ${hex(a)} 8`);
    const tracker = await open(pid);
    await m.cmd(`g ${hex(a)} 8 12`);
    t.ok(
      uffdWpVmas(pid).some((r) => r.start <= a && r.end >= a + 12n * PAGE),
      'uw covers the grown VMA',
    );
    t.same(pagesIn(await collect(pid, tracker), a, 12), [8, 9, 10, 11]);
    await tracker.end();
    await m.cmd(`u ${hex(a)} 12`);
  });

  t.test('writes by the kernel (read(2) into the page) are reported', async (t) => {
    const a = await m.map(8);
    await m.cmd(`w ${hex(a)} 8`);
    const tracker = await open(pid);
    await m.cmd(`k ${hex(a + 6n * PAGE)} 1`);
    t.same(pagesIn(await collect(pid, tracker), a, 8), [6]);
    await tracker.end();
    await m.cmd(`u ${hex(a)} 8`);
  });

  t.test('never-touched pages hold pte markers, which read as swapped: a dumper must skip them', async (t) => {
    const a = await m.map(8);
    await m.cmd(`w ${hex(a)} 2`);
    const tracker = await open(pid);
    t.ok(isUffdWpMarker(pagemapEntry(pid, a + 4n * PAGE)), 'an untouched page is a marker');
    t.notOk(isUffdWpMarker(pagemapEntry(pid, a)), 'a written page is not');
    const fd = sys.open(`/proc/${pid}/pagemap`, 0, 0);
    try {
      // The scan cannot tell a marker from a swapped page...
      const vec = new BigUint64Array(3 * 16);
      const res = sys.pagemapScan(
        fd,
        {
          start: a,
          end: a + 8n * PAGE,
          flags: 0n,
          categoryInverted: 0n,
          categoryMask: 0n,
          categoryAnyofMask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
          returnMask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
          maxPages: 0n,
        },
        vec,
      );
      t.same(
        [...vec.slice(0, res.nrRegions * 3)],
        [a, a + 2n * PAGE, PAGE_IS_PRESENT, a + 2n * PAGE, a + 8n * PAGE, PAGE_IS_SWAPPED],
        'PAGEMAP_SCAN puts the markers in PAGE_IS_SWAPPED',
      );
      // ...the pagemap entries can, and the dumper's page scan leaves them out.
      t.same(scanPagemapRuns(fd, a, a + 8n * PAGE), [Number(a / PAGE), 2], 'the dump scan skips markers');
      t.same(findUffdWpMarkers(fd, a, a + 8n * PAGE), [{ start: a + 2n * PAGE, end: a + 8n * PAGE }]);
    } finally {
      sys.close(fd);
    }
    await tracker.end();
    t.equal(pagemapEntry(pid, a + 4n * PAGE), 0n, 'end() removes the markers');
    t.notOk(isRegistered(pid, a), 'and the registration');
    await m.cmd(`u ${hex(a)} 8`);
  });

  await t.test('done', async () => {
    await m.quit();
  });
});

function softDirtySkip(): string | false {
  if (!isRoot) return 'needs root (ptrace, probes)';
  return kerndat().hasSoftDirty ? 'this kernel has CONFIG_MEM_SOFT_DIRTY: nothing to refuse' : false;
}

t.test('the soft-dirty tracker is refused where the kernel lacks soft-dirty', { skip: softDirtySkip() }, async (t) => {
  const m = await TrackMem.start();
  t.teardown(() => m.fixture.kill());
  const frozen = freezeProcess(m.pid);
  try {
    await t.rejects(openTracker({ pid: m.pid, injector: frozen.leader, choice: 'soft-dirty' }), {
      code: 'EUNSUPPORTED',
      message: /CONFIG_MEM_SOFT_DIRTY/,
    });
  } finally {
    resumeProcess(frozen);
  }
  await m.quit();
});
