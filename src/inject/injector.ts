/**
 * Syscall injection: run single system calls inside a stopped task, from outside.
 *
 * This is criu-ts's replacement for CRIU's parasite (compel): the dumper, the restorer and
 * `criu exec` all use it. Kernel interfaces: ptrace(2) SEIZE/INTERRUPT/SYSCALL/GETREGSET/SETREGSET/
 * GETSIGMASK/SETSIGMASK/DETACH, waitpid(2) with __WALL, process_vm_readv/writev, /proc/PID/maps.
 *
 * How one call is made (no byte of the task's code is changed):
 *   1. The task is seized and interrupted; its registers and blocked-signal mask are saved, and every
 *      signal is blocked so that no handler can run on our borrowed registers.
 *   2. The registers are set to {rax = nr, rdi, rsi, rdx, r10, r8, r9 = args, rip = an existing
 *      `syscall` instruction (0f 05) in the vDSO, orig_rax = -1}, orig_rax = -1 keeping the kernel from
 *      treating the interrupted syscall's restart code as ours.
 *   3. PTRACE_SYSCALL runs the task to the syscall-entry stop, and again to the exit stop, where rax
 *      holds the result.
 *
 * Putting the task back (release): at the last exit stop the saved registers are set again, then
 * PTRACE_INTERRUPT + PTRACE_CONT send the task through the kernel's signal path into an interrupt
 * stop. From there, PTRACE_DETACH lets the kernel itself apply the restart rules to the saved
 * registers (-ERESTARTSYS, -ERESTARTNOHAND, -ERESTARTNOINTR, -ERESTART_RESTARTBLOCK), deliver any
 * signal that arrived meanwhile with its handler's SA_RESTART semantics, or re-enter a group stop:
 * exactly what would have happened had we never injected anything.
 *
 * Threads: an Injector drives one thread; other threads of the process keep running unless the
 * caller stopped them. All ptrace calls go through src/sys/native.ts, which runs them on its one
 * tracer thread, so the Injector can be used from any JS code.
 *
 * A wait that Linux would end with a spurious EINTR because of our stop (epoll_wait, sigtimedwait)
 * is restarted instead: see restart.ts.
 *
 * Many calls at once (runCalls): each call above costs two round trips through ptrace stops, and
 * a hand-off to the tracer thread, which adds up when a dump asks for 64 sigactions. By default
 * the calls are still made one by one, but all their ptrace requests go to the tracer thread in
 * one chain (rawSyscalls: ~0.05 ms per call here instead of ~0.1-0.4). With CRIU_TS_INJECT_BATCH=1
 * (an opt-in: it is code of ours running in the task, beyond the project's single-syscall
 * injection) a batch runs in one go through a 56-byte loop of our own, put in a private read+exec
 * page of the task (mapped by one injected mmap, written through /proc/PID/mem, removed on release
 * like the scratch page):
 *
 *   loop: test r13,r13; jz done                    r12 = table, r13 = number of calls
 *         rax,rdi,rsi,rdx,r10,r8,r9 = [r12+0..48]   table entry: nr, 6 args, result (64 bytes)
 *         syscall; [r12+56] = rax; r12 += 64; r13--; jmp loop
 *   done: int3                                      SIGTRAP: we see it as a signal-delivery stop
 *
 * The task runs it with every signal blocked (as for single calls), seccomp suspended, and its
 * own stack untouched; the SIGTRAP is never delivered (the next resumption passes signal 0). If
 * the page cannot be made (a kernel refusing exec mappings or /proc/PID/mem writes), calls are
 * made one at a time, with the same results.
 *
 * If criu-ts is killed with SIGKILL in the middle of a call, the kernel detaches the task with our
 * registers in place; nothing can prevent that from outside the task. Every other failure path
 * (errors, SIGINT, SIGTERM at the CLI) releases the task first.
 */

import { closeSync, openSync, writeSync } from 'node:fs';
import { SyscallError, TaskError, UnsupportedError, isErrno } from '../errors.js';
import { readMaps } from '../proc/maps.js';
import { listThreads, readStatus } from '../proc/status.js';
import * as sys from '../sys/native.js';
import type { PtraceChainStep } from '../sys/native.js';
import { SYSCALLS_X86_64 } from '../kernel/syscalls.js';
import { errnoName } from '../kernel/errno.js';
import {
  NT_PRSTATUS,
  PTRACE_EVENT_STOP,
  PTRACE_O_TRACESYSGOOD,
  SIGTRAP,
  USER_REGS_SIZE,
  __WALL,
} from '../kernel/constants.js';
import { decodeUserRegs, encodeUserRegs, type UserRegs } from '../sys/regs.js';
import { restartInterruptedWait } from './restart.js';
import { decodeWaitStatus, describeWaitStatus, encodeWaitStatus, isGroupStop, type WaitStatus } from '../sys/wait.js';

