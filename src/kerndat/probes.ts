/**
 * The kernel-feature probes behind `criu check` and kerndat(). Each one tries the feature for real,
 * on this process or on a short-lived child, and cleans up every fd and child it made; every wait
 * has a timeout so a probe cannot hang.
 *
 * Kernel interfaces: ptrace(PTRACE_SEIZE/INTERRUPT/DETACH), waitpid, process_vm_readv,
 * pidfd_open/pidfd_getfd, clone3 with set_tid, ioctl(PAGEMAP_SCAN) (6.7+), userfaultfd +
 * UFFDIO_API, /proc/PID/clear_refs and /proc/PID/pagemap (soft-dirty, bit 55), /proc/PID/maps,
 * /proc/self/status (CapEff), setsockopt(TCP_REPAIR), /proc/self/ns.
 *
 * The children are made with the addon's clone3Exec, which forks on the addon's tracer thread:
 * they are not libuv's children (libuv would reap their ptrace stops), and they belong to the
 * thread that does every ptrace and wait call.
 */

import { closeSync, existsSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';

import { describeError, isErrno } from '../errors.js';
import { readMaps, type MapsEntry } from '../proc/maps.js';
import * as native from '../sys/native.js';
import { sleepMs } from '../sys/wait.js';
import { readCapabilities, type Capabilities } from './caps.js';
import { formatVdsoLayout, parseVdsoLayout, type VdsoLayout } from './vdso.js';

// uapi constants (asm-generic/fcntl.h, linux/wait.h, linux/ptrace.h, asm/signal.h,
// linux/userfaultfd.h, linux/fs.h, linux/socket.h, linux/in.h, linux/tcp.h).
const O_RDONLY = 0;
const O_CLOEXEC = 0o2000000;
const __WALL = 0x40000000;
const SIGKILL = 9;
const SIGCHLD = 17;
const PTRACE_EVENT_STOP = 128;
const UFFD_USER_MODE_ONLY = 1;
export const UFFD_FEATURE_WP_UNPOPULATED = 1n << 13n;
export const UFFD_FEATURE_WP_ASYNC = 1n << 15n;
const PAGE_IS_PRESENT = 1n << 3n;
const AF_INET = 2;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const IPPROTO_TCP = 6;
const TCP_REPAIR = 19;
const PAGE_SIZE = 4096n;
const PM_SOFT_DIRTY_BIT = 55n;

const CHILD_START_TIMEOUT_MS = 2000;
const WAIT_TIMEOUT_MS = 2000;

/** Identifiers of the probes, in the order `criu check` prints them. */
export type ProbeId =
  | 'ptrace'
  | 'process-vm-readv'
  | 'pidfd'
  | 'clone3-set-tid'
  | 'capabilities'
  | 'vdso'
  | 'namespaces'
  | 'pagemap-scan'
  | 'uffd-wp-async'
  | 'soft-dirty'
  | 'cap-sys-resource'
  | 'tcp-repair';

export interface ProbeResult {
  id: ProbeId;
  /** What `check` prints before the verdict. */
  title: string;
  /** Needed by dump or restore: its absence fails `criu check`. */
  isRequired: boolean;
  isOk: boolean;
  /** What was seen, or why it failed. */
  detail: string;
}

const isStopped = (status: number): boolean => (status & 0xff) === 0x7f;
const isExited = (status: number): boolean => (status & 0x7f) === 0;
const exitCode = (status: number): number => (status >> 8) & 0xff;

/** A `sleep` child of the tracer thread, for the probes that need another process. */
export class ProbeChild {
  readonly pid: number;
  private isReaped = false;

  constructor() {
    this.pid = native.clone3Exec({
      flags: 0n,
      exitSignal: SIGCHLD,
      setTid: [],
      path: '/bin/sleep',
      argv: ['sleep', '30'],
      envp: [],
    });
    // Until execve is done the child is still a copy of node: wait until it is `sleep`.
    const deadline = Date.now() + CHILD_START_TIMEOUT_MS;
    for (;;) {
      let comm = '';
      try {
        comm = readFileSync(`/proc/${this.pid}/comm`, 'utf8').trim();
      } catch {
        // Gone already: reported by the probes that use it.
      }
      if (comm === 'sleep') break;
      if (Date.now() > deadline) {
        this.kill();
        throw new Error(
          `Cannot start a probe child: pid ${this.pid} did not exec /bin/sleep in ${CHILD_START_TIMEOUT_MS} ms`,
        );
      }
      sleepMs(1);
    }
  }

  maps(): MapsEntry[] {
    const maps = readMaps(this.pid);
    if (maps === null) throw new Error(`Probe child ${this.pid} is gone`);
    return maps;
  }

  /** SIGKILL and reap. Idempotent. */
  kill(): void {
    if (this.isReaped) return;
    try {
      native.kill(this.pid, SIGKILL);
    } catch {
      // Already dead: reaping below still applies.
    }
    // A killed tracee may first report other stops; loop until the exit (bounded).
    const deadline = Date.now() + WAIT_TIMEOUT_MS;
    while (Date.now() < deadline) {
      let res: ReturnType<typeof native.waitpid>;
      try {
        res = native.waitpid(this.pid, __WALL, WAIT_TIMEOUT_MS);
      } catch (err) {
        if (isErrno(err, 'ECHILD')) break;
        throw err;
      }
      if (res !== null && !isStopped(res.status)) break;
    }
    this.isReaped = true;
  }
}

function result(id: ProbeId, title: string, isRequired: boolean, run: () => string): ProbeResult {
  try {
    return { id, title, isRequired, isOk: true, detail: run() };
  } catch (err) {
    return { id, title, isRequired, isOk: false, detail: describeError(err) };
  }
}

/** PTRACE_SEIZE a child, PTRACE_INTERRUPT it, wait for the PTRACE_EVENT_STOP, detach. */
export function probePtrace(child: ProbeChild): ProbeResult {
  return result('ptrace', 'ptrace (PTRACE_SEIZE, PTRACE_INTERRUPT)', true, () => {
    native.ptraceSeize(child.pid, 0);
    try {
      native.ptraceInterrupt(child.pid);
      const res = native.waitpid(child.pid, __WALL, WAIT_TIMEOUT_MS);
      if (res === null)
        throw new Error(`no stop from pid ${child.pid} within ${WAIT_TIMEOUT_MS} ms of PTRACE_INTERRUPT`);
      if (!isStopped(res.status) || res.status >>> 16 !== PTRACE_EVENT_STOP) {
        throw new Error(`unexpected wait status 0x${res.status.toString(16)} after PTRACE_INTERRUPT`);
      }
    } catch (err) {
      // Detaching a tracee that never stopped fails too: report the first error, not that one.
      try {
        native.ptraceDetach(child.pid, 0);
      } catch {
        // The child is killed and reaped by the caller either way.
      }
      throw err;
    }
    native.ptraceDetach(child.pid, 0);
    return 'seized, interrupted and detached a child';
  });
}

/** Read the first bytes of the child's vDSO (an ELF image) with process_vm_readv. */
export function probeProcessVmReadv(child: ProbeChild): ProbeResult {
  return result('process-vm-readv', 'process_vm_readv', true, () => {
    const area = child.maps().find((m) => m.path === '[vdso]') ?? child.maps().find((m) => m.isRead);
    if (area === undefined) throw new Error(`no readable mapping in pid ${child.pid}`);
    const buf = Buffer.alloc(4);
    const n = native.processVmReadv(child.pid, buf, 0, BigUint64Array.of(area.start, 4n));
    if (n !== 4) throw new Error(`read ${n} of 4 bytes`);
    if (area.path === '[vdso]' && !buf.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) {
      throw new Error(`the child's [vdso] does not start with an ELF header (${buf.toString('hex')})`);
    }
    return "read another process's memory";
  });
}

/** pidfd_open on this process, pidfd_getfd of one of its fds. */
export function probePidfd(): ProbeResult {
  return result('pidfd', 'pidfd_open + pidfd_getfd', true, () => {
    const fds: number[] = [];
    try {
      const pidfd = native.pidfdOpen(process.pid, 0);
      fds.push(pidfd);
      const fd = native.open('/dev/null', O_RDONLY | O_CLOEXEC, 0);
      fds.push(fd);
      fds.push(native.pidfdGetfd(pidfd, fd, 0));
    } finally {
      for (const fd of fds.reverse()) native.close(fd);
    }
    return 'duplicated an fd through a pidfd';
  });
}

/** A pid that looks free: well past the last one handed out, not in /proc. */
function freePidCandidate(): number {
  const last = Number(readFileSync('/proc/sys/kernel/ns_last_pid', 'utf8').trim());
  const max = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim());
  for (let i = 0; i < 100; i++) {
    const span = Math.max(1, Math.min(50_000, max - last - 2000));
    let pid = last + 1000 + Math.floor(Math.random() * span);
    if (pid >= max) pid = 300 + Math.floor(Math.random() * Math.max(1, Math.min(last, max) - 300));
    if (!existsSync(`/proc/${pid}`)) return pid;
  }
  throw new Error('Cannot find a free pid to try clone3 set_tid with');
}

