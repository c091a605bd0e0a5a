/**
 * Installing a thread's seccomp filters again (see src/dump/seccomp.ts for the image), oldest
 * first, by injected seccomp(SECCOMP_SET_MODE_FILTER) calls. The task is traced with
 * PTRACE_O_SUSPEND_SECCOMP while criu works on it, so the filters only take effect once it is let
 * go. Installing a filter needs CAP_SYS_ADMIN in the task or no_new_privs.
 */

import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';

const SECCOMP_SET_MODE_STRICT = 0n;
const SECCOMP_SET_MODE_FILTER = 1n;

export function restoreSeccomp(
  inj: Injector,
  threadCore: ImageEntry | undefined,
  filters: readonly ImageEntry[],
): void {
  const mode = Number(threadCore?.['seccomp_mode'] ?? 0);
  if (mode === 1) {
    inj.syscallOrThrow('seccomp', [SECCOMP_SET_MODE_STRICT, 0n, 0n]);
    return;
  }
  if (mode !== 2 || threadCore?.['seccomp_filter'] === undefined) return;
  const chain: ImageEntry[] = [];
  for (let i: number | undefined = Number(threadCore['seccomp_filter']); i !== undefined;) {
    const f: ImageEntry | undefined = filters[i];
    if (f === undefined) break;
    chain.unshift(f);
    i = f['prev'] === undefined ? undefined : Number(f['prev']);
  }
  for (const f of chain) {
    const prog = Buffer.from(f['filter'] as Uint8Array);
    const addr = inj.pushData(prog);
    // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    const fprog = Buffer.alloc(16);
    fprog.writeUInt16LE(prog.length / 8, 0);
    fprog.writeBigUInt64LE(addr, 8);
    inj.syscallOrThrow('seccomp', [SECCOMP_SET_MODE_FILTER, BigInt(Number(f['flags'] ?? 0)), inj.pushData(fprog)]);
    inj.resetScratch();
  }
}