const ALL_SIGNALS = 0xffff_ffff_ffff_ffffn;
/** A syscall-entry or -exit stop with PTRACE_O_TRACESYSGOOD, as waitpid reports it. */
const SYSCALL_STOP_STATUS = encodeWaitStatus({ kind: 'stopped', signal: SIGTRAP, event: 0, isSyscallStop: true });
/** The batch loop (see the header), x86_64 machine code. */
const BATCH_CODE = Buffer.from(
  '4d85ed7432498b0424498b7c2408498b742410498b5424184d8b5424204d8b4424284d8b4c24300f0549894424384983c44049ffcdebc9cc',
  'hex',
);
/** Where rip is once the loop's int3 has trapped. */
const BATCH_DONE_OFFSET = BigInt(BATCH_CODE.length);
const BATCH_ENTRY_BYTES = 64;
/** Batches shorter than this are made one call at a time unless the loop's page exists already. */
const BATCH_MIN_CALLS = 3;

/** The requests of one injected call in a ptraceChain (rawSyscalls), and calls per chain at most. */
const STEPS_PER_CALL = 6;
const CHAIN_MAX_CALLS = 128;

/** Calls injected by this process so far, by syscall number (injectedCallCounts). */
const injectedCalls = new Map<number, number>();

/** How many calls this process injected so far, by syscall name (logs and benchmarks). */
export function injectedCallCounts(): Record<string, number> {
  const names = new Map<number, string>(Object.entries(SYSCALLS_X86_64).map(([k, v]) => [v, k]));
  const out: Record<string, number> = {};
  for (const [nr, n] of injectedCalls) out[names.get(nr) ?? String(nr)] = n;
  return out;
}

/**
 * Whether runCalls may put its batch loop (code of ours) into the task. Off unless
 * CRIU_TS_INJECT_BATCH=1: the project's architecture is parasite-less, single injected syscalls,
 * and running code of ours in the task is a change proposed, not decided (see the issue notes).
 * Off, runCalls makes its calls one at a time, with the same results.
 */
export const isBatchCodeAllowed = (): boolean => process.env['CRIU_TS_INJECT_BATCH'] === '1';
const MMAP_PROT_RX = 0x1n | 0x4n;
/** SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV: synchronous faults of the thread itself. */
const FAULT_SIGNALS: ReadonlySet<number> = new Set([4, 5, 7, 8, 11]);
const PAGE_SIZE = 4096n;
const MMAP_PROT_RW = 0x1n | 0x2n;
const MAP_PRIVATE_ANON = 0x02n | 0x20n;

export interface InjectorOptions {
  /** How long to wait for each stop of the task before giving up (default 5000 ms). */
  timeoutMs?: number;
  /** Address of a `syscall` instruction to use instead of searching the vDSO. */
  syscallSite?: bigint;
  /** PTRACE_O_* options besides TRACESYSGOOD (restore adds PTRACE_O_TRACECLONE). */
  ptraceOptions?: number;
}

/** How the task was stopped when we seized it. */
export type SeizeState = 'running' | 'group-stop';

/** One call of Injector.runCalls. */
export interface InjectedCall {
  name: keyof typeof SYSCALLS_X86_64;
  /** The arguments; `out` is the address of the call's output buffer in the task. */
  args: (out: bigint) => readonly bigint[];
  /** Bytes of output buffer the call needs (default none). */
  outBytes?: number;
}

/** What one call of Injector.runCalls gave: its raw result and its output buffer's bytes. */
export interface InjectedResult {
  ret: bigint;
  out: Buffer;
}

/** A thread seized for injection. Create with `Injector.attach`, always end with `release()`. */
export class Injector {
  /** The process (thread group). */
  readonly pid: number;
  /** The thread the calls run in. */
  readonly tid: number;
  /** Whether the task was already stopped by a job-control signal when seized. */
  readonly seizeState: SeizeState;

  private savedRegs: Buffer;
  private savedRegsDecoded: UserRegs;
  private savedMask: bigint;
  private site: bigint;
  private readonly timeoutMs: number;
  /** True once registers were changed: release must then go through the interrupt dance. */
  private isDirty = false;
  private isReleased = false;
  /** Job-control stop signals that arrived while we ran calls; re-sent before detaching. */
  private readonly deferredSignals: number[] = [];
  private scratch: { addr: bigint; sizeBytes: bigint; used: bigint; isOwned: boolean } | null = null;
  /** The batch loop's page in the task: undefined until needed, null when it cannot be made. */
  private batchCode: bigint | null | undefined = undefined;

