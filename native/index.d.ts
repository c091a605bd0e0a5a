/**
 * The whole surface of criu-ts's native addon (build/Release/criu_native.node).
 *
 * The addon is a thin syscall layer: one function per system call or ioctl, plain values in, raw
 * results out (Buffers holding kernel structs are decoded in TypeScript under src/sys/). It has no
 * policy, no parsing and no loops over processes. Only src/sys/ imports it.
 *
 * Errors: a failing call throws an instance of the class handed to `setErrorClass` (SyscallError
 * from src/errors.ts), constructed as `new ErrorClass(syscall, errno, errnoCode, args)`, for example
 * `("ptrace(PTRACE_SEIZE)", 1, "EPERM", [1234])`. Argument errors (wrong JS types) throw TypeError.
 *
 * Threads:
 * - Every `ptrace*` and `wait*` function runs on one dedicated tracer thread, because a tracee can
 *   only be driven by the thread that seized it. The synchronous forms block the calling JS thread
 *   until the tracer thread has run the call (a few microseconds). Calls run in the order made.
 * - `*Async` functions return a Promise and do not block the JS thread. Bulk copies (`*Async` of
 *   process_vm_readv/writev, pread/pwrite, splice) run on the libuv thread pool; the Buffers passed
 *   must not be touched until the Promise settles. `waitpidAsync`/`waitidAsync` run on the tracer
 *   thread but poll, so they never hold up the other tracer calls.
 *
 * 64-bit addresses, offsets and masks are bigint; counts and fds are number.
 */

/** The constructor native errors are made with. */
export type NativeErrorClass = new (
  syscall: string,
  errno: number,
  errnoCode: string,
  args: (number | bigint | string)[],
) => Error;

/** Must be called once, before any other function. */
export function setErrorClass(ctor: NativeErrorClass): void;

// ---------------------------------------------------------------------------------------------
// ptrace(2): all run on the tracer thread.

/** PTRACE_SEIZE with the given PTRACE_O_* options. */
export function ptraceSeize(pid: number, options: number): void;
/** PTRACE_INTERRUPT. */
export function ptraceInterrupt(pid: number): void;
/** PTRACE_CONT, delivering `sig` (0 for none). */
export function ptraceCont(pid: number, sig: number): void;
/** PTRACE_SYSCALL: continue to the next syscall entry or exit stop. */
export function ptraceSyscall(pid: number, sig: number): void;
/** PTRACE_DETACH, delivering `sig` (0 for none). */
export function ptraceDetach(pid: number, sig: number): void;
/** PTRACE_LISTEN: let a group-stopped tracee wait for a SIGCONT without leaving the stop. */
export function ptraceListen(pid: number): void;
/**
 * PTRACE_GETREGSET for regset `type` (NT_PRSTATUS 1, NT_PRFPREG 2, NT_X86_XSTATE 0x202).
 * `size` is the buffer size offered; the returned Buffer has the length the kernel filled in.
 */
export function ptraceGetRegset(pid: number, type: number, size: number): Buffer;
/** PTRACE_SETREGSET for regset `type` with the whole of `data`. */
export function ptraceSetRegset(pid: number, type: number, data: Buffer): void;
/** One step of ptraceChain: the arguments of the single wrapper of the same name. */
export type PtraceChainStep =
  | readonly ['setregset', pid: number, type: number, data: Buffer]
  | readonly ['getregset', pid: number, type: number, size: number]
  | readonly ['syscall', pid: number, sig: number]
  | readonly ['cont', pid: number, sig: number]
  | readonly ['waitpid', pid: number, options: number, timeoutMs: number, expectedStatus: number];
export interface PtraceChainResult {
  /** How many steps ran as expected (all of them, or the index of the step that stopped it). */
  completed: number;
  /** When a waitpid stopped the chain: the status it got instead (null: nothing in time). */
  waitStatus: number | null;
  /** What the getregset steps read, in order. */
  regsets: Buffer[];
}
/**
 * Runs the steps back to back on the tracer thread in one hand-off (native/chain.cc says why),
 * stopping at the first waitpid whose status is not `expectedStatus`. A failing request throws as
 * its single wrapper does; steps after it do not run.
 */
