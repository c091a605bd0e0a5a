/**
 * criu_opts (an RPC request's options) to the Options the command line builds, so that a request
 * runs exactly what the same `criu` command line would. Paths come as the client's fds
 * (images_dir_fd, work_dir_fd): they are read through /proc/<client pid>/fd/<n> (the client from
 * SO_PEERCRED), as CRIU does, and resolved to the directories they name, so that relative paths
 * (parent_img "../1") work.
 *
 * An option criu-ts does not handle is refused by name when it asks for anything but its default,
 * never dropped silently. notify_scripts is the worker's to honour (it talks to the client).
 * CRIU-compatible details: the log goes to the work directory, named log_file (no "/" allowed) or
 * criu.log; log_level defaults to 2; a dump without pid dumps the client itself; cpu_cap is CRIU's
 * bit mask (1 fpu, 2 cpu, 4 ins, all ones = all).
 */

import { realpathSync } from 'node:fs';
import { UsageError } from '../errors.js';
import { toOptions, type CommandName, type Options, type RawOptions } from '../cli/options.js';
import type { CriuOpts } from './messages.js';

/** CRIU's default log file name for RPC requests. */
export const RPC_LOG_FILE = 'criu.log';

/** The criu_opts fields mapped below. */
const HANDLED = new Set([
  'images_dir_fd',
  'work_dir_fd',
  'pid',
  'leave_running',
  'leave_stopped',
  'ext_unix_sk',
  'tcp_established',
  'tcp_close',
  'tcp_skip_in_flight',
  'evasive_devices',
  'shell_job',
  'file_locks',
  'log_level',
  'log_file',
  'log_to_stderr',
  'ps',
  'root',
  'parent_img',
  'track_mem',
  'auto_dedup',
  'link_remap',
  'veths',
  'cpu_cap',
  'force_irmap',
  'ext_mnt',
  'manage_cgroups',
  'cg_root',
  'rst_sibling',
  'inherit_fd',
  'auto_ext_mnt',
  'ext_sharing',
  'ext_masters',
  'notify_scripts',
  'tls',
  'tls_cacert',
  'tls_cacrl',
  'tls_cert',
  'tls_key',
  'tls_no_cn_verify',
  'pidfd_store_sk',
]);

/**
 * Fields accepted at a value that changes nothing here: CRIU's defaults, and choices between ways
 * of doing what criu-ts does its own way (pre_dump_mode: pages are always read, from
 * /proc/PID/mem; network_lock: criu-ts's lock is always nftables'; display_stats: the stats are in
 * stats-dump either way).
 */
const HARMLESS: Record<string, (v: unknown) => boolean> = {
  ghost_limit: (v) => v === 1 << 20,
  pre_dump_mode: () => true,
  network_lock: () => true,
  display_stats: () => true,
};

/** Whether a value is its type's empty one (false, empty string or list). */
function isEmpty(v: unknown): boolean {
  return v === false || v === '' || (Array.isArray(v) && v.length === 0);
}

/** CRIU's cpu_cap bits. */
const CPU_CAP_BITS: [number, string][] = [
  [1, 'fpu'],
  [2, 'cpu'],
  [4, 'ins'],
];

function cpuCapModes(mask: number): string[] {
  if (mask >>> 0 === 0xffffffff) return ['all'];
  const modes = CPU_CAP_BITS.filter(([bit]) => (mask & bit) !== 0).map(([, name]) => name);
  return modes.length > 0 ? modes : ['none'];
}

/** The directory the client's fd `fd` names, through /proc (the client must keep it open). */
function clientDir(peerPid: number, fd: number, what: string): string {
  const link = `/proc/${peerPid}/fd/${fd}`;
  try {
    return realpathSync(link);
  } catch (err) {
    throw new UsageError(`Cannot open the client's ${what} (fd ${fd}, ${link}): ${(err as Error).message}`);
  }
}

export interface RpcContext {
  /** The client's pid (SO_PEERCRED). */
  peerPid: number;
  /** `criu swrk` started by the client (true), or a connection to `criu service` (false). */
  isSwrk: boolean;
}

/**
 * The Options of `command` for a request's criu_opts. Throws UsageError naming the field for
 * anything refused (CRIU answers those with EBADRQC).
 */