/** clone3 with set_tid = [a free pid] of /bin/true; the child must get that pid and exit 0. */
export function probeClone3SetTid(): ProbeResult {
  return result('clone3-set-tid', 'clone3 with set_tid', true, () => {
    for (let attempt = 0; ; attempt++) {
      const wanted = freePidCandidate();
      let pid: number;
      try {
        pid = native.clone3Exec({
          flags: 0n,
          exitSignal: SIGCHLD,
          setTid: [wanted],
          path: '/bin/true',
          argv: ['true'],
          envp: [],
        });
      } catch (err) {
        // Taken between the look and the clone: try another.
        if (isErrno(err, 'EEXIST') && attempt < 5) continue;
        throw err;
      }
      const res = native.waitpid(pid, __WALL, WAIT_TIMEOUT_MS);
      if (res === null) {
        try {
          native.kill(pid, SIGKILL);
          native.waitpid(pid, __WALL, WAIT_TIMEOUT_MS);
        } catch {
          // Best effort: it was /bin/true.
        }
        throw new Error(`/bin/true (pid ${pid}) did not exit within ${WAIT_TIMEOUT_MS} ms`);
      }
      if (pid !== wanted) throw new Error(`asked for pid ${wanted}, got ${pid}`);
      if (!isExited(res.status) || exitCode(res.status) !== 0) {
        throw new Error(`/bin/true ended with wait status 0x${res.status.toString(16)}`);
      }
      return `started /bin/true as pid ${wanted}`;
    }
  });
}

