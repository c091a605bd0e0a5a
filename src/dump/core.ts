/**
 * Dumping a task's core state into `core-<tid>.img` (core_entry, x86_64):
 *
 * - thread_info: general registers (NT_PRSTATUS), FPU/SSE/AVX/AVX-512 state (NT_X86_XSTATE, in
 *   CRIU's split fields), clear_tid address (prctl PR_GET_TID_ADDRESS, injected).
 * - thread_core (every thread): robust list (get_robust_list), blocked mask, sigaltstack
 *   (injected), thread-private pending signals (PTRACE_PEEKSIGINFO), credentials (/proc status +
 *   PR_GET_SECUREBITS), comm, rseq (PTRACE_GET_RSEQ_CONFIGURATION), pdeath signal, nice/policy.
 * - tc (thread group leader): sigactions (injected rt_sigaction), itimers (injected getitimer),
 *   POSIX timers (/proc/PID/timers + injected timer_gettime), rlimits (prlimit), shared pending
 *   signals, personality, comm, oom_score_adj, loginuid, child subreaper.
 *
 * Registers are stored as the task must resume: a task stopped inside an interrupted system
 * call gets rip moved back onto its `syscall` instruction and rax = the call number, so the call
 * is made again on restore (CRIU does the same, but turns -ERESTART_RESTARTBLOCK into EINTR; we
 * restart those too: a relative nanosleep sleeps its whole time again). criu-ts's restore puts
 * such a thread back inside the call so that a signal handler running first still gets EINTR
 * semantics (src/restore/task.ts resumeInSyscall).
 */

import { TaskError } from '../errors.js';
import { ERESTART } from '../kernel/errno.js';
import type { ImageEntry } from '../images/index.js';
import type { InjectedCall, InjectedResult, Injector } from '../inject/injector.js';
import { readLoginuid, readOomScoreAdj, readPersonality } from '../proc/misc.js';
import { readStat } from '../proc/stat.js';
import { readStatus } from '../proc/status.js';
import { readLimits } from '../proc/limits.js';
import { readTimers } from '../proc/timers.js';
import * as sys from '../sys/native.js';
import type { UserRegs } from '../sys/regs.js';
import { decodeXsave } from './xsave.js';
import { TASK_STATE } from '../images/task-state.js';

const NT_X86_XSTATE = 0x202;
const XSTATE_BUF_BYTES = 16384;

/** Registers as the task must resume after restore (see the module header). */
export function resumeRegisters(regs: UserRegs): UserRegs {
  const orig = BigInt.asIntN(64, regs.orig_rax);
  if (orig < 0n) return regs;
  const err = -BigInt.asIntN(64, regs.rax);
  const restart = [
    ERESTART.ERESTARTSYS,
    ERESTART.ERESTARTNOINTR,
    ERESTART.ERESTARTNOHAND,
    ERESTART.ERESTART_RESTARTBLOCK,
  ];
  if (!restart.some((e) => BigInt(e) === err)) return regs;
  return { ...regs, rax: regs.orig_rax, rip: regs.rip - 2n };
}

export function gpregsEntry(r: UserRegs): ImageEntry {
  return {
    r15: r.r15,
    r14: r.r14,
    r13: r.r13,
    r12: r.r12,
    bp: r.rbp,
    bx: r.rbx,
    r11: r.r11,
    r10: r.r10,
    r9: r.r9,
    r8: r.r8,
    ax: r.rax,
    cx: r.rcx,
    dx: r.rdx,
    si: r.rsi,
    di: r.rdi,
    orig_ax: r.orig_rax,
    ip: r.rip,
    cs: r.cs,
    flags: r.eflags,
    sp: r.rsp,
    ss: r.ss,
    fs_base: r.fs_base,
    gs_base: r.gs_base,
    ds: r.ds,
    es: r.es,
    fs: r.fs,
    gs: r.gs,
    mode: 1, // NATIVE
  };
}

/** Run `calls` in the task (in one go: Injector.runCalls); a failed call throws its SyscallError. */
function checkedCalls(inj: Injector, calls: readonly InjectedCall[]): InjectedResult[] {
  const results = inj.runCalls(calls);
  results.forEach((r, i) => inj.checkCall(calls[i] as InjectedCall, r));
  return results;
}

function u32Words(mask: bigint): number[] {
  return [Number(mask & 0xffff_ffffn), Number(mask >> 32n)];
}