  private constructor(
    pid: number,
    tid: number,
    state: SeizeState,
    regs: Buffer,
    mask: bigint,
    site: bigint,
    timeoutMs: number,
  ) {
    this.pid = pid;
    this.tid = tid;
    this.seizeState = state;
    this.savedRegs = regs;
    this.savedRegsDecoded = decodeUserRegs(regs);
    this.savedMask = mask;
    this.site = site;
    this.timeoutMs = timeoutMs;
  }

  /**
   * Seize thread `tid` (default: the process's main thread, or its first live thread if the main
   * one has exited) of process `pid` and stop it for injection.
   */
  static attach(pid: number, options: InjectorOptions & { tid?: number } = {}): Injector {
    const timeoutMs = options.timeoutMs ?? 5000;
    const tid = options.tid ?? pickThread(pid);
    const site = options.syscallSite ?? findSyscallSite(pid);
    try {
      sys.ptraceSeize(tid, PTRACE_O_TRACESYSGOOD | (options.ptraceOptions ?? 0));
    } catch (err) {
      throw seizeError(pid, tid, err);
    }
    let state: SeizeState;
    try {
      sys.ptraceInterrupt(tid);
      state = waitForInterruptStop(pid, tid, timeoutMs);
    } catch (err) {
      bestEffortDetach(tid);
      throw err;
    }
    return Injector.take(pid, tid, state, site, timeoutMs);
  }

  /**
   * Take over thread `tid`, already traced by this process and in a ptrace stop (a thread the
   * kernel attached by PTRACE_O_TRACECLONE, say), with `site` as the syscall instruction.
   */
  static adopt(pid: number, tid: number, site: bigint, options: { timeoutMs?: number } = {}): Injector {
    return Injector.take(pid, tid, 'running', site, options.timeoutMs ?? 5000);
  }

  private static take(pid: number, tid: number, state: SeizeState, site: bigint, timeoutMs: number): Injector {
    try {
      let regs = sys.ptraceGetRegset(tid, NT_PRSTATUS, USER_REGS_SIZE);
      const restarted = restartInterruptedWait(decodeUserRegs(regs), readBeforeRip(pid, decodeUserRegs(regs).rip));
      if (restarted !== null) regs = encodeUserRegs(restarted);
      const mask = sys.ptraceGetSigmask(tid);
      sys.ptraceSetSigmask(tid, ALL_SIGNALS);
      const injector = new Injector(pid, tid, state, regs, mask, site, timeoutMs);
      // Changed registers must be put back even if no call is made.
      if (restarted !== null) injector.isDirty = true;
      return injector;
    } catch (err) {
      bestEffortDetach(tid);
      throw taskGoneOr(pid, err);
    }
  }

  /** The registers as they were when the task was seized (a copy). */
  get registers(): UserRegs {
    return { ...this.savedRegsDecoded };
  }

  /** The blocked-signal mask the task had (and gets back on release). */
  get signalMask(): bigint {
    return this.savedMask;
  }

  /** Replace the mask the thread gets on release (restore sets the dumped one). */
  set signalMask(mask: bigint) {
    this.savedMask = mask;
  }

  /** The address of the `syscall` instruction calls go through. */
  get syscallSite(): bigint {
    return this.site;
  }

  /**
   * Run later calls through another `syscall` instruction (restore moves it out of the stub's
   * mappings before removing them).
   */
  set syscallSite(addr: bigint) {
    this.site = addr;
  }

  /**
   * Replace the registers the thread resumes with on release (restore sets the dumped ones).
   * `regs` must be the complete NT_PRSTATUS set.
   */
  setResumeRegisters(regs: UserRegs): void {
    this.assertUsable();
    this.savedRegs = encodeUserRegs(regs);
    this.savedRegsDecoded = { ...regs };
    this.isDirty = true;
  }

  /**
   * Use [addr, addr+sizeBytes) of the task, already mapped read-write, for pushData instead of a
   * mapping of our own; it is not removed on release.
   */
  useScratch(addr: bigint, sizeBytes: bigint): void {
    this.scratch = { addr, sizeBytes, used: 0n, isOwned: false };
  }

  /**
   * Have scratch space of at least `sizeBytes` mapped now (by an injected mmap if needed) and
   * return it, e.g. for useScratch by the injectors of the other threads. A dump makes it right
   * after the freeze: mmap waits for the task's mmap lock, which its page copy then holds.
   */
  prepareScratch(sizeBytes: bigint): { addr: bigint; sizeBytes: bigint } {
    this.assertUsable();
    if (this.scratch === null || this.scratch.sizeBytes < sizeBytes) {
      this.reserveScratch(sizeBytes);
      this.resetScratch();
    }
    const { addr, sizeBytes: size } = this.scratch as NonNullable<Injector['scratch']>;
    return { addr, sizeBytes: size };
  }

  /** Forget data pushed so far: the scratch space is reused from its start. */
  resetScratch(): void {
    if (this.scratch !== null) this.scratch.used = 0n;
  }

