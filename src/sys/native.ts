/**
 * The native addon (build/Release/criu_native.node), loaded once and typed by native/index.d.ts.
 *
 * This is the only module that imports the addon; everyone else imports these functions from
 * here. Loading hands SyscallError to the addon, so every failing call throws a SyscallError
 * carrying errno, the syscall name and its main arguments. See native/index.d.ts for the contract
 * of each function (threads, timeouts, Buffer lifetimes).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type * as Native from '../../native/index.js';
import { SyscallError } from '../errors.js';

export type {
  Clone3ExecArgs,
  NativeErrorClass,
  PagemapScanArg,
  PagemapScanResult,
  PtraceChainResult,
  PtraceChainStep,
  Rlimit,
  WaitidResult,
  WaitpidResult,
  SockAddr,
} from '../../native/index.js';

/** The build outputs tried, in order, below the package root. */
const CANDIDATES = ['build/Release/criu_native.node', 'build/Debug/criu_native.node'] as const;

/**
 * The addon's path: this file is src/sys/native.ts under tsx and dist/src/sys/native.js after
 * tsc, so walk up to the directory holding package.json (dist/ has none) rather than assume a
 * depth. CRIU_NATIVE_ADDON overrides it (a debug or sanitizer build).
 */
function addonPath(): string {
  const override = process.env['CRIU_NATIVE_ADDON'];
  if (override !== undefined && override !== '') return override;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 6; depth++) {
    if (existsSync(join(dir, 'package.json'))) {
      for (const candidate of CANDIDATES) {
        const path = join(dir, candidate);
        if (existsSync(path)) return path;
      }
      throw new Error(`The native addon is not built: run "npm run build:native" in ${dir}`);
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new Error(`Cannot find the criu-ts package root above ${fileURLToPath(import.meta.url)}`);
}

const require = createRequire(import.meta.url);
const native = require(addonPath()) as typeof Native;
native.setErrorClass(SyscallError);

export const {
  ptraceSeize,
  ptraceInterrupt,
  ptraceCont,
  ptraceSyscall,
  ptraceDetach,
  ptraceListen,
  ptraceGetRegset,
  ptraceSetRegset,
  ptraceGetSiginfo,
  ptraceSetSiginfo,
  ptracePeekSiginfo,
  ptraceGetSigmask,
  ptraceSetSigmask,
  ptraceGetEventMsg,
  ptraceSeccompGetFilter,
  ptraceGetRseqConfiguration,
  ptracePeekData,
  ptracePokeData,
  ptraceChain,
  waitpid,
  waitpidAsync,
  waitid,
  waitidAsync,
  processVmReadv,
  processVmReadvAsync,
  memReadv,
  memReadvAsync,
  processVmWritev,
  processVmWritevAsync,
  uffdioCopy,
  uffdioCopyAsync,
  pidfdOpen,
  pidfdGetfd,
  pidfdSendSignal,
  setns,
  open,
  close,
  read,
  write,
  pread,
  preadAsync,
  pwrite,
  pwriteAsync,
  fcntl,
  pipe2,
  fallocate,
  fallocateAsync,
  fsync,
  lseek,
  openByHandleAt,
  pagemapScan,
  pagemapScanAsync,
  userfaultfd,
  uffdioApi,
  uffdioRegister,
  uffdioUnregister,
  uffdioWriteprotect,
  splice,
  spliceAsync,
  vmsplice,
  tee,
  prlimit,
  getRobustList,
  kcmp,
  kcmpEpollTfd,
  shmget,
  shmctl,
  shmat,
  shmdt,
  semget,
  semctl,
  msgget,
  msgctl,
  msgsnd,
  msgrcv,
  kill,
  tgkill,
  gettid,
  clone3Exec,
  socket,
  socketpair,
  socketNetns,
  bindUnix,
  connectUnixAsync,
  setsockopt,
  getsockopt,
  sendto,
  socketUnsentBytes,
  sendFd,
  recvFds,
  cpuid,
  xgetbv,
  bind,
  listen,
  accept4Async,
  connectAsync,
  shutdown,
  getsockname,
  getpeername,
  recvAsync,
  writevAllAsync,
  pwritevAllAsync,
  spliceAllAsync,
} = native;
