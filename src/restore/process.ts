/**
 * The restore of one process of a tree, in the stub forked for it (tree.ts), in three parts that
 * the tree's restore (index.ts) runs for every process in turn: restoreProcessMemory (before its
 * children are forked), restoreProcess (files, fs and misc, signal actions, timers, limits,
 * threads), then, once every process has its files, completeProcess (per-thread state, pending
 * signals, seccomp, credentials, registers).
 */

import type { ImageEntry } from '../images/index.js';
import { TaskError } from '../errors.js';
import { Injector } from '../inject/injector.js';
import { log } from '../log.js';
import * as sys from '../sys/native.js';
import { __WALL } from '../kernel/constants.js';
import { restoreFiles, type TreeFiles } from '../files/index.js';
import { treeMemfdPath, type TreeMemfd } from '../files/memfd.js';
import { prepareDeletedMappings, removeMaterializedGhosts } from '../files/vma-ghost.js';
import type { RestoreImages, TaskImages } from './images.js';
import { restoreSeccomp } from './seccomp.js';
import { restoreCreds } from './creds.js';
import type { SysvSegments } from './sysv-shm.js';
import { restoreMemfdMappings, restoreMemory, restoreMmFields, restoreVdso, type SharedObjects } from './mm.js';
import { threadScratch, THREAD_SCRATCH_BYTES, type Stub } from './stub.js';
import { hostTaskOf } from './tree.js';
import type { Prefilled } from './mm.js';
import type { RestoreOptions } from './index.js';
import {
  dumpedOrigRax,
  dumpedRegisters,
  resumeInSyscall,
  restoreFpu,
  restorePendingSignals,
  restoreProcessMisc,
  restoreRlimits,
  restoreSigactions,
  restoreThreadMisc,
  restoreTimers,
} from './task.js';

const CLONE_THREAD_FLAGS = 0x100n | 0x200n | 0x400n | 0x800n | 0x10000n | 0x40000n; // VM FS FILES SIGHAND THREAD SYSVSEM
const PAGE = 4096n;

/** A process of the tree being restored. */
export interface Restoring {
  img: TaskImages;
  stub: Stub;
  /** Its other threads, once created. */
  threads: Injector[];
  /** Their tids as the images know them (the same but in a PID namespace of the tree's own). */
  threadTids: number[];
  /** Its files' shared state (kind modules), and the ghosts they materialized. */
  filesShared: Map<string, unknown>;
  /** The files' finishing work (closing what they kept for later files), once all have theirs. */
  finishFiles: () => Promise<void>;
  pagesRestored: number;
  /** Of the pages it inherited from its parent, how many were compared, and left shared. */
  pagesCompared: number;
  pagesSkippedCow: number;
}

/** What the restores of a tree's processes share. */
export interface ProcessRestoreContext {
  img: RestoreImages;
  fileName(id: number): string;
  regNames: ReadonlyMap<number, string>;
  options: RestoreOptions;
  /** The fill buffers being reserved (awaited before the first pages are read). */
  reserving: Promise<void> | undefined;
  /** Memory in a process before its restore: pre-copied (skeleton.ts) or inherited, by pid. */
  prefilled: ReadonlyMap<number, Prefilled>;
  /** Shared anonymous memory made by one process of the tree, mapped from it by the others. */
  sharedObjects: SharedObjects;
  /** The dump's System V shared memory segments, made before the first process's memory. */
  sysv: SysvSegments;
  /** In a tree: the descriptions restored so far, for the processes that share them. */
  treeFiles?: TreeFiles;
}

/**
 * The memory of the process (its mappings and pages), before its children are forked from it:
 * they inherit what they shared with it copy-on-write (mm.ts inheritMemory).
 */
export async function restoreProcessMemory(p: Restoring, ctx: ProcessRestoreContext): Promise<void> {
  const { img, fileName, regNames } = ctx;
  const t = p.img;
  const leader = p.stub.injector;
  // Deleted mapped files are recreated for the VMAs and opened by the fds of the same ghost,
  // then removed (vma-ghost.ts).
  const ghostPaths = await prepareDeletedMappings(
    t.mm,
    await img.extras('REMAP_FPATH'),
    regNames,
    img.dir,
    p.filesShared,
  );
  log().debug(`restore: memory of ${t.pid}`);
  await ctx.reserving;
  const got = await restoreMemory(
    leader,
    t.mm,
    t.pages ?? t.pageChain,
    img.dir,
    (id) => ghostPaths.get(id) ?? fileName(id),
    ctx.prefilled.get(t.pid),
    ctx.sharedObjects,
    ctx.sysv,
  );
  p.pagesRestored = got.pagesRestored;
  p.pagesCompared = got.pagesCompared;
  p.pagesSkippedCow = got.pagesSkippedCow;
}

