/**
 * ptraceChain (native/chain.cc) on a real tracee: a whole injected syscall in one chain, a chain
 * stopped by a wait status other than the expected one, and a failing request.
 */
import t, { type Test } from 'tap';
import { SyscallError } from '../../../src/errors.js';
import { NT_PRSTATUS, PTRACE_O_TRACESYSGOOD, SIGTRAP, USER_REGS_SIZE, __WALL } from '../../../src/kernel/constants.js';
import { SYSCALLS_X86_64 as NR } from '../../../src/kernel/syscalls.js';
import {
  kill,
  ptraceChain,
  ptraceGetRegset,
  ptraceInterrupt,
  ptraceSeize,
  ptraceSetRegset,
  waitpid,
} from '../../../src/sys/native.js';
import { decodeUserRegs, encodeUserRegs } from '../../../src/sys/regs.js';
import { decodeWaitStatus, encodeWaitStatus } from '../../../src/sys/wait.js';
import { spawnDetached } from './procs.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace)';
const SYSCALL_STOP = encodeWaitStatus({ kind: 'stopped', signal: SIGTRAP, event: 0, isSyscallStop: true });

/** A sleeping process seized and in an interrupt stop; its registers at the stop. */
function seizedSleep(t: Test): { pid: number; regs: Buffer } {
  const pid = spawnDetached(t, 'sleep 60');
  ptraceSeize(pid, PTRACE_O_TRACESYSGOOD);
  ptraceInterrupt(pid);
  const st = waitpid(pid, __WALL, 5000);
  t.ok(st !== null && decodeWaitStatus(st.status).kind === 'stopped', 'interrupt stop');
  return { pid, regs: ptraceGetRegset(pid, NT_PRSTATUS, USER_REGS_SIZE) };
}

/** The registers for getppid at the `syscall` instruction the task stopped after. */
function getppidRegs(regs: Buffer): Buffer {
  const r = decodeUserRegs(regs);
  return encodeUserRegs({ ...r, rax: BigInt(NR.getppid), orig_rax: -1n, rip: r.rip - 2n });
}

t.test('one chain runs a whole injected syscall', { skip: needsRoot }, async (t) => {
  const { pid, regs } = seizedSleep(t);
  const res = ptraceChain([
    ['setregset', pid, NT_PRSTATUS, getppidRegs(regs)],
    ['syscall', pid, 0],
    ['waitpid', pid, __WALL, 5000, SYSCALL_STOP],
    ['syscall', pid, 0],
    ['waitpid', pid, __WALL, 5000, SYSCALL_STOP],
    ['getregset', pid, NT_PRSTATUS, USER_REGS_SIZE],
  ]);
  t.equal(res.completed, 6);
  t.equal(res.waitStatus, null);
  t.equal(res.regsets.length, 1);
  t.equal(decodeUserRegs(res.regsets[0] as Buffer).rax, 1n, 'getppid in the task: init adopted it');
  ptraceSetRegset(pid, NT_PRSTATUS, regs);
});

t.test('a wait status other than the expected one stops the chain', { skip: needsRoot }, async (t) => {
  const { pid, regs } = seizedSleep(t);
  const res = ptraceChain([
    ['setregset', pid, NT_PRSTATUS, getppidRegs(regs)],
    ['syscall', pid, 0],
    ['waitpid', pid, __WALL, 5000, 0x1234], // never a wait status
    ['getregset', pid, NT_PRSTATUS, USER_REGS_SIZE],
  ]);
  t.equal(res.completed, 2, 'stopped at the wait');
  t.equal(res.waitStatus, SYSCALL_STOP, 'with the status it got');
  t.same(res.regsets, [], 'nothing after it ran');
  // Nothing happens in time: null.
  const none = ptraceChain([['waitpid', pid, __WALL, 50, SYSCALL_STOP]]);
  t.equal(none.completed, 0);
  t.equal(none.waitStatus, null);
  kill(pid, 9);
});

t.test('a failing request throws as its single wrapper would', { skip: needsRoot }, async (t) => {
  const pid = spawnDetached(t, 'sleep 60'); // not traced by us
  let err: unknown;
  try {
    ptraceChain([['syscall', pid, 0]]);
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof SyscallError, String(err));
  t.match((err as SyscallError).syscall, 'ptrace(PTRACE_SYSCALL)');
  t.equal((err as SyscallError).errnoCode, 'ESRCH');
  t.throws(() => ptraceChain([['nonsense' as 'cont', pid, 0]]), TypeError);
});
