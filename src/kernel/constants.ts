/**
 * Linux constants used by criu-ts, x86_64, in one place, as flat named exports (the kernel
 * spelling, so `grep -r PTRACE_O_TRACESYSGOOD` finds both the uapi header and its users). Each
 * group cites the uapi header it comes from. Values are numbers where they fit the native functions'
 * number arguments, and bigint where the native side takes a u64 (masks, features, flags of
 * clone3 and PAGEMAP_SCAN).
 *
 * Where Debian 12's headers lack a constant (PAGEMAP_SCAN, newer userfaultfd features), it is
 * from the kernel 6.7+ headers.
 */

/** ptrace(2) requests. uapi/linux/ptrace.h, arch/x86/include/uapi/asm/ptrace-abi.h. */
export const PTRACE_TRACEME = 0;
export const PTRACE_PEEKTEXT = 1;
export const PTRACE_PEEKDATA = 2;
export const PTRACE_PEEKUSR = 3;
export const PTRACE_POKETEXT = 4;
export const PTRACE_POKEDATA = 5;
export const PTRACE_POKEUSR = 6;
export const PTRACE_CONT = 7;
export const PTRACE_KILL = 8;
export const PTRACE_SINGLESTEP = 9;
export const PTRACE_GETREGS = 12;
export const PTRACE_SETREGS = 13;
export const PTRACE_GETFPREGS = 14;
export const PTRACE_SETFPREGS = 15;
export const PTRACE_ATTACH = 16;
export const PTRACE_DETACH = 17;
export const PTRACE_SYSCALL = 24;
export const PTRACE_ARCH_PRCTL = 30;
export const PTRACE_SETOPTIONS = 0x4200;
export const PTRACE_GETEVENTMSG = 0x4201;
export const PTRACE_GETSIGINFO = 0x4202;
export const PTRACE_SETSIGINFO = 0x4203;
export const PTRACE_GETREGSET = 0x4204;
export const PTRACE_SETREGSET = 0x4205;
export const PTRACE_SEIZE = 0x4206;
export const PTRACE_INTERRUPT = 0x4207;
export const PTRACE_LISTEN = 0x4208;
export const PTRACE_PEEKSIGINFO = 0x4209;
export const PTRACE_GETSIGMASK = 0x420a;
export const PTRACE_SETSIGMASK = 0x420b;
export const PTRACE_SECCOMP_GET_FILTER = 0x420c;
export const PTRACE_SECCOMP_GET_METADATA = 0x420d;
export const PTRACE_GET_SYSCALL_INFO = 0x420e;
export const PTRACE_GET_RSEQ_CONFIGURATION = 0x420f;

/** PTRACE_SEIZE / PTRACE_SETOPTIONS options. uapi/linux/ptrace.h. */
export const PTRACE_O_TRACESYSGOOD = 1 << 0;
export const PTRACE_O_TRACEFORK = 1 << 1;
export const PTRACE_O_TRACEVFORK = 1 << 2;
export const PTRACE_O_TRACECLONE = 1 << 3;
export const PTRACE_O_TRACEEXEC = 1 << 4;
export const PTRACE_O_TRACEVFORKDONE = 1 << 5;
export const PTRACE_O_TRACEEXIT = 1 << 6;
export const PTRACE_O_TRACESECCOMP = 1 << 7;
export const PTRACE_O_EXITKILL = 1 << 20;
export const PTRACE_O_SUSPEND_SECCOMP = 1 << 21;

/** Events in bits 16-23 of a ptrace-stop wait status. uapi/linux/ptrace.h. */
export const PTRACE_EVENT_FORK = 1;
export const PTRACE_EVENT_VFORK = 2;
export const PTRACE_EVENT_CLONE = 3;
export const PTRACE_EVENT_EXEC = 4;
export const PTRACE_EVENT_VFORK_DONE = 5;
export const PTRACE_EVENT_EXIT = 6;
export const PTRACE_EVENT_SECCOMP = 7;
/** Group-stop or PTRACE_INTERRUPT stop of a seized tracee. */
export const PTRACE_EVENT_STOP = 128;

