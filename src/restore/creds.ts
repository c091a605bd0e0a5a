/**
 * Restoring a thread's credentials (creds_entry in its core) by injected calls, in the order that
 * keeps the rights to finish: securebits with KEEP_CAPS and NO_SETUID_FIXUP first (so that changing
 * uids does not drop capabilities), groups, gids, uids, the bounding set, the capability sets
 * (capset v3), ambient capabilities, and the dumped securebits last. Nothing is called when the
 * thread already has the dumped credentials (the common case: root restoring root).
 * Then no_new_privs (creds_entry field 18, CRIU 4.x), per thread: the bit changes only what execve
 * grants and what seccomp(2) and LSM transitions allow, none of the calls above, so it goes last. The
 * restore runs this after seccomp, whose filters go in while the thread still has criu's
 * CAP_SYS_ADMIN; and after the threads are created, so the leader's bit does not reach them.
 */

import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import { log } from '../log.js';
import { readStatus } from '../proc/status.js';
import { SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';

const PR_SET_SECUREBITS = 28n;
const PR_CAPBSET_DROP = 24n;
const PR_CAP_AMBIENT = 47n;
const PR_CAP_AMBIENT_RAISE = 2n;
const PR_SET_NO_NEW_PRIVS = 38n;
const SECBIT_KEEP_CAPS = 1n << 4n;
const SECBIT_NO_SETUID_FIXUP = 1n << 2n;
const LINUX_CAPABILITY_VERSION_3 = 0x20080522;
const CAP_LAST = 63;

function mask(words: unknown): bigint {
  const w = (words as number[] | undefined) ?? [];
  return BigInt(w[0] ?? 0) | (BigInt(w[1] ?? 0) << 32n);
}

function current(pid: number, tid: number): { ids: string; caps: string; isNoNewPrivs: boolean } | null {
  const st = readStatus(pid, tid);
  if (st === null) return null;
  const f = (k: string): string => st.fields.get(k) ?? '';
  return {
    ids: [f('Uid'), f('Gid'), f('Groups')].join('|'),
    caps: ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']
      .map((k) => BigInt(`0x${f(k) || '0'}`).toString(16))
      .join('|'),
    isNoNewPrivs: st.isNoNewPrivs,
  };
}

/** Whether a creds_entry says no_new_privs (absent in CRIU 3.x images and when the bit was clear). */
export function hasNoNewPrivs(creds: ImageEntry | undefined): boolean {
  return Number(creds?.['no_new_privs'] ?? 0) !== 0;
}

/**
 * Give the stopped thread `inj` the credentials of its dumped creds_entry, then its no_new_privs bit.
 * Call once per thread, after the threads exist and after seccomp (see the header).
 */
export function restoreCreds(inj: Injector, creds: ImageEntry | undefined): void {
  if (creds === undefined) return;
  const now = current(inj.pid, inj.tid);
  restoreIdsAndCaps(inj, creds, now);
  if (hasNoNewPrivs(creds)) {
    if (now?.isNoNewPrivs !== true) inj.syscallOrThrow('prctl', [PR_SET_NO_NEW_PRIVS, 1n, 0n, 0n, 0n]);
  } else if (now?.isNoNewPrivs === true) {
    // Inherited from criu itself (run under no_new_privs); the kernel has no way to clear it.
    log().warn(`Thread ${inj.tid} of task ${inj.pid} keeps no_new_privs, which it did not have when dumped`);
  }
}

function restoreIdsAndCaps(inj: Injector, creds: ImageEntry, now: { ids: string; caps: string } | null): void {
  const n = (k: string): bigint => BigInt(Number(creds[k] ?? 0));
  const groups = ((creds['groups'] as number[] | undefined) ?? []).map(Number);
  const want = {
    ids: [
      [n('uid'), n('euid'), n('suid'), n('fsuid')].join('\t'),
      [n('gid'), n('egid'), n('sgid'), n('fsgid')].join('\t'),
      groups.join(' '),
    ].join('|'),
    caps: ['cap_inh', 'cap_prm', 'cap_eff', 'cap_bnd', 'cap_amb'].map((k) => mask(creds[k]).toString(16)).join('|'),
  };
  const secbits = n('secbits');
  if (now !== null && now.ids.replace(/ +$/, '') === want.ids && now.caps === want.caps && secbits === 0n) return;

  inj.syscallOrThrow('prctl', [PR_SET_SECUREBITS, secbits | SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP, 0n, 0n, 0n]);
  const gbuf = Buffer.alloc(Math.max(4, groups.length * 4));
  groups.forEach((g, i) => gbuf.writeUInt32LE(g, i * 4));
  inj.syscallOrThrow('setgroups', [BigInt(groups.length), inj.pushData(gbuf)]);
  inj.syscallOrThrow('setresgid', [n('gid'), n('egid'), n('sgid')]);
  inj.syscall(NR.setfsgid, [n('fsgid')]); // returns the old id, never an error
  inj.syscallOrThrow('setresuid', [n('uid'), n('euid'), n('suid')]);
  inj.syscall(NR.setfsuid, [n('fsuid')]);
  const bnd = mask(creds['cap_bnd']);
  for (let cap = 0; cap <= CAP_LAST; cap++) {
    if ((bnd & (1n << BigInt(cap))) === 0n) {
      const r = inj.syscall(NR.prctl, [PR_CAPBSET_DROP, BigInt(cap), 0n, 0n, 0n]);
      if (r === -22n) break; // EINVAL: past the last capability this kernel knows
    }
  }
  // struct __user_cap_header_struct { u32 version; int pid; } + 2 x { u32 effective, permitted, inheritable }
  const header = Buffer.alloc(8);
  header.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0);
  const data = Buffer.alloc(24);
  const [eff, prm, inh] = [mask(creds['cap_eff']), mask(creds['cap_prm']), mask(creds['cap_inh'])];
  for (let i = 0; i < 2; i++) {
    const shift = BigInt(32 * i);
    data.writeUInt32LE(Number((eff >> shift) & 0xffff_ffffn), i * 12);
    data.writeUInt32LE(Number((prm >> shift) & 0xffff_ffffn), i * 12 + 4);
    data.writeUInt32LE(Number((inh >> shift) & 0xffff_ffffn), i * 12 + 8);
  }
  // The dumped securebits while CAP_SETPCAP is still there (capset may drop it).
  inj.syscallOrThrow('prctl', [PR_SET_SECUREBITS, secbits, 0n, 0n, 0n]);
  inj.syscallOrThrow('capset', [inj.pushData(header), inj.pushData(data)]);
  const amb = mask(creds['cap_amb']);
  for (let cap = 0; cap <= CAP_LAST; cap++) {
    if ((amb & (1n << BigInt(cap))) !== 0n)
      inj.syscallOrThrow('prctl', [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, BigInt(cap), 0n, 0n]);
  }
  inj.resetScratch();
}
