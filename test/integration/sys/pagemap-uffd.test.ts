/**
 * PAGEMAP_SCAN against /proc/PID/pagemap as the oracle, and userfaultfd write-protect tracking
 * (UFFD_FEATURE_WP_ASYNC) of a Buffer of this process: register, write-protect, scan, write,
 * scan again and see exactly the written pages.
 */
import t from 'tap';
import {
  close,
  kill,
  open,
  pagemapScan,
  pagemapScanAsync,
  pread,
  processVmReadv,
  uffdioApi,
  uffdioRegister,
  uffdioUnregister,
  uffdioWriteprotect,
  userfaultfd,
} from '../../../src/sys/native.js';
import type { PagemapScanArg } from '../../../src/sys/native.js';
import {
  _UFFDIO_REGISTER,
  _UFFDIO_WRITEPROTECT,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDONLY,
  PAGE_IS_PRESENT,
  PAGE_IS_WRITTEN,
  PAGE_REGION_WORDS,
  PAGE_SIZE,
  PM_PRESENT,
  PM_SCAN_CHECK_WPASYNC,
  PM_SCAN_WP_MATCHING,
  SIGSTOP,
  UFFD_FEATURE_WP_ASYNC,
  UFFD_FEATURE_WP_UNPOPULATED,
  UFFD_USER_MODE_ONLY,
  UFFDIO_REGISTER_MODE_WP,
  UFFDIO_WRITEPROTECT_MODE_WP,
} from '../../../src/kernel/constants.js';
import { SyscallError } from '../../../src/errors.js';
import { readMaps, spawnDetached, statusField } from './procs.js';
import type { Vma } from './procs.js';

t.setTimeout(60000);

const PAGE = BigInt(PAGE_SIZE);
const SPECIAL = new Set(['[vvar]', '[vvar_vclock]', '[vdso]', '[vsyscall]']);

function scanArg(start: bigint, end: bigint, over: Partial<PagemapScanArg> = {}): PagemapScanArg {
  return {
    start,
    end,
    flags: 0n,
    categoryInverted: 0n,
    categoryMask: PAGE_IS_PRESENT,
    categoryAnyofMask: 0n,
    returnMask: PAGE_IS_PRESENT,
    maxPages: 0n,
    ...over,
  };
}

type Range = [bigint, bigint];

function regions(vec: BigUint64Array, nr: number): Range[] {
  const out: Range[] = [];
  for (let i = 0; i < nr; i++) out.push([vec[i * PAGE_REGION_WORDS] ?? 0n, vec[i * PAGE_REGION_WORDS + 1] ?? 0n]);
  return out;
}

/** Present page runs of a VMA, read entry by entry from /proc/PID/pagemap. */
function presentRuns(pagemapFd: number, vma: Vma): Range[] {
  const nrPages = Number((vma.end - vma.start) / PAGE);
  const entries = Buffer.alloc(nrPages * 8);
  pread(pagemapFd, entries, 0, entries.length, (vma.start / PAGE) * 8n);
  const runs: Range[] = [];
  for (let i = 0; i < nrPages; i++) {
    if ((entries.readBigUInt64LE(i * 8) & PM_PRESENT) === 0n) continue;
    const addr = vma.start + BigInt(i) * PAGE;
    const last = runs[runs.length - 1];
    if (last && last[1] === addr) last[1] = addr + PAGE;
    else runs.push([addr, addr + PAGE]);
  }
  return runs;
}