/** PAGEMAP_SCAN (kernel 6.7+) of the present pages of the child's stack. */
export function probePagemapScan(child: ProbeChild): ProbeResult {
  return result('pagemap-scan', 'PAGEMAP_SCAN ioctl', false, () => {
    const stack = child.maps().find((m) => m.path === '[stack]');
    if (stack === undefined) throw new Error(`no [stack] in pid ${child.pid}`);
    const fd = native.open(`/proc/${child.pid}/pagemap`, O_RDONLY | O_CLOEXEC, 0);
    try {
      const vec = new BigUint64Array(3 * 64);
      const res = native.pagemapScan(
        fd,
        {
          start: stack.start,
          end: stack.end,
          flags: 0n,
          categoryInverted: 0n,
          categoryMask: PAGE_IS_PRESENT,
          categoryAnyofMask: 0n,
          returnMask: PAGE_IS_PRESENT,
          maxPages: 0n,
        },
        vec,
      );
      if (res.nrRegions < 1) throw new Error('no present page found in the stack');
    } finally {
      native.close(fd);
    }
    return 'scanned a pagemap';
  });
}

export interface UffdProbe extends ProbeResult {
  /** Features UFFDIO_API reports, or null when userfaultfd is unavailable. */
  features: bigint | null;
  hasWpAsync: boolean;
  hasWpUnpopulated: boolean;
}