  /**
   * Run syscall `nr` with up to six arguments in the task; returns the raw result as a signed
   * 64-bit value (-4095..-1 are -errno). Throws TaskError if the task dies meanwhile.
   */
  syscall(nr: number, args: readonly bigint[] = []): bigint {
    this.assertUsable();
    return this.rawSyscall(nr, args);
  }

  private rawSyscall(nr: number, args: readonly bigint[]): bigint {
    const result = this.rawSyscalls([{ nr, args }])[0] as bigint;
    if (nr === SYSCALLS_X86_64.rt_sigprocmask && result === 0n) {
      // The caller changed the mask on purpose: keep the new one instead of restoring the old.
      this.savedMask = sys.ptraceGetSigmask(this.tid);
      sys.ptraceSetSigmask(this.tid, ALL_SIGNALS);
    }
    return result;
  }

  /**
   * Run calls one after the other (each as `syscall` does); their raw results, in order. The six
   * requests of every call go to the tracer thread as one chain (native/chain.cc): one hand-off
   * for all the calls (~0.05 ms each instead of ~0.1-0.4 here), as long as every stop is the plain
   * syscall stop expected; a call that meets another stop is finished step by step, and the
   * calls after it go on in a new chain.
   */
  private rawSyscalls(calls: readonly { nr: number; args: readonly bigint[] }[]): bigint[] {
    const tid = this.tid;
    const argRegs = ['rdi', 'rsi', 'rdx', 'r10', 'r8', 'r9'] as const;
    const steps = calls.map(({ nr, args }): PtraceChainStep[] => {
      if (args.length > 6) throw new RangeError('A syscall takes at most six arguments');
      const regs: UserRegs = { ...this.savedRegsDecoded, rax: BigInt(nr), orig_rax: -1n, rip: this.site };
      argRegs.forEach((name, i) => (regs[name] = args[i] ?? 0n));
      return [
        ['setregset', tid, NT_PRSTATUS, encodeUserRegs(regs)],
        ['syscall', tid, 0],
        ['waitpid', tid, __WALL, this.timeoutMs, SYSCALL_STOP_STATUS],
        ['syscall', tid, 0],
        ['waitpid', tid, __WALL, this.timeoutMs, SYSCALL_STOP_STATUS],
        ['getregset', tid, NT_PRSTATUS, USER_REGS_SIZE],
      ];
    });
    const results: bigint[] = [];
    try {
      while (results.length < calls.length) {
        const from = results.length;
        const batch = steps.slice(from, from + CHAIN_MAX_CALLS);
        for (const c of calls.slice(from, from + batch.length))
          injectedCalls.set(c.nr, (injectedCalls.get(c.nr) ?? 0) + 1);
        this.isDirty = true;
        const chain = sys.ptraceChain(batch.flat());
        for (const regs of chain.regsets) results.push(BigInt.asIntN(64, decodeUserRegs(regs).rax));
        if (chain.regsets.length === batch.length) continue;
        // Call number `results.length` met a stop other than the one expected: finished here.
        const nr = (calls[results.length] as { nr: number }).nr;
        const first = waitResultOrThrow(this.pid, tid, this.timeoutMs, chain.waitStatus);
        if (chain.completed - chain.regsets.length * STEPS_PER_CALL === 2) {
          this.waitForSyscallStop('entry', nr, first);
          sys.ptraceSyscall(tid, 0);
          this.waitForSyscallStop('exit', nr);
        } else {
          this.waitForSyscallStop('exit', nr, first);
        }
        results.push(BigInt.asIntN(64, decodeUserRegs(sys.ptraceGetRegset(tid, NT_PRSTATUS, USER_REGS_SIZE)).rax));
      }
      return results;
    } catch (err) {
      throw taskGoneOr(this.pid, err);
    }
  }

  /** Like `syscall`, but a -errno result throws a SyscallError naming the call inside the task. */
  syscallOrThrow(name: keyof typeof SYSCALLS_X86_64, args: readonly bigint[] = []): bigint {
    const ret = this.syscall(SYSCALLS_X86_64[name], args);
    if (ret < 0n && ret >= -4095n) {
      const errno = Number(-ret);
      throw new SyscallError(name, errno, errnoName(errno), [
        `task ${this.pid}`,
        ...args.map((a) => `0x${a.toString(16)}`),
      ]);
    }
    return ret;
  }