/** PTRACE_PEEKSIGINFO flag: read the process-wide queue. uapi/linux/ptrace.h. */
export const PTRACE_PEEKSIGINFO_SHARED = 1;

/** The bit PTRACE_O_TRACESYSGOOD sets in the stop signal of a syscall-stop. */
export const SYSCALL_STOP_BIT = 0x80;

/** wait(2) options. uapi/linux/wait.h. */
export const WNOHANG = 0x00000001;
export const WUNTRACED = 0x00000002;
export const WSTOPPED = 0x00000002;
export const WEXITED = 0x00000004;
export const WCONTINUED = 0x00000008;
export const WNOWAIT = 0x01000000;
export const __WNOTHREAD = 0x20000000;
/** Wait for all children, clone or not; needed for tracees that are threads. */
export const __WALL = 0x40000000;
/** Negative: the native wait functions take options as a signed 32-bit int. */
export const __WCLONE = 0x80000000 | 0;

/** waitid(2) id types. uapi/linux/wait.h. */
export const P_ALL = 0;
export const P_PID = 1;
export const P_PGID = 2;
export const P_PIDFD = 3;

/** si_code values of SIGCHLD. uapi/asm-generic/siginfo.h. */
export const CLD_EXITED = 1;
export const CLD_KILLED = 2;
export const CLD_DUMPED = 3;
export const CLD_TRAPPED = 4;
export const CLD_STOPPED = 5;
export const CLD_CONTINUED = 6;

/** Generic si_code values. uapi/asm-generic/siginfo.h. */
export const SI_USER = 0;
export const SI_KERNEL = 0x80;
export const SI_QUEUE = -1;
export const SI_TIMER = -2;
export const SI_MESGQ = -3;
export const SI_ASYNCIO = -4;
export const SI_SIGIO = -5;
export const SI_TKILL = -6;

/** Signal numbers, x86_64. arch/x86/include/uapi/asm/signal.h. */
export const SIGHUP = 1;
export const SIGINT = 2;
export const SIGQUIT = 3;
export const SIGILL = 4;
export const SIGTRAP = 5;
export const SIGABRT = 6;
export const SIGBUS = 7;
export const SIGFPE = 8;
export const SIGKILL = 9;
export const SIGUSR1 = 10;
export const SIGSEGV = 11;
export const SIGUSR2 = 12;
export const SIGPIPE = 13;
export const SIGALRM = 14;
export const SIGTERM = 15;
export const SIGSTKFLT = 16;
export const SIGCHLD = 17;
export const SIGCONT = 18;
export const SIGSTOP = 19;
export const SIGTSTP = 20;
export const SIGTTIN = 21;
export const SIGTTOU = 22;
export const SIGURG = 23;
export const SIGXCPU = 24;
export const SIGXFSZ = 25;
export const SIGVTALRM = 26;
export const SIGPROF = 27;
export const SIGWINCH = 28;
export const SIGIO = 29;
export const SIGPWR = 30;
export const SIGSYS = 31;
/** The kernel's first real-time signal (glibc reserves 32 and 33 and reports 34). */
export const SIGRTMIN = 32;
export const SIGRTMAX = 64;

/** Names of the standard signals by number, for messages. */
export const SIGNAL_NAMES: Readonly<Record<number, string>> = {
  [SIGHUP]: 'SIGHUP',
  [SIGINT]: 'SIGINT',
  [SIGQUIT]: 'SIGQUIT',
  [SIGILL]: 'SIGILL',
  [SIGTRAP]: 'SIGTRAP',
  [SIGABRT]: 'SIGABRT',
  [SIGBUS]: 'SIGBUS',
  [SIGFPE]: 'SIGFPE',
  [SIGKILL]: 'SIGKILL',
  [SIGUSR1]: 'SIGUSR1',
  [SIGSEGV]: 'SIGSEGV',
  [SIGUSR2]: 'SIGUSR2',
  [SIGPIPE]: 'SIGPIPE',
  [SIGALRM]: 'SIGALRM',
  [SIGTERM]: 'SIGTERM',
  [SIGSTKFLT]: 'SIGSTKFLT',
  [SIGCHLD]: 'SIGCHLD',
  [SIGCONT]: 'SIGCONT',
  [SIGSTOP]: 'SIGSTOP',
  [SIGTSTP]: 'SIGTSTP',
  [SIGTTIN]: 'SIGTTIN',
  [SIGTTOU]: 'SIGTTOU',
  [SIGURG]: 'SIGURG',
  [SIGXCPU]: 'SIGXCPU',
  [SIGXFSZ]: 'SIGXFSZ',
  [SIGVTALRM]: 'SIGVTALRM',
  [SIGPROF]: 'SIGPROF',
  [SIGWINCH]: 'SIGWINCH',
  [SIGIO]: 'SIGIO',
  [SIGPWR]: 'SIGPWR',
  [SIGSYS]: 'SIGSYS',
};

