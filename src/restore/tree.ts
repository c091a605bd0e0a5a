/**
 * Making a dumped process tree again, before any process gets its state: the root is the stub
 * started as its PID (stub.ts); every other process is forked by its restored parent, by an
 * injected clone3 with set_tid = [its PID], while that parent is still an empty stub. Its child
 * is then an empty stub too (only the scratch area is mapped, every signal blocked), and the
 * kernel attaches it to criu at birth (PTRACE_O_TRACEFORK on the stubs, stub.ts).
 *
 * A zombie is forked the same way, put in its session and group, and made to die as it died:
 * exit_group with its exit code, or its fatal signal (no core file), so that its parent's waitpid
 * reports what it reported before the dump.
 *
 * Sessions and process groups follow the clone order: a process that led its session calls
 * setsid, and one that led its group setpgid(0, 0), right after its birth and before its own
 * children are forked, so that they inherit them as they did; a process in another process's
 * group joins it once every process exists. pstree.img was checked to allow no other case
 * (images.ts checkTree).
 */

import { readdirSync, readFileSync } from 'node:fs';
import { TaskError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import { Injector } from '../inject/injector.js';
import { RLIMIT_CORE, SIGCHLD, __WALL } from '../kernel/constants.js';
import { SYSCALLS_X86_64 } from '../kernel/syscalls.js';
import { log } from '../log.js';
import { pollSync } from '../sys/wait.js';
import { readStat } from '../proc/stat.js';
import { readStatus } from '../proc/status.js';
import * as sys from '../sys/native.js';
import { LEADER_SCRATCH_BYTES, type Stub } from './stub.js';

const PAGE = 4096n;
/** How long a zombie-to-be may take to die again. */
const ZOMBIE_WAIT_MS = 5000;

/** Fork `pid` from `parent` (an emptied stub, stopped and traced): the child, attached and stopped. */
export function forkStub(parent: Stub, pid: number): Stub {
  const inj = parent.injector;
  const tid = Buffer.alloc(4);
  tid.writeInt32LE(pid, 0);
  const tidAddr = inj.pushData(tid);
  // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
  // set_tid, set_tid_size, cgroup (11 u64)
  const args = Buffer.alloc(88);
  args.writeBigUInt64LE(BigInt(SIGCHLD), 32);
  args.writeBigUInt64LE(tidAddr, 64);
  args.writeBigUInt64LE(1n, 72);
  let got: bigint;
  try {
    got = inj.syscallOrThrow('clone3', [inj.pushData(args), 88n]);
  } catch (err) {
    throw new TaskError(pid, `Cannot create process ${pid} (a child of ${parent.pid})`, { cause: err });
  } finally {
    inj.resetScratch();
  }
  if (Number(got) !== pid) throw new TaskError(pid, `Process ${pid} was created as ${got}`);
  // clone3 answers with the pid of the parent's namespace; criu works with its own.
  const host = parent.isInOwnPidNs ? hostTaskOf(`/proc/${parent.pid}/task/${parent.pid}/children`, pid) : pid;
  const st = sys.waitpid(host, __WALL, 5000);
  if (st === null) throw new TaskError(pid, `Process ${pid} did not stop after its creation`);
  const injector = Injector.adopt(host, host, parent.scratch);
  injector.useScratch(parent.scratch + PAGE, LEADER_SCRATCH_BYTES);
  return {
    pid: host,
    vpid: pid,
    isInOwnPidNs: parent.isInOwnPidNs,
    injector,
    scratch: parent.scratch,
    scratchBytes: parent.scratchBytes,
  };
}

/**
 * The task criu sees as the one its PID namespace calls `vpid`, among those `list` names: a
 * /proc file of pids ("children") or a /proc directory of them ("task/").
 */
export function hostTaskOf(list: string, vpid: number): number {
  const pids = list.endsWith('/')
    ? readdirSync(list).map(Number)
    : readFileSync(list, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  const found = pids.find((p) => readStatus(p)?.nsPid.at(-1) === vpid);
  if (found === undefined) throw new TaskError(vpid, `Cannot find task ${vpid} of the new PID namespace in ${list}`);
  return found;
}

/** Right after its birth: make the process the leader of its session or group if it was one. */
export function leadAsDumped(stub: Stub, pstree: ImageEntry): void {
  if (Number(pstree['sid']) === stub.vpid) stub.injector.syscallOrThrow('setsid', []);
  else if (Number(pstree['pgid']) === stub.vpid) stub.injector.syscallOrThrow('setpgid', [0n, 0n]);
}

/**
 * Once every process exists: each non-root process whose group is not the one it was born in
 * joins it. A group that was the root's and led outside the tree (a shell job's) is the group the
 * root is in now.
 */
export function joinGroups(tree: readonly { stub: Stub; pstree: ImageEntry }[]): void {
  const root = tree[0];
  if (root === undefined) return;
  const rootGroup = Number(root.pstree['pgid']);
  const pids = new Set(tree.map((t) => t.stub.vpid));
  for (const t of tree.slice(1)) {
    const dumped = Number(t.pstree['pgid']);
    const want = pids.has(dumped) || dumped !== rootGroup ? dumped : currentGroup(root.stub.pid);
    if (currentGroup(t.stub.pid) !== want) t.stub.injector.syscallOrThrow('setpgid', [0n, BigInt(want)]);
  }
}

/** The process group of process `pid` (criu's pid), as its own PID namespace sees it. */
function currentGroup(pid: number): number {
  const group = readStatus(pid)?.nsPgid.at(-1);
  if (group === undefined) throw new TaskError(pid, `Process ${pid} is gone during the restore`);
  return group;
}

/**
 * Make the stub `stub` die with wait status `status` (exit code, or terminating signal) while its
 * parent `parent` is still stopped, and take back the SIGCHLD this sends the parent: the parent
 * had it (and handled it, or not) before the dump, and gets its own pending signals back later.
 */
export function dieAsDumped(stub: Stub, status: number, parent: Stub): void {
  const signal = status & 0x7f;
  if (signal === 0) {
    try {
      stub.injector.syscall(SYSCALLS_X86_64.exit_group, [BigInt((status >> 8) & 0xff)]);
    } catch (err) {
      log().debug(`restore: zombie ${stub.pid} exited (${String(err)})`);
    }
  } else {
    sys.prlimit(stub.pid, RLIMIT_CORE, { cur: 0n, max: 0n }); // killed as dumped, without a core file
    sys.kill(stub.pid, signal);
    stub.injector.signalMask = 0n; // the signal is delivered as the stub is let go
    stub.injector.release();
  }
  if (!pollSync(() => readStat(stub.pid)?.state === 'Z', ZOMBIE_WAIT_MS))
    throw new TaskError(stub.pid, `Process ${stub.pid} did not become a zombie again`);
  const set = Buffer.alloc(8);
  set.writeBigUInt64LE(1n << BigInt(SIGCHLD - 1), 0);
  const inj = parent.injector;
  inj.syscall(SYSCALLS_X86_64.rt_sigtimedwait, [inj.pushData(set), 0n, inj.pushData(Buffer.alloc(16)), 8n]);
  inj.resetScratch();
}