  /**
   * Run `calls` in the task, in order, and return each one's raw result and output buffer. Each
   * call may have an output buffer of `outBytes` (zeroed) in the scratch space, whose address its
   * `args` function receives. Data pushed before is forgotten (the scratch space is reused from
   * its start). Batches of BATCH_MIN_CALLS or more run in one resumption of the task (see the
   * header). A call's failure is its result (-errno), not an exception; use checkCall. Calls that
   * change the signal mask cannot be batched (rt_sigprocmask: use syscall).
   */
  runCalls(calls: readonly InjectedCall[]): InjectedResult[] {
    this.assertUsable();
    if (calls.some((c) => c.name === 'rt_sigprocmask')) throw new RangeError('rt_sigprocmask cannot be batched');
    const outOffsets: number[] = [];
    let outTotal = 0;
    for (const c of calls) {
      outOffsets.push(outTotal);
      outTotal += ((c.outBytes ?? 0) + 15) & ~15;
    }
    if (calls.length === 0) return [];
    const wantsLoop = isBatchCodeAllowed() && (calls.length >= BATCH_MIN_CALLS || typeof this.batchCode === 'bigint');
    const code = wantsLoop ? this.prepareBatchCode() : null;
    // Scratch layout: the output buffers, then (for the loop) the table.
    const tableOffset = outTotal;
    const bytes = code !== null ? tableOffset + calls.length * BATCH_ENTRY_BYTES : tableOffset;
    const base = bytes > 0 ? this.reserveScratch(BigInt(bytes)) : 0n;
    const argsOf = calls.map((c, i) => {
      const args = c.args(base + BigInt(outOffsets[i] as number));
      if (args.length > 6) throw new RangeError('A syscall takes at most six arguments');
      return args;
    });
    const image = Buffer.alloc(bytes); // zeroed output buffers (+ the table)
    let results: bigint[];
    if (code !== null) {
      calls.forEach((c, i) => {
        const at = tableOffset + i * BATCH_ENTRY_BYTES;
        image.writeBigUInt64LE(BigInt(SYSCALLS_X86_64[c.name]), at);
        (argsOf[i] as readonly bigint[]).forEach((a, j) =>
          image.writeBigUInt64LE(BigInt.asUintN(64, a), at + 8 + j * 8),
        );
      });
      this.writeMemory(base, image);
      this.runBatch(code, base + BigInt(tableOffset), calls.length);
    } else {
      this.writeMemory(base, image);
      results = this.rawSyscalls(
        calls.map((c, i) => ({ nr: SYSCALLS_X86_64[c.name], args: argsOf[i] as readonly bigint[] })),
      );
    }
    const back = bytes > 0 ? this.readMemory(base, bytes) : image;
    if (code !== null) results = calls.map((_, i) => back.readBigInt64LE(tableOffset + i * BATCH_ENTRY_BYTES + 56));
    return calls.map((c, i) => {
      const at = outOffsets[i] as number;
      return { ret: (results as bigint[])[i] as bigint, out: back.subarray(at, at + (c.outBytes ?? 0)) };
    });
  }

  /** runCalls, each result checked (checkCall): the values; the first failure throws. */
  runCallsOrThrow(calls: readonly InjectedCall[]): bigint[] {
    return this.runCalls(calls).map((r, i) => this.checkCall(calls[i] as InjectedCall, r));
  }

  /** A runCalls result as syscallOrThrow would give it: the value, or a SyscallError. */
  checkCall(call: InjectedCall, result: InjectedResult): bigint {
    const ret = result.ret;
    if (ret < 0n && ret >= -4095n) {
      const errno = Number(-ret);
      throw new SyscallError(call.name, errno, errnoName(errno), [`task ${this.pid}`]);
    }
    return ret;
  }

  /** Scratch space of at least `sizeBytes` from its start (reset); returns its address. */
  private reserveScratch(sizeBytes: bigint): bigint {
    if (this.scratch !== null && this.scratch.sizeBytes >= sizeBytes) {
      this.scratch.used = sizeBytes;
      return this.scratch.addr;
    }
    if (this.scratch !== null && !this.scratch.isOwned)
      throw new RangeError(`Scratch space of ${this.scratch.sizeBytes} bytes is too small for ${sizeBytes}`);
    if (this.scratch !== null) this.scratch.used = 0n;
    this.growScratch(sizeBytes);
    const scratch = this.scratch as unknown as NonNullable<Injector['scratch']>;
    scratch.used = sizeBytes;
    return scratch.addr;
  }

  /** The batch loop's address in the task, mapping it on first use; null when it cannot be. */
  private prepareBatchCode(): bigint | null {
    if (this.batchCode !== undefined) return this.batchCode;
    const len = BigInt(BATCH_CODE.length + 4095) & ~4095n;
    let addr: bigint;
    try {
      addr = this.syscallOrThrow('mmap', [0n, len, MMAP_PROT_RX, MAP_PRIVATE_ANON, ALL_SIGNALS, 0n]);
    } catch (err) {
      if (!(err instanceof SyscallError)) throw err;
      this.batchCode = null; // an exec mapping refused: one call at a time
      return null;
    }
    try {
      // Not writable, so not by process_vm_writev: /proc/PID/mem writes as ptrace does (FOLL_FORCE).
      writeProcMem(this.pid, addr, BATCH_CODE);
    } catch {
      this.rawSyscall(SYSCALLS_X86_64.munmap, [addr, len]);
      this.batchCode = null;
      return null;
    }
    this.batchCode = addr;
    return addr;
  }