/** userfaultfd(O_CLOEXEC|UFFD_USER_MODE_ONLY) + UFFDIO_API: which features, and WP_ASYNC granted. */
export function probeUffd(): UffdProbe {
  let features: bigint | null = null;
  const base = result('uffd-wp-async', 'userfaultfd WP_ASYNC + WP_UNPOPULATED', false, () => {
    // UFFDIO_API can be called once per fd: ask with no feature to learn them all...
    let fd = native.userfaultfd(O_CLOEXEC | UFFD_USER_MODE_ONLY);
    let offered: bigint;
    try {
      offered = native.uffdioApi(fd, 0n).features;
    } finally {
      native.close(fd);
    }
    features = offered;
    const shown = `features 0x${offered.toString(16)}`;
    if ((offered & UFFD_FEATURE_WP_ASYNC) === 0n) throw new Error(`UFFD_FEATURE_WP_ASYNC not offered (${shown})`);
    // ...then check the kernel really grants the two the uffd tracker asks for.
    const wanted = UFFD_FEATURE_WP_ASYNC | (offered & UFFD_FEATURE_WP_UNPOPULATED);
    fd = native.userfaultfd(O_CLOEXEC | UFFD_USER_MODE_ONLY);
    try {
      native.uffdioApi(fd, wanted);
    } finally {
      native.close(fd);
    }
    return (offered & UFFD_FEATURE_WP_UNPOPULATED) === 0n ? `${shown}, without WP_UNPOPULATED` : shown;
  });
  const got = features as bigint | null;
  return {
    ...base,
    features: got,
    hasWpAsync: base.isOk,
    hasWpUnpopulated: base.isOk && got !== null && (got & UFFD_FEATURE_WP_UNPOPULATED) !== 0n,
  };
}

/** Clear the child's soft-dirty bits, write one of its pages, look for pagemap bit 55. */
export function probeSoftDirty(child: ProbeChild): ProbeResult {
  return result('soft-dirty', 'soft-dirty tracking', false, () => {
    const stack = child.maps().find((m) => m.path === '[stack]');
    if (stack === undefined) throw new Error(`no [stack] in pid ${child.pid}`);
    // The top page holds argv and the environment: certainly present. Written back unchanged.
    const addr = stack.end - PAGE_SIZE;
    writeFileSync(`/proc/${child.pid}/clear_refs`, '4');
    const word = Buffer.alloc(8);
    const remote = BigUint64Array.of(addr, 8n);
    if (native.processVmReadv(child.pid, word, 0, remote) !== 8) throw new Error('cannot read the page to dirty');
    if (native.processVmWritev(child.pid, word, 0, remote) !== 8) throw new Error('cannot write the page to dirty');
    const fd = openSync(`/proc/${child.pid}/pagemap`, 'r');
    const entry = Buffer.alloc(8);
    try {
      if (readSync(fd, entry, 0, 8, Number((addr / PAGE_SIZE) * 8n)) !== 8) throw new Error('short pagemap read');
    } finally {
      closeSync(fd);
    }
    if (((entry.readBigUInt64LE(0) >> PM_SOFT_DIRTY_BIT) & 1n) !== 1n) {
      throw new Error('pagemap bit 55 stays clear after a write: CONFIG_MEM_SOFT_DIRTY is off');
    }
    return 'a written page shows pagemap bit 55';
  });
}

export interface VdsoProbe extends ProbeResult {
  layout: VdsoLayout | null;
}

