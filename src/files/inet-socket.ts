/**
 * TCP and UDP sockets, IPv4 and IPv6 (fd kind INETSK): file_entry { type: INETSK, id, isk:
 * inet_sk_entry { id, ino, family, type, proto, state, src_port, dst_port, flags, backlog,
 * src_addr, dst_addr, fown, opts: sk_opts_entry, v6only, ip_opts } }, as CRIU writes it.
 *
 * What can be dumped: a TCP socket that listens (its accept queue empty: a connection waiting
 * there would be lost), or that is bound or new and not connected; with --tcp-established, an
 * established connection too (tcp-stream.ts: repair mode, under the network lock of
 * net-lock.ts); a UDP socket, bound or not, connected or not (datagrams waiting in its receive
 * queue are lost, as in CRIU). Other TCP states and protocols are refused.
 *
 * Dump reads everything from criu's own duplicate of the fd (pidfd_getfd), no injection:
 * SO_DOMAIN, SO_TYPE, SO_PROTOCOL, getsockname and getpeername; TCP_INFO for a TCP socket's state,
 * and for a listener its backlog (tcpi_sacked) and the connections waiting to be accepted
 * (tcpi_unacked); the socket options of sk_opts_entry; IPV6_V6ONLY; IP_FREEBIND. Addresses are
 * stored as CRIU does: the address bytes in network order, read as little-endian u32 words (one
 * for IPv4, four for IPv6).
 *
 * Restore, injected into the task: socket(), IPV6_V6ONLY, SO_REUSEADDR on while binding (as CRIU:
 * connections of the dumped socket may linger in TIME_WAIT on the port), SO_REUSEPORT,
 * SO_BINDTODEVICE and IP_FREEBIND before bind(), then listen(backlog) or, for UDP, connect(), then
 * the other options, SO_REUSEADDR as dumped, status flags and owner. Buffer sizes are set only when
 * the program had set them (SO_BUF_LOCK), so that autotuning stays on otherwise. A connection is
 * put in repair mode before bind (so its port may be the listener's) and connected there, which
 * sends nothing. It leaves repair mode once the whole tree is restored (finishTcpRepairs), and the
 * restore lifts the network lock after that (endRestoreLocks).
 */

import { join } from 'node:path';
import type { Injector } from '../inject/injector.js';
import { ImageError, UnsupportedError } from '../errors.js';
import { imageFileName, ipBytes, ipText, ipWords, readImage, type ImageEntry } from '../images/index.js';
import {
  AF_INET,
  AF_INET6,
  IPPROTO_TCP,
  SOCK_DGRAM,
  SOCK_STREAM,
  SOL_SOCKET,
  SO_REUSEADDR,
  SO_TYPE,
  SO_REUSEPORT,
  SO_BINDTODEVICE,
  SO_PROTOCOL,
  SO_DOMAIN,
  SOL_IP,
  IP_FREEBIND,
  SOL_IPV6,
  IPV6_V6ONLY,
  IPV6_FREEBIND,
  IPPROTO_UDP,
  TCP_INFO,
  TCP_ESTABLISHED,
  TCP_CLOSE,
  TCP_LISTEN,
} from '../kernel/constants.js';
import * as sys from '../sys/native.js';
import { descriptionFlags, setStatusFlagsInTask } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import {
  callInTask,
  intOpt,
  socketEntryOf,
  socketFilterOf,
  isOtherNetns,
  readSkOpts,
  restoreSkOpts,
  setSockOptInTask,
} from './sk-opts.js';
import { imageSinkOf } from './image-sink.js';
import {
  lockConnections,
  lockTables,
  unlock,
  unlockTables,
  type LockedConnection,
  type LockId,
  type LockOwner,
} from './net-lock.js';
import {
  dumpTcpStream,
  endTcpRepair,
  endTcpRepairInTask,
  restoreTcpStreamAfter,
  restoreTcpStreamBefore,
  STREAM_STATES,
} from './tcp-stream.js';
import type { SegmentEnds } from './tcp-peer-segment.js';
import { FD_TYPES, type FdKindModule, type FileOptions } from './types.js';
import { log } from '../log.js';
import { sharedEntry } from './shared.js';