  /** Run the batch loop at `code` over `count` table entries at `table`, until its int3. */
  private runBatch(code: bigint, table: bigint, count: number): void {
    const regs: UserRegs = { ...this.savedRegsDecoded, rip: code, r12: table, r13: BigInt(count), orig_rax: -1n };
    this.isDirty = true;
    try {
      sys.ptraceSetRegset(this.tid, NT_PRSTATUS, encodeUserRegs(regs));
      sys.ptraceCont(this.tid, 0);
      for (;;) {
        const stop = waitStop(this.pid, this.tid, this.timeoutMs);
        if (stop.kind === 'stopped' && stop.event === 0 && !stop.isSyscallStop && stop.signal === SIGTRAP) {
          const rip = decodeUserRegs(sys.ptraceGetRegset(this.tid, NT_PRSTATUS, USER_REGS_SIZE)).rip;
          if (rip === code + BATCH_DONE_OFFSET) return;
          throw new TaskError(this.pid, `Task ${this.pid} trapped at 0x${rip.toString(16)} running injected calls`);
        }
        if (stop.kind === 'stopped' && stop.event === 0 && FAULT_SIGNALS.has(stop.signal))
          throw new TaskError(this.pid, `Task ${this.pid} faulted (signal ${stop.signal}) running injected calls`);
        if (stop.kind === 'stopped') {
          // SIGSTOP and its group stop, as in waitForSyscallStop: sent again on release.
          if (stop.event === 0 || isGroupStop(stop)) this.deferredSignals.push(stop.signal);
          sys.ptraceCont(this.tid, 0);
          continue;
        }
        throw new TaskError(this.pid, `Task ${this.pid} ${describeWaitStatus(stop)} running injected calls`);
      }
    } catch (err) {
      throw taskGoneOr(this.pid, err);
    }
  }

  /**
   * Copy `data` into a scratch mapping inside the task (created on first use, removed on
   * release) and return its address there. Each call gets fresh, 16-byte aligned space.
   */
  pushData(data: Buffer): bigint {
    this.assertUsable();
    const needed = (BigInt(data.length) + 15n) & ~15n;
    if (this.scratch === null || this.scratch.used + needed > this.scratch.sizeBytes) {
      if (this.scratch !== null && !this.scratch.isOwned)
        throw new RangeError(`Scratch space of ${this.scratch.sizeBytes} bytes is full`);
      this.growScratch(needed);
    }
    const scratch = this.scratch as NonNullable<Injector['scratch']>;
    const addr = scratch.addr + scratch.used;
    scratch.used += needed;
    this.writeMemory(addr, data);
    return addr;
  }

  /** Write bytes into the task's memory (must be mapped writable). */
  writeMemory(addr: bigint, data: Buffer): void {
    if (data.length === 0) return;
    const done = sys.processVmWritev(this.pid, data, 0, new BigUint64Array([addr, BigInt(data.length)]));
    if (done !== data.length)
      throw new TaskError(
        this.pid,
        `Cannot write ${data.length} bytes at 0x${addr.toString(16)} in task ${this.pid}: only ${done} written`,
      );
  }

  /** Read bytes from the task's memory. */
  readMemory(addr: bigint, len: number): Buffer {
    const buf = Buffer.alloc(len);
    if (len === 0) return buf;
    const done = sys.processVmReadv(this.pid, buf, 0, new BigUint64Array([addr, BigInt(len)]));
    if (done !== len)
      throw new TaskError(
        this.pid,
        `Cannot read ${len} bytes at 0x${addr.toString(16)} in task ${this.pid}: only ${done} read`,
      );
    return buf;
  }

