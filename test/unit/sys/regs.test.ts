import t from 'tap';
import { decodeUserRegs, encodeUserRegs, USER_REGS_FIELDS } from '../../../src/sys/regs.js';

t.test('every field at its struct user_regs_struct offset, byte-exact round trip', async (t) => {
  // Byte i of the fixture is (i * 7 + 3) & 0xff, so each u64 slot is distinct.
  const raw = Buffer.alloc(216);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 7 + 3) & 0xff;
  const regs = decodeUserRegs(raw);
  t.equal(USER_REGS_FIELDS.length, 27);
  USER_REGS_FIELDS.forEach((name, i) => t.equal(regs[name], raw.readBigUInt64LE(i * 8), name));
  t.same(encodeUserRegs(regs), raw);
});

t.test('a hand-written fixture: the registers CRIU cares about most', async (t) => {
  const regs = decodeUserRegs(Buffer.alloc(216));
  regs.rip = 0x401000n;
  regs.rsp = 0x7ffd12345678n;
  regs.orig_rax = 0xffffffffffffffffn; // -1: not in a syscall
  regs.rax = 0xfffffffffffffe00n; // -ERESTARTSYS
  regs.fs_base = 0x7f0011223340n;
  regs.cs = 0x33n;
  regs.ss = 0x2bn;
  regs.eflags = 0x246n;
  const hex = encodeUserRegs(regs).toString('hex');
  const word = (i: number) => hex.slice(i * 16, i * 16 + 16);
  t.equal(word(16), '0010400000000000', 'rip at 128');
  t.equal(word(19), '78563412fd7f0000', 'rsp at 152');
  t.equal(word(15), 'ffffffffffffffff', 'orig_rax at 120');
  t.equal(word(10), '00feffffffffffff', 'rax at 80');
  t.equal(word(21), '40332211007f0000', 'fs_base at 168');
  t.equal(word(17), '3300000000000000', 'cs at 136');
  t.equal(word(18), '4602000000000000', 'eflags at 144');
  t.equal(word(20), '2b00000000000000', 'ss at 160');
  t.same(decodeUserRegs(Buffer.from(hex, 'hex')), regs);
});

t.test('rejects other sizes; wraps negative values', async (t) => {
  t.throws(() => decodeUserRegs(Buffer.alloc(215)), RangeError);
  const regs = decodeUserRegs(Buffer.alloc(216));
  regs.rax = -4n;
  t.equal(decodeUserRegs(encodeUserRegs(regs)).rax, 0xfffffffffffffffcn);
});
