/**
 * `criu restore`: bring a dumped process tree back with its PIDs, threads, memory, files and state.
 *
 * Steps (any failure kills what was created and leaves the images as they were):
 *   1. load and check every image (before any process exists)
 *   2. start the stub as the root's PID and empty it (stub.ts); make the System V shared memory
 *      segments (sysv-shm.ts); parents first, each process's
 *      memory (VMAs, pages, protections: mm.ts), then its children forked from its stub, with
 *      their sessions and groups (tree.ts): a child keeps the private memory it shared with its
 *      parent, copy-on-write, where its pages are the same (mm.ts inheritMemory); last the
 *      zombies, which die again as they died
 *   then for each process (process.ts):
 *   3. vDSO, mm fields (mm.ts)
 *   4. files (a description another process restored already is taken from it), cwd/root,
 *      umask, personality
 *   5. signal actions, itimers, POSIX timers, rlimits
 *   6. threads: clone3(set_tid) inside the task, each attached at birth
 *   7. once every process has its files: per thread: name, robust list, rseq, sigaltstack,
 *      pending signals, FPU state, registers, blocked mask; then the scratch area is unmapped
 *      and every thread of every process let go
 *   8. without --restore-detached, wait for the task and return its exit status (criu stays its
 *      parent, as CRIU does)
 */

import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { existsSync } from 'node:fs';
import { ImageError, UnsupportedError, UsageError } from '../errors.js';
import { checkCpuinfoDir } from '../cpuinfo/index.js';
import { writeImage, type ImageEntry } from '../images/index.js';
import { injectedCallCounts } from '../inject/injector.js';
import { log } from '../log.js';
import * as sys from '../sys/native.js';
import { SIGSTOP, WNOHANG, __WALL } from '../kernel/constants.js';
import { TreeFiles } from '../files/index.js';
import { checkTtyRestore } from '../files/tty.js';
import {
  endRestoreLocks,
  finishTcpRepairs,
  imagedConnections,
  lockRestoreConnections,
  type LockIdOf,
} from '../files/inet-socket.js';
import { nsLockId } from '../files/net-lock.js';
import { newRunId } from '../dump/entries.js';
import { removeMaterializedGhosts } from '../files/vma-ghost.js';
import { GHOSTS_MATERIALIZED } from '../files/ghost.js';
import { loadImages, type TaskImages } from './images.js';
import { TASK_STATE } from '../images/task-state.js';
import { dieAsDumped, forkStub, joinGroups, leadAsDumped } from './tree.js';
import {
  completeProcess,
  restoreProcess,
  restoreProcessMemory,
  type ProcessRestoreContext,
  type Restoring,
} from './process.js';
import { punchRestored } from '../mem/dedup.js';
import { reserveFillBuffers } from '../mem/fill-pages.js';
import { countPages } from '../mem/runs.js';
import { nowUs } from '../dump/entries.js';
import { dumpedVmas, inheritMemory, type Prefilled, type SharedObjects } from './mm.js';
import { killStub, startStub, waitForFreePid, type Stub } from './stub.js';
import type { Skeleton } from './skeleton.js';
import { SysvSegments } from './sysv-shm.js';
import { RestoredNamespaces } from './namespaces.js';
import { runLoggedAction, type ActionHook } from '../actions.js';

