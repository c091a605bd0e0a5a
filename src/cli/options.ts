/**
 * The options object every command of `criu` receives: the command line of criu(8), mapped to
 * camelCase, validated and given its defaults. The CLI only builds this object and hands it to the
 * library; nothing here touches the kernel.
 *
 * `toOptions` takes the raw values commander collected (given before and after the command,
 * merged) and throws UsageError for anything malformed, naming the option.
 */

import type { ActionHook } from '../actions.js';
import { UsageError } from '../errors.js';
import { TRACKER_CHOICES, type TrackerChoice } from '../kerndat/tracker.js';
import { DEFAULT_LOG_LEVEL, parseLogLevel, type LogLevel } from '../log.js';

/**
 * Every command of criu(8), as typed (cpuinfo's two are written with a space), and `swrk`, which
 * the manual leaves out but every RPC client library starts.
 */
export const COMMAND_NAMES = [
  'pre-dump',
  'dump',
  'restore',
  'show',
  'check',
  'page-server',
  'exec',
  'service',
  'swrk',
  'dedup',
  'cpuinfo dump',
  'cpuinfo check',
] as const;
export type CommandName = (typeof COMMAND_NAMES)[number];

/** Namespace kinds -n accepts. criu(8) lists uts, ipc, mnt, pid, net; the kernel has three more. */
export const NAMESPACE_KINDS = ['uts', 'ipc', 'mnt', 'pid', 'net', 'user', 'cgroup', 'time'] as const;
export type NamespaceKind = (typeof NAMESPACE_KINDS)[number];

/** --cpu-cap modes; each may be inverted with a leading '^'. */
export const CPU_CAP_MODES = ['all', 'cpu', 'fpu', 'ins', 'none'] as const;

export interface VethPair {
  /** The device name inside the container (IN). */
  inside: string;
  /** The device name on the host (OUT). */
  outside: string;
}

export interface ExtMount {
  key: string;
  value: string;
}

export interface CgroupRoot {
  /** The controller; absent means every controller not named elsewhere. */
  controller?: string;
  path: string;
}

export interface InheritFd {
  /** The fd number in the restored task. */
  fd: number;
  /** The "existing" resource the fd stands for, as it appears in the images. */
  key: string;
}

export interface Options {
  command: CommandName;
  /** Operands after the command: `show [FILE]`, `exec SYSCALL ARG...`. */
  operands: readonly string[];

  // Where things are.
  /** -D: the images directory (default "."). */
  imagesDir: string;
  /** --prev-images-dir: the parent images, relative to imagesDir as in CRIU. */
  prevImagesDir?: string;
  /** -W: logs, pidfiles and statistics (default imagesDir). */
  workDir: string;
  /** -r: the root filesystem of the restored tree. */
  root?: string;
  /** -L: plugins directory. */
  libdir?: string;
  /** --pidfile: where to write the root task's, service's or page server's pid. */
  pidfile?: string;
  /** --status-fd: page-server writes one NUL byte there and closes it once it listens (as CRIU). */
  statusFd?: number;

  // What to dump and how to leave it.
  /** -t: the root pid of the tree. */
  tree?: number;
  leaveStopped: boolean;
  leaveRunning: boolean;
  namespaces: readonly NamespaceKind[];
  extUnixSk: boolean;
  tcpEstablished: boolean;
  tcpClose: boolean;
  skipInFlight: boolean;
  shellJob: boolean;
  fileLocks: boolean;
  linkRemap: boolean;
  evasiveDevices: boolean;
  forceIrmap: boolean;
  manageCgroups: boolean;
  cgroupRoots: readonly CgroupRoot[];
  extMountMaps: readonly ExtMount[];
  /** `-M auto`. */
  isExtMountMapAuto: boolean;
  enableExternalSharing: boolean;
  enableExternalMasters: boolean;
  vethPairs: readonly VethPair[];
  inheritFds: readonly InheritFd[];
  actionScripts: readonly string[];
  /** --close: fds criu closes before anything else. */
  closeFds: readonly number[];
  /** --cpu-cap: the modes, default ["fpu"]; bare --cpu-cap is ["all"]. */
  cpuCap: readonly string[];

  // Restore.
  restoreDetached: boolean;
  restoreSibling: boolean;
  autoDedup: boolean;

