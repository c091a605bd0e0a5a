/**
 * x86_64 general-purpose registers as PTRACE_GETREGSET/SETREGSET(NT_PRSTATUS) transfer them:
 * struct user_regs_struct (arch/x86/include/asm/user_64.h), 27 little-endian u64 fields, 216
 * bytes, in this order:
 *
 *   byte offset and field:
 *     0 r15         56 r10        112 rdi        168 fs_base
 *     8 r14         64 r9         120 orig_rax   176 gs_base
 *    16 r13         72 r8         128 rip        184 ds
 *    24 r12         80 rax        136 cs         192 es
 *    32 rbp         88 rcx        144 eflags     200 fs
 *    40 rbx         96 rdx        152 rsp        208 gs
 *    48 r11        104 rsi        160 ss
 *
 * Decoding keeps every bit (segment registers are u64 slots too), so decode then encode is a
 * byte-exact round trip.
 */
import { USER_REGS_SIZE } from '../kernel/constants.js';

/** Field names in struct order; the byte offset of field i is 8 * i. */
export const USER_REGS_FIELDS = [
  'r15',
  'r14',
  'r13',
  'r12',
  'rbp',
  'rbx',
  'r11',
  'r10',
  'r9',
  'r8',
  'rax',
  'rcx',
  'rdx',
  'rsi',
  'rdi',
  'orig_rax',
  'rip',
  'cs',
  'eflags',
  'rsp',
  'ss',
  'fs_base',
  'gs_base',
  'ds',
  'es',
  'fs',
  'gs',
] as const;

export type UserRegsField = (typeof USER_REGS_FIELDS)[number];

/** struct user_regs_struct, each field a u64 as bigint. Names keep the kernel's spelling. */
export type UserRegs = Record<UserRegsField, bigint>;

/** Decodes the 216-byte NT_PRSTATUS regset. Throws RangeError on any other length. */
export function decodeUserRegs(buf: Uint8Array): UserRegs {
  if (buf.length !== USER_REGS_SIZE) {
    throw new RangeError(`struct user_regs_struct is ${USER_REGS_SIZE} bytes, got ${buf.length}`);
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const regs = {} as UserRegs;
  USER_REGS_FIELDS.forEach((name, i) => {
    regs[name] = view.getBigUint64(i * 8, true);
  });
  return regs;
}

/** Encodes registers for PTRACE_SETREGSET(NT_PRSTATUS). Values are taken modulo 2^64. */
export function encodeUserRegs(regs: UserRegs): Buffer {
  const buf = Buffer.alloc(USER_REGS_SIZE);
  USER_REGS_FIELDS.forEach((name, i) => {
    buf.writeBigUInt64LE(BigInt.asUintN(64, regs[name]), i * 8);
  });
  return buf;
}