export interface RestoreOptions {
  imagesDir: string;
  /** --cpu-cap: how the dumped CPU features must match this CPU (default fpu). */
  cpuCap?: readonly string[];
  /** --restore-detached: return once the task runs, instead of waiting for it. */
  isDetached: boolean;
  /** -s/--leave-stopped: the restored task is left stopped (SIGSTOP), to be continued by SIGCONT. */
  isLeftStopped?: boolean;
  /** --restore-sibling: the task becomes a child of criu's parent, not of criu (needs isDetached). */
  isSibling?: boolean;
  /** --inherit-fd fd[N]:KEY: criu's fd N stands for the dumped file KEY ("pipe:[ID]" or a path). */
  inheritFds?: readonly { fd: number; key: string }[];
  pidfile?: string;
  /** -j/--shell-job: terminals come from criu's stdin; the task stays in criu's session. */
  isShellJob?: boolean;
  /** --tcp-close: TCP connections are restored closed (images dumped with it need it). */
  isTcpClose?: boolean;
  /** Called once the task runs (before waiting for it). */
  onRunning?: (pid: number) => void;
  /** --auto-dedup: once the task runs, its pages are punched out of the images (they are spent). */
  autoDedup?: boolean;
  /** A live migration's pre-copied task (skeleton.ts): restored in place instead of a new stub. */
  skeleton?: Skeleton;
  /** Action points pre-restore, post-restore, pre-resume, post-resume (src/actions.ts). */
  onAction?: ActionHook;
  /**
   * Called when the restore fails, after its processes are gone and before the locks of its TCP
   * connections are lifted (a live migration's DST gives back the addresses it took).
   */
  onFailure?: () => void;
}

export interface RestoreResult {
  pid: number;
  /** Without --restore-detached: how the task ended. */
  exit?: { code: number } | { signal: number };
}