/** Then files (not finished: Restoring.finishFiles), fs, signals, timers, limits and threads. */
export async function restoreProcess(p: Restoring, ctx: ProcessRestoreContext): Promise<void> {
  const { img, fileName, options: opts } = ctx;
  const t = p.img;
  const leader = p.stub.injector;
  const tc = t.cores.get(t.pid)?.['tc'] as ImageEntry;
  log().debug('restore: vdso');
  restoreVdso(leader, t.mm, p.stub.pid);
  log().debug('restore: mm fields');
  restoreMmFields(leader, t.mm, fileName(Number(t.mm['exe_file_id'])));
  log().debug('restore: files');
  const files = await restoreFiles(
    leader,
    img.files,
    t.fdinfo,
    {
      pid: t.pid,
      hostPid: p.stub.pid,
      imagesDir: img.dir,
      options: { isShellJob: opts.isShellJob === true, isTcpClose: opts.isTcpClose === true },
      shared: p.filesShared,
      entriesOf: async (kind) => (kind === 'FILES' ? img.files.map((entry) => ({ entry })) : img.extras(kind)),
    },
    opts.inheritFds ?? [],
    ctx.treeFiles,
  );
  p.finishFiles = files.finish;
  if (ctx.treeFiles === undefined) removeMaterializedGhosts(p.filesShared);
  log().debug('restore: memfd mappings');
  const tree = ctx.treeFiles;
  await restoreMemfdMappings(
    leader,
    p.stub.pid,
    t.mm,
    img.files,
    t.fdinfo,
    img.dir,
    (kind) => img.extras(kind),
    tree === undefined
      ? undefined
      : {
          pathOf: (inodeId) => treeMemfdPath({ shared: tree.shared, fdOfFileId: (id) => tree.placed.get(id) }, inodeId),
          madeAt: (inodeId, pid, addr) => tree.shared.set(`memfd:${inodeId}`, { pid, addr } satisfies TreeMemfd),
        },
  );
  log().debug('restore: fs and misc');
  restoreProcessMisc(leader, tc, t.fs, fileName);
  log().debug('restore: signals');
  restoreSigactions(leader, tc);
  restoreTimers(leader, tc);
  restoreRlimits(p.stub.pid, tc);
  log().debug('restore: threads');
  for (const tid of t.threads) {
    if (tid === t.pid) continue;
    const inj = createThread(leader, p.stub, tid);
    inj.useScratch(threadScratch(p.stub.scratch, p.threads.length), THREAD_SCRATCH_BYTES);
    p.threads.push(inj);
    p.threadTids.push(tid);
  }
}

/**
 * Once every process of the tree has its files: per-thread state, seccomp, credentials; the
 * scratch area removed and the registers set (each thread is then ready to be let go).
 */
export function completeProcess(p: Restoring, ctx: ProcessRestoreContext): void {
  const { img } = ctx;
  const t = p.img;
  const leader = p.stub.injector;
  const tc = t.cores.get(t.pid)?.['tc'] as ImageEntry;
  log().debug(`restore: per-thread state of ${t.pid}`);
  const all = [leader, ...p.threads];
  // Each thread's tid in the images (its own PID namespace's), and its core.
  const tidOf = (inj: Injector): number => (inj === leader ? t.pid : (p.threadTids[p.threads.indexOf(inj)] as number));
  const coreOf = (inj: Injector): ImageEntry => t.cores.get(tidOf(inj)) as ImageEntry;
  for (const inj of all) {
    const core = coreOf(inj);
    restoreThreadMisc(inj, core);
    restorePendingSignals(
      inj,
      (core['thread_core'] as ImageEntry | undefined)?.['signals_p'] as ImageEntry | undefined,
      false,
      { pid: t.pid, tid: tidOf(inj) },
    );
  }
  restorePendingSignals(leader, tc['signals_s'] as ImageEntry | undefined, true, { pid: t.pid, tid: t.pid });
  // Seccomp last: suspended for the tracer (PTRACE_O_SUSPEND_SECCOMP) until the task is let go.
  for (const inj of all) restoreSeccomp(inj, coreOf(inj)['thread_core'] as ImageEntry | undefined, img.seccompFilters);
  // Credentials after everything that needs root in the task.
  for (const inj of all)
    restoreCreds(inj, (coreOf(inj)['thread_core'] as ImageEntry | undefined)?.['creds'] as ImageEntry | undefined);
  // Last call through the scratch area: remove it (the call returns into nothing, but the
  // thread is stopped at the syscall exit and gets its own registers before it runs).
  log().debug('restore: scratch removal');
  leader.syscallOrThrow('munmap', [p.stub.scratch + PAGE, p.stub.scratchBytes - PAGE]);
  leader.syscallOrThrow('munmap', [p.stub.scratch, PAGE]);
  for (const inj of all) {
    const core = coreOf(inj);
    restoreFpu(inj.tid, core);
    const regs = dumpedRegisters(core);
    let insn: Buffer = Buffer.alloc(0);
    try {
      insn = inj.readMemory(regs.rip, 2);
    } catch {
      // rip in memory we cannot read: not on a syscall instruction either
    }
    inj.setResumeRegisters(resumeInSyscall(regs, dumpedOrigRax(core), insn));
    const tcore = core['thread_core'] as ImageEntry | undefined;
    inj.signalMask = BigInt(
      (tcore?.['blk_sigset'] as bigint | undefined) ?? (tc['blk_sigset'] as bigint | undefined) ?? 0n,
    );
  }
}

/**
 * clone3 a thread with `tid` (as the images know it) inside the task of `stub`; the kernel
 * attaches it to us stopped.
 */
function createThread(leader: Injector, stub: Stub, tid: number): Injector {
  const pid = stub.vpid;
  const tidArr = Buffer.alloc(4);
  tidArr.writeInt32LE(tid, 0);
  const tidAddr = leader.pushData(tidArr);
  // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
  // set_tid, set_tid_size, cgroup (11 u64)
  const args = Buffer.alloc(88);
  args.writeBigUInt64LE(CLONE_THREAD_FLAGS, 0);
  args.writeBigUInt64LE(tidAddr, 64);
  args.writeBigUInt64LE(1n, 72);
  const got = leader.syscallOrThrow('clone3', [leader.pushData(args), 88n]);
  leader.resetScratch();
  if (Number(got) !== tid) throw new TaskError(pid, `Thread ${tid} was created as ${got}`);
  const host = stub.isInOwnPidNs ? hostTaskOf(`/proc/${stub.pid}/task/`, tid) : tid;
  const st = sys.waitpid(host, __WALL, 5000);
  if (st === null) throw new TaskError(pid, `Thread ${tid} did not stop after its creation`);
  return Injector.adopt(stub.pid, host, leader.syscallSite);
}