export function optionsFromRequest(command: CommandName, o: CriuOpts | undefined, ctx: RpcContext): Options {
  const opts = o ?? {};
  for (const [name, value] of Object.entries(opts)) {
    if (HANDLED.has(name) || isEmpty(value)) continue;
    const isHarmless = HARMLESS[name];
    if (isHarmless?.(value) === true) continue;
    throw new UsageError(`RPC option ${name} is not supported by criu-ts`);
  }
  const raw: RawOptions = {};
  const flag = (field: string, key: string): void => {
    if (opts[field] === true) raw[key] = true;
  };
  const needsImages = command !== 'check';
  const dirFd = opts['images_dir_fd'];
  if (typeof dirFd === 'number' && dirFd >= 0) raw['imagesDir'] = clientDir(ctx.peerPid, dirFd, 'images directory');
  else if (needsImages) throw new UsageError('The RPC request has no images directory (images_dir_fd)');
  const workFd = opts['work_dir_fd'];
  if (typeof workFd === 'number') raw['workDir'] = clientDir(ctx.peerPid, workFd, 'work directory');

  if (command === 'dump' || command === 'pre-dump')
    raw['tree'] = String(typeof opts['pid'] === 'number' ? opts['pid'] : ctx.peerPid);
  flag('leave_running', 'leaveRunning');
  flag('leave_stopped', 'leaveStopped');
  flag('ext_unix_sk', 'extUnixSk');
  flag('tcp_established', 'tcpEstablished');
  flag('tcp_close', 'tcpClose');
  flag('tcp_skip_in_flight', 'skipInFlight');
  flag('evasive_devices', 'evasiveDevices');
  flag('shell_job', 'shellJob');
  flag('file_locks', 'fileLocks');
  flag('track_mem', 'trackMem');
  flag('auto_dedup', 'autoDedup');
  flag('link_remap', 'linkRemap');
  flag('force_irmap', 'forceIrmap');
  flag('manage_cgroups', 'manageCgroups');
  flag('ext_sharing', 'enableExternalSharing');
  flag('ext_masters', 'enableExternalMasters');
  const storeSk = opts['pidfd_store_sk'];
  if (typeof storeSk === 'number' && (command === 'dump' || command === 'pre-dump')) {
    raw['pidfdStoreSk'] = String(storeSk);
    raw['pidfdStoreClient'] = String(ctx.peerPid);
  }
  flag('tls', 'tls');
  flag('tls_no_cn_verify', 'tlsNoCnVerify');
  for (const [field, key] of [
    ['tls_cacert', 'tlsCacert'],
    ['tls_cacrl', 'tlsCacrl'],
    ['tls_cert', 'tlsCert'],
    ['tls_key', 'tlsKey'],
  ] as const)
    if (typeof opts[field] === 'string' && opts[field] !== '') raw[key] = opts[field];

  const level = typeof opts['log_level'] === 'number' ? opts['log_level'] : 2;
  raw['verbosity'] = String(Math.max(0, Math.min(4, level)));
  const logFile = opts['log_file'];
  if (typeof logFile === 'string' && logFile !== '') {
    if (logFile.includes('/')) throw new UsageError('RPC option log_file: no subdirectories are allowed in its name');
    raw['logFile'] = logFile;
  } else raw['logFile'] = opts['log_to_stderr'] === true ? '-' : RPC_LOG_FILE;

  if (typeof opts['root'] === 'string' && opts['root'] !== '') raw['root'] = opts['root'];
  if (typeof opts['parent_img'] === 'string' && opts['parent_img'] !== '') raw['prevImagesDir'] = opts['parent_img'];

  const ps = opts['ps'] as { address?: string; port?: number; fd?: number } | undefined;
  if (ps !== undefined) {
    if (ps.fd !== undefined) {
      // As in CRIU: an fd number means something only to a criu that inherited the client's fds.
      if (!ctx.isSwrk) throw new UsageError('RPC option ps.fd is not allowed by a standalone service');
      raw['psSocket'] = String(ps.fd);
    }
    if (command === 'dump' || command === 'pre-dump') raw['pageServer'] = true;
    if (ps.address !== undefined && ps.address !== '') raw['address'] = ps.address;
    if (ps.port !== undefined) raw['port'] = String(ps.port);
  }

  const veths = (opts['veths'] as { if_in: string; if_out: string }[] | undefined) ?? [];
  if (veths.length > 0) raw['vethPair'] = veths.map((v) => `${v.if_in}=${v.if_out}`);
  const mounts = ((opts['ext_mnt'] as { key: string; val: string }[] | undefined) ?? []).map(
    (m) => `${m.key}:${m.val}`,
  );
  if (opts['auto_ext_mnt'] === true) mounts.push('auto');
  if (mounts.length > 0) raw['extMountMap'] = mounts;
  const roots = (opts['cg_root'] as { ctrl?: string; path: string }[] | undefined) ?? [];
  if (roots.length > 0) raw['cgroupRoot'] = roots.map((r) => (r.ctrl === undefined ? r.path : `${r.ctrl}:${r.path}`));
  if (typeof opts['cpu_cap'] === 'number') raw['cpuCap'] = cpuCapModes(opts['cpu_cap']);

  const inherit = (opts['inherit_fd'] as { key: string; fd: number }[] | undefined) ?? [];
  if (opts['rst_sibling'] === true || inherit.length > 0) {
    // As in CRIU: only a criu the client started itself can hand the client's fds on or make the
    // restored task the client's child.
    if (!ctx.isSwrk)
      throw new UsageError('RPC options rst_sibling and inherit_fd are not allowed by a standalone service');
    if (opts['rst_sibling'] === true) raw['restoreSibling'] = true;
    if (inherit.length > 0) raw['inheritFd'] = inherit.map((i) => `fd[${i.fd}]:${i.key}`);
  }
  if (command === 'restore') raw['restoreDetached'] = true; // as CRIU: the service never waits
  return toOptions(command, raw);
}