export function ptraceChain(steps: readonly PtraceChainStep[]): PtraceChainResult;
/** PTRACE_GETSIGINFO: the 128-byte siginfo of the current signal stop. */
export function ptraceGetSiginfo(pid: number): Buffer;
/** PTRACE_SETSIGINFO. */
export function ptraceSetSiginfo(pid: number, siginfo: Buffer): void;
/**
 * PTRACE_PEEKSIGINFO: up to `nr` pending signals starting at `offset`, from the thread's queue or
 * (shared) the process's. Returns nr×128 bytes, as many siginfos as there were.
 */
export function ptracePeekSiginfo(pid: number, offset: number, nr: number, shared: boolean): Buffer;
/** PTRACE_GETSIGMASK: the blocked-signal mask (bit n-1 for signal n). */
export function ptraceGetSigmask(pid: number): bigint;
/** PTRACE_SETSIGMASK. */
export function ptraceSetSigmask(pid: number, mask: bigint): void;
/** PTRACE_GETEVENTMSG. */
export function ptraceGetEventMsg(pid: number): bigint;
/**
 * PTRACE_SECCOMP_GET_FILTER: the classic BPF program of filter `index` (0 = most recent) as
 * struct sock_filter[] (8 bytes each). Throws ENOENT past the last filter.
 */
export function ptraceSeccompGetFilter(pid: number, index: number): Buffer;
/** PTRACE_GET_RSEQ_CONFIGURATION: struct ptrace_rseq_configuration (24 bytes). */
export function ptraceGetRseqConfiguration(pid: number): Buffer;
/** PTRACE_PEEKDATA: one word of the tracee's memory (ignores page protections). */
export function ptracePeekData(pid: number, addr: bigint): bigint;
/** PTRACE_POKEDATA: write one word (ignores page protections). */
export function ptracePokeData(pid: number, addr: bigint, word: bigint): void;

// ---------------------------------------------------------------------------------------------
// wait(2): on the tracer thread.

export interface WaitpidResult {
  /** The pid that changed state. */
  pid: number;
  /** The raw wait status (decode with src/sys/wait.ts). */
  status: number;
}

/**
 * waitpid(pid, options | __WALL implied by the caller). `timeoutMs`: -1 blocks until a change,
 * 0 behaves as WNOHANG, a positive value polls for at most that long. Returns null when nothing
 * changed in time.
 */
export function waitpid(pid: number, options: number, timeoutMs: number): WaitpidResult | null;
/** The same without blocking the JS thread. */
export function waitpidAsync(pid: number, options: number, timeoutMs: number): Promise<WaitpidResult | null>;

export interface WaitidResult {
  pid: number;
  /** si_signo (SIGCHLD). */
  signo: number;
  /** si_code: CLD_EXITED, CLD_KILLED, CLD_DUMPED, CLD_TRAPPED, CLD_STOPPED, CLD_CONTINUED. */
  code: number;
  /** si_status: exit code or signal. */
  status: number;
}

/** waitid(idtype, id, &info, options) with the same timeout rules as waitpid. */
export function waitid(idtype: number, id: number, options: number, timeoutMs: number): WaitidResult | null;
export function waitidAsync(
  idtype: number,
  id: number,
  options: number,
  timeoutMs: number,
): Promise<WaitidResult | null>;

// ---------------------------------------------------------------------------------------------
// Cross-process memory.

/**
 * process_vm_readv(pid, [dst], remote): `remote` holds (addr, len) pairs. Reads into `dst` from
 * byte `dstOffset` on. Returns the bytes read (short on a partially unmapped range).
 */
export function processVmReadv(pid: number, dst: Buffer, dstOffset: number, remote: BigUint64Array): number;
export function processVmReadvAsync(
  pid: number,
  dst: Buffer,
  dstOffset: number,
  remote: BigUint64Array,
): Promise<number>;
/**
 * pread(memFd, ...) at each (addr, len) pair of `remote` in turn, `memFd` open on /proc/PID/mem,
 * into consecutive bytes of `dst` from `dstOffset`: process_vm_readv's result (the bytes read,
 * short at the first pair that cannot be read whole; an error only when nothing was read),
 * without pinning the pages, which would unshare what the task shares copy-on-write.
 */