/** Number of signals (the kernel's _NSIG). */
export const NSIG = 64;

/** ELF note types used as ptrace regsets. uapi/linux/elf.h. */
export const NT_PRSTATUS = 1;
export const NT_PRFPREG = 2;
export const NT_PRPSINFO = 3;
export const NT_TASKSTRUCT = 4;
export const NT_AUXV = 6;
export const NT_SIGINFO = 0x53494749;
export const NT_FILE = 0x46494c45;
export const NT_PRXFPREG = 0x46e62b7f;
export const NT_386_TLS = 0x200;
export const NT_386_IOPERM = 0x201;
export const NT_X86_XSTATE = 0x202;
export const NT_X86_SHSTK = 0x204;

/** Sizes of the x86_64 regsets. arch/x86/include/asm/user_64.h. */
export const USER_REGS_SIZE = 27 * 8;
export const USER_FPREGS_SIZE = 512;

/** clone(2)/clone3(2) flags. uapi/linux/sched.h. bigint: clone_args.flags is a u64. */
export const CSIGNAL = 0x000000ffn;
export const CLONE_VM = 0x00000100n;
export const CLONE_FS = 0x00000200n;
export const CLONE_FILES = 0x00000400n;
export const CLONE_SIGHAND = 0x00000800n;
export const CLONE_PIDFD = 0x00001000n;
export const CLONE_PTRACE = 0x00002000n;
export const CLONE_VFORK = 0x00004000n;
export const CLONE_PARENT = 0x00008000n;
export const CLONE_THREAD = 0x00010000n;
export const CLONE_NEWNS = 0x00020000n;
export const CLONE_SYSVSEM = 0x00040000n;
export const CLONE_SETTLS = 0x00080000n;
export const CLONE_PARENT_SETTID = 0x00100000n;
export const CLONE_CHILD_CLEARTID = 0x00200000n;
export const CLONE_DETACHED = 0x00400000n;
export const CLONE_UNTRACED = 0x00800000n;
export const CLONE_CHILD_SETTID = 0x01000000n;
export const CLONE_NEWCGROUP = 0x02000000n;
export const CLONE_NEWUTS = 0x04000000n;
export const CLONE_NEWIPC = 0x08000000n;
export const CLONE_NEWUSER = 0x10000000n;
export const CLONE_NEWPID = 0x20000000n;
export const CLONE_NEWNET = 0x40000000n;
export const CLONE_IO = 0x80000000n;
export const CLONE_CLEAR_SIGHAND = 0x100000000n;
export const CLONE_INTO_CGROUP = 0x200000000n;
export const CLONE_NEWTIME = 0x00000080n;

/** PAGEMAP_SCAN flags (pm_scan_arg.flags). uapi/linux/fs.h, kernel >= 6.7. */
export const PM_SCAN_WP_MATCHING = 1n << 0n;
export const PM_SCAN_CHECK_WPASYNC = 1n << 1n;

/** PAGEMAP_SCAN page categories (masks and page_region.categories). uapi/linux/fs.h. */
export const PAGE_IS_WPALLOWED = 1n << 0n;
export const PAGE_IS_WRITTEN = 1n << 1n;
export const PAGE_IS_FILE = 1n << 2n;
export const PAGE_IS_PRESENT = 1n << 3n;
export const PAGE_IS_SWAPPED = 1n << 4n;
export const PAGE_IS_PFNZERO = 1n << 5n;
export const PAGE_IS_HUGE = 1n << 6n;
export const PAGE_IS_SOFT_DIRTY = 1n << 7n;
/** A guard region's page (madvise MADV_GUARD_INSTALL), 6.14+. */
export const PAGE_IS_GUARD = 1n << 8n;

