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

import { readFileSync } from 'node:fs';
import { ERESTART } from '../kernel/errno.js';
import { type SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';
import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import { readStatus } from '../proc/status.js';
import * as sys from '../sys/native.js';
import type { UserRegs } from '../sys/regs.js';
import { decodeXsave } from './xsave.js';

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

/** Run `name` with an output buffer of `len` bytes in the task; returns that buffer. */
function outCall(inj: Injector, name: keyof typeof NR, len: number, args: (out: bigint) => bigint[]): Buffer {
  const out = inj.pushData(Buffer.alloc(len));
  inj.syscallOrThrow(name, args(out));
  return inj.readMemory(out, len);
}

function u32Words(mask: bigint): number[] {
  return [Number(mask & 0xffff_ffffn), Number(mask >> 32n)];
}

function credsEntry(pid: number, tid: number, inj: Injector): ImageEntry {
  const st = readStatus(pid, tid);
  if (st === null) throw new Error(`Task ${tid} vanished`);
  const four = (key: string): number[] => (st.fields.get(key) ?? '0 0 0 0').split(/\s+/).map(Number);
  const [uid = 0, euid = 0, suid = 0, fsuid = 0] = four('Uid');
  const [gid = 0, egid = 0, sgid = 0, fsgid = 0] = four('Gid');
  const cap = (key: string): number[] => u32Words(BigInt(`0x${st.fields.get(key) ?? '0'}`));
  const groups = (st.fields.get('Groups') ?? '')
    .split(/\s+/)
    .filter((s) => s !== '')
    .map(Number);
  const PR_GET_SECUREBITS = 27n;
  const secbits = Number(inj.syscallOrThrow('prctl', [PR_GET_SECUREBITS, 0n, 0n, 0n, 0n]));
  return {
    uid,
    gid,
    euid,
    egid,
    suid,
    sgid,
    fsuid,
    fsgid,
    cap_inh: cap('CapInh'),
    cap_prm: cap('CapPrm'),
    cap_eff: cap('CapEff'),
    cap_bnd: cap('CapBnd'),
    secbits,
    groups,
    cap_amb: cap('CapAmb'),
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

function readComm(pid: number, tid: number): string {
  return readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').replace(/\n$/, '');
}

/** The per-thread part, and the thread_info (registers). */
export function dumpThread(pid: number, inj: Injector): { thread_info: ImageEntry; thread_core: ImageEntry } {
  inj.resetScratch();
  const tid = inj.tid;
  const regs = resumeRegisters(inj.registers);
  const xstate = sys.ptraceGetRegset(tid, NT_X86_XSTATE, XSTATE_BUF_BYTES);
  const PR_GET_TID_ADDRESS = 40n;
  const tidAddr = outCall(inj, 'prctl', 8, (out) => [PR_GET_TID_ADDRESS, out, 0n, 0n, 0n]).readBigUInt64LE(0);
  const PR_GET_PDEATHSIG = 2n;
  const pdeath = outCall(inj, 'prctl', 4, (out) => [PR_GET_PDEATHSIG, out, 0n, 0n, 0n]).readInt32LE(0);
  // stack_t { void *ss_sp; int ss_flags; size_t ss_size; } = 24 bytes
  const sas = outCall(inj, 'sigaltstack', 24, (out) => [0n, out]);
  const robust = sys.getRobustList(tid);
  const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const nice = Number(fields[16] ?? 0); // field 19 of proc(5)
  const policy = Number(fields[38] ?? 0); // field 41
  const rseq = sys.ptraceGetRseqConfiguration(tid);
  const threadCore: ImageEntry = {
    futex_rla: robust.head,
    futex_rla_len: Number(robust.len),
    sched_nice: nice,
    sched_policy: policy,
    blk_sigset: inj.signalMask,
    sas: { ss_sp: sas.readBigUInt64LE(0), ss_size: sas.readBigUInt64LE(16), ss_flags: sas.readInt32LE(8) },
    pdeath_sig: pdeath,
    signals_p: pendingSignals(tid, false),
    creds: credsEntry(pid, tid, inj),
    comm: readComm(pid, tid),
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

function itimer(inj: Injector, which: bigint): ImageEntry {
  // struct itimerval { timeval it_interval; timeval it_value; } = 32 bytes
  const b = outCall(inj, 'getitimer', 32, (out) => [which, out]);
  return {
    isec: b.readBigUInt64LE(0),
    iusec: b.readBigUInt64LE(8),
    vsec: b.readBigUInt64LE(16),
    vusec: b.readBigUInt64LE(24),
  };
}

/** /proc/PID/timers: "ID: n", "signal: n/ptr", "notify: thread/signal/none/tid", "ClockID: n". */
function posixTimers(pid: number, inj: Injector): ImageEntry[] {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/timers`, 'utf8');
  } catch {
    return [];
  }
  const timers: ImageEntry[] = [];
  for (const block of text.split(/(?=^ID:)/m)) {
    const id = /^ID: (\d+)/m.exec(block);
    if (id === null) continue;
    const sig = /^signal: (\d+)\/([0-9a-f]+)/m.exec(block);
    const notify = /^notify: (\w+)\/(?:pid|tid)\.(\d+)/m.exec(block);
    const clock = /^ClockID: (\d+)/m.exec(block);
    const itId = BigInt(id[1] as string);
    // struct itimerspec { timespec it_interval; timespec it_value; }
    const spec = outCall(inj, 'timer_gettime', 32, (out) => [itId, out]);
    const overrun = Number(inj.syscallOrThrow('timer_getoverrun', [itId]));
    const notifyKind = notify?.[1] ?? 'signal';
    const SIGEV = { signal: 0, none: 1, thread: 2 } as Record<string, number>;
    const timer: ImageEntry = {
      it_id: Number(itId),
      clock_id: Number(clock?.[1] ?? 0),
      si_signo: Number(sig?.[1] ?? 0),
      it_sigev_notify: notifyKind === 'thread' ? (SIGEV['signal'] as number) | 4 : (SIGEV[notifyKind] ?? 0),
      sival_ptr: BigInt(`0x${sig?.[2] ?? '0'}`),
      overrun,
      isec: spec.readBigUInt64LE(0),
      insec: spec.readBigUInt64LE(8),
      vsec: spec.readBigUInt64LE(16),
      vnsec: spec.readBigUInt64LE(24),
    };
    if (notifyKind === 'thread' && notify?.[2] !== undefined) timer['notify_thread_id'] = Number(notify[2]);
    timers.push(timer);
  }
  return timers;
}

function sigactions(inj: Injector): ImageEntry[] {
  const out: ImageEntry[] = [];
  for (let sig = 1; sig <= 64; sig++) {
    if (sig === 9 || sig === 19) continue; // SIGKILL, SIGSTOP: no action to keep
    // struct kernel_sigaction { handler; flags; restorer; mask } = 32 bytes
    const b = outCall(inj, 'rt_sigaction', 32, (o) => [BigInt(sig), 0n, o, 8n]);
    out.push({
      sigaction: b.readBigUInt64LE(0),
      flags: b.readBigUInt64LE(8),
      restorer: b.readBigUInt64LE(16),
      mask: b.readBigUInt64LE(24),
      compat_sigaction: false,
    });
  }
  return out;
}

/** rlimits, read by the task itself (prlimit on another task needs CAP_SYS_RESOURCE when its uids differ). */
function rlimits(inj: Injector): ImageEntry {
  const list: ImageEntry[] = [];
  for (let res = 0; res < 16; res++) {
    const b = outCall(inj, 'prlimit64', 16, (out) => [0n, BigInt(res), 0n, out]);
    list.push({ cur: b.readBigUInt64LE(0), max: b.readBigUInt64LE(8) });
  }
  inj.resetScratch();
  return { rlimits: list };
}

function readNumber(path: string, fallback: number): number {
  try {
    return Number(readFileSync(path, 'utf8').trim());
  } catch {
    return fallback;
  }
}

/** The process-wide part (`tc`), from the leader. */
export function dumpTaskCore(pid: number, leader: Injector): ImageEntry {
  leader.resetScratch();
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const PR_GET_CHILD_SUBREAPER = 37n;
  const subreaper = outCall(leader, 'prctl', 4, (out) => [PR_GET_CHILD_SUBREAPER, out, 0n, 0n, 0n]).readInt32LE(0);
  const sigs = sigactions(leader);
  leader.resetScratch();
  const timers = {
    real: itimer(leader, 0n),
    virt: itimer(leader, 1n),
    prof: itimer(leader, 2n),
    posix: posixTimers(pid, leader),
  };
  return {
    task_state: 1, // TASK_ALIVE
    exit_code: 0,
    personality: parseInt(readFileSync(`/proc/${pid}/personality`, 'utf8').trim(), 16),
    flags: Number(fields[6] ?? 0),
    blk_sigset: leader.signalMask,
    comm: readComm(pid, pid),
    timers,
    rlimits: rlimits(leader),
    signals_s: pendingSignals(leader.tid, true),
    loginuid: readNumber(`/proc/${pid}/loginuid`, 0xffffffff),
    oom_score_adj: readNumber(`/proc/${pid}/oom_score_adj`, 0),
    sigactions: sigs,
    child_subreaper: subreaper !== 0,
  };
}