export function memReadv(memFd: number, dst: Buffer, dstOffset: number, remote: BigUint64Array): number;
export function memReadvAsync(memFd: number, dst: Buffer, dstOffset: number, remote: BigUint64Array): Promise<number>;
/** process_vm_writev(pid, [src], remote). Returns the bytes written. */
export function processVmWritev(pid: number, src: Buffer, srcOffset: number, remote: BigUint64Array): number;
export function processVmWritevAsync(
  pid: number,
  src: Buffer,
  srcOffset: number,
  remote: BigUint64Array,
): Promise<number>;
/**
 * ioctl(fd, UFFDIO_COPY) for each (addr, len) pair of `remote` in turn, from consecutive bytes of
 * `src` from `srcOffset`: new pages holding the data in the userfaultfd's process (the range
 * registered in MISSING mode, the pages not there yet). Partial copies are carried on. Returns
 * the bytes copied; an error names the address it stopped at.
 */
export function uffdioCopy(fd: number, src: Buffer, srcOffset: number, remote: BigUint64Array): number;
export function uffdioCopyAsync(fd: number, src: Buffer, srcOffset: number, remote: BigUint64Array): Promise<number>;

// ---------------------------------------------------------------------------------------------
// pidfd.

export function pidfdOpen(pid: number, flags: number): number;
/** pidfd_getfd: a duplicate, in this process, of fd `targetFd` of the pidfd's process. */
export function pidfdGetfd(pidfd: number, targetFd: number, flags: number): number;
export function pidfdSendSignal(pidfd: number, sig: number, flags: number): void;
/**
 * setns(fd, nstype): the calling thread (the JS thread) enters the namespace `fd` refers to. Only
 * per-thread kinds make sense here (uts, ipc, net); src/sys/namespaces.ts pairs it with the way back.
 */
export function setns(fd: number, nstype: number): void;

// ---------------------------------------------------------------------------------------------
// Raw file I/O (no Node fs layer: exact flags, exact errors, offsets as bigint).

export function open(path: string, flags: number, mode: number): number;
export function close(fd: number): void;
export function read(fd: number, buf: Buffer, offset: number, len: number): number;
export function write(fd: number, buf: Buffer, offset: number, len: number): number;
/** pread(fd, buf + offset, len, pos). */
export function pread(fd: number, buf: Buffer, offset: number, len: number, pos: bigint): number;
export function preadAsync(fd: number, buf: Buffer, offset: number, len: number, pos: bigint): Promise<number>;
export function pwrite(fd: number, buf: Buffer, offset: number, len: number, pos: bigint): number;
export function pwriteAsync(fd: number, buf: Buffer, offset: number, len: number, pos: bigint): Promise<number>;
/** fcntl(fd, cmd, arg) for integer-argument commands. */
export function fcntl(fd: number, cmd: number, arg: number): number;
/** pipe2(flags): [readFd, writeFd]. */
export function pipe2(flags: number): [number, number];
/** fallocate(fd, mode, offset, len): FALLOC_FL_PUNCH_HOLE for dedup. */
export function fallocate(fd: number, mode: number, offset: bigint, len: bigint): void;
/** The same on the thread pool (allocating a large range is long kernel work). */
export function fallocateAsync(fd: number, mode: number, offset: bigint, len: bigint): Promise<void>;
/** fsync(fd). */
export function fsync(fd: number): void;
/** lseek(fd, offset, whence): the new offset; SEEK_DATA past the last data throws ENXIO. */
export function lseek(fd: number, offset: bigint, whence: number): bigint;
/**
 * open_by_handle_at(mountFd, handle, flags): open the file a file handle (name_to_handle_at,
 * or an inotify/fanotify mark's fdinfo "f_handle") names, on the filesystem `mountFd` is on (any
 * fd there, but not an O_PATH one: the kernel answers EBADF). `handle` is the handle's f_handle
 * bytes (at most MAX_HANDLE_SZ, 128), `handleType` its handle_type; `flags` are open flags for
 * the result (O_PATH allowed). Needs CAP_DAC_READ_SEARCH.
 */