/** u64 words per struct page_region { start, end, categories } in a PAGEMAP_SCAN vector. */
export const PAGE_REGION_WORDS = 3;

/** /proc/PID/pagemap entry bits. Documentation/admin-guide/mm/pagemap.rst. */
export const PM_PFN_MASK = (1n << 55n) - 1n;
export const PM_SOFT_DIRTY = 1n << 55n;
export const PM_MMAP_EXCLUSIVE = 1n << 56n;
export const PM_UFFD_WP = 1n << 57n;
export const PM_FILE = 1n << 61n;
export const PM_SWAP = 1n << 62n;
export const PM_PRESENT = 1n << 63n;

/** userfaultfd(2) flag, besides O_CLOEXEC and O_NONBLOCK. uapi/linux/userfaultfd.h. */
export const UFFD_USER_MODE_ONLY = 1;

/** UFFDIO_API's api value. uapi/linux/userfaultfd.h. */
export const UFFD_API = 0xaa;

/** userfaultfd features. uapi/linux/userfaultfd.h (WP_UNPOPULATED 6.4, WP_ASYNC 6.7). */
export const UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1n << 0n;
export const UFFD_FEATURE_EVENT_FORK = 1n << 1n;
export const UFFD_FEATURE_EVENT_REMAP = 1n << 2n;
export const UFFD_FEATURE_EVENT_REMOVE = 1n << 3n;
export const UFFD_FEATURE_MISSING_HUGETLBFS = 1n << 4n;
export const UFFD_FEATURE_MISSING_SHMEM = 1n << 5n;
export const UFFD_FEATURE_EVENT_UNMAP = 1n << 6n;
export const UFFD_FEATURE_SIGBUS = 1n << 7n;
export const UFFD_FEATURE_THREAD_ID = 1n << 8n;
export const UFFD_FEATURE_MINOR_HUGETLBFS = 1n << 9n;
export const UFFD_FEATURE_MINOR_SHMEM = 1n << 10n;
export const UFFD_FEATURE_EXACT_ADDRESS = 1n << 11n;
export const UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1n << 12n;
export const UFFD_FEATURE_WP_UNPOPULATED = 1n << 13n;
export const UFFD_FEATURE_POISON = 1n << 14n;
export const UFFD_FEATURE_WP_ASYNC = 1n << 15n;
export const UFFD_FEATURE_MOVE = 1n << 16n;

/** UFFDIO_REGISTER modes. uapi/linux/userfaultfd.h. */
export const UFFDIO_REGISTER_MODE_MISSING = 1n << 0n;
export const UFFDIO_REGISTER_MODE_WP = 1n << 1n;
export const UFFDIO_REGISTER_MODE_MINOR = 1n << 2n;

/** UFFDIO_WRITEPROTECT modes. uapi/linux/userfaultfd.h. */
export const UFFDIO_WRITEPROTECT_MODE_WP = 1n << 0n;
export const UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1n << 1n;

/** Bits of the ioctls masks that UFFDIO_API/UFFDIO_REGISTER return. uapi/linux/userfaultfd.h. */
export const _UFFDIO_REGISTER = 1n << 0x00n;
export const _UFFDIO_UNREGISTER = 1n << 0x01n;
export const _UFFDIO_WAKE = 1n << 0x02n;
export const _UFFDIO_COPY = 1n << 0x03n;
export const _UFFDIO_ZEROPAGE = 1n << 0x04n;
export const _UFFDIO_MOVE = 1n << 0x05n;
export const _UFFDIO_WRITEPROTECT = 1n << 0x06n;
export const _UFFDIO_CONTINUE = 1n << 0x07n;
export const _UFFDIO_POISON = 1n << 0x08n;
export const _UFFDIO_API = 1n << 0x3fn;

/** The end of user address space (x86-64, 4-level page tables); above it, only [vsyscall]. */
export const TASK_SIZE = 0x7fff_ffff_f000n;