  /**
   * Remove the scratch mapping, put the registers and signal mask back and detach. Safe to call
   * more than once and after the task died. Throws only if the task is alive but could not be put
   * back as it was.
   */
  release(): void {
    if (this.isReleased) return;
    this.isReleased = true;
    if (!isAlive(this.pid, this.tid)) {
      reapTraced(this.tid);
      return;
    }
    try {
      if (this.scratch !== null) {
        const { addr, sizeBytes, isOwned } = this.scratch;
        this.scratch = null;
        if (isOwned) this.rawSyscall(SYSCALLS_X86_64.munmap, [addr, sizeBytes]);
      }
      if (typeof this.batchCode === 'bigint') {
        const addr = this.batchCode;
        this.batchCode = null;
        this.rawSyscall(SYSCALLS_X86_64.munmap, [addr, BigInt(BATCH_CODE.length + 4095) & ~4095n]);
      }
      if (this.isDirty) {
        sys.ptraceSetRegset(this.tid, NT_PRSTATUS, this.savedRegs);
        sys.ptraceInterrupt(this.tid);
        sys.ptraceCont(this.tid, 0);
        this.waitForInterruptStop();
      }
      sys.ptraceSetSigmask(this.tid, this.savedMask);
      for (const sig of this.deferredSignals) sys.tgkill(this.pid, this.tid, sig);
      sys.ptraceDetach(this.tid, 0);
    } catch (err) {
      if (!isAlive(this.pid, this.tid)) return;
      bestEffortDetach(this.tid);
      throw new TaskError(this.pid, `Cannot release task ${this.pid} after syscall injection`, { cause: err });
    }
  }

  private assertUsable(): void {
    if (this.isReleased) throw new Error('Injector used after release');
  }

  private growScratch(needed: bigint): void {
    const old = this.scratch;
    const sizeBytes = ((needed + (old?.used ?? 0n) + PAGE_SIZE - 1n) / PAGE_SIZE) * PAGE_SIZE;
    const addr = this.syscallOrThrow('mmap', [0n, sizeBytes, MMAP_PROT_RW, MAP_PRIVATE_ANON, ALL_SIGNALS, 0n]);
    if (old !== null && old.isOwned) this.syscallOrThrow('munmap', [old.addr, old.sizeBytes]);
    this.scratch = { addr, sizeBytes, used: 0n, isOwned: true };
  }

  /** Waits for the syscall stop `which`; `pending` is a stop already collected on the way. */
  private waitForSyscallStop(which: 'entry' | 'exit', nr: number, pending?: WaitStatus): void {
    for (;;) {
      const stop = pending ?? waitStop(this.pid, this.tid, this.timeoutMs);
      pending = undefined;
      if (stop.kind === 'stopped' && stop.isSyscallStop) return;
      if (stop.kind === 'stopped' && stop.event === 0 && FAULT_SIGNALS.has(stop.signal)) {
        // The call could not even be made (its syscall instruction is gone, say): never retry.
        throw new TaskError(
          this.pid,
          `Task ${this.pid} faulted (signal ${stop.signal}) running injected syscall ${nr} (${which})`,
        );
      }
      if (stop.kind === 'stopped') {
        // Only signals that cannot be blocked get here (SIGSTOP and its group stop): keep going,
        // and send the stop signal again once the task is back as it was.
        if (stop.event === 0 || isGroupStop(stop)) this.deferredSignals.push(stop.signal);
        sys.ptraceSyscall(this.tid, 0);
        continue;
      }
      throw new TaskError(
        this.pid,
        `Task ${this.pid} ${describeWaitStatus(stop)} during injected syscall ${nr} (${which})`,
      );
    }
  }

  private waitForInterruptStop(): void {
    waitForInterruptStop(this.pid, this.tid, this.timeoutMs);
  }
}

/**
 * Run one syscall in a task and let it go: attach, call, release. The task keeps running unharmed.
 * `data` arguments are copied into a scratch mapping in the task and passed as pointers.
 */
export function injectSyscall(
  pid: number,
  nr: number,
  args: readonly (bigint | Buffer)[],
  options: InjectorOptions = {},
): bigint {
  const injector = Injector.attach(pid, options);
  try {
    const raw = args.map((a) => (Buffer.isBuffer(a) ? injector.pushData(a) : a));
    return injector.syscall(nr, raw);
  } finally {
    injector.release();
  }
}

// -------------------------------------------------------------------------------------------------

/** Write `data` at `addr` of process `pid` through /proc/PID/mem (may write read-only pages). */
function writeProcMem(pid: number, addr: bigint, data: Buffer): void {
  const fd = openSync(`/proc/${pid}/mem`, 'r+');
  try {
    if (writeSync(fd, data, 0, data.length, Number(addr)) !== data.length)
      throw new Error(`short write to /proc/${pid}/mem`);
  } finally {
    closeSync(fd);
  }
}

function waitStop(pid: number, tid: number, timeoutMs: number): WaitStatus {
  return waitResultOrThrow(pid, tid, timeoutMs, sys.waitpid(tid, __WALL, timeoutMs)?.status ?? null);
}

/** A raw wait status decoded, or (null: nothing within the timeout) the reason as a TaskError. */
function waitResultOrThrow(pid: number, tid: number, timeoutMs: number, status: number | null): WaitStatus {
  if (status === null) {
    if (!isAlive(pid, tid)) throw new TaskError(pid, `Task ${pid} exited while being seized`);
    throw new TaskError(pid, `Task ${pid} did not stop within ${timeoutMs} ms`);
  }
  return decodeWaitStatus(status);
}