export function openByHandleAt(mountFd: number, handleType: number, handle: Buffer, flags: number): number;

// ---------------------------------------------------------------------------------------------
// ioctls.

export interface PagemapScanArg {
  start: bigint;
  end: bigint;
  /** PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC */
  flags: bigint;
  categoryInverted: bigint;
  categoryMask: bigint;
  categoryAnyofMask: bigint;
  returnMask: bigint;
  /** 0 for no limit. */
  maxPages: bigint;
}

export interface PagemapScanResult {
  /** Number of struct page_region filled in `vec` (3 u64 each: start, end, categories). */
  nrRegions: number;
  /** Where the walk stopped (equals `end` when it walked the whole range). */
  walkEnd: bigint;
}

/** ioctl(fd, PAGEMAP_SCAN, &arg) on an open /proc/PID/pagemap. `vec` receives the regions. */
export function pagemapScan(fd: number, arg: PagemapScanArg, vec: BigUint64Array): PagemapScanResult;
export function pagemapScanAsync(fd: number, arg: PagemapScanArg, vec: BigUint64Array): Promise<PagemapScanResult>;

/** userfaultfd(flags) in this process (used by `check`; trackers create theirs in the target). */
export function userfaultfd(flags: number): number;
/** UFFDIO_API with the requested features; returns what the kernel grants. */
export function uffdioApi(fd: number, features: bigint): { features: bigint; ioctls: bigint };
/** UFFDIO_REGISTER; returns the ioctls allowed on the range. */
export function uffdioRegister(fd: number, start: bigint, len: bigint, mode: bigint): bigint;
export function uffdioUnregister(fd: number, start: bigint, len: bigint): void;
/** UFFDIO_WRITEPROTECT (mode UFFDIO_WRITEPROTECT_MODE_WP to protect, 0 to unprotect). */
export function uffdioWriteprotect(fd: number, start: bigint, len: bigint, mode: bigint): void;

// ---------------------------------------------------------------------------------------------
// Pipes and page movement.

/** splice(2). `offIn`/`offOut` null for pipes. Returns bytes moved. */
export function splice(
  fdIn: number,
  offIn: bigint | null,
  fdOut: number,
  offOut: bigint | null,
  len: number,
  flags: number,
): number;
export function spliceAsync(
  fdIn: number,
  offIn: bigint | null,
  fdOut: number,
  offOut: bigint | null,
  len: number,
  flags: number,
): Promise<number>;
/** vmsplice(2) of this process's Buffers into a pipe. The Buffers must stay untouched until read. */
export function vmsplice(fd: number, bufs: Buffer[], flags: number): number;
/** tee(2). */
export function tee(fdIn: number, fdOut: number, len: number, flags: number): number;

// ---------------------------------------------------------------------------------------------
// Task state readable from outside.

export interface Rlimit {
  cur: bigint;
  max: bigint;
}
/** prlimit(pid, resource, newLimit, &old): returns the old limit; null newLimit only reads. */
export function prlimit(pid: number, resource: number, newLimit: Rlimit | null): Rlimit;
/** get_robust_list(pid): the robust futex list head and its size. */
export function getRobustList(pid: number): { head: bigint; len: bigint };
/** kcmp(pid1, pid2, type, idx1, idx2): 0 equal, 1 less, 2 greater, 3 not equal (unordered). */
export function kcmp(pid1: number, pid2: number, type: number, idx1: bigint, idx2: bigint): number;
/**
 * kcmp(pid1, pid2, KCMP_EPOLL_TFD, fd, {efd, tfd, toff}): the file at `fd` of pid1 against the
 * target file of epoll `efd`'s watch of fd number `tfd` (the `toff`-th such watch) in pid2; 0 when
 * the same file. Throws (EBADF, ENOENT) when `fd` is not open or there is no such watch.
 */
export function kcmpEpollTfd(pid1: number, pid2: number, fd: number, efd: number, tfd: number, toff: number): number;

// ---------------------------------------------------------------------------------------------
// System V shared memory.