t.test('PAGEMAP_SCAN finds the present pages that /proc/PID/pagemap reports', async (t) => {
  const pid = spawnDetached(t, 'sleep 1000');
  kill(pid, SIGSTOP); // frozen memory for the comparison
  for (let i = 0; i < 500 && !statusField(pid, 'State').startsWith('T'); i++)
    await new Promise((r) => setTimeout(r, 2));
  const fd = open(`/proc/${pid}/pagemap`, O_RDONLY, 0);
  t.teardown(() => close(fd));

  const vec = new BigUint64Array(1024 * PAGE_REGION_WORDS);
  let compared = 0;
  for (const vma of readMaps(pid)) {
    if (SPECIAL.has(vma.name)) continue;
    const want = presentRuns(fd, vma);
    const r = pagemapScan(fd, scanArg(vma.start, vma.end), vec);
    t.equal(r.walkEnd, vma.end, `walked all of ${vma.name || 'anon'}`);
    t.same(regions(vec, r.nrRegions), want, `present pages of ${vma.start.toString(16)} ${vma.name}`);
    for (let i = 0; i < r.nrRegions; i++) t.equal(vec[i * 3 + 2], PAGE_IS_PRESENT);
    const a = await pagemapScanAsync(fd, scanArg(vma.start, vma.end), vec);
    t.same(a, r, 'async agrees');
    compared += want.length;
  }
  t.ok(compared > 3, `compared ${compared} runs`);

  // A vector of one region stops the walk early; walkEnd says where.
  const all = readMaps(pid).filter((v) => !SPECIAL.has(v.name));
  const first = all[0];
  const lastVma = all[all.length - 1];
  if (first && lastVma) {
    const one = new BigUint64Array(PAGE_REGION_WORDS);
    const r = pagemapScan(fd, scanArg(first.start, lastVma.end), one);
    t.equal(r.nrRegions, 1);
    t.ok(r.walkEnd > (one[0] ?? 0n) && r.walkEnd < lastVma.end, 'stopped early');
  }

  const bad = (() => {
    try {
      pagemapScan(fd, scanArg(1n, PAGE), vec);
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  t.match(bad, { errnoCode: 'EINVAL', syscall: 'ioctl(PAGEMAP_SCAN)', args: [fd, 1n] }, 'unaligned start');
});

/**
 * A Buffer above glibc's largest mmap threshold gets its own mapping; find its address by diffing
 * /proc/self/maps and checking a pattern through process_vm_readv.
 */
function locateBuffer(buf: Buffer, before: Vma[]): bigint | undefined {
  const after = readMaps('self');
  const covered = (a: bigint) => before.some((v) => a >= v.start && a < v.end);
  for (const v of after) {
    for (let page = v.start; page < v.end; page += PAGE) {
      if (covered(page)) continue;
      // The first new page: malloc's chunk header is 16 bytes.
      const probe = Buffer.alloc(16);
      try {
        processVmReadv(process.pid, probe, 0, new BigUint64Array([page + 16n, 16n]));
      } catch {
        break;
      }
      if (probe.equals(buf.subarray(0, 16))) return page + 16n;
      break;
    }
  }
  return undefined;
}

t.test('userfaultfd WP_ASYNC tracking of a Buffer, read with PAGEMAP_SCAN', async (t) => {
  const before = readMaps('self');
  const size = 64 << 20;
  const buf = Buffer.allocUnsafeSlow(size);
  buf.write('criu-ts uffd test', 0);
  buf.writeDoubleLE(Math.random(), 8);
  const addr = locateBuffer(buf, before);
  if (addr === undefined) {
    t.pass('uffd tracking of a Buffer', { skip: 'cannot locate the Buffer mapping in /proc/self/maps' });
    return;
  }
  const start = (addr + PAGE - 1n) & ~(PAGE - 1n);
  const end = (addr + BigInt(size)) & ~(PAGE - 1n);

  const uffd = userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
  t.teardown(() => close(uffd));
  const want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
  const api = uffdioApi(uffd, want);
  t.equal(api.features & want, want, 'WP_ASYNC and WP_UNPOPULATED granted');
  t.not(api.ioctls & _UFFDIO_REGISTER, 0n);
  const ioctls = uffdioRegister(uffd, start, end - start, UFFDIO_REGISTER_MODE_WP);
  t.not(ioctls & _UFFDIO_WRITEPROTECT, 0n, 'range allows UFFDIO_WRITEPROTECT');
  uffdioWriteprotect(uffd, start, end - start, UFFDIO_WRITEPROTECT_MODE_WP);

  const pagemap = open('/proc/self/pagemap', O_RDONLY, 0);
  t.teardown(() => close(pagemap));
  const vec = new BigUint64Array(64 * PAGE_REGION_WORDS);
  const arg = scanArg(start, end, {
    flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
    categoryMask: PAGE_IS_WRITTEN,
    returnMask: PAGE_IS_WRITTEN,
  });
  const armed = pagemapScan(pagemap, arg, vec);
  t.equal(armed.nrRegions, 0, 'nothing written since write-protecting');

  // Write pages 3, 4 and 100..102 of the range (byte offsets from the Buffer start).
  const off = Number(start - addr);
  for (const page of [3, 4, 100, 101, 102]) buf[off + page * PAGE_SIZE + 7] = 1;
  const r = await pagemapScanAsync(pagemap, arg, vec);
  t.same(regions(vec, r.nrRegions), [
    [start + 3n * PAGE, start + 5n * PAGE],
    [start + 100n * PAGE, start + 103n * PAGE],
  ]);
  t.equal(pagemapScan(pagemap, arg, vec).nrRegions, 0, 'the scan write-protected them again');

  uffdioUnregister(uffd, start, end - start);
  const again = (() => {
    try {
      uffdioApi(uffd, 0n);
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  t.ok(again instanceof SyscallError, 'UFFDIO_API only once per fd');
  t.match(again, { errnoCode: 'EINVAL', syscall: 'ioctl(UFFDIO_API)' });
  t.match(
    (() => {
      try {
        return uffdioRegister(uffd, 1n, PAGE, UFFDIO_REGISTER_MODE_WP);
      } catch (e) {
        return e;
      }
    })(),
    { errnoCode: 'EINVAL', syscall: 'ioctl(UFFDIO_REGISTER)', args: [uffd, 1n, PAGE] },
  );
});