/** Wait for the stop that PTRACE_INTERRUPT asked for, passing on signals met on the way. */
function waitForInterruptStop(pid: number, tid: number, timeoutMs: number): SeizeState {
  for (;;) {
    const stop = waitStop(pid, tid, timeoutMs);
    if (stop.kind !== 'stopped') throw new TaskError(pid, `Task ${pid} ${describeWaitStatus(stop)} while being seized`);
    if (isGroupStop(stop)) return 'group-stop';
    if (stop.event === PTRACE_EVENT_STOP) return 'running';
    // A signal was being delivered (event 0): let it go as it would have; the interrupt stays
    // pending, so the next stop is ours. Other events cannot happen without their options.
    sys.ptraceCont(tid, stop.event === 0 && !stop.isSyscallStop ? stop.signal : 0);
  }
}

function pickThread(pid: number): number {
  const status = readStatus(pid);
  if (status === null) throw new TaskError(pid, `Cannot seize task ${pid}: no such process`);
  if (status.tgid !== pid)
    throw new TaskError(pid, `Cannot seize task ${pid}: it is a thread of process ${status.tgid}`);
  if (status.state !== 'Z') return pid;
  // The main thread exited (pthread_exit) while others run: use the first live one.
  for (const tid of listThreads(pid) ?? []) {
    const st = readStatus(pid, tid);
    if (st !== null && st.state !== 'Z' && st.state !== 'X') return tid;
  }
  throw new TaskError(pid, `Cannot seize task ${pid}: it is a zombie`);
}

function seizeError(pid: number, tid: number, err: unknown): Error {
  if (isErrno(err, 'ESRCH')) return new TaskError(pid, `Cannot seize task ${pid}: no such process`, { cause: err });
  if (isErrno(err, 'EPERM')) {
    const tracer = readStatus(pid, tid)?.tracerPid ?? 0;
    const why = tracer !== 0 ? `it is already traced by process ${tracer}` : 'permission denied';
    return new TaskError(pid, `Cannot seize task ${pid}: ${why}`, { cause: err });
  }
  return err instanceof Error ? err : new Error(String(err));
}

function taskGoneOr(pid: number, err: unknown): Error {
  if (isErrno(err, 'ESRCH') && !isAlive(pid))
    return new TaskError(pid, `Task ${pid} exited during syscall injection`, { cause: err });
  return err instanceof Error ? err : new Error(String(err));
}

function isAlive(pid: number, tid: number = pid): boolean {
  const st = readStatus(pid, tid);
  return st !== null && st.state !== 'Z' && st.state !== 'X';
}

/**
 * A traced task that died stays a zombie until its tracer has seen its end: collect that, so its
 * real parent can reap it. (The tracer of a task that is not its child only observes the exit.)
 */
function reapTraced(tid: number): void {
  try {
    sys.waitpid(tid, __WALL, 1000);
  } catch {
    // ECHILD: already seen, or no longer ours.
  }
}

function bestEffortDetach(tid: number): void {
  try {
    sys.ptraceDetach(tid, 0);
  } catch {
    // Already gone or not stopped: nothing more can be done from here.
  }
}

/** The two bytes before `rip` (empty if unreadable). */
function readBeforeRip(pid: number, rip: bigint): Buffer {
  const buf = Buffer.alloc(2);
  try {
    return sys.processVmReadv(pid, buf, 0, new BigUint64Array([rip - 2n, 2n])) === 2 ? buf : Buffer.alloc(0);
  } catch {
    return Buffer.alloc(0);
  }
}

/**
 * The address of a `syscall` instruction (bytes 0f 05) in the task's vDSO, or failing that in
 * any executable mapping it can read. The bytes need not start a real instruction there: the CPU
 * decodes from wherever rip points.
 */
export function findSyscallSite(pid: number): bigint {
  const maps = readMaps(pid);
  if (maps === null) throw new TaskError(pid, `Cannot seize task ${pid}: no such process`);
  const candidates = [
    ...maps.filter((m) => m.path === '[vdso]'),
    ...maps.filter((m) => m.isExec && m.isRead && m.path !== '[vdso]'),
  ];
  for (const m of candidates) {
    const len = Number(m.end - m.start);
    const buf = Buffer.alloc(Math.min(len, 1 << 20));
    let got: number;
    try {
      got = sys.processVmReadv(pid, buf, 0, new BigUint64Array([m.start, BigInt(buf.length)]));
    } catch {
      continue;
    }
    for (let i = 0; i + 1 < got; i++) {
      if (buf[i] === 0x0f && buf[i + 1] === 0x05) return m.start + BigInt(i);
    }
  }
  throw new UnsupportedError(
    'syscall-site',
    `Cannot inject into task ${pid}: no syscall instruction found in its executable mappings`,
  );
}