/** shmget(key, size, flags): the segment's id. */
export function shmget(key: number, size: number, flags: number): number;
/** shmctl(id, cmd, buf): buf, when given, is a struct shmid_ds the kernel reads or fills. */
export function shmctl(id: number, cmd: number, buf: Buffer | null): number;
/** shmat(id, NULL, flags) in this process: where the segment is mapped here. */
export function shmat(id: number, flags: number): bigint;
/** shmdt(addr) in this process. */
export function shmdt(addr: bigint): void;
/** semget(key, nsems, flags): the set's id. */
export function semget(key: number, nsems: number, flags: number): number;
/** semctl(id, semnum, cmd, buf): buf, when given, is what union semun points to (semid_ds, or the values of GETALL/SETALL). */
export function semctl(id: number, semnum: number, cmd: number, buf: Buffer | null): number;
/** msgget(key, flags): the queue's id. */
export function msgget(key: number, flags: number): number;
/** msgctl(id, cmd, buf): buf, when given, is a struct msqid_ds the kernel reads or fills. */
export function msgctl(id: number, cmd: number, buf: Buffer | null): number;
/** msgsnd(id, msg, size, flags): msg is the 8-byte mtype, then `size` bytes of text. */
export function msgsnd(id: number, msg: Buffer, size: number, flags: number): void;
/** msgrcv(id, msg, size, msgtyp, flags): the text's length; msg gets the mtype, then the text. */
export function msgrcv(id: number, msg: Buffer, size: number, msgtyp: number, flags: number): number;

// ---------------------------------------------------------------------------------------------
// Processes and signals.

export function kill(pid: number, sig: number): void;
export function tgkill(tgid: number, tid: number, sig: number): void;
/** gettid() of the calling JS thread. */
export function gettid(): number;

export interface Clone3ExecArgs {
  /** CLONE_* flags (no CLONE_VM / CLONE_THREAD: the child execs at once). */
  flags: bigint;
  /** Signal sent to the parent when the child exits (SIGCHLD). */
  exitSignal: number;
  /** PIDs wanted, innermost namespace first; empty for any. */
  setTid: number[];
  path: string;
  argv: string[];
  envp: string[];
  /**
   * The blocked-signal mask the child execs with (default: none blocked). Until then every
   * signal is blocked, so a signal sent to the new pid stays pending instead of reaching a copy
   * of one of Node's handlers.
   */
  signalMask?: bigint;
}
/**
 * clone3(2) then, in the child, execve(2) at once (a copy of this multi-threaded process can do
 * nothing else safely); the child exits with 127 if execve fails. Runs on the tracer thread, so
 * the child is this thread's to seize. Returns the child's pid.
 */
export function clone3Exec(args: Clone3ExecArgs): number;

// ---------------------------------------------------------------------------------------------
// Sockets (probes such as TCP_REPAIR; the RPC service's AF_UNIX SOCK_SEQPACKET sockets).

export function socket(domain: number, type: number, protocol: number): number;
/** socketpair(domain, type, 0): the two fds. */
export function socketpair(domain: number, type: number): [number, number];
/**
 * bind(fd) to the AF_UNIX filesystem path `path` (at most 107 bytes), or to an abstract name when
 * `path` starts with "\0" (at most 108 bytes with it).
 */
export function bindUnix(fd: number, path: string): void;
/** connect(fd) to the AF_UNIX path `path`, on the thread pool (a full backlog blocks). */
export function connectUnixAsync(fd: number, path: string): Promise<void>;
export function setsockopt(fd: number, level: number, name: number, value: Buffer): void;
export function getsockopt(fd: number, level: number, name: number, size: number): Buffer;
/** ioctl(fd, SIOCOUTQNSD): the bytes of TCP socket `fd`'s send queue not sent yet (a FIN counts one). */
export function socketUnsentBytes(fd: number): number;
/** sendto(fd, data, flags) to `addr`, a sockaddr of any family as bytes: the bytes sent. */
export function sendto(fd: number, data: Buffer, flags: number, addr: Buffer): number;
/** sendmsg(sockfd) of `data` with `fd` as SCM_RIGHTS: the bytes sent. */
export function sendFd(sockfd: number, data: Buffer, fd: number, flags: number): number;
/**
 * recvmsg(sockfd, flags | MSG_CMSG_CLOEXEC) of at most `size` bytes: the bytes, the fds that came
 * with them (SCM_RIGHTS, close-on-exec, the caller's to close), and whether data or fds were cut
 * (MSG_TRUNC, MSG_CTRUNC). EAGAIN with MSG_DONTWAIT when nothing is queued.
 */