/** kcmp(2) types. uapi/linux/kcmp.h. */
export const KCMP_FILE = 0;
export const KCMP_VM = 1;
export const KCMP_FILES = 2;
export const KCMP_FS = 3;
export const KCMP_SIGHAND = 4;
export const KCMP_IO = 5;
export const KCMP_SYSVSEM = 6;
export const KCMP_EPOLL_TFD = 7;

/** open(2) flags, x86_64. uapi/asm-generic/fcntl.h. */
export const O_ACCMODE = 3;
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOCTTY = 0o400;
export const O_TRUNC = 0o1000;
export const O_APPEND = 0o2000;
export const O_NONBLOCK = 0o4000;
export const O_DSYNC = 0o10000;
export const O_DIRECT = 0o40000;
export const O_LARGEFILE = 0o100000;
export const O_DIRECTORY = 0o200000;
export const O_NOFOLLOW = 0o400000;
export const O_NOATIME = 0o1000000;
export const O_CLOEXEC = 0o2000000;
export const O_PATH = 0o10000000;

/** fcntl(2) commands and flags. uapi/asm-generic/fcntl.h, uapi/linux/fcntl.h. */
export const F_DUPFD = 0;
export const F_GETFD = 1;
export const F_SETFD = 2;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const F_DUPFD_CLOEXEC = 1030;
export const F_SETPIPE_SZ = 1031;
export const F_GETPIPE_SZ = 1032;
export const FD_CLOEXEC = 1;

/** splice(2)/vmsplice(2)/tee(2) flags. uapi/linux/splice.h (via fcntl.h in libc). */
export const SPLICE_F_MOVE = 1;
export const SPLICE_F_NONBLOCK = 2;
export const SPLICE_F_MORE = 4;
export const SPLICE_F_GIFT = 8;

/** fallocate(2) modes. uapi/linux/falloc.h. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_COLLAPSE_RANGE = 0x08;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** Resource limits. uapi/asm-generic/resource.h. */
export const RLIMIT_CPU = 0;
export const RLIMIT_FSIZE = 1;
export const RLIMIT_DATA = 2;
export const RLIMIT_STACK = 3;
export const RLIMIT_CORE = 4;
export const RLIMIT_RSS = 5;
export const RLIMIT_NPROC = 6;
export const RLIMIT_NOFILE = 7;
export const RLIMIT_MEMLOCK = 8;
export const RLIMIT_AS = 9;
export const RLIMIT_LOCKS = 10;
export const RLIMIT_SIGPENDING = 11;
export const RLIMIT_MSGQUEUE = 12;
export const RLIMIT_NICE = 13;
export const RLIMIT_RTPRIO = 14;
export const RLIMIT_RTTIME = 15;
export const RLIM_NLIMITS = 16;
/** "No limit". uapi/asm-generic/resource.h. */
export const RLIM_INFINITY = 0xffffffffffffffffn;

/** pidfd_open(2) flags. uapi/linux/pidfd.h. */
export const PIDFD_NONBLOCK = 0o4000;
export const PIDFD_THREAD = 0o200;

/** Socket families, types and options used by probes. uapi/linux/socket.h, linux/in.h, linux/tcp.h. */
export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_NETLINK = 16;
export const AF_PACKET = 17;
// Announcing an address (src/net/addresses.ts): linux/if_ether.h, linux/if_arp.h, linux/in6.h,
// netinet/icmp6.h.
export const ETH_P_ARP = 0x0806;
export const ETH_P_IP = 0x0800;
export const ARPHRD_ETHER = 1;
export const ARPOP_REQUEST = 1;
export const IPPROTO_ICMPV6 = 58;
export const IPV6_MULTICAST_IF = 17;
export const IPV6_MULTICAST_HOPS = 18;
export const ND_NEIGHBOR_ADVERT = 136;
export const ND_NA_FLAG_OVERRIDE = 0x20000000;
export const ND_OPT_TARGET_LINKADDR = 2;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_RAW = 3;
export const SOCK_SEQPACKET = 5;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const IPPROTO_TCP = 6;
export const SOL_TCP = 6;
export const TCP_REPAIR = 19;
export const TCP_REPAIR_QUEUE = 20;
export const TCP_QUEUE_SEQ = 21;
export const TCP_REPAIR_OPTIONS = 22;
export const TCP_REPAIR_WINDOW = 29;