/** The vDSO areas of this process (the kernel gives every process the same layout). */
export function probeVdso(): VdsoProbe {
  let layout: VdsoLayout | null = null;
  const base = result('vdso', 'vDSO layout', true, () => {
    const maps = readMaps(process.pid);
    if (maps === null) throw new Error('cannot read /proc/self/maps');
    const found = parseVdsoLayout(maps);
    layout = found;
    if (!found.areas.some((a) => a.name === '[vdso]')) throw new Error('no [vdso] mapping');
    return formatVdsoLayout(found);
  });
  return { ...base, layout };
}

export interface CapsProbe {
  required: ProbeResult;
  sysResource: ProbeResult;
  caps: Capabilities | null;
}

/** CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE, and CAP_SYS_PTRACE, are required; CAP_SYS_RESOURCE is not. */
export function probeCapabilities(): CapsProbe {
  let caps: Capabilities | null = null;
  try {
    caps = readCapabilities();
  } catch (err) {
    const detail = describeError(err);
    return {
      caps,
      required: { id: 'capabilities', title: 'capabilities', isRequired: true, isOk: false, detail },
      sysResource: { id: 'cap-sys-resource', title: 'CAP_SYS_RESOURCE', isRequired: false, isOk: false, detail },
    };
  }
  const have: string[] = [];
  if (caps.hasCheckpointRestore) have.push('CAP_CHECKPOINT_RESTORE');
  if (caps.hasSysAdmin) have.push('CAP_SYS_ADMIN');
  if (caps.hasSysPtrace) have.push('CAP_SYS_PTRACE');
  const missing: string[] = [];
  if (!caps.hasSysAdmin && !caps.hasCheckpointRestore) missing.push('CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE');
  if (!caps.hasSysPtrace) missing.push('CAP_SYS_PTRACE');
  return {
    caps,
    required: {
      id: 'capabilities',
      title: 'capabilities',
      isRequired: true,
      isOk: missing.length === 0,
      detail: missing.length === 0 ? have.join(', ') : `missing ${missing.join(', ')}`,
    },
    sysResource: {
      id: 'cap-sys-resource',
      title: 'CAP_SYS_RESOURCE',
      isRequired: false,
      isOk: caps.hasSysResource,
      detail: caps.hasSysResource
        ? 'can raise hard rlimits and PR_SET_MM fields'
        : 'absent: hard rlimits cannot be raised; restore uses PR_SET_MM_MAP instead',
    },
  };
}

/** A TCP socket in repair mode (what --tcp-established needs). */
export function probeTcpRepair(): ProbeResult {
  return result('tcp-repair', 'TCP_REPAIR', false, () => {
    const fd = native.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    try {
      const one = Buffer.alloc(4);
      one.writeInt32LE(1, 0);
      native.setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, one);
    } finally {
      native.close(fd);
    }
    return 'a TCP socket entered repair mode';
  });
}

/** Namespace kinds in /proc/self/ns; the first six are needed to dump a task's namespace ids. */
export const NS_REQUIRED = ['uts', 'ipc', 'pid', 'net', 'mnt', 'user'] as const;
export const NS_OPTIONAL = ['time', 'cgroup'] as const;

export interface NamespacesProbe extends ProbeResult {
  present: readonly string[];
}

export function probeNamespaces(): NamespacesProbe {
  const present = [...NS_REQUIRED, ...NS_OPTIONAL].filter((ns) => existsSync(`/proc/self/ns/${ns}`));
  const missing = NS_REQUIRED.filter((ns) => !present.includes(ns));
  const missingOptional = NS_OPTIONAL.filter((ns) => !present.includes(ns));
  const extra = missingOptional.length > 0 ? ` (no ${missingOptional.join(' ')})` : '';
  return {
    id: 'namespaces',
    title: 'namespaces',
    isRequired: true,
    isOk: missing.length === 0,
    detail: missing.length === 0 ? `${present.join(' ')}${extra}` : `missing ${missing.join(' ')}`,
    present,
  };
}
