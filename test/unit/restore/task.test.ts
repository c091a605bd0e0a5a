import t from 'tap';
import { resumeInSyscall } from '../../../src/restore/task.js';
import { USER_REGS_FIELDS, type UserRegs } from '../../../src/sys/regs.js';
import { SYSCALLS_X86_64 as NR } from '../../../src/kernel/syscalls.js';

const regs = (over: Partial<UserRegs>): UserRegs => ({
  ...(Object.fromEntries(USER_REGS_FIELDS.map((f) => [f, 0n])) as UserRegs),
  orig_rax: -1n,
  ...over,
});
const SYSCALL = Buffer.from([0x0f, 0x05]);

t.test('a thread stored on its syscall instruction goes back inside the call', async (t) => {
  const nr = BigInt(NR.pause);
  const out = resumeInSyscall(regs({ rip: 0x1000n, rax: nr }), nr, SYSCALL);
  t.equal(out.rip, 0x1002n, 'after the instruction');
  t.equal(out.orig_rax, nr, 'in the call');
  t.equal(BigInt.asIntN(64, out.rax), -514n, 'pause: -ERESTARTNOHAND (EINTR when a handler runs)');
  const read = BigInt(NR.read);
  t.equal(
    BigInt.asIntN(64, resumeInSyscall(regs({ rip: 0x1000n, rax: read }), read, SYSCALL).rax),
    -512n,
    'read: -ERESTARTSYS',
  );
});

t.test('anything else is left as dumped', async (t) => {
  const r = regs({ rip: 0x1000n, rax: 3n });
  t.same(resumeInSyscall(r, -1n, SYSCALL), r, 'not in a syscall');
  t.same(resumeInSyscall(r, 0n, SYSCALL), r, 'rax is not the call: a result (EINTR...)');
  const nr = BigInt(NR.pause);
  const p = regs({ rip: 0x1000n, rax: nr });
  t.same(resumeInSyscall(p, nr, Buffer.from([0x90, 0x90])), p, 'not on a syscall instruction');
  t.same(resumeInSyscall(p, nr, Buffer.alloc(0)), p, 'unreadable');
});