export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  const t0 = nowUs();
  const img = await loadImages(opts.imagesDir, { isPageChainLazy: opts.skeleton !== undefined });
  const { pid } = img;
  log().debug('restore: images loaded and checked');
  let skeleton = opts.skeleton;
  const places = img.tree.map((t) => ({
    pid: t.pid,
    ppid: Number(t.pstree['ppid']),
    pgid: Number(t.pstree['pgid']),
    sid: Number(t.pstree['sid']),
  }));
  if (skeleton !== undefined && !skeleton.fits(places)) {
    // The tree changed since the last pre-dump (a fork, an exit, a setsid): from scratch.
    log().info(`restore: the tree of ${pid} is not the pre-copied one; restoring it from the images`);
    skeleton.abort();
    skeleton = undefined;
  }
  // A restore into a pre-copied skeleton has little left to fill (and a long-lived caller's buffers).
  const reserving =
    skeleton === undefined
      ? reserveFillBuffers(img.tree.reduce((n, t) => n + countPages(t.pagesPresent), 0))
      : undefined;
  if (existsSync(path.join(img.dir, 'cpuinfo.img'))) {
    const mismatches = await checkCpuinfoDir(img.dir, opts.cpuCap ?? ['fpu']);
    if (mismatches.length > 0)
      throw new UnsupportedError(
        'cpu',
        `Cannot restore on this CPU (--cpu-cap=${(opts.cpuCap ?? ['fpu']).join(',')}): ${mismatches.slice(0, 3).join('; ')}`,
      );
  }
  log().debug('restore: cpu checked');
  const regNames = new Map<number, string>();
  for (const f of img.files) {
    const reg = f['reg'] as ImageEntry | undefined;
    if (reg !== undefined) regNames.set(Number(f['id']), String(reg['name']));
  }
  const fileName = (id: number): string => {
    const name = regNames.get(id);
    if (name === undefined) throw new ImageError('files.img', `file ${id} is missing`);
    return name;
  };
  checkTtyRestore(
    img.files,
    (await img.extras('TTY_INFO')).map((e) => e.entry),
    { isShellJob: opts.isShellJob === true },
  );
  const namespaces = await RestoredNamespaces.load(img);
  if (skeleton !== undefined && skeleton.cloneFlags !== namespaces.cloneFlags) {
    // Its stubs were made in other namespaces than the tree's: the tree is made again, in its own.
    log().info(`restore: the tree of ${pid} has other namespaces than its skeleton; restoring it from the images`);
    skeleton.abort();
    skeleton = undefined;
  }
  const sysv = await SysvSegments.load(img.dir);
  // A new IPC namespace is empty: nothing of this machine's can be in the way.
  if (!namespaces.isIpcOwn) sysv.check();
  // The tree's connections locked before anything else: the pre-restore action may bring their
  // address to this host (criu-migrate --move-address).
  if (img.isTcpClose && opts.isTcpClose !== true)
    throw new UsageError(
      'The images were dumped with --tcp-close (without the TCP connections): restore them with --tcp-close',
    );
  const connections = imagedConnections(img.tree, img.files);
  // A tree with a PID namespace of its own has pids other trees have too: its tables are named
  // by the run (the dump's, from the inventory; this restore's own).
  const restoreRunId = newRunId();
  const lockIdOf: LockIdOf | undefined = namespaces.isPidOwn
    ? (owner, p) => nsLockId(owner === 'dump' ? (img.runId ?? '') : restoreRunId, p)
    : undefined;
  if (opts.isTcpClose !== true) lockRestoreConnections(connections, lockIdOf);
  /** The restore failed: the caller's hook first (it gives moved addresses back), then its locks go. */
  const failed = (): void => {
    try {
      opts.onFailure?.();
    } catch (hookErr) {
      log().error(`The restore's failure hook failed: ${String(hookErr)}`);
    }
    endRestoreLocks(connections.keys(), false, lockIdOf);
  };

  /** A process's stub and memory from the skeleton (prepareFinal: its scratch area out of the way). */
  const fromSkeleton = (t: TaskImages): { stub: Stub; prefilled: Prefilled } | undefined => {
    const task = skeleton?.task(t.pid);
    if (task === undefined) return undefined;
    const prefilled = { mapped: task.mappedRuns, present: t.pagesPresent, files: task.premappedFiles };
    return { stub: task.prepareFinal(dumpedVmas(t.mm), t.threads.length), prefilled };
  };
  const prefilled = new Map<number, Prefilled>();
  // One scratch address for the whole tree (children are forked from their parent's stub): a
  // hole in every process's layout, room for the most threads any has.
  const layout = img.tree.flatMap((t) => dumpedVmas(t.mm));
  const maxThreads = Math.max(...img.tree.map((t) => t.threads.length));
  let rootSkeleton: ReturnType<typeof fromSkeleton>;
  let rootStub: Stub;
  try {
    await opts.onAction?.('pre-restore', undefined);
    // In a new PID namespace every pid is free.
    if (!namespaces.isPidOwn)
      for (const t of [...(skeleton === undefined ? img.tree : []), ...img.zombies]) await waitForFreePid(t.pid);
    rootSkeleton = fromSkeleton(img);
    rootStub =
      rootSkeleton?.stub ??
      (await startStub(pid, layout, maxThreads, {
        isSibling: opts.isSibling === true,
        cloneFlags: namespaces.cloneFlags,
      }));
  } catch (err) {
    skeleton?.abort();
    failed();
    throw err;
  }
  if (rootSkeleton !== undefined) prefilled.set(pid, rootSkeleton.prefilled);
  const treeGhosts = new Map<number, string>();
  const restoring = (t: TaskImages, stub: Stub): Restoring => ({
    img: t,
    stub,
    threads: [],
    threadTids: [],
    // In a tree, a deleted file recreated for one process (a ghost) is the one the others map
    // and open too: one table of them for all, emptied once every process has its files.
    filesShared: new Map<string, unknown>(img.tree.length > 1 ? [[GHOSTS_MATERIALIZED, treeGhosts]] : []),
    finishFiles: () => Promise.resolve(),
    pagesRestored: 0,
    pagesCompared: 0,
    pagesSkippedCow: 0,
  });
  const rootProc = restoring(img, rootStub);
  const procs: Restoring[] = [rootProc];
  /** The zombies' stubs, killed with the tree if the restore fails before they die as dumped. */
  const zombieStubs: Stub[] = [];
  const treeFiles = img.tree.length > 1 ? new TreeFiles() : undefined;
  /** Shared anonymous memory made by one process of the tree, mapped from it by the others. */
  const sharedObjects: SharedObjects = new Map();

  const ctx: ProcessRestoreContext = {
    img,
    fileName,
    regNames,
    options: opts,
    reserving,
    prefilled,
    sharedObjects,
    sysv,
    ...(treeFiles === undefined ? {} : { treeFiles }),
  };

  try {
    // Sessions and groups before the children exist: they inherit them (tree.ts). A skeleton's
    // processes are in theirs already. Memory too, parents first: a child forked once its
    // parent's memory is restored keeps what they shared copy-on-write (mm.ts inheritMemory).
    namespaces.enter(rootStub.pid);
    if (rootSkeleton === undefined) leadAsDumped(rootStub, img.pstree);
    namespaces.setIpcLimits();
    namespaces.inIpc(() => sysv.create());
    namespaces.finishIpc();
    await restoreProcessMemory(rootProc, ctx);
    for (const t of img.tree.slice(1)) {
      const parent = procs.find((p) => p.img.pid === Number(t.pstree['ppid'])) as Restoring;
      log().debug(`restore: process ${t.pid}, a child of ${parent.img.pid}`);
      const pre = fromSkeleton(t);
      const stub = pre?.stub ?? forkStub(parent.stub, t.pid);
      const proc = restoring(t, stub);
      procs.push(proc);
      if (pre === undefined) {
        leadAsDumped(stub, t.pstree);
        const scratch = { start: stub.scratch, end: stub.scratch + stub.scratchBytes };
        prefilled.set(t.pid, inheritMemory(stub.injector, parent.img.mm, t.mm, scratch));
      } else {
        prefilled.set(t.pid, pre.prefilled);
      }
      await restoreProcessMemory(proc, ctx);
    }
    // Zombies last: children of live processes, with no children of their own.
    const zombies = img.zombies.map((z) => {
      const parent = procs.find((p) => p.img.pid === Number(z.pstree['ppid'])) as Restoring;
      const stub = forkStub(parent.stub, z.pid);
      zombieStubs.push(stub);
      leadAsDumped(stub, z.pstree);
      return { z, stub, parent };
    });
    joinGroups([
      ...procs.map((p) => ({ stub: p.stub, pstree: p.img.pstree })),
      ...zombies.map(({ z, stub }) => ({ stub, pstree: z.pstree })),
    ]);
    for (const { z, stub, parent } of zombies) dieAsDumped(stub, z.exitStatus, parent.stub);
    for (const p of procs) await restoreProcess(p, ctx);
    if (treeFiles !== undefined) removeMaterializedGhosts(rootProc.filesShared);
    // Files kept open for other files (a pair's end, a pipe another process reopens) are closed
    // once every process has its own.
    for (const p of procs) await p.finishFiles();
    // Every process has its files: the connections leave repair mode (until now a socket of a
    // failed restore closed silently; repair mode needs CAP_NET_ADMIN, which the credentials
    // restored next may drop). The locks are lifted once the tree is whole.
    for (const p of procs) finishTcpRepairs(p.stub.injector, p.filesShared);
    for (const p of procs) completeProcess(p, ctx);
    namespaces.inIpc(() => sysv.finish());
    // The tree is whole, not yet running: a failed post-restore action kills it (below).
    await opts.onAction?.('post-restore', rootStub.pid);
  } catch (err) {
    skeleton?.abort(); // what the restore has not taken from it yet
    try {
      namespaces.inIpc(() => sysv.removeMade());
    } catch (cleanupErr) {
      // The rest of the cleanup goes on (in a namespace of the tree's own they end with it anyway).
      log().warn(`Cannot remove the System V segments the failed restore made: ${String(cleanupErr)}`);
    }
    // The root last: the init of a PID namespace of the tree's own takes the others with it.
    for (const z of zombieStubs) killStub(z.pid);
    for (const p of [...procs].reverse()) {
      for (const inj of [...p.threads, p.stub.injector]) {
        try {
          inj.release();
        } catch {
          // the task is killed below anyway
        }
      }
      killStub(p.stub.pid);
      removeMaterializedGhosts(p.filesShared);
    }
    namespaces.close();
    failed();
    throw err;
  }
  namespaces.close();
  endRestoreLocks(connections.keys(), true, lockIdOf);
  // From here on the root as criu sees it (it is 1 in a PID namespace of the tree's own).
  const hostPid = rootStub.pid;
  await runLoggedAction(opts.onAction, 'pre-resume', hostPid);
  // -s/--leave-stopped, or a process that was stopped when dumped: the stop is queued before the
  // threads go, so they stop at once.
  for (const p of procs) if (opts.isLeftStopped === true || isDumpedStopped(p.img)) sys.kill(p.stub.pid, SIGSTOP);
  // Each leader first: a process-directed signal that came during the restore (blocked until now
  // in every thread) then goes to it, as the kernel prefers the main thread for such signals.
  for (const p of procs) {
    for (const inj of [p.stub.injector, ...p.threads]) {
      log().debug(`restore: letting thread ${inj.tid} go at rip 0x${inj.registers.rip.toString(16)}`);
      inj.release();
    }
  }
  const restoreUs = nowUs() - t0;
  const pagesRestored = procs.reduce((n, p) => n + p.pagesRestored, 0);
  const nrThreads = img.tree.reduce((n, t) => n + t.threads.length, 0);
  await runLoggedAction(opts.onAction, 'post-resume', hostPid);
  log().info(
    `Restored task ${hostPid} (${procs.length} process(es), ${nrThreads} thread(s), ${pagesRestored} pages) in ${restoreUs} us`,
  );
  if (log().isEnabled(4)) log().debug(`Injected calls so far: ${JSON.stringify(injectedCallCounts())}`);
  await writeImage(path.join(img.dir, 'stats-restore'), 'STATS', [
    {
      entry: {
        restore: {
          pages_compared: procs.reduce((n, p) => n + p.pagesCompared, 0),
          pages_skipped_cow: procs.reduce((n, p) => n + p.pagesSkippedCow, 0),
          forking_time: 0,
          restore_time: restoreUs,
          pages_restored: pagesRestored,
        },
      },
    },
  ]).catch((err: unknown) => log().warn(`Cannot write stats-restore: ${String(err)}`));
  // Last of what goes into the images directory: a script that waits for the pidfile may then
  // move or remove it.
  if (opts.pidfile !== undefined) await writeFile(opts.pidfile, `${hostPid}\n`);
  if (opts.autoDedup === true) {
    try {
      let bytes = 0;
      for (const t of img.tree) bytes += punchRestored(t.pages ?? (await t.pageChain.sources()));
      log().info(`auto-dedup: ${bytes} bytes of restored pages punched out of the images`);
    } catch (err) {
      log().warn(`auto-dedup: cannot punch the restored pages: ${String(err)}`);
    }
  }
  opts.onRunning?.(hostPid);
  if (opts.isDetached) return { pid: hostPid };
  const res = await sys.waitpidAsync(hostPid, 0, -1);
  const status = res?.status ?? 0;
  if ((status & 0x7f) === 0) return { pid: hostPid, exit: { code: (status >> 8) & 0xff } };
  return { pid: hostPid, exit: { signal: status & 0x7f } };
}

/**
 * Reap a detached restored task (our child) once it ends, without blocking anything: a long-lived
 * process that restores (the migration agent) must not leave zombies that keep the PID taken.
 * Polls with WNOHANG every `everyMs`; the timer does not keep the process alive (if it exits
 * first, the task is reparented and reaped by init).
 */
export function reapWhenDone(pid: number, everyMs = 500): void {
  const timer = setInterval(() => {
    try {
      const r = sys.waitpid(pid, WNOHANG | __WALL, 0);
      if (r !== null && r.pid === pid && (r.status & 0xff) !== 0x7f) clearInterval(timer);
    } catch {
      clearInterval(timer); // not our child (any more)
    }
  }, everyMs);
  timer.unref();
}

function isDumpedStopped(t: TaskImages): boolean {
  return Number((t.cores.get(t.pid)?.['tc'] as ImageEntry | undefined)?.['task_state']) === TASK_STATE.STOPPED;
}