const TCP_STATE_NAMES = [
  '',
  'ESTABLISHED',
  'SYN_SENT',
  'SYN_RECV',
  'FIN_WAIT1',
  'FIN_WAIT2',
  'TIME_WAIT',
  'CLOSE',
  'CLOSE_WAIT',
  'LAST_ACK',
  'LISTEN',
  'CLOSING',
  'NEW_SYN_RECV',
];

/** What the dump learns of a socket before deciding whether it can be dumped. */
interface InetSocket {
  family: number;
  type: number;
  proto: number;
  state: number;
  /** A listener's backlog and the connections waiting in its accept queue. */
  backlog: number;
  nrWaiting: number;
  src: sys.SockAddr;
  dst: sys.SockAddr | null;
  /** The filter attached, in words for a refusal (sk-opts.ts socketFilterOf); undefined: none. */
  filter: string | undefined;
  /** A socket of another network namespace than criu's (sk-opts.ts isOtherNetns). */
  isOtherNetns: boolean;
}

/** The inet socket behind criu's duplicate `fd`, or null for a socket of another family. */
function readInetSocket(fd: number): InetSocket | null {
  const family = intOpt(fd, SOL_SOCKET, SO_DOMAIN);
  if (family !== AF_INET && family !== AF_INET6) return null;
  const type = intOpt(fd, SOL_SOCKET, SO_TYPE);
  const proto = intOpt(fd, SOL_SOCKET, SO_PROTOCOL);
  const src = sys.getsockname(fd);
  let dst: sys.SockAddr | null = null;
  try {
    dst = sys.getpeername(fd);
  } catch {
    // ENOTCONN: not connected
  }
  let state = dst === null ? TCP_CLOSE : TCP_ESTABLISHED;
  let backlog = 0;
  let nrWaiting = 0;
  if (proto === IPPROTO_TCP) {
    const info = sys.getsockopt(fd, IPPROTO_TCP, TCP_INFO, 32);
    state = info.readUInt8(0);
    if (state === TCP_LISTEN) {
      nrWaiting = info.readUInt32LE(24); // tcpi_unacked: sk_ack_backlog
      backlog = info.readUInt32LE(28); // tcpi_sacked: sk_max_ack_backlog
    }
  }
  return {
    family,
    type,
    proto,
    state,
    backlog,
    nrWaiting,
    src,
    dst,
    filter: socketFilterOf(fd),
    isOtherNetns: isOtherNetns(fd),
  };
}