  // Memory tracking and page server.
  trackMem: boolean;
  tracker: TrackerChoice;
  /** --page-server: dump sends pages to a page server at address:port. */
  pageServer: boolean;
  address?: string;
  port?: number;
  /**
   * --ps-socket (RPC's ps.fd): a stream socket connected already. dump and pre-dump with
   * --page-server send the pages through it instead of connecting to address:port; page-server
   * serves the client at its other end instead of listening. Closed after, as in CRIU.
   */
  psSocket?: number;
  /**
   * RPC's pidfd_store_sk (no command-line flag, as in CRIU): the client's datagram socket that
   * keeps pidfds between pre-dump iterations (src/dump/pidfd-store.ts).
   */
  pidfdStore?: { clientPid: number; fd: number };
  /** -d for page-server: run in the background. */
  daemon: boolean;
  /** Pre-shared token of the page server (--token or the first line of --token-file). */
  token?: string;
  tokenFile?: string;
  /** --tls: the page-server connection inside TLS, as CRIU's (src/pageserver/tls.ts). */
  tls: boolean;
  tlsCacert?: string;
  tlsCacrl?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsNoCnVerify: boolean;

  // show and check.
  /** -f: the image file to show. */
  file?: string;
  /** -c: show page contents in hex. */
  showPagesHex: boolean;
  /** check --all: also report optional features. */
  all: boolean;
  /** check --ms: skip features not merged upstream (accepted; criu-ts checks none such). */
  ms: boolean;
  /** check --feature NAME: only that feature (`list`: their names). */
  feature?: string;

  // Logging.
  /** -o as given ("-" for stderr); the resolved path is in the logger. */
  logFile?: string;
  logLevel: LogLevel;
  logPid: boolean;

  /**
   * Not a command-line option: who is told at each action point instead of the --action-script
   * programs (the RPC worker sets it for a client's notify_scripts).
   */
  onAction?: ActionHook;
}

/**
 * The raw values commander collected, merged from before and after the command. Only keys the
 * user gave are present (no commander defaults), so merging never hides a value.
 */
export type RawOptions = Record<string, unknown>;

function str(raw: RawOptions, key: string): string | undefined {
  const v = raw[key];
  return typeof v === 'string' ? v : undefined;
}

function bool(raw: RawOptions, key: string): boolean {
  return raw[key] === true;
}

function list(raw: RawOptions, key: string): string[] {
  const v = raw[key];
  if (v === undefined) return [];
  return Array.isArray(v) ? v.map(String) : [String(v)];
}

function int(flag: string, value: string, min: number, max: number): number {
  if (!/^\d+$/.test(value)) throw new UsageError(`Invalid value for ${flag}: "${value}" is not a number`);
  const n = Number(value);
  if (n < min || n > max) throw new UsageError(`Invalid value for ${flag}: ${n} is out of range ${min}..${max}`);
  return n;
}

function parseVethPair(value: string): VethPair {
  const eq = value.indexOf('=');
  if (eq <= 0 || eq === value.length - 1)
    throw new UsageError(`Invalid value for --veth-pair: "${value}" is not IN=OUT`);
  return { inside: value.slice(0, eq), outside: value.slice(eq + 1) };
}

function parseExtMount(value: string): ExtMount {
  const colon = value.indexOf(':');
  if (colon <= 0 || colon === value.length - 1) {
    throw new UsageError(`Invalid value for --ext-mount-map: "${value}" is not KEY:VAL or auto`);
  }
  return { key: value.slice(0, colon), value: value.slice(colon + 1) };
}

function parseCgroupRoot(value: string): CgroupRoot {
  const colon = value.indexOf(':');
  if (colon < 0) {
    if (!value.startsWith('/'))
      throw new UsageError(`Invalid value for --cgroup-root: "${value}" is not [controller:]/newroot`);
    return { path: value };
  }
  const path = value.slice(colon + 1);
  if (colon === 0 || !path.startsWith('/')) {
    throw new UsageError(`Invalid value for --cgroup-root: "${value}" is not [controller:]/newroot`);
  }
  return { controller: value.slice(0, colon), path };
}

