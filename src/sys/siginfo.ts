/**
 * siginfo_t as ptrace hands it over (PTRACE_GETSIGINFO, PTRACE_PEEKSIGINFO, PTRACE_SETSIGINFO):
 * 128 bytes, x86_64 layout of uapi/asm-generic/siginfo.h:
 *
 *   offset 0  i32 si_signo
 *          4  i32 si_errno
 *          8  i32 si_code
 *         12  (padding: the union is 8-byte aligned)
 *         16  union, read here in its common shapes:
 *               16 i32 pid   (kill, rt, sigchld: si_pid)     | u64 addr (sigfault: si_addr)
 *               20 u32 uid   (kill, rt, sigchld: si_uid)     |
 *               24 i32 status (sigchld: si_status)           | u64 value (rt, timer: si_value)
 *
 * Which union member is meaningful depends on signo and code, which a checkpoint must not
 * interpret: the decoded fields are all views of the same bytes, and `raw` keeps the 128 bytes
 * so a pending signal is restored exactly as it was queued.
 */

export const SIGINFO_SIZE = 128;

export interface Siginfo {
  readonly signo: number;
  readonly errno: number;
  readonly code: number;
  /** si_pid (offset 16). */
  readonly pid: number;
  /** si_uid (offset 20). */
  readonly uid: number;
  /** si_status (offset 24). */
  readonly status: number;
  /** si_addr (offset 16, overlapping pid and uid). */
  readonly addr: bigint;
  /** si_value, the sigval of queued and timer signals (offset 24, overlapping status). */
  readonly value: bigint;
  /** The whole 128 bytes, as the kernel gave them. */
  readonly raw: Buffer;
}

/** Decodes one 128-byte siginfo. Throws RangeError on any other length. */
export function decodeSiginfo(buf: Uint8Array): Siginfo {
  if (buf.length !== SIGINFO_SIZE) throw new RangeError(`siginfo_t is ${SIGINFO_SIZE} bytes, got ${buf.length}`);
  const raw = Buffer.from(buf);
  return {
    signo: raw.readInt32LE(0),
    errno: raw.readInt32LE(4),
    code: raw.readInt32LE(8),
    pid: raw.readInt32LE(16),
    uid: raw.readUInt32LE(20),
    status: raw.readInt32LE(24),
    addr: raw.readBigUInt64LE(16),
    value: raw.readBigUInt64LE(24),
    raw,
  };
}

/** Splits PTRACE_PEEKSIGINFO's output (nr × 128 bytes) into siginfos. */
export function decodeSiginfos(buf: Uint8Array): Siginfo[] {
  if (buf.length % SIGINFO_SIZE !== 0) {
    throw new RangeError(`siginfo array length ${buf.length} is not a multiple of ${SIGINFO_SIZE}`);
  }
  const out: Siginfo[] = [];
  for (let off = 0; off < buf.length; off += SIGINFO_SIZE)
    out.push(decodeSiginfo(buf.subarray(off, off + SIGINFO_SIZE)));
  return out;
}

/** The fields a new siginfo may set; the union shapes are exclusive (pid/uid/status, or addr, or value). */
export interface SiginfoInit {
  signo: number;
  errno?: number;
  code: number;
  pid?: number;
  uid?: number;
  status?: number;
  addr?: bigint;
  value?: bigint;
}

/** Builds a 128-byte siginfo (for PTRACE_SETSIGINFO) from its fields; bytes not set are zero. */
export function encodeSiginfo(init: SiginfoInit): Buffer {
  const buf = Buffer.alloc(SIGINFO_SIZE);
  buf.writeInt32LE(init.signo, 0);
  buf.writeInt32LE(init.errno ?? 0, 4);
  buf.writeInt32LE(init.code, 8);
  if (init.addr !== undefined) buf.writeBigUInt64LE(init.addr, 16);
  if (init.pid !== undefined) buf.writeInt32LE(init.pid, 16);
  if (init.uid !== undefined) buf.writeUInt32LE(init.uid, 20);
  if (init.value !== undefined) buf.writeBigUInt64LE(init.value, 24);
  if (init.status !== undefined) buf.writeInt32LE(init.status, 24);
  return buf;
}