/** Socket options. uapi/asm-generic/socket.h, linux/in.h, linux/in6.h, linux/tcp.h. */
export const SO_REUSEADDR = 2;
export const SO_TYPE = 3;
export const SO_DONTROUTE = 5;
export const SO_BROADCAST = 6;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const SO_KEEPALIVE = 9;
export const SO_OOBINLINE = 10;
export const SO_NO_CHECK = 11;
export const SO_PRIORITY = 12;
export const SO_LINGER = 13;
export const SO_REUSEPORT = 15;
export const SO_PASSCRED = 16;
export const SO_RCVLOWAT = 18;
export const SO_RCVTIMEO = 20; // SO_RCVTIMEO_OLD: a struct timeval of longs
export const SO_SNDTIMEO = 21;
export const SO_BINDTODEVICE = 25;
export const SO_GET_FILTER = 26;
export const SO_SNDBUFFORCE = 32;
export const SO_RCVBUFFORCE = 33;
export const SO_PASSSEC = 34;
export const SO_MARK = 36;
export const SO_PROTOCOL = 38;
export const SO_DOMAIN = 39;
export const SO_BUF_LOCK = 72;
/** SO_BUF_LOCK bits: the program set the size itself. */
export const SOCK_SNDBUF_LOCK = 1;
export const SOCK_RCVBUF_LOCK = 2;
export const SOL_IP = 0;
export const IP_FREEBIND = 15;
export const SOL_IPV6 = 41;
export const IPV6_V6ONLY = 26;
export const IPV6_FREEBIND = 78;
export const IPPROTO_UDP = 17;
export const TCP_NODELAY = 1;
export const TCP_INFO = 11;
export const TCP_KEEPIDLE = 4;
export const TCP_KEEPINTVL = 5;
export const TCP_KEEPCNT = 6;
export const TCP_USER_TIMEOUT = 18;
export const SO_PEEK_OFF = 42;

/** send/recv flags. uapi/linux/socket.h. */
export const MSG_PEEK = 0x2;
export const MSG_TRUNC = 0x20;
export const MSG_DONTWAIT = 0x40;
export const MSG_WAITALL = 0x100;

/** Socket states as sock_diag and TCP_INFO report them (include/net/tcp_states.h); unix sockets use them too. */
export const TCP_ESTABLISHED = 1;
export const TCP_FIN_WAIT1 = 4;
export const TCP_FIN_WAIT2 = 5;
export const TCP_CLOSE = 7;
export const TCP_CLOSE_WAIT = 8;
export const TCP_LAST_ACK = 9;
export const TCP_LISTEN = 10;
export const TCP_CLOSING = 11;

/** Page size on x86_64. */
export const PAGE_SIZE = 4096;

/** task_struct flags, as /proc/PID/stat's `flags` shows them. include/linux/sched.h. */
export const PF_EXITING = 0x4;

/** System V IPC. uapi/linux/ipc.h, sem.h, msg.h, shm.h. */
export const IPC_CREAT = 0o1000;
export const IPC_EXCL = 0o2000;
export const IPC_NOWAIT = 0o4000;
export const IPC_RMID = 0;
export const IPC_SET = 1;
export const IPC_STAT = 2;
export const GETALL = 13;
export const SETALL = 17;
export const MSG_COPY = 0o40000;
export const SHM_RDONLY = 0o10000;
export const SHM_EXEC = 0o100000;
/**
 * The x86_64 layouts IPC_STAT fills and IPC_SET reads (glibc's struct shmid_ds, semid_ds and
 * msqid_ds, the kernel's *id64_ds): their sizes, where struct ipc_perm (their start) keeps owner,
 * group and mode, and where msqid_ds keeps msg_qbytes.
 */
export const SHMID_DS_BYTES = 112;
export const SEMID_DS_BYTES = 104;
export const MSQID_DS_BYTES = 120;
export const IPC_PERM_UID = 4;
export const IPC_PERM_GID = 8;
export const IPC_PERM_MODE = 20;
export const MSQID_DS_QBYTES = 88;