function parseInheritFd(value: string): InheritFd {
  const m = /^fd\[(\d+)\]:(.+)$/.exec(value);
  if (m === null) throw new UsageError(`Invalid value for --inherit-fd: "${value}" is not fd[NUM]:existing`);
  return { fd: int('--inherit-fd', m[1] as string, 0, 0x7fffffff), key: m[2] as string };
}

function parseNamespaces(values: string[]): NamespaceKind[] {
  const out: NamespaceKind[] = [];
  for (const part of values.flatMap((v) => v.split(','))) {
    if (part === '') continue;
    if (!(NAMESPACE_KINDS as readonly string[]).includes(part)) {
      throw new UsageError(
        `Invalid value for --namespaces: unknown namespace "${part}" (known: ${NAMESPACE_KINDS.join(', ')})`,
      );
    }
    if (!out.includes(part as NamespaceKind)) out.push(part as NamespaceKind);
  }
  return out;
}

function parseCpuCap(raw: unknown): string[] {
  if (raw === undefined) return ['fpu'];
  const parts = (Array.isArray(raw) ? raw : [raw]).flatMap((v) => (v === true ? ['all'] : String(v).split(',')));
  const out: string[] = [];
  for (const part of parts) {
    if (part === '') continue;
    const mode = part.startsWith('^') ? part.slice(1) : part;
    if (!(CPU_CAP_MODES as readonly string[]).includes(mode)) {
      throw new UsageError(`Invalid value for --cpu-cap: unknown mode "${part}" (known: ${CPU_CAP_MODES.join(', ')})`);
    }
    out.push(part);
  }
  return out.length > 0 ? out : ['all'];
}

function parseLevel(raw: unknown): LogLevel {
  if (raw === undefined) return DEFAULT_LOG_LEVEL;
  const last = Array.isArray(raw) ? raw[raw.length - 1] : raw;
  const level = parseLogLevel(String(last));
  if (level === null) throw new UsageError(`Invalid value for -v: "${String(last)}" is not a level 0..4`);
  return level;
}