function credsEntry(pid: number, tid: number, secbits: number): ImageEntry {
  const st = readStatus(pid, tid);
  if (st === null) throw new TaskError(pid, `Thread ${tid} of task ${pid} vanished while being dumped`);
  return {
    uid: st.uid.real,
    gid: st.gid.real,
    euid: st.uid.effective,
    egid: st.gid.effective,
    suid: st.uid.saved,
    sgid: st.gid.saved,
    fsuid: st.uid.fs,
    fsgid: st.gid.fs,
    cap_inh: u32Words(st.capInh),
    cap_prm: u32Words(st.capPrm),
    cap_eff: u32Words(st.capEff),
    cap_bnd: u32Words(st.capBnd),
    secbits,
    groups: st.groups,
    // Per thread; only when set, as CRIU writes it (an image without it means "not set").
    ...(st.isNoNewPrivs ? { no_new_privs: 1 } : {}),
    cap_amb: u32Words(st.capAmb),
  };
}

function pendingSignals(tid: number, shared: boolean): ImageEntry {
  const signals: ImageEntry[] = [];
  for (let off = 0; ; off += 32) {
    const buf = sys.ptracePeekSiginfo(tid, off, 32, shared);
    for (let i = 0; i + 128 <= buf.length; i += 128) signals.push({ siginfo: Buffer.from(buf.subarray(i, i + 128)) });
    if (buf.length < 32 * 128) break;
  }
  return { signals };
}

/** The per-thread part, and the thread_info (registers). */
export function dumpThread(pid: number, inj: Injector): { thread_info: ImageEntry; thread_core: ImageEntry } {
  const tid = inj.tid;
  const regs = resumeRegisters(inj.registers);
  const xstate = sys.ptraceGetRegset(tid, NT_X86_XSTATE, XSTATE_BUF_BYTES);
  const PR_GET_TID_ADDRESS = 40n;
  const PR_GET_PDEATHSIG = 2n;
  const PR_GET_SECUREBITS = 27n;
  const calls: InjectedCall[] = [
    { name: 'prctl', outBytes: 8, args: (out) => [PR_GET_TID_ADDRESS, out, 0n, 0n, 0n] },
    { name: 'prctl', outBytes: 4, args: (out) => [PR_GET_PDEATHSIG, out, 0n, 0n, 0n] },
    // stack_t { void *ss_sp; int ss_flags; size_t ss_size; } = 24 bytes
    { name: 'sigaltstack', outBytes: 24, args: (out) => [0n, out] },
    { name: 'prctl', args: () => [PR_GET_SECUREBITS, 0n, 0n, 0n, 0n] },
  ];
  const [tidAddrR, pdeathR, sasR, secbitsR] = checkedCalls(inj, calls) as [
    InjectedResult,
    InjectedResult,
    InjectedResult,
    InjectedResult,
  ];
  const tidAddr = tidAddrR.out.readBigUInt64LE(0);
  const pdeath = pdeathR.out.readInt32LE(0);
  const sas = sasR.out;
  const robust = sys.getRobustList(tid);
  const stat = readStat(pid, tid);
  if (stat === null) throw new TaskError(pid, `Thread ${tid} of task ${pid} vanished while being dumped`);
  const rseq = sys.ptraceGetRseqConfiguration(tid);
  const threadCore: ImageEntry = {
    futex_rla: robust.head,
    futex_rla_len: Number(robust.len),
    sched_nice: stat.nice,
    sched_policy: stat.policy,
    blk_sigset: inj.signalMask,
    sas: { ss_sp: sas.readBigUInt64LE(0), ss_size: sas.readBigUInt64LE(16), ss_flags: sas.readInt32LE(8) },
    pdeath_sig: pdeath,
    signals_p: pendingSignals(tid, false),
    creds: credsEntry(pid, tid, Number(secbitsR.ret)),
    comm: stat.comm,
  };
  // struct ptrace_rseq_configuration { u64 rseq_abi_pointer; u32 rseq_abi_size; u32 signature; u32 flags; u32 pad; }
  if (rseq.length >= 16 && rseq.readBigUInt64LE(0) !== 0n) {
    threadCore['rseq_entry'] = {
      rseq_abi_pointer: rseq.readBigUInt64LE(0),
      rseq_abi_size: rseq.readUInt32LE(8),
      signature: rseq.readUInt32LE(12),
    };
  }
  return {
    thread_info: { clear_tid_addr: tidAddr, gpregs: gpregsEntry(regs), fpregs: decodeXsave(xstate) },
    thread_core: threadCore,
  };
}

/** struct itimerval { timeval it_interval; timeval it_value; } = 32 bytes */
function itimerEntry(b: Buffer): ImageEntry {
  return {
    isec: b.readBigUInt64LE(0),
    iusec: b.readBigUInt64LE(8),
    vsec: b.readBigUInt64LE(16),
    vusec: b.readBigUInt64LE(24),
  };
}

/** The signals core.tc.sigactions lists, in order: 1..64 but SIGKILL and SIGSTOP (no action). */
export const SIGACTION_SIGNALS: readonly number[] = Array.from({ length: 64 }, (_, i) => i + 1).filter(
  (sig) => sig !== 9 && sig !== 19,
);

