import t from 'tap';
import { parseSmaps, SMAPS_SIZE_KEYS } from '../../../src/proc/smaps.js';

// /proc/PID/smaps of a `sleep` on this machine (kernel 6.18): its first two VMAs, then the [heap],
// [vvar], [stack] and [vsyscall] VMAs of another process.
const SAMPLE = `563af5344000-563af5346000 r--p 00000000 fe:00 260875                     /usr/bin/sleep
Size:                  8 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   8 kB
Pss:                   4 kB
Pss_Dirty:             0 kB
Shared_Clean:          8 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:            8 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: rd mr mw me 
563af5346000-563af534b000 r-xp 00002000 fe:00 260875                     /usr/bin/sleep
Size:                 20 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                  20 kB
Pss:                  10 kB
Pss_Dirty:             0 kB
Shared_Clean:         20 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:           20 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: rd ex mr mw me 
55bc36c06000-55bc36c27000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                  32 kB
Pss:                  32 kB
Pss_Dirty:            32 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:        32 kB
Referenced:           32 kB
Anonymous:            32 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: rd wr mr mw me ac 
7f0490d04000-7f0490d08000 r--p 00000000 00:00 0                          [vvar]
Size:                 16 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   0 kB
Pss:                   0 kB
Pss_Dirty:             0 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:            0 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: rd mr pf io de dd 
7ffc5e40e000-7ffc5e42f000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                  12 kB
Pss:                  12 kB
Pss_Dirty:            12 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:        12 kB
Referenced:           12 kB
Anonymous:            12 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: rd wr mr mw me gd ac 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Size:                  4 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   0 kB
Pss:                   0 kB
Pss_Dirty:             0 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:            0 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: ex 
`;

t.test('entries, maps lines and flags', async (t) => {
  const e = parseSmaps(SAMPLE);
  t.equal(e.length, 6);
  t.same(
    e.map((v) => v.map.path),
    [e[0]?.map.path, e[0]?.map.path, '[heap]', '[vvar]', '[stack]', '[vsyscall]'],
  );
  t.match(e[0]?.map.path, /\/sleep$/);
  for (const v of e) {
    t.equal(v.start, v.map.start);
    t.equal(v.end, v.map.end);
    t.equal(v.bytes.Size, Number(v.end - v.start), 'Size is end - start');
    t.equal(v.bytes.KernelPageSize, 4096);
  }
  t.same([...(e[1]?.vmFlags ?? [])], ['rd', 'ex', 'mr', 'mw', 'me']);
  t.ok(e[4]?.vmFlags.has('gd'), 'the stack grows down');
  t.ok(e[3]?.vmFlags.has('io') && e[3]?.vmFlags.has('pf') && e[3]?.vmFlags.has('dd'), 'vvar is a PFN map');
  t.same([...(e[5]?.vmFlags ?? [])], ['ex']);
});

t.test('counters in bytes', async (t) => {
  const e = parseSmaps(SAMPLE);
  const heap = e[2];
  t.equal(heap?.bytes.Size, 132 * 1024);
  t.equal(heap?.bytes.Rss, 32 * 1024);
  t.equal(heap?.bytes.Anonymous, 32 * 1024);
  t.equal(heap?.bytes.Private_Dirty, 32 * 1024);
  t.equal(heap?.bytes.AnonHugePages, 0);
  t.equal(heap?.bytes.Swap, 0);
  t.equal(heap?.isThpEligible, false);
  t.equal(e[4]?.bytes.Rss, 12 * 1024);
  t.equal(heap?.protectionKey, undefined);
});

t.test('identical flag strings share one Set', async (t) => {
  const text = SAMPLE + SAMPLE;
  const e = parseSmaps(text);
  t.equal(e[0]?.vmFlags, e[6]?.vmFlags);
});

t.test('missing keys read 0, unknown keys are ignored', async (t) => {
  const e = parseSmaps(
    '7f00-8f00 rw-p 00000000 00:00 0 \nRss:  8 kB\nFutureKey:  5 kB\nProtectionKey:  3\nVmFlags: rd wr \n',
  );
  t.equal(e.length, 1);
  t.equal(e[0]?.bytes.Rss, 8192);
  t.equal(e[0]?.bytes.KSM, 0);
  t.equal(e[0]?.protectionKey, 3);
  t.same(Object.keys(e[0]?.bytes ?? {}), SMAPS_SIZE_KEYS, 'every known key, in order');
  t.throws(() => parseSmaps('Rss: 8 kB\n'), /before any VMA/);
});