/** Build the Options of `command` from merged raw option values and the operands. */
export function toOptions(command: CommandName, raw: RawOptions, operands: readonly string[] = []): Options {
  const imagesDir = str(raw, 'imagesDir') ?? '.';
  // CRIU's splice mode vmsplices the pages while the task is frozen; criu-ts always reads them
  // (from /proc/PID/mem), the task running (CRIU's read mode). Both words are taken.
  const preDumpMode = str(raw, 'preDumpMode');
  if (preDumpMode !== undefined && preDumpMode !== 'splice' && preDumpMode !== 'read')
    throw new UsageError(`Invalid value for --pre-dump-mode: "${preDumpMode}" (known: splice, read)`);
  const tracker = str(raw, 'tracker') ?? 'auto';
  if (!(TRACKER_CHOICES as readonly string[]).includes(tracker)) {
    throw new UsageError(`Invalid value for --tracker: "${tracker}" (known: ${TRACKER_CHOICES.join(', ')})`);
  }
  const mounts = list(raw, 'extMountMap');
  const detached = bool(raw, 'restoreDetached') || bool(raw, 'daemon');

  const opts: Options = {
    command,
    operands: [...operands],
    imagesDir,
    workDir: str(raw, 'workDir') ?? imagesDir,
    leaveStopped: bool(raw, 'leaveStopped'),
    leaveRunning: bool(raw, 'leaveRunning'),
    namespaces: parseNamespaces(list(raw, 'namespaces')),
    extUnixSk: bool(raw, 'extUnixSk'),
    tcpEstablished: bool(raw, 'tcpEstablished'),
    tcpClose: bool(raw, 'tcpClose'),
    skipInFlight: bool(raw, 'skipInFlight'),
    shellJob: bool(raw, 'shellJob'),
    fileLocks: bool(raw, 'fileLocks'),
    linkRemap: bool(raw, 'linkRemap'),
    evasiveDevices: bool(raw, 'evasiveDevices'),
    forceIrmap: bool(raw, 'forceIrmap'),
    manageCgroups: bool(raw, 'manageCgroups'),
    cgroupRoots: list(raw, 'cgroupRoot').map(parseCgroupRoot),
    extMountMaps: mounts.filter((m) => m !== 'auto').map(parseExtMount),
    isExtMountMapAuto: mounts.includes('auto'),
    enableExternalSharing: bool(raw, 'enableExternalSharing'),
    enableExternalMasters: bool(raw, 'enableExternalMasters'),
    vethPairs: list(raw, 'vethPair').map(parseVethPair),
    inheritFds: list(raw, 'inheritFd').map(parseInheritFd),
    actionScripts: list(raw, 'actionScript'),
    closeFds: list(raw, 'close').map((v) => int('--close', v, 0, 0x7fffffff)),
    cpuCap: parseCpuCap(raw['cpuCap']),
    restoreDetached: detached,
    restoreSibling: bool(raw, 'restoreSibling'),
    autoDedup: bool(raw, 'autoDedup'),
    trackMem: bool(raw, 'trackMem'),
    tracker: tracker as TrackerChoice,
    pageServer: bool(raw, 'pageServer'),
    tls: bool(raw, 'tls'),
    tlsNoCnVerify: bool(raw, 'tlsNoCnVerify'),
    daemon: detached,
    showPagesHex: bool(raw, 'c'),
    all: bool(raw, 'all'),
    ms: bool(raw, 'ms'),
    logLevel: parseLevel(raw['verbosity']),
    logPid: bool(raw, 'logPid'),
  };

  const optional: [keyof Options, string | undefined][] = [
    ['prevImagesDir', str(raw, 'prevImagesDir')],
    ['root', str(raw, 'root')],
    ['libdir', str(raw, 'libdir')],
    ['pidfile', str(raw, 'pidfile')],
    ['address', str(raw, 'address')],
    ['token', str(raw, 'token')],
    ['tokenFile', str(raw, 'tokenFile')],
    ['tlsCacert', str(raw, 'tlsCacert')],
    ['tlsCacrl', str(raw, 'tlsCacrl')],
    ['tlsCert', str(raw, 'tlsCert')],
    ['tlsKey', str(raw, 'tlsKey')],
    ['file', str(raw, 'file')],
    ['feature', str(raw, 'feature')],
    ['logFile', str(raw, 'logFile')],
  ];
  const target = opts as unknown as Record<string, unknown>;
  for (const [key, value] of optional) if (value !== undefined) target[key] = value;

  const storeFd = str(raw, 'pidfdStoreSk');
  const storeClient = str(raw, 'pidfdStoreClient');
  if (storeFd !== undefined && storeClient !== undefined)
    opts.pidfdStore = {
      fd: int('pidfd_store_sk', storeFd, 0, 0x7fffffff),
      clientPid: int('the RPC client pid', storeClient, 1, 0x3fffffff),
    };
  const statusFd = str(raw, 'statusFd');
  if (statusFd !== undefined) opts.statusFd = int('--status-fd', statusFd, 0, 0x7fffffff);
  const tree = str(raw, 'tree');
  if (tree !== undefined) opts.tree = int('-t/--tree', tree, 1, 0x3fffffff);
  const port = str(raw, 'port');
  if (port !== undefined) opts.port = int('--port', port, 0, 65535);
  const psSocket = str(raw, 'psSocket');
  if (psSocket !== undefined) opts.psSocket = int('--ps-socket (ps.fd)', psSocket, 0, 0x7fffffff);

  if (opts.token !== undefined && opts.tokenFile !== undefined) {
    throw new UsageError('Options --token and --token-file exclude each other');
  }
  if (opts.leaveStopped && opts.leaveRunning) {
    throw new UsageError('Options -s/--leave-stopped and -R/--leave-running exclude each other');
  }
  checkRequired(opts);
  return opts;
}

/** What each command cannot run without, as CRIU refuses it before doing anything. */
function checkRequired(opts: Options): void {
  switch (opts.command) {
    case 'dump':
    case 'pre-dump':
      if (opts.tree === undefined) throw new UsageError(`${opts.command} needs the tree's root pid: -t/--tree PID`);
      break;
    case 'exec':
      if (opts.tree === undefined) throw new UsageError('exec needs the target task: -t/--tree PID');
      if (opts.operands.length === 0)
        throw new UsageError('exec needs a system call: criu exec -t PID SYSCALL [ARG...]');
      break;
    case 'show':
      if (opts.operands.length > 1) throw new UsageError('show takes at most one image file');
      break;
    default:
      break;
  }
}