export function recvFds(
  sockfd: number,
  size: number,
  flags: number,
): { data: Buffer; fds: number[]; isTruncated: boolean };

// ---------------------------------------------------------------------------------------------
// CPU identification (not system calls: instructions only native code can execute).

/**
 * The cpuid instruction for `leaf` (EAX) and `subleaf` (ECX): [eax, ebx, ecx, edx] as unsigned
 * 32-bit numbers. A leaf above the CPU's maximum returns what the CPU returns for it (Intel: the
 * highest basic leaf's data), so callers check the maximum leaf (leaf 0 / 0x80000000) first.
 */
export function cpuid(leaf: number, subleaf: number): [number, number, number, number];
/**
 * xgetbv: extended control register `index` (0 = XCR0, the XSAVE features the OS enabled;
 * 1 = XINUSE). Throws Error when the OS has not enabled XSAVE (CPUID.1:ECX.OSXSAVE clear) and
 * RangeError for a register the CPU lacks, instead of letting the CPU fault.
 */
export function xgetbv(index: number): bigint;

// ---------------------------------------------------------------------------------------------
// TCP (net.cc): the page server and its client. Sockets are plain blocking fds made with
// `socket()`; whatever may block runs on the thread pool. Addresses are IPv4/IPv6 text.

export interface SockAddr {
  /** 4 or 6 (0 for another family). */
  family: number;
  address: string;
  port: number;
}

/** bind(fd, address:port). */
export function bind(fd: number, address: string, port: number): void;
/** listen(fd, backlog). */
export function listen(fd: number, backlog: number): void;
/** accept4(fd, NULL, NULL, flags): the connected fd. shutdown(fd, SHUT_RD) wakes it with EINVAL. */
export function accept4Async(fd: number, flags: number): Promise<number>;
/** connect(fd, address:port) on a blocking socket; an interrupted connect is waited for. */
export function connectAsync(fd: number, address: string, port: number): Promise<void>;
/** shutdown(fd, how): SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2. */
export function shutdown(fd: number, how: number): void;
export function getsockname(fd: number): SockAddr;
/** ioctl(fd, SIOCGSKNS): an fd on the network namespace of socket `fd` (close it). */
export function socketNetns(fd: number): number;
export function getpeername(fd: number): SockAddr;
/** recv(fd, buf + offset, len, flags) (MSG_WAITALL 0x100 waits for all of len). 0 = end of stream. */
export function recvAsync(fd: number, buf: Buffer, offset: number, len: number, flags: number): Promise<number>;
/**
 * writev(fd, bufs) repeated until every byte of every Buffer is written (a blocking socket may
 * still write short when a signal arrives). Resolves with the total. The Buffers must stay
 * untouched until it settles.
 */
export function writevAllAsync(fd: number, bufs: Buffer[]): Promise<number>;
/**
 * pwritev(fd, bufs, pos) repeated until every byte is written at pos onwards (a short write goes
 * on where it stopped; ENOSPC and other errors reject). Resolves with the total. The Buffers must
 * stay untouched until it settles.
 */
export function pwritevAllAsync(fd: number, bufs: Buffer[], pos: bigint): Promise<number>;
/**
 * Move `len` bytes from `fdIn` (a socket) into `fdOut` at `offOut` through the pipe
 * (`pipeRead`, `pipeWrite`) without copying them through user space. Each write into fdOut ends on
 * a multiple of `chunk` (or at the end, or where the pipe filled up first). Resolves with the bytes moved: fewer than `len` only when fdIn reached end of
 * stream. After a rejection the pipe may hold data: discard it.
 */
export function spliceAllAsync(
  fdIn: number,
  pipeRead: number,
  pipeWrite: number,
  fdOut: number,
  offOut: bigint,
  len: number,
  chunk: number,
): Promise<number>;
