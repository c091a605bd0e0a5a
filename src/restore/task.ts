/**
 * Restoring the task state around the memory, by injected calls (or from outside where Linux
 * allows): process-wide (sigactions, itimers, POSIX timers, rlimits, personality, umask, cwd and
 * root, session) and per thread (name, sigaltstack, robust list, rseq, clear-tid address, pdeath
 * signal, nice, pending signals, registers and FPU state).
 */

import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import { log } from '../log.js';
import * as sys from '../sys/native.js';
import type { UserRegs } from '../sys/regs.js';
import { encodeXsave } from '../dump/xsave.js';
import { SIGACTION_SIGNALS } from '../dump/core.js';
import { openInTask } from '../files/task-io.js';
import { SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';

const NT_X86_XSTATE = 0x202;

const num = (v: unknown): bigint => BigInt((v as bigint | number | undefined) ?? 0);

export function restoreSigactions(inj: Injector, tc: ImageEntry): void {
  const list = (tc['sigactions'] as ImageEntry[] | undefined) ?? [];
  for (const [i, sa] of list.entries()) {
    const sig = SIGACTION_SIGNALS[i];
    if (sig === undefined) break;
    const handler = num(sa['sigaction']);
    const flags = num(sa['flags']);
    if (handler === 0n && flags === 0n && num(sa['mask']) === 0n) continue; // default
    const act = Buffer.alloc(32);
    act.writeBigUInt64LE(BigInt.asUintN(64, handler), 0);
    act.writeBigUInt64LE(BigInt.asUintN(64, flags), 8);
    act.writeBigUInt64LE(BigInt.asUintN(64, num(sa['restorer'])), 16);
    act.writeBigUInt64LE(BigInt.asUintN(64, num(sa['mask'])), 24);
    inj.syscallOrThrow('rt_sigaction', [BigInt(sig), inj.pushData(act), 0n, 8n]);
    inj.resetScratch();
  }
}

function itimerval(e: ImageEntry | undefined): Buffer {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(num(e?.['isec']), 0);
  b.writeBigUInt64LE(num(e?.['iusec']), 8);
  b.writeBigUInt64LE(num(e?.['vsec']), 16);
  b.writeBigUInt64LE(num(e?.['vusec']), 24);
  return b;
}

export function restoreTimers(inj: Injector, tc: ImageEntry): void {
  const timers = tc['timers'] as ImageEntry | undefined;
  if (timers === undefined) return;
  (['real', 'virt', 'prof'] as const).forEach((k, which) => {
    const t = timers[k] as ImageEntry | undefined;
    if (t === undefined || (num(t['vsec']) === 0n && num(t['vusec']) === 0n)) return;
    inj.syscallOrThrow('setitimer', [BigInt(which), inj.pushData(itimerval(t)), 0n]);
    inj.resetScratch();
  });
  const posix = (timers['posix'] as ImageEntry[] | undefined) ?? [];
  if (posix.length === 0) return;
  // Linux >= 6.17: timer_create takes the wanted id from *timerid once this is set.
  const PR_TIMER_CREATE_RESTORE_IDS = 77n;
  inj.syscallOrThrow('prctl', [PR_TIMER_CREATE_RESTORE_IDS, 1n, 0n, 0n, 0n]);
  for (const t of posix) {
    // struct sigevent { sigval value (8); int signo; int notify; union { int tid; ... } } = 64 bytes
    const ev = Buffer.alloc(64);
    ev.writeBigUInt64LE(num(t['sival_ptr']), 0);
    ev.writeInt32LE(Number(t['si_signo']), 8);
    ev.writeInt32LE(Number(t['it_sigev_notify']), 12);
    if (t['notify_thread_id'] !== undefined) ev.writeInt32LE(Number(t['notify_thread_id']), 16);
    const idBuf = Buffer.alloc(4);
    idBuf.writeInt32LE(Number(t['it_id']), 0);
    const idAddr = inj.pushData(idBuf);
    inj.syscallOrThrow('timer_create', [BigInt(Number(t['clock_id'])), inj.pushData(ev), idAddr]);
    const spec = Buffer.alloc(32);
    spec.writeBigUInt64LE(num(t['isec']), 0);
    spec.writeBigUInt64LE(num(t['insec']), 8);
    spec.writeBigUInt64LE(num(t['vsec']), 16);
    spec.writeBigUInt64LE(num(t['vnsec']), 24);
    if (num(t['vsec']) !== 0n || num(t['vnsec']) !== 0n)
      inj.syscallOrThrow('timer_settime', [BigInt(Number(t['it_id'])), 0n, inj.pushData(spec), 0n]);
    inj.resetScratch();
  }
  inj.syscallOrThrow('prctl', [PR_TIMER_CREATE_RESTORE_IDS, 0n, 0n, 0n, 0n]);
}

export function restoreRlimits(pid: number, tc: ImageEntry): void {
  const list = ((tc['rlimits'] as ImageEntry | undefined)?.['rlimits'] as ImageEntry[] | undefined) ?? [];
  list.forEach((r, res) => {
    const want = { cur: num(r['cur']), max: num(r['max']) };
    try {
      sys.prlimit(pid, res, want);
    } catch (err) {
      // Raising a hard limit needs CAP_SYS_RESOURCE: keep the closest we may have.
      const now = sys.prlimit(pid, res, null);
      const cur = want.cur < now.max ? want.cur : now.max;
      try {
        sys.prlimit(pid, res, { cur, max: now.max });
      } catch {
        // leave it
      }
      log().warn(`Cannot restore rlimit ${res} to ${want.cur}/${want.max}: ${String(err)}`);
    }
  });
}

export function restoreProcessMisc(
  inj: Injector,
  tc: ImageEntry,
  fs: ImageEntry,
  dirName: (id: number) => string,
): void {
  inj.syscallOrThrow('personality', [num(tc['personality'])]);
  inj.syscallOrThrow('umask', [num(fs['umask'])]);
  const root = dirName(Number(fs['root_id']));
  if (root !== '/') {
    const fd = openInTask(inj, root, 0o200000);
    inj.syscallOrThrow('fchdir', [BigInt(fd)]);
    inj.syscallOrThrow('chroot', [inj.pushData(Buffer.from('.\0'))]);
    inj.syscallOrThrow('close', [BigInt(fd)]);
  }
  const cwd = openInTask(inj, dirName(Number(fs['cwd_id'])), 0o200000);
  inj.syscallOrThrow('fchdir', [BigInt(cwd)]);
  inj.syscallOrThrow('close', [BigInt(cwd)]);
  const PR_SET_CHILD_SUBREAPER = 36n;
  if (tc['child_subreaper'] === true) inj.syscallOrThrow('prctl', [PR_SET_CHILD_SUBREAPER, 1n, 0n, 0n, 0n]);
  inj.resetScratch();
}

/** Per-thread state; run in the thread itself (set_tid_address, rseq, robust list are per thread). */
export function restoreThreadMisc(inj: Injector, core: ImageEntry): void {
  const ti = core['thread_info'] as ImageEntry;
  const tcore = (core['thread_core'] as ImageEntry | undefined) ?? {};
  inj.syscallOrThrow('set_tid_address', [num(ti['clear_tid_addr'])]);
  if (num(tcore['futex_rla']) !== 0n)
    inj.syscallOrThrow('set_robust_list', [num(tcore['futex_rla']), num(tcore['futex_rla_len'])]);
  const PR_SET_NAME = 15n;
  const comm = String(tcore['comm'] ?? (core['tc'] as ImageEntry | undefined)?.['comm'] ?? '');
  if (comm !== '') inj.syscallOrThrow('prctl', [PR_SET_NAME, inj.pushData(Buffer.from(`${comm}\0`)), 0n, 0n, 0n]);
  const sas = tcore['sas'] as ImageEntry | undefined;
  if (sas !== undefined && (Number(sas['ss_flags']) & 2) === 0) {
    const st = Buffer.alloc(24);
    st.writeBigUInt64LE(num(sas['ss_sp']), 0);
    st.writeInt32LE(Number(sas['ss_flags']), 8);
    st.writeBigUInt64LE(num(sas['ss_size']), 16);
    inj.syscallOrThrow('sigaltstack', [inj.pushData(st), 0n]);
  }
  const PR_SET_PDEATHSIG = 1n;
  if (Number(tcore['pdeath_sig'] ?? 0) !== 0)
    inj.syscallOrThrow('prctl', [PR_SET_PDEATHSIG, num(tcore['pdeath_sig']), 0n, 0n, 0n]);
  if (Number(tcore['sched_nice'] ?? 0) !== 0)
    inj.syscallOrThrow('setpriority', [0n, 0n, BigInt(Number(tcore['sched_nice']))]);
  const rseq = tcore['rseq_entry'] as ImageEntry | undefined;
  if (rseq !== undefined && num(rseq['rseq_abi_pointer']) !== 0n)
    inj.syscallOrThrow('rseq', [num(rseq['rseq_abi_pointer']), num(rseq['rseq_abi_size']), 0n, num(rseq['signature'])]);
  inj.resetScratch();
}

/**
 * Queue the dumped pending signals again (the task queues them to itself, so any si_code goes).
 * `self`: the thread as its own PID namespace knows it (the images' pid and tid).
 */
export function restorePendingSignals(
  inj: Injector,
  queue: ImageEntry | undefined,
  isShared: boolean,
  self: { pid: number; tid: number } = { pid: inj.pid, tid: inj.tid },
): void {
  const signals = (queue?.['signals'] as ImageEntry[] | undefined) ?? [];
  for (const s of signals) {
    const info = s['siginfo'] as Uint8Array;
    const signo = Buffer.from(info).readInt32LE(0);
    const addr = inj.pushData(Buffer.from(info));
    if (isShared) inj.syscallOrThrow('rt_sigqueueinfo', [BigInt(self.pid), BigInt(signo), addr]);
    else inj.syscallOrThrow('rt_tgsigqueueinfo', [BigInt(self.pid), BigInt(self.tid), BigInt(signo), addr]);
    inj.resetScratch();
  }
}

/**
 * System calls that Linux ends with -ERESTARTNOHAND (or an equivalent): restarted when no signal
 * handler runs, EINTR when one does. Every other interrupted call is given -ERESTARTSYS: restarted
 * unless a handler without SA_RESTART runs. Relative sleeps (ERESTART_RESTARTBLOCK in the kernel)
 * behave as NOHAND here, since the restart block does not survive a restore.
 */
const RESTART_NOHAND: ReadonlySet<number> = new Set([
  NR.pause,
  NR.rt_sigsuspend,
  NR.select,
  NR.pselect6,
  NR.poll,
  NR.ppoll,
  NR.epoll_wait,
  NR.epoll_pwait,
  NR.epoll_pwait2,
  NR.nanosleep,
  NR.clock_nanosleep,
  NR.rt_sigtimedwait,
]);
const ERESTARTSYS = 512n;
const ERESTARTNOHAND = 514n;

/**
 * A thread the dump caught inside a system call is stored as CRIU stores it: rip on the `syscall`
 * instruction, rax = the call number, so that it is simply made again. Restoring exactly that
 * would restart the call even when a signal handler runs first, where Linux returns EINTR (a
 * pause() loop waiting for a handler's flag would never wake). So the thread is put back inside
 * the call instead (rip after the instruction, orig_rax = the call, rax = the restart code), and
 * the kernel's own signal path decides, as for a task that was never dumped. `insn` holds the two
 * bytes at the dumped rip.
 */
export function resumeInSyscall(regs: UserRegs, dumpedOrigRax: bigint, insn: Buffer): UserRegs {
  const nr = BigInt.asIntN(64, dumpedOrigRax);
  if (nr < 0n || regs.rax !== dumpedOrigRax || insn.length !== 2 || insn[0] !== 0x0f || insn[1] !== 0x05) return regs;
  const code = RESTART_NOHAND.has(Number(nr)) ? ERESTARTNOHAND : ERESTARTSYS;
  return { ...regs, rip: regs.rip + 2n, orig_rax: dumpedOrigRax, rax: BigInt.asUintN(64, -code) };
}

/** The dumped orig_rax of a core (the call a thread was in, or -1). */
export function dumpedOrigRax(core: ImageEntry): bigint {
  const g = (core['thread_info'] as ImageEntry)['gpregs'] as ImageEntry;
  return num(g['orig_ax']);
}

/** The registers the thread resumes with: the dumped ones, not in any syscall. */
export function dumpedRegisters(core: ImageEntry): UserRegs {
  const g = (core['thread_info'] as ImageEntry)['gpregs'] as ImageEntry;
  return {
    r15: num(g['r15']),
    r14: num(g['r14']),
    r13: num(g['r13']),
    r12: num(g['r12']),
    rbp: num(g['bp']),
    rbx: num(g['bx']),
    r11: num(g['r11']),
    r10: num(g['r10']),
    r9: num(g['r9']),
    r8: num(g['r8']),
    rax: num(g['ax']),
    rcx: num(g['cx']),
    rdx: num(g['dx']),
    rsi: num(g['si']),
    rdi: num(g['di']),
    orig_rax: -1n,
    rip: num(g['ip']),
    cs: num(g['cs']),
    eflags: num(g['flags']),
    rsp: num(g['sp']),
    ss: num(g['ss']),
    fs_base: num(g['fs_base']),
    gs_base: num(g['gs_base']),
    ds: num(g['ds']),
    es: num(g['es']),
    fs: num(g['fs']),
    gs: num(g['gs']),
  };
}

/** FPU/SSE/AVX state, over the thread's current XSAVE buffer. */
export function restoreFpu(tid: number, core: ImageEntry): void {
  const fp = (core['thread_info'] as ImageEntry)['fpregs'] as ImageEntry | undefined;
  if (fp === undefined) return;
  const base = sys.ptraceGetRegset(tid, NT_X86_XSTATE, 16384);
  sys.ptraceSetRegset(tid, NT_X86_XSTATE, encodeXsave(fp, base));
}
