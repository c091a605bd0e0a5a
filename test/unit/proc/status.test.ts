import t from 'tap';
import { parseStatus } from '../../../src/proc/status.js';

// /proc/PID/status of a python3 run as `unshare -pf setpriv --groups 4,24,27 python3` after
// umask(027), PR_SET_NO_NEW_PRIVS and two seccomp filters, on this machine (kernel 6.18).
const SECCOMP = `Name:\tpython3
Umask:\t0027
State:\tR (running)
Tgid:\t29652
Ngid:\t0
Pid:\t29652
PPid:\t29649
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
FDSize:\t256
Groups:\t4 24 27 
NStgid:\t29652\t1
NSpid:\t29652\t1
NSpgid:\t29646\t0
NSsid:\t24564\t0
Kthread:\t0
VmPeak:\t   16884 kB
VmSize:\t   16884 kB
VmLck:\t       0 kB
VmPin:\t       0 kB
VmHWM:\t   13996 kB
VmRSS:\t   13996 kB
RssAnon:\t    7080 kB
RssFile:\t    6916 kB
RssShmem:\t       0 kB
VmData:\t    8104 kB
VmStk:\t     132 kB
VmExe:\t       4 kB
VmLib:\t    4760 kB
VmPTE:\t      72 kB
VmSwap:\t       0 kB
HugetlbPages:\t       0 kB
CoreDumping:\t0
THP_enabled:\t1
untag_mask:\t0xffffffffffffffff
Threads:\t1
SigQ:\t0/96364
SigPnd:\t0000000000000000
ShdPnd:\t0000000000000000
SigBlk:\t0000000000000000
SigIgn:\t0000000001001000
SigCgt:\t0000000000000002
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t1
Seccomp:\t2
Seccomp_filters:\t2
Speculation_Store_Bypass:\tvulnerable
SpeculationIndirectBranch:\talways enabled
Cpus_allowed:\t3
Cpus_allowed_list:\t0-1
Mems_allowed:\t00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000001
Mems_allowed_list:\t0
voluntary_ctxt_switches:\t19
nonvoluntary_ctxt_switches:\t41
`;

// A bash child of the test shell (no groups: "Groups:\t " with a trailing space).
const BASH = `Name:\tbash
Umask:\t0022
State:\tS (sleeping)
Tgid:\t26591
Ngid:\t0
Pid:\t26591
PPid:\t26588
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
FDSize:\t256
Groups:\t 
NStgid:\t26591
NSpid:\t26591
NSpgid:\t26588
NSsid:\t24564
Threads:\t1
SigQ:\t0/96364
SigPnd:\t0000000000000000
ShdPnd:\t0000000000000000
SigBlk:\t0000000000010000
SigIgn:\t0000000000000006
SigCgt:\t0000000000014000
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t0
Seccomp:\t0
Seccomp_filters:\t0
Speculation_Store_Bypass:\tvulnerable
`;

t.test('the basic fields keep working', async (t) => {
  const s = parseStatus(SECCOMP);
  t.equal(s.name, 'python3');
  t.equal(s.state, 'R');
  t.equal(s.tgid, 29652);
  t.equal(s.pid, 29652);
  t.equal(s.ppid, 29649);
  t.equal(s.tracerPid, 0);
  t.equal(s.threads, 1);
  t.equal(s.fields.get('VmRSS'), '13996 kB');
});

t.test('credentials, namespaces and security', async (t) => {
  const s = parseStatus(SECCOMP);
  t.equal(s.umask, 0o27);
  t.same(s.uid, { real: 0, effective: 0, saved: 0, fs: 0 });
  t.same(s.gid, { real: 0, effective: 0, saved: 0, fs: 0 });
  t.same(s.groups, [4, 24, 27]);
  t.same(s.nsTgid, [29652, 1]);
  t.same(s.nsPid, [29652, 1]);
  t.same(s.nsPgid, [29646, 0]);
  t.same(s.nsSid, [24564, 0]);
  t.equal(s.isNoNewPrivs, true);
  t.equal(s.seccompMode, 'filter');
  t.equal(s.seccompFilters, 2);
  t.equal(s.speculationStoreBypass, 'vulnerable');
  t.equal(s.capEff, 0x1fffeffffffn);
  t.equal(s.capBnd, 0x1fffeffffffn);
  t.equal(s.capInh, 0n);
  t.equal(s.capAmb, 0n);
  t.equal(s.isCoreDumping, false);
  t.equal(s.isThpEnabled, true);
});

t.test('signal masks and SigQ', async (t) => {
  const s = parseStatus(BASH);
  t.equal(s.sigQueued, 0);
  t.equal(s.sigQueueLimit, 96364);
  t.equal(s.sigBlk, 1n << 16n, 'SIGCHLD (17) blocked');
  t.equal(s.sigIgn, (1n << 1n) | (1n << 2n), 'SIGINT and SIGQUIT ignored');
  t.equal(s.sigCgt, 0x14000n);
  t.equal(s.sigPnd, 0n);
  t.equal(s.shdPnd, 0n);
  t.same(s.groups, [], 'no supplementary groups');
  t.equal(s.seccompMode, 'disabled');
  t.equal(s.isNoNewPrivs, false);
  t.equal(s.umask, 0o22);
});

t.test('keys an older kernel lacks read as neutral values', async (t) => {
  const s = parseStatus('Name:\tx\nState:\tS (sleeping)\nPid:\t5\n');
  t.equal(s.umask, null);
  t.same(s.nsPid, []);
  t.equal(s.seccompFilters, 0);
  t.equal(s.sigBlk, 0n);
  t.same(s.uid, { real: 0, effective: 0, saved: 0, fs: 0 });
});
