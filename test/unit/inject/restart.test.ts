import t from 'tap';
import { restartInterruptedWait } from '../../../src/inject/restart.js';
import { USER_REGS_FIELDS, type UserRegs } from '../../../src/sys/regs.js';
import { SYSCALLS_X86_64 as NR } from '../../../src/kernel/syscalls.js';

function regs(over: Partial<UserRegs>): UserRegs {
  const r = Object.fromEntries(USER_REGS_FIELDS.map((f) => [f, 0n])) as UserRegs;
  return { ...r, rip: 0x1002n, ...over };
}
const SYSCALL = Buffer.from([0x0f, 0x05]);
const EINTR = BigInt.asUintN(64, -4n);

t.test('epoll_wait without timeout that got EINTR from a stop is restarted', async (t) => {
  const r = regs({ rax: EINTR, orig_rax: BigInt(NR.epoll_wait), r10: 0xffff_ffffn });
  const out = restartInterruptedWait(r, SYSCALL);
  t.ok(out);
  t.equal(out?.rip, 0x1000n);
  t.equal(out?.rax, BigInt(NR.epoll_wait));
  t.equal(out?.orig_rax, -1n);
  t.equal(out?.r10, 0xffff_ffffn, 'arguments are kept');
});

t.test('left alone: finite timeouts, other calls, other results, no syscall insn', async (t) => {
  t.equal(restartInterruptedWait(regs({ rax: EINTR, orig_rax: BigInt(NR.epoll_wait), r10: 100n }), SYSCALL), null);
  t.equal(restartInterruptedWait(regs({ rax: EINTR, orig_rax: BigInt(NR.read), r10: 0xffff_ffffn }), SYSCALL), null);
  t.equal(restartInterruptedWait(regs({ rax: 1n, orig_rax: BigInt(NR.epoll_wait), r10: 0xffff_ffffn }), SYSCALL), null);
  t.equal(
    restartInterruptedWait(
      regs({ rax: EINTR, orig_rax: BigInt(NR.epoll_wait), r10: 0xffff_ffffn }),
      Buffer.from([0x90, 0x90]),
    ),
    null,
  );
  t.equal(restartInterruptedWait(regs({ rax: EINTR, orig_rax: BigInt(NR.epoll_pwait2), r10: 0x7000n }), SYSCALL), null);
  t.ok(restartInterruptedWait(regs({ rax: EINTR, orig_rax: BigInt(NR.epoll_pwait2), r10: 0n }), SYSCALL));
  t.ok(restartInterruptedWait(regs({ rax: EINTR, orig_rax: BigInt(NR.rt_sigtimedwait), rdx: 0n }), SYSCALL));
});