/** struct kernel_sigaction { handler; flags; restorer; mask } = 32 bytes */
function sigactionEntry(b: Buffer): ImageEntry {
  return {
    sigaction: b.readBigUInt64LE(0),
    flags: b.readBigUInt64LE(8),
    restorer: b.readBigUInt64LE(16),
    mask: b.readBigUInt64LE(24),
    compat_sigaction: false,
  };
}

/** rlimits, from /proc/PID/limits (no injected call: prlimit on another task needs CAP_SYS_RESOURCE). */
function rlimits(pid: number): ImageEntry {
  const list = readLimits(pid);
  if (list === null) throw new TaskError(pid, `Cannot read the resource limits of task ${pid}`);
  return { rlimits: list.map((l) => ({ cur: l.cur, max: l.max })) };
}

/**
 * The process-wide part (`tc`), from the leader. Every injected call (child subreaper, the 62
 * sigactions, the 3 itimers, each POSIX timer's timer_gettime and timer_getoverrun) is made in
 * one batch (Injector.runCalls): one resumption of the task instead of ~70. `extra` calls (the
 * mm's, say) join the batch; their checked results are returned in order.
 */
export function dumpTaskCore(
  pid: number,
  leader: Injector,
  extra: readonly InjectedCall[] = [],
  vpid: (hostPid: number) => number = (p) => p,
): { tc: ImageEntry; extra: bigint[] } {
  const stat = readStat(pid);
  const personality = readPersonality(pid);
  if (stat === null || personality === null) throw new TaskError(pid, `Task ${pid} exited while being dumped`);
  const posix = readTimers(pid) ?? [];
  const PR_GET_CHILD_SUBREAPER = 37n;
  const calls: InjectedCall[] = [
    { name: 'prctl', outBytes: 4, args: (out) => [PR_GET_CHILD_SUBREAPER, out, 0n, 0n, 0n] },
    ...SIGACTION_SIGNALS.map((sig): InjectedCall => ({
      name: 'rt_sigaction',
      outBytes: 32,
      args: (out) => [BigInt(sig), 0n, out, 8n],
    })),
    ...[0n, 1n, 2n].map((which): InjectedCall => ({ name: 'getitimer', outBytes: 32, args: (out) => [which, out] })),
    ...posix.flatMap((t): InjectedCall[] => [
      // struct itimerspec { timespec it_interval; timespec it_value; }
      { name: 'timer_gettime', outBytes: 32, args: (out) => [BigInt(t.id), out] },
      { name: 'timer_getoverrun', args: () => [BigInt(t.id)] },
    ]),
  ];
  const results = checkedCalls(leader, [...calls, ...extra]);
  const at = (i: number): InjectedResult => results[i] as InjectedResult;
  const subreaper = at(0).out.readInt32LE(0);
  const sigs = SIGACTION_SIGNALS.map((_, i) => sigactionEntry(at(1 + i).out));
  const timerBase = 1 + SIGACTION_SIGNALS.length;
  const SIGEV_NUMBER = { signal: 0, none: 1, thread: 2 } as const;
  const SIGEV_THREAD_ID = 4;
  const posixEntries = posix.map((t, k) => {
    const spec = at(timerBase + 3 + 2 * k).out;
    const timer: ImageEntry = {
      it_id: t.id,
      clock_id: t.clockId,
      si_signo: t.signo,
      it_sigev_notify: SIGEV_NUMBER[t.notify] | (t.isThreadId ? SIGEV_THREAD_ID : 0),
      sival_ptr: t.sigevValue,
      overrun: Number(at(timerBase + 4 + 2 * k).ret),
      isec: spec.readBigUInt64LE(0),
      insec: spec.readBigUInt64LE(8),
      vsec: spec.readBigUInt64LE(16),
      vnsec: spec.readBigUInt64LE(24),
    };
    // /proc/PID/timers names the thread as criu's namespace sees it.
    if (t.isThreadId) timer['notify_thread_id'] = vpid(t.notifyPid);
    return timer;
  });
  const timers = {
    real: itimerEntry(at(timerBase).out),
    virt: itimerEntry(at(timerBase + 1).out),
    prof: itimerEntry(at(timerBase + 2).out),
    posix: posixEntries,
  };
  const tc: ImageEntry = {
    task_state: TASK_STATE.ALIVE,
    exit_code: 0,
    personality,
    flags: stat.flags,
    blk_sigset: leader.signalMask,
    comm: stat.comm,
    timers,
    rlimits: rlimits(pid),
    signals_s: pendingSignals(leader.tid, true),
    loginuid: readLoginuid(pid) ?? 0xffffffff,
    oom_score_adj: readOomScoreAdj(pid) ?? 0,
    sigactions: sigs,
    child_subreaper: subreaper !== 0,
  };
  return { tc, extra: results.slice(calls.length).map((r) => r.ret) };
}