function endpoint(a: sys.SockAddr): string {
  return a.family === 6 ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

function kindName(s: InetSocket): string {
  const proto = s.proto === IPPROTO_TCP ? 'TCP' : s.proto === IPPROTO_UDP ? 'UDP' : `protocol ${s.proto}`;
  return `${proto}${s.family === AF_INET6 ? '/IPv6' : ''} socket`;
}

/** Why this socket cannot be dumped, or undefined. */
function refusalOf(pid: number, fd: number, s: InetSocket, options: FileOptions): string | undefined {
  const what = `fd ${fd} of task ${pid}: the ${kindName(s)} ${endpoint(s.src)}`;
  const isTcp = s.type === SOCK_STREAM && s.proto === IPPROTO_TCP;
  const isUdp = s.type === SOCK_DGRAM && s.proto === IPPROTO_UDP;
  if (!isTcp && !isUdp) return `Cannot dump ${what}: only TCP and UDP sockets are supported`;
  if (s.isOtherNetns) return `Cannot dump ${what}: a socket of another network namespace`;
  if (isTcp && s.state === TCP_LISTEN && s.nrWaiting > 0 && options.isSkipInFlight !== true)
    return (
      `Cannot dump ${what}: ${s.nrWaiting} connection(s) wait in its accept queue and would be lost ` +
      '(dump again once they are accepted, or leave them out with --skip-in-flight)'
    );
  const isConnection = isTcp && s.state !== TCP_LISTEN && s.state !== TCP_CLOSE;
  if (
    isConnection &&
    options.isTcpClose !== true &&
    !(STREAM_STATES.has(s.state) && options.isTcpEstablished === true)
  ) {
    const peer = s.dst === null ? '' : ` -> ${endpoint(s.dst)}`;
    const state = TCP_STATE_NAMES[s.state] ?? String(s.state);
    return STREAM_STATES.has(s.state)
      ? `Cannot dump ${what}${peer}: it is connected (${state}); with --tcp-established the connection is dumped too (with --tcp-close it is restored closed)`
      : `Cannot dump ${what}${peer}: it is connected (${state}), and criu-ts restores ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT and LAST_ACK connections only (with --tcp-close it is restored closed)`;
  }
  if (s.filter !== undefined) return `Cannot dump ${what}: it has ${s.filter}, not supported`;
  return undefined;
}

/** sockaddr_in or sockaddr_in6 of CRIU's address words and a port. */
export function sockaddrOf(family: number, words: readonly number[], port: number): Buffer {
  const addr = ipBytes(words.length > 0 ? words : family === AF_INET6 ? [0, 0, 0, 0] : [0]);
  if (family === AF_INET6) {
    const sa = Buffer.alloc(28);
    sa.writeUInt16LE(AF_INET6, 0);
    sa.writeUInt16BE(port, 2);
    addr.copy(sa, 8, 0, 16);
    return sa;
  }
  const sa = Buffer.alloc(16);
  sa.writeUInt16LE(AF_INET, 0);
  sa.writeUInt16BE(port, 2);
  addr.copy(sa, 4, 0, 4);
  return sa;
}

/**
 * The ends of a connection as its packets carry them: network-order bytes; an IPv6 socket's
 * IPv4-mapped ends (a dual-stack listener's connection) as IPv4.
 */
function segmentEnds(
  family: number,
  local: readonly number[],
  localPort: number,
  remote: readonly number[],
  remotePort: number,
): SegmentEnds {
  const bytes = (w: readonly number[]): Buffer => ipBytes(w.length > 0 ? w : family === AF_INET6 ? [0, 0, 0, 0] : [0]);
  let [l, r] = [bytes(local), bytes(remote)];
  const isMapped = (b: Buffer): boolean =>
    b.length === 16 && b.readUInt32BE(8) === 0xffff && b.readBigUInt64BE(0) === 0n;
  if (isMapped(l) && isMapped(r)) [l, r] = [l.subarray(12), r.subarray(12)];
  return { local: l, localPort, remote: r, remotePort };
}

/** "127.0.0.1:80" or "[::1]:80" of CRIU's address words and a port, for messages. */
function endpointOf(family: number, words: readonly number[], port: number): string {
  const isV6 = family === AF_INET6;
  return endpoint({
    family: isV6 ? 6 : 4,
    address: ipText(words.length > 0 ? words : isV6 ? [0, 0, 0, 0] : [0]),
    port,
  });
}

/** ctx.shared key: task `pid`'s fds whose connections were put in repair mode by this dump. */
const tcpRepairsKey = (pid: number): string => `tcp-repairs:${pid}`;

/**
 * Task `pid`'s connections this dump put in repair mode (`fds`), and whose lock table they are
 * in (`lockPid`: the task as the images know it, as the restore lifts it: in a tree with a PID
 * namespace of its own, its pid there).
 */
function tcpRepairsOf(
  shared: Map<string, unknown>,
  pid: number,
  lockPid: LockId = pid,
): { fds: number[]; lockPid: LockId } {
  return sharedEntry(shared, tcpRepairsKey(pid), () => ({ fds: [] as number[], lockPid }));
}

/**
 * Undo what --tcp-established did to task `pid` when the dump fails or the task goes on running:
 * repair mode off on its connections, the network lock lifted. Failures are logged, not thrown.
 */
export function releaseTcpRepair(shared: Map<string, unknown>, pid: number): void {
  const r = shared.get(tcpRepairsKey(pid)) as { fds: number[]; lockPid: LockId } | undefined;
  if (r === undefined) return;
  shared.delete(tcpRepairsKey(pid));
  let pidfd = -1;
  try {
    pidfd = sys.pidfdOpen(pid, 0);
    for (const fd of r.fds) {
      const local = sys.pidfdGetfd(pidfd, fd, 0);
      try {
        endTcpRepair(local);
      } finally {
        sys.close(local);
      }
    }
  } catch (err) {
    log().error(`Cannot take the TCP connections of task ${pid} out of repair mode: ${String(err)}`);
  } finally {
    if (pidfd >= 0) sys.close(pidfd);
  }
  try {
    unlock(r.lockPid);
  } catch (err) {
    log().error(String(err));
  }
}

/** The connections a restore makes, by the process that has each open (to lock them in its table). */
export type ImagedConnections = Map<number, LockedConnection[]>;

/**
 * The TCP connections (ESTABLISHED and half-closed) of the images' tree, by the processes that
 * have them open (a connection two processes share is in both tables).
 */
export function imagedConnections(
  tree: readonly { pid: number; fdinfo: readonly ImageEntry[] }[],
  files: readonly ImageEntry[],
): ImagedConnections {
  const connections = new Map<number, ImageEntry>();
  for (const f of files) {
    const isk = f['isk'] as ImageEntry | undefined;
    if (isk !== undefined && Number(isk['proto']) === IPPROTO_TCP && STREAM_STATES.has(Number(isk['state'])))
      connections.set(Number(f['id']), isk);
  }
  const byPid: ImagedConnections = new Map();
  for (const t of tree) {
    for (const fd of t.fdinfo) {
      const isk = connections.get(Number(fd['id']));
      if (isk === undefined) continue;
      const words = (key: string): number[] => ((isk[key] ?? []) as number[]).map(Number);
      const list = byPid.get(t.pid) ?? [];
      list.push({
        family: Number(isk['family']) === AF_INET6 ? 6 : 4,
        local: ipText(words('src_addr')),
        localPort: Number(isk['src_port']),
        remote: ipText(words('dst_addr')),
        remotePort: Number(isk['dst_port']),
      });
      byPid.set(t.pid, list);
    }
  }
  return byPid;
}

/**
 * Lock the connections a restore is about to make, before any process of the tree exists, each in
 * the restore's own table of the process that has it open (net-lock.ts): until they are back,
 * their peers' packets are dropped instead of answered with a reset by a host that holds the
 * address but not yet the socket (the destination of a live migration, to which the address
 * moved). On a failure, what was locked is unlocked again.
 */
export function lockRestoreConnections(conns: ImagedConnections, idOf: LockIdOf = (_owner, pid) => pid): void {
  const byId = new Map([...conns].map(([pid, list]) => [idOf('restore', pid), list] as const));
  lockTables(byId, 'restore'); // one nft transaction: nothing is locked when it fails
}

/** The table of process `pid` of the images locked by `owner` (the pid itself, but in a PID namespace). */
export type LockIdOf = (owner: LockOwner, pid: number) => LockId;

/**
 * Lift the locks of `pids` once their connections are back (`isRestored`: the restore's own and
 * the dump's), or when the restore failed (only its own: a dump's lock stays for another try, as
 * in CRIU). Failures are logged.
 */
export function endRestoreLocks(
  pids: Iterable<number>,
  isRestored: boolean,
  idOf: LockIdOf = (_owner, pid) => pid,
): void {
  const list = [...pids];
  try {
    // Names differ by owner in a PID namespace: a run of unlockTables each.
    for (const owner of isRestored ? (['restore', 'dump'] as const) : (['restore'] as const))
      unlockTables(
        list.map((pid) => idOf(owner, pid)),
        [owner],
      );
  } catch (err) {
    log().error(String(err));
  }
}

/** Lift the dump's locks of those of `pids` this dump locked (the tree killed once it runs elsewhere). */
export function unlockDumpedConnections(shared: Map<string, unknown>, pids: readonly number[]): void {
  const locked: LockId[] = [];
  for (const pid of pids) {
    const r = shared.get(tcpRepairsKey(pid)) as { lockPid: LockId } | undefined;
    if (r !== undefined && shared.delete(tcpRepairsKey(pid))) locked.push(r.lockPid);
  }
  if (locked.length === 0) return;
  try {
    unlockTables(locked, ['dump']);
  } catch (err) {
    log().error(String(err));
  }
}

/** ctx.shared keys: the connections restored in repair mode, by file id, then by their final fd. */
const TCP_REPAIR_PENDING = 'tcp-repair-pending';
const TCP_REPAIR_PLACED = 'tcp-repair-placed';

/**
 * Once the whole tree is restored: the connections of the process whose files shared `shared`
 * (injector: its task) leave repair mode (tcp-stream.ts endTcpRepairInTask).
 */
export function finishTcpRepairs(injector: Injector, shared: Map<string, unknown>): void {
  const placed = shared.get(TCP_REPAIR_PLACED) as { fd: number; entry: ImageEntry }[] | undefined;
  shared.delete(TCP_REPAIR_PLACED);
  for (const { fd, entry } of placed ?? []) endTcpRepairInTask(injector, fd, entry);
}

export const inetSocketFile: FdKindModule = {
  type: FD_TYPES.INETSK,
  name: 'inet socket',
  restoreOrder: 10,

  matches(input) {
    if (!input.link.startsWith('socket:[')) return false;
    const family = intOpt(input.localFd, SOL_SOCKET, SO_DOMAIN);
    return family === AF_INET || family === AF_INET6;
  },

  refusal(input, options) {
    const s = readInetSocket(input.localFd);
    return s === null ? undefined : refusalOf(input.pid, input.fd, s, options);
  },

  prepareDump(inputs, ctx) {
    if (ctx.options?.isTcpClose === true) return;
    const conns = new Map<string, LockedConnection>();
    for (const input of inputs) {
      const s = readInetSocket(input.localFd);
      if (s === null || s.proto !== IPPROTO_TCP || !STREAM_STATES.has(s.state) || s.dst === null) continue;
      // One entry for the fds that share a connection.
      conns.set(`${endpoint(s.src)} ${endpoint(s.dst)}`, {
        family: s.family === AF_INET6 ? 6 : 4,
        local: s.src.address,
        localPort: s.src.port,
        remote: s.dst.address,
        remotePort: s.dst.port,
      });
    }
    if (conns.size === 0) return;
    // Before any connection is read (dump); lifted by releaseTcpRepair or unlockDumpedConnections.
    const lockPid = ctx.lockId?.(ctx.pid) ?? ctx.pid;
    tcpRepairsOf(ctx.shared, ctx.pid, lockPid);
    lockConnections(lockPid, [...conns.values()]);
    log().info(`Network lock: ${conns.size} TCP connection(s) of task ${ctx.pid} locked`);
  },

  async dump(input, id, ctx) {
    const s = readInetSocket(input.localFd);
    if (s === null) throw new UnsupportedError('fd-kind', `fd ${input.fd} of task ${input.pid} is no inet socket`);
    const refusal = refusalOf(input.pid, input.fd, s, ctx.options ?? {});
    if (refusal !== undefined) throw new UnsupportedError('fd-kind-inet-socket', refusal);
    if (s.state === TCP_LISTEN && s.nrWaiting > 0)
      log().warn(
        `fd ${input.fd} of task ${input.pid}: ${s.nrWaiting} connection(s) waiting in the accept queue of ` +
          `${endpoint(s.src)} are left out (--skip-in-flight): they are reset if the task is killed`,
      );
    const isk: ImageEntry = {
      id,
      ino: Number(input.stat.ino),
      family: s.family,
      type: s.type,
      proto: s.proto,
      state: s.state,
      src_port: s.src.port,
      dst_port: s.dst?.port ?? 0,
      flags: descriptionFlags(input.fdinfo.flags),
      backlog: s.backlog,
      src_addr: ipWords(s.src.address),
      // Zeros when not connected, as CRIU writes it (its restore wants both of the same length).
      dst_addr: ipWords(s.dst?.address ?? (s.family === AF_INET6 ? '::' : '0.0.0.0')),
      fown: dumpFown(input, ctx),
      opts: readSkOpts(input.localFd, s.proto === IPPROTO_TCP),
    };
    if (s.family === AF_INET6) isk['v6only'] = intOpt(input.localFd, SOL_IPV6, IPV6_V6ONLY) !== 0;
    const freebind =
      s.family === AF_INET6
        ? intOpt(input.localFd, SOL_IPV6, IPV6_FREEBIND)
        : intOpt(input.localFd, SOL_IP, IP_FREEBIND);
    if (freebind !== 0) isk['ip_opts'] = { freebind: true };
    const isTcpClose = ctx.options?.isTcpClose === true;
    if (s.proto === IPPROTO_TCP && STREAM_STATES.has(s.state) && s.dst !== null && !isTcpClose) {
      // --tcp-established: the peer's packets dropped first, then the connection read in repair
      // mode, which it stays in (see tcp-stream.ts); undone by releaseTcpRepair if need be.
      // Locked already by prepareDump, with the task's other connections.
      tcpRepairsOf(ctx.shared, input.pid).fds.push(input.fd);
      const opts = isk['opts'] as ImageEntry;
      const { entry, queues } = dumpTcpStream(
        input.localFd,
        2 * Math.max(Number(opts['so_sndbuf']), Number(opts['so_rcvbuf'])),
      );
      await imageSinkOf(ctx).writeImage('TCP_STREAM', Number(input.stat.ino), [{ entry, extra: queues }]);
    }
    return { type: FD_TYPES.INETSK, id, isk };
  },

  async restore(entry, ctx) {
    const isk = socketEntryOf(entry, 'isk');
    const opts = (isk['opts'] ?? {}) as ImageEntry;
    const family = Number(isk['family']);
    const type = Number(isk['type']);
    const proto = Number(isk['proto']);
    const state = Number(isk['state']);
    const srcAddr = ((isk['src_addr'] ?? []) as number[]).map(Number);
    const dstAddr = ((isk['dst_addr'] ?? []) as number[]).map(Number);
    const srcPort = Number(isk['src_port']);
    const flags = Number(isk['flags'] ?? 0);
    const { injector } = ctx;
    const fd = Number(injector.syscallOrThrow('socket', [BigInt(family), BigInt(type), BigInt(proto)]));
    const set = (level: number, name: number, value: Buffer | number): void =>
      setSockOptInTask(injector, fd, level, name, value);
    // Before bind: what decides which address it may take.
    if (family === AF_INET6 && isk['v6only'] !== undefined) set(SOL_IPV6, IPV6_V6ONLY, isk['v6only'] === true ? 1 : 0);
    set(SOL_SOCKET, SO_REUSEADDR, 1);
    if (opts['so_reuseport'] === true) set(SOL_SOCKET, SO_REUSEPORT, 1);
    if (typeof opts['so_bound_dev'] === 'string' && opts['so_bound_dev'] !== '')
      set(SOL_SOCKET, SO_BINDTODEVICE, Buffer.from(`${opts['so_bound_dev']}\0`));
    if ((isk['ip_opts'] as ImageEntry | undefined)?.['freebind'] === true) {
      if (family === AF_INET6) set(SOL_IPV6, IPV6_FREEBIND, 1);
      else set(SOL_IP, IP_FREEBIND, 1);
    }
    const isConnection = proto === IPPROTO_TCP && STREAM_STATES.has(state);
    if (proto === IPPROTO_TCP && state !== TCP_LISTEN && state !== TCP_CLOSE && ctx.options?.isTcpClose === true) {
      // --tcp-close: a socket that is no longer connected (a new one: reads say ENOTCONN, writes
      // EPIPE, poll HUP), with its options; not bound (its address may not be here).
      restoreSkOpts(injector, fd, opts, true);
      injector.resetScratch();
      setStatusFlagsInTask(injector, fd, flags);
      restoreFown(injector, fd, isk['fown'] as ImageEntry | undefined);
      return fd;
    }
    let stream: { entry: ImageEntry; queues: Uint8Array } | null = null;
    if (isConnection) {
      const file = join(ctx.imagesDir, imageFileName('TCP_STREAM', Number(isk['ino'])));
      const record = (await readImage(file, 'TCP_STREAM')).records[0];
      if (record === undefined) throw new ImageError(file, 'no tcp_stream_entry');
      stream = { entry: record.entry, queues: record.extra ?? new Uint8Array(0) };
      restoreTcpStreamBefore(injector, fd, stream.entry, state);
    }
    const isBound = srcPort !== 0 || srcAddr.some((w) => w !== 0);
    if (isBound) {
      const sa = sockaddrOf(family, srcAddr, srcPort);
      callInTask(injector, endpointOf(family, srcAddr, srcPort), 'bind', [
        BigInt(fd),
        injector.pushData(sa),
        BigInt(sa.length),
      ]);
    }
    if (state === TCP_LISTEN) {
      callInTask(injector, endpointOf(family, srcAddr, srcPort), 'listen', [
        BigInt(fd),
        BigInt(Number(isk['backlog'])),
      ]);
    } else if (stream !== null || (type === SOCK_DGRAM && state === TCP_ESTABLISHED)) {
      const dstPort = Number(isk['dst_port']);
      const sa = sockaddrOf(family, dstAddr, dstPort);
      callInTask(injector, endpointOf(family, dstAddr, dstPort), 'connect', [
        BigInt(fd),
        injector.pushData(sa),
        BigInt(sa.length),
      ]);
    }
    // The options before a connection's queues: their buffers' sizes must take them.
    restoreSkOpts(injector, fd, opts, proto === IPPROTO_TCP);
    if (stream !== null) {
      restoreTcpStreamAfter(injector, fd, stream.entry, stream.queues, {
        state,
        ends: segmentEnds(family, srcAddr, srcPort, dstAddr, Number(isk['dst_port'])),
        bufLock: Number(opts['so_buf_lock'] ?? 0),
      });
      sharedEntry(ctx.shared, TCP_REPAIR_PENDING, () => [] as { id: number; entry: ImageEntry }[]).push({
        id: Number(entry['id']),
        entry: stream.entry,
      });
    }
    injector.resetScratch();
    setStatusFlagsInTask(injector, fd, flags);
    restoreFown(injector, fd, isk['fown'] as ImageEntry | undefined);
    return fd;
  },

  async finishRestore(ctx) {
    // Every fd is in place: where each connection ended up, for finishTcpRepairs.
    const pending = ctx.shared.get(TCP_REPAIR_PENDING) as { id: number; entry: ImageEntry }[] | undefined;
    ctx.shared.delete(TCP_REPAIR_PENDING);
    const placed = sharedEntry(ctx.shared, TCP_REPAIR_PLACED, () => [] as { fd: number; entry: ImageEntry }[]);
    for (const { id, entry } of pending ?? []) {
      const fd = ctx.fdOfFileId(id);
      if (fd === undefined) throw new UnsupportedError('tcp', `The restored TCP connection ${id} has no fd`);
      placed.push({ fd, entry });
    }
  },
};
